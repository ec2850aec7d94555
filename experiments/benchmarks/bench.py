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
    BehaviorConfig, BehaviorSource, CountdownTaskConfig, RLConfig, SFTConfig, WeightingConfig,
    WeightLevel,
)
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


QUICK = Settings(hidden=64, layers=1, ffn=128, rows=32, batch=8, repeats=1, grpo_steps=2,
                 prompts=2, max_new_tokens=8, matmul=256)


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
    """The behavior stage's teacher-forced scoring of a prompt/response file (at most 512 rows,
    the rollout.batch_size default it uses in the pipeline, and SCORE_TOKENS tokens a batch)."""
    cfg = BehaviorConfig(source=BehaviorSource.dataset, dataset=str(jsonl))
    return score_dataset(teacher, tokenizer, tokenizer, str(jsonl), cfg, batch_size=512,
                         system_prompt=None, eval_problems=[])[0]


def sft_config(s: Settings, steps: int) -> SFTConfig:
    return SFTConfig(steps=steps, batch_size=s.batch, micro_batch_size=s.batch, lr=2e-3,
                     warmup_steps=max(1, steps // 4), log_every=steps, checkpoint_every=0)


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


def ours_sft(model, rows, s: Settings, level: str, pad_id: int) -> tuple[list[float], float]:
    """One epoch of train_sft: (step intervals, wall time of the whole call)."""
    steps = len(rows) // s.batch
    started = time.perf_counter()
    with StepClock() as clock:
        train_sft(model, rows, sft_config(s, steps), WeightingConfig(level=WeightLevel(level)),
                  pad_id=pad_id, seed=0, desc=f"sft {level}")
    return clock.intervals(), time.perf_counter() - started


def trl_sft(model, rows, s: Settings, tokenizer, out_dir: Path) -> list[float]:
    """TRL's SFTTrainer on the same batches: our epoch's batch order, fed sequentially."""
    from datasets import Dataset
    from trl import SFTConfig as TRLSFTConfig
    from trl import SFTTrainer

    steps = len(rows) // s.batch
    batches = length_grouped_batches([len(r["input_ids"]) for r in rows], s.batch, seed=0)
    order = [i for _ in range(steps) for i in next(batches)]
    data = Dataset.from_list([{"input_ids": rows[i]["input_ids"],
                               "completion_mask": rows[i]["loss_mask"]} for i in order])
    args = TRLSFTConfig(
        output_dir=str(out_dir / "trl_sft"), max_steps=steps, per_device_train_batch_size=s.batch,
        gradient_accumulation_steps=1, learning_rate=2e-3, lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": 0.1}, warmup_steps=max(1, steps // 4),
        optim="adamw_torch", adam_beta1=0.9, adam_beta2=0.95, weight_decay=0.0, max_grad_norm=1.0,
        bf16=False, gradient_checkpointing=False, packing=False, completion_only_loss=True,
        max_length=256, train_sampling_strategy="sequential", dataloader_num_workers=0,
        logging_strategy="no", save_strategy="no", eval_strategy="no", report_to="none",
        disable_tqdm=True, use_cpu=True, seed=0,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    with StepClock() as clock:
        trainer.train()
    return clock.intervals()


def rl_config(s: Settings) -> RLConfig:
    return RLConfig(steps=s.grpo_steps, prompts_per_step=s.prompts, group_size=s.batch // s.prompts,
                    temperature=1.0, top_p=1.0, max_new_tokens=s.max_new_tokens, epochs=1,
                    micro_batch_size=s.batch, lr=1e-4, warmup_steps=1,
                    skip_uniform_groups=False,  # TRL trains on every group: same work
                    eval_every=0, checkpoint_every=0)


def ours_grpo(model, tokenizer, task, problems, s: Settings) -> tuple[list[float], list[float]]:
    """train_grpo with the hf engine: (step intervals, generated tokens per step)."""
    tokens = []
    log = lambda m, step: tokens.append(m["response_length"] * s.batch)  # noqa: E731
    with StepClock() as clock:
        train_grpo(model, tokenizer, HFEngine(model, tokenizer), problems, task, rl_config(s),
                   seed=0, system_prompt=None, sync_tolerance=1.0, log=log)
    return clock.intervals(), tokens


def trl_grpo(model, tokenizer, task, problems, s: Settings, out_dir: Path):
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
        adam_beta1=0.9, adam_beta2=0.99, weight_decay=0.0, max_grad_norm=1.0, bf16=False,
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


def run(s: Settings, trl: bool = True, vllm: bool = True) -> tuple[list[tuple], dict]:
    """All measurements; returns (table rows, machine description)."""
    from importlib.util import find_spec

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
    machine["model"] = (f"Qwen3, {s.layers} layers, hidden {s.hidden}, FFN {s.ffn}, vocab "
                        f"{len(tokenizer)} (char), tied: {params / 1e6:.2f}M parameters")
    tmp = Path(tempfile.mkdtemp(prefix="pear_bench-"))
    task, problems, jsonl = countdown_data(s, tmp)
    table: list[tuple] = []  # (measurement, pear_exp, reference, ratio, target, met)

    # 6, the reference: the machine's fp32 matmul peak (bf16 for information)
    peak = max(matmul_flops(s.matmul) for _ in range(3))
    peak_bf16 = max(matmul_flops(s.matmul, torch.bfloat16) for _ in range(3))

    # 1 and 4: SFT epochs per weighting (same batches) and behavior scoring of the same data,
    # with the initial model as teacher. The epochs train `model` in place, so that GRPO below
    # starts from a model that has seen the game (responses that stop, as in real RL).
    teacher = copy.deepcopy(model)
    rows = behavior_rows(teacher, tokenizer, jsonl)
    ours_sft(model, rows, s, "block", pad)  # warm-up, untimed
    levels = ["none", "token", "block", "sequence"]
    score = lambda: timed(lambda: behavior_rows(teacher, tokenizer, jsonl))  # noqa: E731
    sft = interleaved(s.repeats, {"score": score,
                                  **{lv: (lambda lv=lv: ours_sft(model, rows, s, lv, pad)) for lv in levels}})
    step = {lv: [median(intervals) for intervals, _ in sft[lv]] for lv in levels}  # per repeat
    real_tokens, loss_tokens = step_tokens(rows, s, len(rows) // s.batch, pad)
    for lv in levels[1:]:
        overhead = median([a / b - 1 for a, b in zip(step[lv], step["none"])])  # paired by repeat
        alone = weights_seconds(rows, s, lv, pad) / median(step["none"])
        table.append((f"1. PEAR overhead, {lv}: SFT step time vs none (weights alone)",
                      f"{median(step[lv]) * 1e3:.0f} ms", f"{median(step['none']) * 1e3:.0f} ms",
                      f"{overhead:+.1%} ({alone:+.2%})", "<= +3%", overhead <= 0.03))
    epoch = median([wall for _, wall in sft["block"]])
    table.append((f"4. Behavior scoring of {s.rows} rows vs one SFT epoch (block)",
                  f"{median(sft['score']):.2f} s", f"{epoch:.2f} s",
                  f"{median(sft['score']) / epoch:.2f}x", "", None))
    flops = 6 * params * real_tokens / median(step["none"])
    table.append(("6. SFT FLOP/s (6 N T, ours, none) vs fp32 matmul peak", f"{flops / 1e9:.1f} GFLOP/s",
                  f"{peak / 1e9:.1f} GFLOP/s", f"{flops / peak:.1%}", "", None))

    # 2 and 3: against TRL's SFTTrainer and GRPOTrainer (fresh copies of one model each run)
    if trl:
        vs = interleaved(s.repeats, {
            "ours": lambda: median(ours_sft(copy.deepcopy(model), rows, s, "none", pad)[0]),
            "trl": lambda: median(trl_sft(copy.deepcopy(model), rows, s, tokenizer, tmp))})
        ratio = median([t / o for o, t in zip(vs["ours"], vs["trl"])])
        table.append(("2. SFT loss tokens/s vs TRL SFTTrainer", f"{loss_tokens / median(vs['ours']):,.0f}",
                      f"{loss_tokens / median(vs['trl']):,.0f}", f"{ratio:.2f}x", ">= 1.00x", ratio >= 1.0))
        trl_flops = 6 * params * real_tokens / median(vs["trl"])
        table.append(("6. SFT FLOP/s (6 N T, TRL) vs fp32 matmul peak", f"{trl_flops / 1e9:.1f} GFLOP/s",
                      f"{peak / 1e9:.1f} GFLOP/s", f"{trl_flops / peak:.1%}", "", None))
        g = interleaved(s.repeats, {
            "ours": lambda: ours_grpo(copy.deepcopy(model), tokenizer, task, problems, s),
            "trl": lambda: trl_grpo(copy.deepcopy(model), tokenizer, task, problems, s, tmp)})
        times = {k: median([t for intervals, _ in v for t in intervals]) for k, v in g.items()}
        tokens = {k: statistics.mean([n for _, ns in v for n in ns]) for k, v in g.items()}
        ratio = times["ours"] / times["trl"]
        table.append((f"3. GRPO step, rollout + update ({s.prompts} prompts x {s.batch // s.prompts}, "
                      f"<= {s.max_new_tokens} new tokens) vs TRL",
                      f"{times['ours']:.2f} s ({tokens['ours']:.0f} tok)",
                      f"{times['trl']:.2f} s ({tokens['trl']:.0f} tok)", f"{ratio:.2f}x time",
                      "<= 1.00x", ratio <= 1.0))
    else:
        table += [("2. SFT vs TRL SFTTrainer", "-", why_not["trl"], "", "", None),
                  ("3. GRPO vs TRL GRPOTrainer", "-", why_not["trl"], "", "", None)]

    # 5: rollout tokens/s, vLLM engine against the hf engine (last: vLLM may change the process)
    prompts = [prompt_ids(tokenizer, p.prompt) for p in problems[: 2 * s.prompts]]
    stops = end_of_turn_ids(tokenizer)
    if vllm:
        from pear_exp.rollout.vllm import VLLMEngine

        save_dir(tmp / "model", model, tokenizer)
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
        table.append(("5. Rollout tokens/s, vLLM vs hf", "-", why_not["vllm"], "", "", None))
    machine["matmul"] = (f"{s.matmul}^3 matmul: fp32 {peak / 1e9:.1f} GFLOP/s, "
                         f"bf16 {peak_bf16 / 1e9:.1f} GFLOP/s")
    machine["data"] = (f"{s.rows} Countdown rows, {real_tokens / s.batch:.1f} tokens "
                       f"({loss_tokens / s.batch:.1f} with loss) per row on average; batch {s.batch}")
    table.sort(key=lambda row: row[0][:2])
    return table, machine


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


def markdown(rows, machine) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join([*map(str, row[:5]), verdict(row[5])]) + " |" for row in rows]
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
    rows, machine = run(QUICK if args.quick else Settings(), trl=not args.no_trl, vllm=not args.no_vllm)
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
    for k, v in machine.items():
        console.print(f"{k}: {v}")
    if args.markdown:
        args.markdown.write_text(markdown(rows, machine))


if __name__ == "__main__":
    main()
