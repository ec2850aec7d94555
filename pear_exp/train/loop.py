"""What the SFT and GRPO trainers share: the optimizer and its schedule, resuming, one optimizer
step (clip, finite check, step), the bf16 autocast, and the guard that stops on a nan / inf.

Each trainer keeps its own loop (pear_exp/train/sft.py, grpo.py); this module holds only the
parts that are the same in both, so that a change to one (say, the schedule) reaches both.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from pear_exp.config import Precision, RLConfig, SFTConfig
from pear_exp.errors import NonFiniteError
from pear_exp.policy import TokenLogProbs, decoder_layers
from pear_exp.train import checkpoint
from pear_exp.train.distributed import World, clip_grad_norm


def lr_lambda(warmup_steps: int, total_steps: int, min_ratio: float) -> Callable[[int], float]:
    """Linear warm-up to 1, then cosine decay to min_ratio at total_steps.

    Not transformers' get_cosine_with_min_lr_schedule_with_warmup: its warm-up starts from 0, so
    the first optimizer step there has learning rate 0 (a step whose gradient is spent for
    nothing); here step k of the warm-up runs at (k + 1) / warmup_steps."""

    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


@dataclass
class Loop:
    """A trainer's optimization state: the wrapped policy forward and what steps it."""

    model: torch.nn.Module  # the transformers model being trained (in place)
    policy: torch.nn.Module  # TokenLogProbs(model), wrapped by DDP / FSDP with several processes
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    start: int  # optimizer steps (SFT) or rollout batches (GRPO) already done: resumed from
    gradient_checkpointing: bool

    def step(self, grad_clip: float, guard: "FiniteGuard | None", loss: float,
             where: str = "") -> float:
        """Clip, check the loss and gradient norm are finite (values equal on every rank, so all
        ranks stop together), step the optimizer and the schedule; returns the gradient norm."""
        grad_norm = clip_grad_norm(self.params, grad_clip)
        if guard is not None:
            guard.check({"loss": loss, "gradient norm": grad_norm}, where)
        self.optimizer.step()
        self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def save(self, checkpoint_dir: Path, step: int, world: World) -> None:
        checkpoint.save(checkpoint_dir, step, self.policy, self.optimizer, self.schedule, world)

    def close(self) -> None:
        if self.gradient_checkpointing:
            self.model.gradient_checkpointing_disable()
        self.model.eval()


def start_loop(model, cfg: SFTConfig | RLConfig, world: World, *, total_steps: int,
               min_lr_ratio: float, checkpoint_dir: Path | None) -> Loop:
    """AdamW with linear warm-up then cosine to lr * min_lr_ratio over total_steps, around the
    model's log-prob forward (chunked at cfg.logprob_chunk_size), resumed from the latest
    checkpoint in checkpoint_dir if there is one (same optimizer, schedule and RNG states)."""
    if cfg.gradient_checkpointing:  # active in training mode only: generation is unaffected
        model.gradient_checkpointing_enable()
    policy = world.wrap(TokenLogProbs(model, cfg.logprob_chunk_size), decoder_layers(model))
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas),
                                  weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(cfg.warmup_steps, total_steps, min_lr_ratio))
    start = checkpoint.load(checkpoint_dir, policy, optimizer, schedule, world) if checkpoint_dir else 0
    return Loop(model, policy, params, optimizer, schedule, start, cfg.gradient_checkpointing)


# Precision.auto on a CPU: bf16 needs matrix units (AMX) and a model wide enough for its matrix
# products to outweigh the casts and the bf16 element-wise work that autocast adds. Measured
# (experiments/benchmarks, 2 Xeon cores with AMX; one SFT step of 64 Countdown rows): hidden 256
# runs 1.4x faster in bf16 than in fp32, hidden 128 (the tiny world) 0.9x; a CPU without bf16
# units runs its matrix products ~5x slower in bf16.
CPU_BF16_MIN_HIDDEN = 256


@functools.cache  # read once: GRPO resolves its precision at every update
def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return next((frozenset(line.split(":", 1)[1].split()) for line in f
                         if line.startswith("flags")), frozenset())
    except OSError:  # not Linux: no flags known, so no bf16 by default
        return frozenset()


def resolve_precision(precision: Precision, device: torch.device, hidden_size: int) -> Precision:
    """What Precision.auto means here: bf16 on a GPU that supports it, or on a CPU with bf16
    matrix units (the amx_bf16 flag) for a model of hidden size >= CPU_BF16_MIN_HIDDEN; fp32
    otherwise. fp32 and bf16 are returned as they are."""
    if precision != Precision.auto:
        return precision
    if device.type == "cuda":
        chosen = Precision.bf16 if torch.cuda.is_bf16_supported() else Precision.fp32
    elif (device.type == "cpu" and "amx_bf16" in cpu_flags()
          and hidden_size >= CPU_BF16_MIN_HIDDEN):
        chosen = Precision.bf16
    else:
        chosen = Precision.fp32
    return chosen


def autocast(device: torch.device, precision: Precision):
    """bf16 autocast for the forward pass (master weights stay as loaded), or nothing;
    `precision` resolved (resolve_precision)."""
    if precision == Precision.auto:
        raise ValueError("resolve Precision.auto first (resolve_precision)")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == Precision.bf16)


@dataclass(frozen=True)
class FiniteGuard:
    """Checks of one optimizer step of `stage` ("sft" / "rl"), numbered as its checkpoints."""

    stage: str
    step: int
    checkpoint_dir: Path | None = None

    def check(self, values: dict[str, float], where: str = "") -> None:
        """Stop at the first of `values` (in order) that is nan or +-inf; call it before the
        optimizer step, with values that are equal on every rank, so that all ranks stop."""
        for name, value in values.items():
            if not math.isfinite(value):
                others = ", ".join(f"{k} {v:.4g}" for k, v in values.items() if k != name)
                self.stop(f"{name} is {value}" + (f" ({others})" if others else ""), where)

    def check_weights(self, model: torch.nn.Module, world=None) -> None:
        """Stop if any weight of `model` is nan or inf (after the optimizer step, before a
        checkpoint). One fused norm over this rank's tensors (a nan or inf anywhere makes it
        non-finite; about 0.2% of a step, README), then one flag summed over the ranks, so that
        all stop together under DDP and FSDP alike. The parameter is looked up only then."""
        local = {name: p.detach().to_local() if hasattr(p, "to_local") else p.detach()
                 for name, p in model.named_parameters()}  # FSDP: this rank's shards
        bad = float(not math.isfinite(torch.nn.utils.get_total_norm(list(local.values())).item()))
        if world is not None:
            bad = world.sum([bad])[0]  # every rank takes the same decision
        if not bad:
            return
        for name, t in local.items():
            if not torch.isfinite(t).all():
                kind = "nan" if torch.isnan(t).any() else "inf"
                self.stop(f"weight {name} is {kind} after the optimizer step")
        self.stop("a weight on another rank is not finite after the optimizer step")

    def stop(self, what: str, where: str = "") -> None:
        text = f"{self.stage} step {self.step}{where}: {what}; no checkpoint written"
        if self.checkpoint_dir is not None:
            last = checkpoint.latest(self.checkpoint_dir)
            text += (f"; the last good checkpoint is {last} and the same command resumes from it"
                     if last else "; there is no earlier checkpoint: the same command restarts "
                     "the stage")
        raise NonFiniteError(text)
