"""Performance benchmarks: pear_exp against TRL and against the machine's own limits.

    make bench                                   # installs the `bench` extra (TRL), then runs this
    python experiments/benchmarks/bench.py [--quick] [--markdown results.md]

Everything is measured in this one process, on one model and one dataset, with the contenders
interleaved (A B B A ...) and summarised by medians, so that a machine shared with other jobs
slows both sides alike. Step times are intervals between consecutive optimizer steps (a global
torch optimizer hook), which covers the whole loop of either trainer (data, forward, backward,
optimizer, its own bookkeeping) and leaves out each run's start-up. README.md beside this file
gives the choices, the results and what limits them. TRL is imported here only, never by pear_exp.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

for _key, _value in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("WANDB_MODE", "disabled"),
                     ("TOKENIZERS_PARALLELISM", "false"), ("VLLM_LOGGING_LEVEL", "WARNING")):
    os.environ.setdefault(_key, _value)

import torch  # noqa: E402
from torch.optim.optimizer import register_optimizer_step_post_hook  # noqa: E402
from transformers import Qwen3Config, Qwen3ForCausalLM  # noqa: E402

from pear_exp.config import (  # noqa: E402
    BehaviorConfig, BehaviorSource, CountdownTaskConfig, Precision, RLConfig, SFTConfig,
    WeightingConfig, WeightLevel,
)
from pear_exp.losses import token_logprobs  # noqa: E402
from pear_exp.models import end_of_turn_ids, prompt_ids, save_dir  # noqa: E402
from pear_exp.tiny import build_char_tokenizer  # noqa: E402
from pear_exp.rollout.hf import HFEngine  # noqa: E402
from pear_exp.stages.behavior import score_dataset  # noqa: E402
from pear_exp.train.grpo import train_grpo  # noqa: E402
from pear_exp.data import collate, length_grouped_batches  # noqa: E402
from pear_exp.train.sft import train_sft, weighting_kwargs  # noqa: E402
from pear_exp.weighting import pear_weights  # noqa: E402
from pear_exp.tasks import make_task  # noqa: E402


@dataclass
class Settings:
    hidden: int = 256  # Qwen3: 4 layers, 4 heads x 64, FFN 768, char vocabulary: 3.4M parameters
    layers: int = 4
    ffn: int = 768
    rows: int = 512  # Countdown examples; one SFT epoch = rows / batch optimizer steps
    batch: int = 64  # sequences per optimizer step (SFT), prompts x group (GRPO)
    repeats: int = 5  # interleaved repeats of every comparison
    grpo_steps: int = 4  # GRPO steps per run (the first interval of a run is warm-up)
    prompts: int = 8  # GRPO prompts per step; group size = batch / prompts
    max_new_tokens: int = 48
    matmul: int = 2048  # side of the square matmul that measures the machine's peak
    math_answers: int = 100  # MATH-500 problems graded (3 answers each)


QUICK = Settings(hidden=64, layers=1, ffn=128, rows=32, batch=8, repeats=1, grpo_steps=2,
                 prompts=2, max_new_tokens=8, matmul=256, math_answers=5)


class StepClock:
    """Time of every optimizer step in the process (ours and TRL's alike)."""

    def __enter__(self):
        self.times: list[float] = []
        self._hook = register_optimizer_step_post_hook(
            lambda *_: self.times.append(time.perf_counter()))
        return self

    def __exit__(self, *exc):
        self._hook.remove()

    def intervals(self) -> list[float]:
        return [b - a for a, b in zip(self.times, self.times[1:])]


def median(xs):
    return statistics.median(xs) if xs else float("nan")


# --------------------------------------------------------------------------- model and data


def build_model(s: Settings, tokenizer):
    torch.manual_seed(0)
    return Qwen3ForCausalLM(Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=s.hidden, num_hidden_layers=s.layers,
        num_attention_heads=4, num_key_value_heads=4, head_dim=64 if s.hidden >= 256 else 32,
        intermediate_size=s.ffn, max_position_embeddings=256, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))


