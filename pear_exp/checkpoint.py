"""Atomic training checkpoints: model, optimizer, scheduler, RNG states and the step.

A checkpoint is written to a temporary directory and renamed to `step-<N>` (a rename is atomic),
so every `step-*` directory is complete: a kill -9 at any moment leaves the last finished one
loadable. Older checkpoints are removed only after the new one is in place. The data position
is the step itself: the stages rebuild their seeded data streams and skip the consumed part.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model


def latest(directory: Path) -> Path | None:
    steps = [p for p in directory.glob("step-*") if p.name[5:].isdigit()]
    return max(steps, key=lambda p: int(p.name[5:]), default=None)


def save(directory: Path, step: int, model, optimizer, scheduler) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".tmp-step-{step}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_model(model, str(tmp / "model.safetensors"))  # handles tied weights
    torch.save({
        "step": step,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "torch_rng": torch.random.get_rng_state(),
        "python_rng": random.getstate(),
    }, tmp / "state.pt")
    final = directory / f"step-{step}"
    shutil.rmtree(final, ignore_errors=True)
    os.rename(tmp, final)
    for old in directory.glob("step-*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load(directory: Path, model, optimizer, scheduler) -> int:
    """Restore the latest checkpoint into the given objects; returns its step (0: none)."""
    path = latest(directory)
    if path is None:
        return 0
    load_model(model, str(path / "model.safetensors"))
    state = torch.load(path / "state.pt", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.random.set_rng_state(state["torch_rng"])
    random.setstate(state["python_rng"])
    print(f"[pear_exp] resuming from {path}")
    return state["step"]
