"""Multi-process training on torch.distributed: one process per device, started by torchrun.

    torchrun --standalone --nproc_per_node=8 -m pear_exp +experiment=aime_qwen3
    python -m pear_exp --multirun hydra/launcher=slurm hydra.launcher.tasks_per_node=8 ...

Every process runs the same pipeline. The SFT and RL updates run on every rank, each on its
shard of the optimizer step's sequences, through DDP (every rank holds the whole model and
optimizer) or FSDP2 (`fully_shard`: parameters, gradients and optimizer states sharded over the
ranks, for models whose training state does not fit on one device). Everything else runs on rank
0 alone: behavior sampling, RL rollouts (rank 0 holds the rollout engine and sends each batch to
the other ranks), evaluation, tracking and writing artifacts; the other ranks wait at a barrier.

The objective does not depend on the number of ranks: the losses are sums over sequences divided
by normalisers over the whole optimizer step (docs/method.md, Normalisation), DDP and FSDP
average gradients over the ranks, and the trainers multiply the averaged gradient back by the
world size. Tested on CPU with
the gloo backend (tests/test_distributed.py: 2 processes == 1 process); on CUDA the backend is
nccl and each process takes the GPU of its LOCAL_RANK.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions, get_model_state_dict, get_optimizer_state_dict, set_model_state_dict,
    set_optimizer_state_dict,
)

from pear_exp.config import DistributedConfig, ParallelStrategy
from pear_exp.models import default_device


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (a single process by default)."""

    rank: int = 0
    size: int = 1
    strategy: ParallelStrategy = ParallelStrategy.ddp
    device: torch.device = field(default_factory=default_device)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def shard(self, items: list) -> list:
        """This rank's share of `items`: every size-th item from position rank."""
        return items[self.rank :: self.size]

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of `values` over the ranks (float64)."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device)
        dist.all_reduce(t)
        return t.tolist()

    def broadcast(self, obj):
        """Rank 0's `obj` on every rank (pickled)."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self._comm_device)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    @property
    def _comm_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    # -- models -----------------------------------------------------------------------------

    def wrap(self, module: torch.nn.Module, layers: list[torch.nn.Module]) -> torch.nn.Module:
        """`module` ready for data-parallel training: DDP, or FSDP2 with one unit per entry of
        `layers` (the decoder layers) plus the root. A single process gets `module` itself."""
        if not self.distributed:
            return module
        if self.strategy == ParallelStrategy.ddp:
            ids = [self.device.index] if self.device.type == "cuda" else None
            return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids)
        from torch.distributed.fsdp import fully_shard

        for layer in layers:
            fully_shard(layer)
        fully_shard(module)
        return module

    def gradient_sync(self, module: torch.nn.Module, enabled: bool):
        """Context for one backward pass: with enabled=False (all but the last micro-batch of a
        step) gradients accumulate locally and are reduced once, by the last backward."""
        if isinstance(module, torch.nn.parallel.DistributedDataParallel) and not enabled:
            return module.no_sync()
        if hasattr(module, "set_requires_gradient_sync"):  # FSDP2
            module.set_requires_gradient_sync(enabled)
        return contextlib.nullcontext()

    def full_state(self, module: torch.nn.Module, optimizer=None) -> tuple[dict, dict | None]:
        """Unsharded model (and optimizer) state dicts on rank 0's CPU, keyed by parameter names
        (other ranks get empty dicts). A collective: every rank must call it."""
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_state = get_model_state_dict(module, options=options)
        optim_state = None
        if optimizer is not None:
            optim_state = get_optimizer_state_dict(module, optimizer, options=options)
        return model_state, optim_state

    def load_full_state(self, module: torch.nn.Module, model_state: dict, optimizer=None,
                        optim_state: dict | None = None) -> None:
        """Inverse of full_state (every rank passes the whole state)."""
        options = StateDictOptions(full_state_dict=True)
        set_model_state_dict(module, model_state, options=options)
        if optimizer is not None and optim_state is not None:
            set_optimizer_state_dict(module, optimizer, optim_state, options=options)


def init(cfg: DistributedConfig) -> World:
    """Join the process group that torchrun (or a SLURM job with several tasks) describes in the
    environment; a plain `python -m pear_exp` is a world of one."""
    _export_submitit_environment()
    size = int(os.environ.get("WORLD_SIZE", 1))
    if size == 1:
        return World(strategy=cfg.strategy)
    rank, device = int(os.environ["RANK"]), default_device()
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(minutes=cfg.timeout_minutes))
    return World(rank=rank, size=size, strategy=cfg.strategy, device=device)


def _export_submitit_environment() -> None:
    """Inside a submitit SLURM job with several tasks, set RANK / WORLD_SIZE / MASTER_ADDR ...
    the way torchrun would (submitit's own helper)."""
    if "WORLD_SIZE" in os.environ or "SUBMITIT_EXECUTOR" not in os.environ:
        return
    import submitit

    if submitit.JobEnvironment().num_tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def clip_grad_norm(params: list[torch.nn.Parameter], max_norm: float) -> float:
    """Clip the global gradient norm (over all shards under FSDP); returns the norm before."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    if hasattr(norm, "full_tensor"):  # a DTensor under FSDP
        norm = norm.full_tensor()
    return norm.item()