def countdown_data(s: Settings, out_dir: Path):
    """Countdown problems and one random valid solution each, as a prompt/response JSONL."""
    import random

    task = make_task(CountdownTaskConfig(), out_dir)  # countdown: generated, nothing cached
    problems = task.sample_problems(s.rows, seed=0)
    rng = random.Random(0)
    path = out_dir / "countdown.jsonl"
    with path.open("w") as f:
        for p in problems:
            f.write(json.dumps({"id": p.id, "prompt": p.prompt,
                                "response": rng.choice(task.solutions(p))}) + "\n")
    return task, problems, path


def behavior_rows(teacher, tokenizer, jsonl: Path) -> list[dict]:
    """The behavior stage's teacher-forced scoring of a prompt/response file: by a transformers
    `teacher` (at most 512 rows, the rollout.batch_size default it uses in the pipeline, and
    SCORE_TOKENS tokens a batch) or by a vLLM engine (its prompt log-probs)."""
    cfg = BehaviorConfig(source=BehaviorSource.dataset, dataset=str(jsonl))
    return score_dataset(teacher, tokenizer, tokenizer, str(jsonl), cfg, batch_size=512,
                         system_prompt=None, eval_problems=[])[0]


def sft_config(s: Settings, steps: int, padding_free: bool = True,
               precision: Precision = Precision.auto) -> SFTConfig:
    return SFTConfig(steps=steps, batch_size=s.batch, micro_batch_size=s.batch, lr=2e-3,
                     warmup_steps=max(1, steps // 4), log_every=steps, checkpoint_every=0,
                     padding_free=padding_free, precision=precision)


def step_tokens(rows, s: Settings, steps: int, pad_id: int) -> tuple[float, float]:
    """Mean non-padding tokens and loss tokens per optimizer step of our batch order."""
    batches = length_grouped_batches([len(r["input_ids"]) for r in rows], s.batch, seed=0)
    real = loss = 0.0
    for _ in range(steps):
        b = collate([rows[i] for i in next(batches)], pad_id)
        real += b["attention_mask"].sum().item()
        loss += b["loss_mask"].sum().item()
    return real / steps, loss / steps


def weights_seconds(rows, s: Settings, level: str, pad_id: int, calls: int = 20) -> float:
    """Time of pear_weights for one optimizer step's batch, alone (median of `calls`)."""
    batches = length_grouped_batches([len(r["input_ids"]) for r in rows], s.batch, seed=0)
    b = collate([rows[i] for i in next(batches)], pad_id)
    policy = b["behavior_logprobs"] + 0.1 * torch.randn_like(b["behavior_logprobs"])
    kwargs = weighting_kwargs(WeightingConfig(level=WeightLevel(level)))
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        pear_weights(policy, b["behavior_logprobs"], b["loss_mask"], **kwargs)
        times.append(time.perf_counter() - started)
    return median(times)


# --------------------------------------------------------------------------- contenders


def ours_sft(model, rows, s: Settings, level: str, pad_id: int, padding_free: bool = True,
             precision: Precision = Precision.auto) -> tuple[list[float], float]:
    """One epoch of train_sft: (step intervals, wall time of the whole call)."""
    steps = len(rows) // s.batch
    started = time.perf_counter()
    with StepClock() as clock:
        train_sft(model, rows, sft_config(s, steps, padding_free, precision),
                  WeightingConfig(level=WeightLevel(level)), pad_id=pad_id, seed=0,
                  desc=f"sft {level}")
    return clock.intervals(), time.perf_counter() - started


# TRL's SFT configurations on the same rows: (name, padding_free, packing "bfd", bf16)
TRL_SFT = [("padded fp32", False, False, False), ("padded bf16", False, False, True),
           ("padding-free fp32", True, False, False), ("padding-free bf16", True, False, True),
           ("packed bfd fp32", False, True, False), ("packed bfd bf16", False, True, True)]


def trl_sft(model, rows, s: Settings, tokenizer, out_dir: Path, padding_free: bool = False,
            packing: bool = False, bf16: bool = False) -> tuple[list[float], int]:
    """TRL's SFTTrainer on our epoch's batches, fed in order: (step intervals, steps). packing:
    TRL's best-fit-decreasing packing of the epoch's rows into sequences of about one batch's
    tokens (one per step, so about as many steps as ours), which TRL runs padding-free."""
    from datasets import Dataset
    from trl import SFTConfig as TRLSFTConfig
    from trl import SFTTrainer

    steps = len(rows) // s.batch
    batches = length_grouped_batches([len(r["input_ids"]) for r in rows], s.batch, seed=0)
    order = [i for _ in range(steps) for i in next(batches)]
    data = Dataset.from_list([{"input_ids": rows[i]["input_ids"],
                               "completion_mask": rows[i]["loss_mask"]} for i in order])
    longest = max(len(r["input_ids"]) for r in rows)
    per_step = sum(len(rows[i]["input_ids"]) for i in order) // steps
    args = TRLSFTConfig(
        output_dir=str(out_dir / "trl_sft"), max_steps=steps,
        per_device_train_batch_size=1 if packing else s.batch,
        gradient_accumulation_steps=1, learning_rate=2e-3, lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": 0.1}, warmup_steps=max(1, steps // 4),
        optim="adamw_torch", adam_beta1=0.9, adam_beta2=0.95, weight_decay=0.0, max_grad_norm=1.0,
        bf16=bf16, gradient_checkpointing=False, packing=packing, packing_strategy="bfd",
        padding_free=padding_free, completion_only_loss=True,
        max_length=per_step + longest if packing else None if padding_free else 256,
        train_sampling_strategy="sequential",
        dataloader_num_workers=0, logging_strategy="no", save_strategy="no", eval_strategy="no",
        report_to="none", disable_tqdm=True, use_cpu=True, seed=0,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    if packing:  # as many steps as packed sequences: one pass over the rows
        trainer.args.max_steps = steps = len(trainer.train_dataset)
    with StepClock() as clock:
        trainer.train()
    return clock.intervals(), steps


def trl_rows_stay_apart(model, rows, tokenizer) -> float:
    """TRL's padding-free collator (used by padding_free=True and by bfd packing) on 8 rows of
    different lengths, through the model as its trainer calls it (use_cache=False: with a cache
    transformers builds no per-row mask), against each row alone: the
    largest difference of a label token's log-prob (0 up to float rounding: rows stay apart;
    large: attention crossed rows)."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    some = sorted(rows, key=lambda r: len(r["input_ids"]))[:: max(1, len(rows) // 8)][:8]
    examples = [{"input_ids": r["input_ids"],
                 "labels": [t if m else -100 for t, m in zip(r["input_ids"], r["loss_mask"])]}
                for r in some]
    batch = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id,
                                            padding_free=True)(examples)
    labels = batch.pop("labels")
    with torch.no_grad():
        packed = token_logprobs(model(**batch, use_cache=False).logits,  # as its compute_loss
                                batch["input_ids"])[0]
        alone = torch.cat([token_logprobs(model(input_ids=torch.tensor([r["input_ids"]])).logits,
                                          torch.tensor([r["input_ids"]]))[0] for r in some])
    on = labels[0] != -100
    return (packed[on] - alone[on]).abs().max().item()


def rl_config(s: Settings, precision: Precision = Precision.auto) -> RLConfig:
    return RLConfig(steps=s.grpo_steps, prompts_per_step=s.prompts, group_size=s.batch // s.prompts,
                    temperature=1.0, top_p=1.0, max_new_tokens=s.max_new_tokens, epochs=1,
                    micro_batch_size=s.batch, lr=1e-4, warmup_steps=1,
                    skip_uniform_groups=False,  # TRL trains on every group: same work
                    eval_every=0, checkpoint_every=0, precision=precision)


def ours_grpo(model, tokenizer, task, problems, s: Settings,
              precision: Precision = Precision.auto) -> tuple[list[float], list[float]]:
    """train_grpo with the hf engine: (step intervals, generated tokens per step)."""
    tokens = []
    log = lambda m, step: tokens.append(m["response_length"] * s.batch)  # noqa: E731
    with StepClock() as clock:
        train_grpo(model, tokenizer, HFEngine(model, tokenizer), problems, task,
                   rl_config(s, precision), seed=0, system_prompt=None, sync_tolerance=1.0,
                   log=log)
    return clock.intervals(), tokens


def trl_grpo(model, tokenizer, task, problems, s: Settings, out_dir: Path, bf16: bool = False):
    """TRL's GRPOTrainer, transformers generation, the same verifier as reward."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    data = Dataset.from_list([{"prompt": [{"role": "user", "content": p.prompt}], "index": i}
                              for i, p in enumerate(problems)])
    tokens = []

    def countdown_reward(completions, index, completion_ids, **_):
        tokens.append(sum(len(c) for c in completion_ids))
        return [task.score(problems[i], c[0]["content"]) for i, c in zip(index, completions)]

    args = GRPOConfig(
        output_dir=str(out_dir / "trl_grpo"), max_steps=s.grpo_steps,
        per_device_train_batch_size=s.batch, gradient_accumulation_steps=1, steps_per_generation=1,
        num_generations=s.batch // s.prompts, num_iterations=1, max_completion_length=s.max_new_tokens,
        temperature=1.0, top_p=1.0, top_k=0, use_vllm=False, beta=0.0, epsilon=0.2,
        epsilon_high=0.28, loss_type="dapo", scale_rewards="group", learning_rate=1e-4,
        lr_scheduler_type="constant_with_warmup", warmup_steps=1, optim="adamw_torch",
        adam_beta1=0.9, adam_beta2=0.99, weight_decay=0.0, max_grad_norm=1.0, bf16=bf16,
        gradient_checkpointing=False, log_completions=False, logging_strategy="no",
        save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True,
        seed=0,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=countdown_reward, args=args, train_dataset=data,
                          processing_class=tokenizer)
    with StepClock() as clock:
        trainer.train()
    return clock.intervals(), tokens


