"""Atomic training checkpoints: model, optimizer, scheduler, RNG states and the step.

A checkpoint is written to a temporary directory and renamed to `step-<N>` (a rename is atomic),
so every `step-*` directory is complete: a kill -9 at any moment leaves the last finished one
loadable. Older checkpoints are removed only after the new one is in place. The data position
is the step itself: the stages rebuild their seeded data streams and skip the consumed part.

Model and optimizer states are stored unsharded and keyed by parameter name
(torch.distributed.checkpoint's full state dicts), so a run can resume with another number of
processes or another parallel strategy. Under several processes every rank takes part in
gathering the state (a collective) and rank 0 writes it. On resume every rank memory-maps the
file (torch.load(mmap=True)) rather than reading it: pages are read as the state is copied into
the model and optimizer, and the ranks of a node share them through the page cache instead of
each holding a private copy (48 GB a rank for the 4B preset).
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import torch

from pear_exp import models
from pear_exp.config import ParallelStrategy
from pear_exp.files import atomic_dir
from pear_exp.train.distributed import World


def latest(directory: Path) -> Path | None:
    steps = [p for p in directory.glob("step-*") if p.name[5:].isdigit()]
    return max(steps, key=lambda p: int(p.name[5:]), default=None)


def save(directory: Path, step: int, module, optimizer, scheduler, world: World) -> Path:
    model_state, optim_state = world.full_state(module, optimizer)
    final = directory / f"step-{step}"
    if world.is_main:
        with atomic_dir(final, replace=True) as tmp:
            torch.save({
                "step": step,
                "model": model_state,
                "optimizer": optim_state,
                "scheduler": scheduler.state_dict(),
                "torch_rng": torch.random.get_rng_state(),
                "python_rng": random.getstate(),
            }, tmp / "state.pt")
        for old in directory.glob("step-*"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    world.barrier()
    return final


def load(directory: Path, module, optimizer, scheduler, world: World) -> int:
    """Restore the latest checkpoint into the given objects; returns its step (0: none)."""
    path = world.broadcast(latest(directory))  # the same checkpoint on every rank
    if path is None:
        return 0
    # Mapped copy-on-write (MAP_PRIVATE): writes to restored tensors never reach the file.
    state = torch.load(path / "state.pt", weights_only=False, mmap=True)
    world.load_full_state(module, state["model"], optimizer, state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.random.set_rng_state(state["torch_rng"])
    random.setstate(state["python_rng"])
    if world.is_main:
        print(f"[pear_exp] resuming from {path}")
    return state["step"]


def save_model(world: World, path: Path, model, tokenizer) -> None:
    """save_pretrained of a trained model by rank 0; under FSDP every rank first helps gather it."""
    state = None
    if world.distributed and world.strategy == ParallelStrategy.fsdp:
        state = world.full_state(model)[0]
        for name in models.tied_duplicates(model):  # gathered copies of tied weights: saved once
            state.pop(name, None)
    if world.is_main:
        models.save_dir(path, model, tokenizer, state_dict=state)
    world.barrier()
