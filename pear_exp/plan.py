"""Plan mode: what a configuration will run and roughly what it needs, before anything runs.

    python -m pear_exp +experiment=aime_qwen3 plan=true

prints the stages, the models (hub id or path, exact parameter count, dtype, context), the data
sizes and token budgets of every stage, and an estimate of the memory each stage needs per GPU,
then exits: no weights are loaded, nothing is downloaded, no run directory is created.

The parameter counts and every memory term come from pear_exp/memory.py, where the formulas are
written out; this module picks the terms each stage needs, adds them up and prints them.
Rank 0 runs the rollout engine next to its trainer process (pear_exp/train/distributed.py), so the
RL row adds the engine's reservation to the trainer's memory: that is the busiest GPU.
Sequence lengths assume a prompt budget of sft.max_seq_len - behavior.max_new_tokens tokens (the
room SFT leaves for the prompt), or PROMPT_TOKENS when that is not positive: real prompts are
measured only at run time.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from pear_exp.config import (
    ArchitectureConfig, BaseLoss, BehaviorSource, Config, Engine, ModelConfig, Precision, Stage,
    TaskConfig, TaskKind, WeightingConfig, WeightLevel,
)
from pear_exp.memory import (
    DTYPE_BYTES, GiB, activation_bytes, architecture_of, count_parameters, dtype_bytes,
    kv_bytes_per_token, logprob_bytes, scoring_forward_bytes, training_state_bytes, vllm_bytes,
)
from pear_exp.stages.behavior import SCORE_CHUNK, SCORE_TOKENS
from pear_exp.tasks.math import SHIPPED_SETS, load_problems
from pear_exp.weighting import pear_weights_with_stats

PROMPT_TOKENS = 512  # prompt length assumed when the config does not imply one
DEFAULT_GPU_GIB = 80  # H100 80GB; the real size is read when a GPU is visible


@dataclass(frozen=True)
class ModelPlan:
    label: str  # student / teacher
    name: str
    source: str  # hub id, directory, or "tiny (built by the framework)"
    arch: ArchitectureConfig | None
    arch_from: str  # where the architecture came from
    params: int | None
    dtype: str
    context: int | None


# ----------------------------------------------------------------------------- the models
def model_plan(label: str, model: ModelConfig) -> ModelPlan:
    config, arch, arch_from = architecture_of(model)
    params = None
    if config is not None:
        try:
            params = count_parameters(config)
        except Exception as err:  # e.g. an architecture this transformers cannot build
            arch_from += f" (not countable: {type(err).__name__})"
    context = model.context_length
    if context is None and model.tiny is not None:
        context = model.tiny.max_positions
    source = model.path if model.path is not None else "tiny (built by the framework)"
    return ModelPlan(label, model.name, source, arch, arch_from, params, model.dtype, context)


# ----------------------------------------------------------------------------- the plan
def prompt_budget(cfg: Config) -> int:
    """Tokens assumed for a prompt: the room SFT leaves for it, else PROMPT_TOKENS."""
    room = cfg.sft.max_seq_len - cfg.behavior.max_new_tokens
    return room if room > 0 else PROMPT_TOKENS


@dataclass
class Row:
    stage: str
    term: str
    per_world: list[int | None]  # bytes per GPU for each world size
    note: str = ""


def world_sizes() -> list[int]:
    size = int(os.environ.get("WORLD_SIZE", "1"))
    return [size] if size > 1 else [1, 8]


def gpu_memory_bytes() -> tuple[int, str]:
    try:
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            return props.total_memory, f"{props.name}, {props.total_memory / GiB:.0f} GiB"
    except Exception:
        pass
    return DEFAULT_GPU_GIB * GiB, f"{DEFAULT_GPU_GIB} GiB GPUs assumed: none visible"


def engine_element_bytes(cfg: Config, serving: ModelConfig) -> int:
    """Bytes per weight in the rollout engine: rollout.dtype, or `auto` = the checkpoint's dtype
    (a student checkpoint is saved in model.dtype)."""
    if cfg.rollout.dtype in DTYPE_BYTES:
        return DTYPE_BYTES[cfg.rollout.dtype]
    return dtype_bytes(serving.dtype)


def sharding(cfg: Config) -> str:
    distributed = getattr(cfg, "distributed", None)  # multi-process training, when configured
    strategy = getattr(distributed, "strategy", None)
    return getattr(strategy, "value", "ddp")


def memory_rows(cfg: Config, student: ModelPlan, teacher: ModelPlan, gpu_bytes: int,
                worlds: list[int]) -> list[Row]:
    rows: list[Row] = []
    fsdp = sharding(cfg) == "fsdp"
    r = cfg.rollout

    def engine_rows(stage: str, plan: ModelPlan, model_cfg: ModelConfig, max_new: int,
                    sequences: int) -> list[int]:
        """Rows of the rollout engine serving `plan`; returns its memory per GPU."""
        if plan.arch is None or plan.params is None:
            rows.append(Row(stage, "rollout engine", [None] * len(worlds), "architecture unknown"))
            return [0] * len(worlds)
        seq = prompt_budget(cfg) + max_new
        if r.engine == Engine.vllm:
            policy = plan.label == "student"
            tp = r.engine_tensor_parallel(policy)
            key = "policy_tensor_parallel_size" if policy else "tensor_parallel_size"
            v = vllm_bytes(plan.params, engine_element_bytes(cfg, model_cfg), tp,
                           r.gpu_memory_utilization, gpu_bytes, kv_bytes_per_token(plan.arch), seq)
            fits = "" if v["weights"] < v["reserved"] else f" DOES NOT FIT: raise rollout.{key}"
            rows.append(Row(stage, f"vLLM {plan.label} weights", [v["weights"]] * len(worlds),
                            f"tp={tp}{fits}"))
            rows.append(Row(stage, "vLLM KV cache", [v["kv_cache"]] * len(worlds),
                            f"holds {v['sequences']:.0f} sequences of {seq} tokens at once"))
            return [v["reserved"]] * len(worlds)
        weights = plan.params * dtype_bytes(model_cfg.dtype)
        note = ""
        if stage == "rl":  # the hf engine generates with the trainer's own model object (the
            weights, note = 0, "the trainer's own (counted above)"  # fsdp copy: its own row)
        batch = min(r.batch_size, max(sequences, 1))
        kv = kv_bytes_per_token(plan.arch, dtype_bytes(model_cfg.dtype)) * seq * batch
        rows.append(Row(stage, f"hf {plan.label} weights", [weights] * len(worlds), note))
        rows.append(Row(stage, "hf KV cache", [kv] * len(worlds), f"{batch} sequences x {seq} tokens"))
        return [weights + kv] * len(worlds)

    def engine_total(stage: str, values: list[int]) -> None:
        note = (f"the engine's reservation: gpu_memory_utilization={r.gpu_memory_utilization}"
                if r.engine == Engine.vllm else "")
        rows.append(Row(stage, "total", values, note))

    def trainer_rows(stage: str, micro: int, seq_len: int, checkpointing: bool, chunk: int,
                     reference: str | None, precision_bf16: bool, reference_sharded: bool = False,
                     kl_blocks: int = 0, kl_note: str = "") -> tuple[list[int], list[int]]:
        """Rows of one training stage; returns (resident state, peak during an update).
        reference: why a frozen reference model is held (None: none is), sharded like the policy
        under FSDP or whole on every rank; kl_blocks: the extra (positions, vocab) float32 blocks
        a KL term keeps beside the log-probs."""
        arch, b = student.arch, dtype_bytes(cfg.model.dtype)
        resident, totals = [0] * len(worlds), [0] * len(worlds)
        if arch is None or student.params is None:
            rows.append(Row(stage, "trainer", [None] * len(worlds), "architecture unknown"))
            return resident, totals
        tokens = micro * seq_len
        terms: list[tuple[str, list[int], str]] = []
        states = [training_state_bytes(student.params, b, w if fsdp else 1) for w in worlds]
        shard_note = "sharded (fsdp)" if fsdp else "replicated (ddp)"
        terms.append(("weights", [s["weights"] for s in states], f"{cfg.model.dtype}, {shard_note}"))
        terms.append(("grads", [s["grads"] for s in states], ""))
        terms.append(("AdamW states", [s["adamw"] for s in states], ""))
        e = 2 if precision_bf16 or b == 2 else 4  # bytes of the compute dtype
        act = activation_bytes(arch, tokens, b, checkpointing, student.params, e)
        other = activation_bytes(arch, tokens, b, not checkpointing, student.params, e)
        terms.append(("activations", [act] * len(worlds),
                      f"{micro} x {seq_len} tokens, checkpointing "
                      f"{'on' if checkpointing else 'off'} ({other / GiB:.1f} GiB if "
                      f"{'off' if checkpointing else 'on'})"))
        lp = logprob_bytes(tokens, arch.vocab_size, chunk)
        terms.append(("log-probs", [lp] * len(worlds),
                      f"chunks of {chunk}" if chunk else "full logits"))
        if kl_blocks:
            terms.append(("KL terms", [kl_blocks * lp] * len(worlds), kl_note))
        if reference:
            shards = lambda w: w if fsdp and reference_sharded else 1  # noqa: E731
            terms.append(("reference model", [student.params * b // shards(w) for w in worlds],
                          reference))
        for term, values, note in terms:
            rows.append(Row(stage, term, values, note))
            totals = [t + v for t, v in zip(totals, values)]
            if term not in ("activations", "log-probs", "KL terms"):  # freed between updates
                resident = [t + v for t, v in zip(resident, values)]
        return resident, totals

    stages = set(cfg.stages)
    if Stage.behavior in stages:
        b = cfg.behavior
        if b.source == BehaviorSource.teacher:
            engine_total("behavior", engine_rows("behavior", teacher, cfg.teacher,
                                                 b.max_new_tokens,
                                                 cfg.task.num_train * b.samples_per_prompt))
        elif teacher.params is not None and teacher.arch is not None:
            # teacher-forced scoring (stages/behavior.py): micro-batches of at most SCORE_TOKENS
            # padded tokens (or one row), no gradient: one layer's tensors live at a time, and
            # log-probs from the hidden states SCORE_CHUNK positions at a time
            arch, b = teacher.arch, dtype_bytes(cfg.teacher.dtype)
            tokens = max(min(SCORE_TOKENS, r.batch_size * cfg.sft.max_seq_len), cfg.sft.max_seq_len)
            weights = teacher.params * b
            forward = scoring_forward_bytes(arch, tokens, b)
            lp = logprob_bytes(tokens, arch.vocab_size, SCORE_CHUNK)
            rows.append(Row("behavior", "teacher weights", [weights] * len(worlds)))
            rows.append(Row("behavior", "scoring forward", [forward + lp] * len(worlds),
                            f"{tokens} tokens at a time, log-probs in chunks of {SCORE_CHUNK}"))
            rows.append(Row("behavior", "total", [weights + forward + lp] * len(worlds)))
    if Stage.sft in stages:
        s = cfg.sft
        level = cfg.weighting.level
        # the KL base loss keeps the model's log-softmax and its rest-of-vocabulary copy; ASFT's
        # anchor the model's and the reference's log-softmax and the reference's probabilities
        kl_blocks = 3 if level == WeightLevel.asft else 2 if s.base_loss == BaseLoss.kl else 0
        _, totals = trainer_rows(
            "sft", s.micro_batch_size, s.max_seq_len, s.gradient_checkpointing,
            s.logprob_chunk_size,
            reference=f"weighting={level.value}: the initial model" if level.needs_reference
            else None, precision_bf16=s.precision != Precision.fp32, kl_blocks=kl_blocks,
            kl_note="ASFT's anchor" if level == WeightLevel.asft else "sft.base_loss=kl")
        rows.append(Row("sft", "total", totals))
    if Stage.rl in stages:
        rl = cfg.rl
        resident, update = trainer_rows("rl", rl.micro_batch_size,
                                        prompt_budget(cfg) + rl.max_new_tokens,
                                        rl.gradient_checkpointing, rl.logprob_chunk_size,
                                        reference="rl.kl_coef > 0" if rl.kl_coef > 0 else None,
                                        reference_sharded=True,
                                        precision_bf16=rl.precision != Precision.fp32)
        if fsdp and student.params is not None:
            # rank 0 keeps an unsharded copy of the policy that feeds the engine and the probe
            copy = [student.params * dtype_bytes(cfg.model.dtype) if w > 1 else 0 for w in worlds]
            rows.append(Row("rl", "policy copy for the engine", copy, "rank 0 only, under fsdp"))
            resident = [t + c for t, c in zip(resident, copy)]
            update = [t + c for t, c in zip(update, copy)]
        engine = engine_rows("rl", student, cfg.model, rl.max_new_tokens,
                             rl.prompts_per_step * rl.group_size)
        if r.engine == Engine.vllm and r.enable_sleep_mode:
            # the engine sleeps (weights to host memory, KV cache freed) while the trainer steps
            totals = [max(u, s + e) for u, s, e in zip(update, resident, engine)]
            note = "max(update, trainer state + engine): sleep mode, on rank 0's GPU"
        else:
            totals = [u + e for u, e in zip(update, engine)]
            note = "trainer update + engine, both on rank 0's GPU"
        rows.append(Row("rl", "total", totals, note))
    if Stage.evaluate in stages:
        e = cfg.evaluate
        sequences = max(eval_set_size(t) or 1 for t in evaluated_tasks(cfg)) * e.num_samples
        engine_total("evaluate", engine_rows("evaluate", student, cfg.model, e.max_new_tokens,
                                             sequences))
    return rows


def evaluated_tasks(cfg: Config) -> list[TaskConfig]:
    """The tasks every checkpoint is evaluated on: the task, and the RL task when shifted."""
    return [cfg.task] + ([cfg.rl_task] if cfg.rl_task is not None else [])


def eval_set_size(t: TaskConfig) -> int | None:
    if t.kind != TaskKind.math:
        return t.num_eval
    if t.eval_set in SHIPPED_SETS or Path(t.eval_set).expanduser().is_file():
        size = len(load_problems(t.eval_set))
        return min(size, t.num_eval) if t.num_eval > 0 else size
    return t.num_eval or None  # a hub id: not loaded in plan mode


def data_rows(cfg: Config) -> list[tuple[str, str, str]]:
    """(stage, count, token budget) lines."""
    t, b, s, rl, e = cfg.task, cfg.behavior, cfg.sft, cfg.rl, cfg.evaluate
    stages = set(cfg.stages)
    math_task = t.kind == TaskKind.math
    if math_task and t.train_set is None:
        prompts, n_prompts = "0 (task.train_set is null)", 0
    elif math_task and t.num_train == 0:
        prompts, n_prompts = f"all of {t.train_set}", None
    else:
        prompts, n_prompts = f"{t.num_train:,}", t.num_train
    out = [("task", f"{t.name} ({t.kind.value})", "")]
    if cfg.rl_task is not None:
        out.append(("RL task", f"{cfg.rl_task.name} ({cfg.rl_task.kind.value})",
                    "GRPO's prompts, rewards and checks; evaluated beside the task"))
    if math_task:
        out.append(("training prompts", prompts, f"from {t.train_set}"))
    else:
        out.append(("training prompts", prompts, ""))
    if Stage.behavior in stages:
        if b.source == BehaviorSource.teacher:
            samples = n_prompts * b.samples_per_prompt if n_prompts is not None else None
            out.append(("behavior samples", _count(samples, f"prompts x {b.samples_per_prompt}"),
                        _tokens(samples, b.max_new_tokens, "generated")))
            if b.top_k and samples is not None:  # stored for kept samples only: an upper bound
                top = samples * b.max_new_tokens * topk_bytes_per_token(b.top_k)
                out.append(("behavior top-k", f"k = {b.top_k}",
                            f"<= {top / GiB:,.1f} GiB on disk if every sample is kept"))
            held = eval_set_size(t)  # behavior/heldout: teacher_nll's data, never trained on
            held = held * b.samples_per_prompt if held is not None else None
            out.append(("held-out teacher samples",
                        _count(held, f"evaluation problems x {b.samples_per_prompt}"),
                        _tokens(held, b.max_new_tokens, "generated")))
        else:
            out.append(("behavior samples", f"every row of {b.dataset}", "teacher-forced"))
    if Stage.sft in stages:
        seqs = s.steps * s.batch_size
        out.append(("sft sequences", f"{s.steps:,} steps x {s.batch_size} = {seqs:,}",
                    _tokens(seqs, s.max_seq_len, "trained")))
    starts = 1 + len(s.keep_steps) if Stage.sft in stages else 1  # RL from each kept model
    if Stage.rl in stages:
        rollouts = starts * rl.steps * rl.prompts_per_step * rl.group_size
        out.append(("rl rollouts", (f"{starts} runs x " if starts > 1 else "")
                    + f"{rl.steps:,} steps x {rl.prompts_per_step} prompts x "
                    f"{rl.group_size} = {rollouts:,}",
                    _tokens(rollouts, rl.max_new_tokens, "generated")))
        if rl.eval_every > 0:
            evals = rl.steps // rl.eval_every
            out.append(("rl held-out evals", f"{evals} x {rl.eval_problems} problems", ""))
    checkpoints = 1 + starts * ((Stage.sft in stages) + (Stage.rl in stages))
    for task in evaluated_tasks(cfg) if Stage.evaluate in stages else []:  # each checkpoint
        problems = eval_set_size(task)
        per = problems * e.num_samples if problems is not None else None
        count = (f"{problems} problems x {e.num_samples} samples x {checkpoints} checkpoints"
                 if problems is not None else f"? problems x {e.num_samples} samples")
        total = per * checkpoints if per is not None else None
        extra = f" (+{problems * checkpoints} greedy)" if e.greedy and problems else ""
        stage = "evaluation" + (f" on {task.name}" if cfg.rl_task is not None else "")
        out.append((stage, count + extra, _tokens(total, e.max_new_tokens, "generated")))
    return out


def _short(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def topk_bytes_per_token(k: int) -> int:
    """Disk bytes the top-k columns add per response token: k int32 ids and k float32 log-probs,
    plus two 4-byte list offsets (Arrow). Measured on tiny_mismatch's behavior data at k = 16:
    136.4 bytes per response token (experiments/relatives/README.md)."""
    return 8 * k + 8


def _count(value: int | None, how: str) -> str:
    return f"{value:,} ({how})" if value is not None else f"? ({how})"


def _tokens(sequences: int | None, per_sequence: int, what: str) -> str:
    if sequences is None:
        return f"<= {per_sequence:,} tokens each, {what}"
    return f"<= {sequences * per_sequence / 1e6:,.1f}M tokens {what} (<= {per_sequence:,} each)"


def checks(cfg: Config, student: ModelPlan, teacher: ModelPlan) -> list[str]:
    """Settings that will fail or surprise at run time, found without running anything."""
    out = []
    stages = set(cfg.stages)
    lengths = [("behavior", teacher, cfg.behavior.max_new_tokens, Stage.behavior),
               ("rl", student, cfg.rl.max_new_tokens, Stage.rl),
               ("evaluate", student, cfg.evaluate.max_new_tokens, Stage.evaluate)]
    for name, plan, max_new, stage in lengths:
        if stage not in stages:
            continue
        need = prompt_budget(cfg) + max_new
        if plan.context is not None and need > plan.context:
            out.append(f"{name}: about {prompt_budget(cfg)} prompt + {max_new} new tokens exceeds "
                       f"{plan.name}'s context of {plan.context}")
        if cfg.rollout.engine == Engine.vllm and need > cfg.rollout.max_model_len:
            out.append(f"{name}: about {need} tokens exceeds rollout.max_model_len="
                       f"{cfg.rollout.max_model_len}")
    if Stage.behavior in stages and Stage.sft in stages:
        if cfg.behavior.max_new_tokens >= cfg.sft.max_seq_len:
            out.append(f"sft.max_seq_len={cfg.sft.max_seq_len} leaves no room for the prompt "
                       f"beside behavior.max_new_tokens={cfg.behavior.max_new_tokens}: long "
                       "behavior samples would be refused by validation")
    if cfg.weighting.target_temperature != cfg.rl.temperature:
        out.append(f"weighting.target_temperature={cfg.weighting.target_temperature} differs "
                   f"from rl.temperature={cfg.rl.temperature} (docs/method.md, Target policy: "
                   "the target policy is the model at the RL sampling temperature)")
    if (cfg.task.kind == TaskKind.math and cfg.task.train_set is None
            and stages & {Stage.behavior, Stage.sft, Stage.rl}):
        out.append("task.train_set is null: behavior, SFT and RL have no training prompts")
    if cfg.rollout.engine == Engine.vllm and cfg.rollout.dtype == "auto" and \
            dtype_bytes(cfg.model.dtype) == 4 and stages & {Stage.rl, Stage.evaluate}:
        out.append("rollout.dtype=auto serves float32 student checkpoints in float32: set "
                   "rollout.dtype=bfloat16")
    return out + weight_checks(cfg)


def floored_fraction(length: int, delta: float, w: WeightingConfig) -> float:
    """Fraction of a `length`-token response's tokens whose log G falls below the log-weight
    floor when every p - b equals `delta`; computed by pear_exp.weighting itself."""
    ones = torch.ones(1, length, dtype=torch.float64)
    _, stats = pear_weights_with_stats(
        ones * delta, torch.zeros_like(ones), ones, level=w.level.value, block_size=w.block_size,
        gamma=w.gamma, delta_clip=tuple(w.delta_clip), log_weight_clip=tuple(w.log_weight_clip))
    return stats["log_weight_floor_frac"]


def weight_checks(cfg: Config) -> list[str]:
    """Settings under which most PEAR weights are expected at the floor log_weight_clip[0]
    (what the SFT stage warns about at run time, pear_exp/train/sft.py weight_health)."""
    w, b = cfg.weighting, cfg.behavior
    if not w.level.is_pear or Stage.sft not in cfg.stages:
        return []
    out = []
    if b.source == BehaviorSource.teacher and b.temperature != w.target_temperature:
        out.append(
            f"PEAR weights: behavior.temperature={b.temperature:g} differs from "
            f"weighting.target_temperature={w.target_temperature:g}: b_t is the teacher's "
            f"log-prob at {b.temperature:g}, p_t the student's at {w.target_temperature:g}"
            + (": the sharper behavior distribution makes p - b low on the tokens it sampled, "
               "pushing weights to the floor" if b.temperature < w.target_temperature else ""))
    if b.source == BehaviorSource.teacher and b.top_p < 1:
        out.append(f"PEAR weights: behavior.top_p={b.top_p:g} < 1: b_t is the "
                   "nucleus-renormalised log-prob (above the full distribution's by -log of the "
                   "nucleus mass), so p - b is biased low")
    # the longest response SFT sees: what the teacher may generate, or what validation admits
    length, key = (b.max_new_tokens, "behavior.max_new_tokens")
    if b.source == BehaviorSource.dataset:
        length, key = cfg.sft.max_seq_len, "sft.max_seq_len"
    lo, floor = w.delta_clip[0], w.log_weight_clip[0]
    worst = floored_fraction(length, lo - 1.0, w)  # every delta clipped to delta_clip[0]
    if worst > 0:
        out.append(
            f"PEAR weights: up to {worst:.1%} of a {length:,}-token response's tokens ({key}) "
            f"can sit at the log-weight floor: {math.ceil(floor / lo - 1e-9):,} deltas at "
            f"delta_clip[0]={lo:g} sum to log_weight_clip[0]={floor:g}")
    matched = floored_fraction(length, 0.0, w)  # p = b on every token: the discount alone
    if matched > 0:
        out.append(
            f"PEAR weights: the discount alone floors {matched:.1%} of a {length:,}-token "
            f"response's tokens even where the student matches the behavior policy "
            f"(gamma={w.gamma:g} to the power {math.ceil(floor / math.log(w.gamma)):,} is below "
            f"exp({floor:g}))")
    return out


# ----------------------------------------------------------------------------- printing
def print_plan(cfg: Config, choices: dict[str, Any] | None = None, console=None) -> None:
    if console is None:  # wide enough for the tables when the output is not a terminal
        console = Console(width=None if sys.stdout.isatty() else 160)
    choices = {k: v for k, v in (choices or {}).items()  # Hydra's runtime.choices: the groups
               if not k.startswith("hydra") and v is not None and k != "base_config"}
    student = model_plan("student", cfg.model)
    teacher = model_plan("teacher", cfg.teacher)
    gpu_bytes, gpu_name = gpu_memory_bytes()
    worlds = world_sizes()

    title = f"plan: {cfg.experiment or 'no experiment preset'}"
    console.print(f"[bold]{title}[/bold] (nothing is loaded, downloaded or written)")
    console.print("stages: " + " -> ".join(s.value for s in cfg.stages))
    if choices:
        console.print("choices: " + ", ".join(f"{k}={v}" for k, v in sorted(choices.items())))
    console.print(f"training: precision sft={cfg.sft.precision.value} rl="
                  f"{cfg.rl.precision.value}"
                  + (" (auto: bf16 on GPUs, as estimated here)" if Precision.auto in
                     (cfg.sft.precision, cfg.rl.precision) else "")
                  + f"; with several processes (torchrun) {sharding(cfg)}; "
                  f"rollout engine {cfg.rollout.engine.value}")

    models = Table(title="models")
    for column in ("role", "preset", "hub id / path", "parameters", "dtype", "context",
                   "architecture from"):
        models.add_column(column)
    for plan in (student, teacher):
        params = f"{plan.params:,} ({_short(plan.params)})" if plan.params else "?"
        models.add_row(plan.label, plan.name, plan.source, params, plan.dtype,
                       f"{plan.context:,}" if plan.context else "?", plan.arch_from)
    console.print(models)

    data = Table(title="data")
    for column in ("what", "count", "token budget"):
        data.add_column(column)
    for row in data_rows(cfg):
        data.add_row(*row)
    console.print(data)

    memory = Table(title=f"memory per GPU, GiB (estimate; {gpu_name})")
    memory.add_column("stage")
    memory.add_column("term")
    for w in worlds:
        memory.add_column(f"{w} GPU{'s' if w > 1 else ''}", justify="right")
    memory.add_column("note")
    for row in memory_rows(cfg, student, teacher, gpu_bytes, worlds):
        cells = []
        for value in row.per_world:
            if value is None:
                cells.append("?")
            elif row.term == "total" and value > gpu_bytes:
                cells.append(f"[red]{value / GiB:.1f}[/red]")
            else:
                cells.append(f"{value / GiB:.1f}")
        style = "bold" if row.term == "total" else None
        memory.add_row(row.stage, row.term, *cells, row.note, style=style)
    console.print(memory)

    found = checks(cfg, student, teacher)
    for line in found:
        console.print(f"[yellow]check:[/yellow] {line}")
    if not found:
        console.print("checks: nothing found")