def rollout_tokens_per_s(engine, prompts, s: Settings, stops, seed: int) -> float:
    started = time.perf_counter()
    out = engine.generate(prompts, n=s.batch // s.prompts, temperature=1.0, top_p=1.0,
                          max_new_tokens=s.max_new_tokens, stop_token_ids=stops, seed=seed)
    return sum(len(c.token_ids) for group in out for c in group) / (time.perf_counter() - started)


def matmul_flops(n: int, dtype=torch.float32, repeats: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - started)
    return 2 * n**3 / median(times)


# --------------------------------------------------------------------------- the run


def interleaved(repeats: int, contenders: dict) -> dict[str, list]:
    """Call every contender once per repeat, in alternating order (A B C, C B A, A B C, ...)."""
    names = list(contenders)
    results = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            results[name].append(contenders[name]())
    return results


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def grading_per_s(task, problems, responses, batched: bool) -> float:
    """Answers graded per second through the task's batched grader (the path of behavior
    filtering, RL rewards and evaluation: math's worker pool) or one call per answer."""
    started = time.perf_counter()
    if batched:
        task.score_many(problems, responses)
    else:
        for p, r in zip(problems, responses):
            task.score(p, r)
    return len(responses) / (time.perf_counter() - started)


def math_answers(n: int):
    """MATH-500 problems with a correct, a reworded and a wrong response each (3 n answers)."""
    from pear_exp.tasks.math import MathTask, load_problems

    problems = load_problems("math500")[:n]
    responses = [[f"So the answer is $\\boxed{{{p.answer}}}$.",
                  f"Simplifying, we get \\boxed{{{p.answer} + 0}}",
                  f"The final answer is \\boxed{{{p.answer}1}}."] for p in problems]
    return (MathTask(eval_set="math500", timeout=5.0), [p for p in problems for _ in range(3)],
            [r for rs in responses for r in rs])


def run(s: Settings, trl: bool = True, vllm: bool = True) -> tuple[list[tuple], dict]:
    """All measurements; returns (table rows, machine description)."""
    from importlib.util import find_spec

    from pear_exp.train.loop import resolve_precision

    tokenizer = build_char_tokenizer()
    pad = tokenizer.pad_token_id
    model = build_model(s, tokenizer)
    params = sum(p.numel() for p in model.parameters())  # tied: embedding = LM head, once
    why_not = {"trl": "skipped: --no-trl" if not trl else "skipped: TRL not installed (make bench)",
               "vllm": "skipped: --no-vllm" if not vllm else
               "skipped: vLLM not importable here (make install-vllm)"}
    trl = trl and find_spec("trl") is not None
    vllm = vllm and find_spec("vllm") is not None
    machine = machine_info()
    auto = resolve_precision(Precision.auto, torch.device("cpu"), s.hidden)
    machine["model"] = (f"Qwen3, {s.layers} layers, hidden {s.hidden}, FFN {s.ffn}, vocab "
                        f"{len(tokenizer)} (char), tied: {params / 1e6:.2f}M parameters; "
                        f"precision auto = {auto.value} here")
    tmp = Path(tempfile.mkdtemp(prefix="pear_bench-"))
    task, problems, jsonl = countdown_data(s, tmp)
    table: list[tuple] = []  # (measurement, pear_exp, reference, ratio, target, met)
    configs: list[tuple] = []  # SFT: (trainer, name, loss tokens/s, rows apart, is our default)

    # the machine's matmul peaks: the best of fp32 and bf16 is what a step could reach
    peak32 = max(matmul_flops(s.matmul) for _ in range(3))
    peak16 = max(matmul_flops(s.matmul, torch.bfloat16) for _ in range(3))
    peak = max(peak32, peak16)

    # SFT epochs (the same batches) and behavior scoring of the same data with the initial model
    # as teacher. The epochs train `model` in place, so that GRPO below starts from a model that
    # has seen the game (responses that stop, as in real RL).
    teacher = copy.deepcopy(model)
    rows = behavior_rows(teacher, tokenizer, jsonl)
    ours_sft(model, rows, s, "block", pad)  # warm-up, untimed
    steps = len(rows) // s.batch
    real_tokens, loss_tokens = step_tokens(rows, s, steps, pad)

    # 1: PEAR's weights at the default settings (padding-free, precision auto)
    levels = ["none", "token", "block", "sequence"]
    # (more repeats than elsewhere: bf16 steps on this machine vary by +-15% from run to run)
    sft = interleaved(s.repeats + 2, {lv: (lambda lv=lv: ours_sft(model, rows, s, lv, pad))
                                      for lv in levels})
    step = {lv: [median(intervals) for intervals, _ in sft[lv]] for lv in levels}  # per repeat
    for lv in levels[1:]:
        overhead = median([a / b - 1 for a, b in zip(step[lv], step["none"])])  # paired by repeat
        alone = weights_seconds(rows, s, lv, pad) / median(step["none"])
        table.append((f"1. PEAR overhead, {lv}: SFT step time vs none (weights alone)",
                      f"{median(step[lv]) * 1e3:.0f} ms", f"{median(step['none']) * 1e3:.0f} ms",
                      f"{overhead:+.1%} ({alone:+.2%})", "<= +3%", overhead <= 0.03))

    # 2: SFT throughput, every configuration of ours and of TRL on the same rows, interleaved
    ours_configs = {f"{'padding-free' if free else 'padded'} {p.value}":
                    (lambda free=free, p=p: median(ours_sft(copy.deepcopy(model), rows, s, "none",
                                                            pad, free, p)[0]))
                    for free in (True, False) for p in (Precision.fp32, Precision.bf16)}
    contenders = {("pear_exp", k): v for k, v in ours_configs.items()}
    if trl:
        for name, free, packing, bf16 in TRL_SFT:
            contenders[("TRL", name)] = (lambda f=free, pk=packing, b=bf16: trl_sft(
                copy.deepcopy(model), rows, s, tokenizer, tmp, f, pk, b))
        apart = trl_rows_stay_apart(model, rows, tokenizer)
    timings = interleaved(max(3, s.repeats - 2), contenders)
    speed = {}  # loss tokens per second of each configuration
    for (who, name), results in timings.items():
        if who == "pear_exp":
            speed[who, name] = loss_tokens / median(results)
        else:  # TRL: the epoch's loss tokens over (median step x its steps)
            speed[who, name] = loss_tokens * steps / median(
                [median(intervals) * n for intervals, n in results])
        correct = who == "pear_exp" or "padded" in name or apart < 1e-4
        configs.append((who, name, speed[who, name], correct,
                        (who, name) == ("pear_exp", f"padding-free {auto.value}")))
    default = f"padding-free {auto.value}"  # ours at its defaults
    ours_best = speed["pear_exp", default]
    if trl:
        fastest = max((c for c in configs if c[0] == "TRL" and c[3]), key=lambda c: c[2])
        ratio = ours_best / fastest[2]
        table.append((f"2. SFT loss tokens/s: ours (default: {default}) vs TRL's fastest correct "
                      f"({fastest[1]})", f"{ours_best:,.0f}", f"{fastest[2]:,.0f}",
                      f"{ratio:.2f}x", ">= 1.30x", ratio >= 1.3))
    else:
        table.append(("2. SFT vs TRL SFTTrainer", "-", why_not["trl"], "", "", None))
    flops = 6 * params * real_tokens * ours_best / loss_tokens
    table.append((f"6. SFT FLOP/s (6 N T, ours, {default}) vs the best matmul peak "
                  f"({'bf16' if peak16 > peak32 else 'fp32'})", f"{flops / 1e9:.1f} GFLOP/s",
                  f"{peak / 1e9:.1f} GFLOP/s", f"{flops / peak:.1%}", ">= 50%", flops >= 0.5 * peak))

    # 3: GRPO step against TRL's GRPOTrainer at fp32 and bf16 (fresh copies of one model)
    if trl:
        g = interleaved(s.repeats, {
            "ours": lambda: ours_grpo(copy.deepcopy(model), tokenizer, task, problems, s),
            "trl fp32": lambda: trl_grpo(copy.deepcopy(model), tokenizer, task, problems, s, tmp),
            "trl bf16": lambda: trl_grpo(copy.deepcopy(model), tokenizer, task, problems, s, tmp,
                                         bf16=True)})
        times = {k: median([t for intervals, _ in v for t in intervals]) for k, v in g.items()}
        tokens = {k: statistics.mean([n for _, ns in v for n in ns]) for k, v in g.items()}
        best = min(("trl fp32", "trl bf16"), key=times.get)
        ratio = times["ours"] / times[best]
        table.append((f"3. GRPO step, rollout + update ({s.prompts} prompts x "
                      f"{s.batch // s.prompts}, <= {s.max_new_tokens} new tokens), ours "
                      f"({auto.value}) vs TRL's fastest ({best[4:]}; the other "
                      f"{times['trl fp32' if best == 'trl bf16' else 'trl bf16']:.2f} s)",
                      f"{times['ours']:.2f} s ({tokens['ours']:.0f} tok)",
                      f"{times[best]:.2f} s ({tokens[best]:.0f} tok)", f"{ratio:.2f}x time",
                      "<= 0.90x", ratio <= 0.9))
    else:
        table.append(("3. GRPO vs TRL GRPOTrainer", "-", why_not["trl"], "", "", None))

    # 7: grading throughput: math answers through the worker pool, batched vs one call each
    math_task, math_problems, responses = math_answers(s.math_answers)
    grading_per_s(math_task, math_problems[:6], responses[:6], True)  # start the workers
    grade = interleaved(s.repeats, {
        "batched": lambda: grading_per_s(math_task, math_problems, responses, True),
        "one by one": lambda: grading_per_s(math_task, math_problems[: len(responses) // 5],
                                            responses[: len(responses) // 5], False)})
    ratio = median(grade["batched"]) / median(grade["one by one"])
    table.append((f"7. Grading: MATH-500 answers/s (math-verify workers), one batch of "
                  f"{len(responses)} vs one call per answer", f"{median(grade['batched']):,.0f}",
                  f"{median(grade['one by one']):,.0f}", f"{ratio:.1f}x", "", None))

    # 4 and 5: behavior scoring and rollouts, vLLM engine against the hf path (last: vLLM may
    # change the process)
    prompts = [prompt_ids(tokenizer, p.prompt) for p in problems[: 2 * s.prompts]]
    stops = end_of_turn_ids(tokenizer)
    if vllm:
        from pear_exp.rollout.vllm import VLLMEngine
        from pear_exp.stages.behavior import SCORE_TOKENS, SCORE_TOKENS_VLLM
        from pear_exp.stages.behavior import score_with_engine, score_with_model

        save_dir(tmp / "model", model, tokenizer)
        save_dir(tmp / "teacher", teacher, tokenizer)
        # the scoring pass alone (reading and tokenizing the file is the same for both)
        cfg = BehaviorConfig(source=BehaviorSource.dataset, dataset=str(jsonl))
        hf = lambda: timed(lambda: score_with_model(  # noqa: E731
            teacher, rows, cfg, 512, SCORE_TOKENS, pad))
        for dtype in ("float32", "bfloat16"):  # fp32: the hf forward's numbers (within 1e-4)
            scorer = VLLMEngine(str(tmp / "teacher"), tokenizer, dtype=dtype,
                                prefill_chunk=SCORE_TOKENS_VLLM)
            score_with_engine(scorer, rows, 0)  # warm-up
            score = interleaved(s.repeats, {
                "vllm": lambda: timed(lambda: score_with_engine(scorer, rows, 0)), "hf": hf})
            scorer.close()
            ratio = median(score["hf"]) / median(score["vllm"])
            table.append((f"4. Behavior scoring of {s.rows} rows (temperature 1), the pass "
                          f"alone: vLLM engine ({dtype}) vs hf forward (float32)",
                          f"{median(score['vllm']):.2f} s", f"{median(score['hf']):.2f} s",
                          f"{ratio:.2f}x faster", ">= 3.00x", ratio >= 3.0))
        engines = {"hf": HFEngine(model, tokenizer), "vllm": VLLMEngine(str(tmp / "model"), tokenizer)}
        for engine in engines.values():  # warm-up
            rollout_tokens_per_s(engine, prompts, s, stops, seed=0)
        speed = interleaved(s.repeats, {name: (lambda e=e: rollout_tokens_per_s(e, prompts, s, stops, seed=1))
                                        for name, e in engines.items()})
        ratio = median(speed["vllm"]) / median(speed["hf"])
        table.append((f"5. Rollout tokens/s, vLLM engine vs hf engine ({len(prompts)} prompts "
                      f"x {s.batch // s.prompts})", f"{median(speed['vllm']):,.0f}",
                      f"{median(speed['hf']):,.0f}", f"{ratio:.2f}x", "", None))
    else:
        table += [("4. Behavior scoring, vLLM vs hf", "-", why_not["vllm"], "", "", None),
                  ("5. Rollout tokens/s, vLLM vs hf", "-", why_not["vllm"], "", "", None)]
    machine["matmul"] = (f"{s.matmul}^3 matmul: fp32 {peak32 / 1e9:.1f} GFLOP/s, "
                         f"bf16 {peak16 / 1e9:.1f} GFLOP/s")
    machine["data"] = (f"{s.rows} Countdown rows, {real_tokens / s.batch:.1f} tokens "
                       f"({loss_tokens / s.batch:.1f} with loss) per row on average; batch {s.batch}")
    if trl:
        machine["TRL padding-free collator, largest log-prob difference to rows run alone"] = (
            f"{apart:.1e} ({'rows stay apart' if apart < 1e-4 else 'ROWS MIX'})")
    table.sort(key=lambda row: row[0][:2])
    return table, configs, machine


def machine_info() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    import transformers

    info = {"cpu": f"{cpu}, {os.cpu_count()} logical cores", "torch": torch.__version__,
            "threads": str(torch.get_num_threads()), "transformers": transformers.__version__,
            "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg())}
    for name in ("trl", "vllm"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            info[name] = "not installed"
    return info


HEADER = ("measurement", "pear_exp", "reference", "ratio", "target", "met")


def verdict(met) -> str:
    return "" if met is None else ("yes" if met else "NO")


CONFIG_HEADER = ("SFT trainer", "configuration", "loss tokens/s", "vs ours (default)",
                 "rows stay apart")


def config_rows(configs) -> list[tuple[str, ...]]:
    """The SFT configurations, fastest first, each against ours at its default."""
    ours = next(c[2] for c in configs if c[4])
    return [(who, name + (" (default)" if default else ""), f"{tps:,.0f}", f"{tps / ours:.2f}x",
             "yes" if ok else "NO (rows mix)")
            for who, name, tps, ok, default in sorted(configs, key=lambda c: -c[2])]


def markdown(rows, configs, machine) -> str:
    def table(header, body):
        return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                + ["| " + " | ".join(r) + " |" for r in body])

    lines = table(HEADER, [[*map(str, row[:5]), verdict(row[5])] for row in rows])
    lines += ["", "SFT configurations (one epoch of the same rows each, medians):", ""]
    lines += table(CONFIG_HEADER, config_rows(configs))
    return "\n".join(lines + [""] + [f"- {k}: {v}" for k, v in machine.items()]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that it runs")
    parser.add_argument("--no-trl", action="store_true", help="skip the TRL comparisons")
    parser.add_argument("--no-vllm", action="store_true", help="skip the vLLM engine")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="torch threads (default: every core)")
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if os.getloadavg()[0] > 0.5 * (os.cpu_count() or 1):
        print(f"warning: load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores: another "
              "job is running; times will be long and noisy (--threads 1 suffers least)")
    started = time.perf_counter()
    rows, configs, machine = run(QUICK if args.quick else Settings(), trl=not args.no_trl,
                                 vllm=not args.no_vllm)
    machine["load average at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    machine["wall time"] = f"{time.perf_counter() - started:.0f} s"
    from rich.console import Console
    from rich.table import Table

    table = Table(title="pear_exp performance (ratios measured side by side in one process)")
    for h in HEADER:
        table.add_column(h)
    for row in rows:
        table.add_row(*map(str, row[:5]), verdict(row[5]))
    console = Console(width=200)
    console.print(table)
    configurations = Table(title="SFT configurations (one epoch of the same rows each)")
    for h in CONFIG_HEADER:
        configurations.add_column(h)
    for row in config_rows(configs):
        configurations.add_row(*row)
    console.print(configurations)
    for k, v in machine.items():
        console.print(f"{k}: {v}")
    if args.markdown:
        args.markdown.write_text(markdown(rows, configs, machine))


if __name__ == "__main__":
    main()
