"""Errors that stop a run with a short message (no traceback), and the guards that raise them.

- `FiniteGuard`: a non-finite loss, gradient norm or weight stops SFT / RL before the optimizer
  step (loss, gradient norm) or before anything is saved (weights, checked after every step):
  no checkpoint holds a nan, and the same command resumes from the last good one.
- `unavailable_sources`: before a run writes anything, every hub id its stages will load
  (model.path, teacher.path, task.train_set, task.eval_set, behavior.dataset) is looked up in
  the local cache or, online, fetched in its smallest part (config.json / the dataset's card), so
  a machine without hub access gets one message naming each key and the override to a local copy.

`python -m pear_exp` prints a `RunStopped` as `error: <message>` and exits with status 1.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import torch


class RunStopped(RuntimeError):
    """A run that cannot go on; the message says why and what to do."""


# ----------------------------------------------------------------------------- non-finite values
class NonFiniteError(RunStopped):
    pass


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
            from pear_exp.checkpoint import latest

            last = latest(self.checkpoint_dir)
            text += (f"; the last good checkpoint is {last} and the same command resumes from it"
                     if last else "; there is no earlier checkpoint: the same command restarts "
                     "the stage")
        raise NonFiniteError(text)


# ----------------------------------------------------------------------------- hub sources
@dataclass(frozen=True)
class Missing:
    key: str | None  # the config key that names the source (None: not found in the config)
    source: str  # hub id
    reason: str


# Where a local copy goes, per key: the override's value and what it must hold.
CHECKPOINT = "checkpoint directories with config.json, tokenizer, weights"
PROBLEMS = "JSONL files with problem and answer fields"
LOCAL_COPY = {
    "model.path": ("/path/to/{name}", CHECKPOINT),
    "teacher.path": ("/path/to/{name}", CHECKPOINT),
    "task.train_set": ("/path/to/train.jsonl", PROBLEMS),
    "task.eval_set": ("/path/to/eval.jsonl", PROBLEMS),
    "behavior.dataset": ("/path/to/data.jsonl", "a JSONL file with prompt and response fields"),
}


class SourceUnavailable(RunStopped):
    def __init__(self, missing: list[Missing]):
        self.missing = missing
        lines = ["could not fetch from the Hugging Face hub:"]
        lines += [f"  {m.key}={m.source}: {m.reason}" if m.key else f"  {m.source}: {m.reason}"
                  for m in missing]
        keyed = [m for m in missing if m.key in LOCAL_COPY]
        if keyed:
            kinds = dict.fromkeys(LOCAL_COPY[m.key][1] for m in keyed)
            lines.append(f"Point them at local copies ({'; '.join(kinds)}) by adding:")
            lines.append("  " + " ".join(
                f"{m.key}=" + LOCAL_COPY[m.key][0].format(name=m.source.rsplit("/", 1)[-1])
                for m in keyed))
        super().__init__("\n".join(lines))

    def __reduce__(self):  # pickled whole (a sweep job in another process, a broadcast)
        return SourceUnavailable, (self.missing,)

    def naming_keys(self, cfg) -> "SourceUnavailable":
        """The same error with each source's config key(s) found in `cfg` (a load deep in a stage
        knows the hub id, not which key named it)."""
        values = hub_keys(cfg)
        named = []
        for m in self.missing:
            keys = [k for k, v in values.items() if v == m.source] if m.key is None else [m.key]
            named += [Missing(k, m.source, m.reason) for k in keys] or [m]
        return SourceUnavailable(named)


def hub_keys(cfg) -> dict[str, str | None]:
    return {"model.path": cfg.model.path, "teacher.path": cfg.teacher.path,
            "task.train_set": cfg.task.train_set, "task.eval_set": cfg.task.eval_set,
            "behavior.dataset": cfg.behavior.dataset}


@contextlib.contextmanager
def fetching(source: str):
    """Around a from_pretrained of `source`: when it is not a local path, an OSError (not in the
    cache and no connection, no such repository, gated, a file missing) becomes
    SourceUnavailable."""
    try:
        yield
    except OSError as err:
        if Path(source).expanduser().exists():
            raise
        raise SourceUnavailable([Missing(None, source, _first_line(err))]) from err


def needed_hub_sources(cfg, run_dir: Path) -> list[tuple[str, str, str]]:
    """(key, hub id, "model" | "dataset") for every hub source the configured stages load."""
    from pear_exp.config import BehaviorSource, Stage, TaskKind

    out = []
    if cfg.model.path and not Path(cfg.model.path).expanduser().exists():
        out.append(("model.path", cfg.model.path, "model"))  # every stage loads the student
    if Stage.behavior in cfg.stages and not _behavior_ready(cfg, run_dir):
        if cfg.teacher.path and not Path(cfg.teacher.path).expanduser().exists():
            out.append(("teacher.path", cfg.teacher.path, "model"))
        b = cfg.behavior
        if b.source == BehaviorSource.dataset and b.dataset and not Path(b.dataset).exists():
            out.append(("behavior.dataset", b.dataset, "dataset"))
    if cfg.task.kind == TaskKind.math:  # every run loads both sets first (tasks.split)
        from pear_exp.tasks.math import SHIPPED_SETS, _looks_like_path  # the loader's own rules

        for key in ("task.train_set", "task.eval_set"):
            value = hub_keys(cfg)[key]
            if value and value not in SHIPPED_SETS and not _looks_like_path(value):
                out.append((key, value, "dataset"))
    return out


def _behavior_ready(cfg, run_dir: Path) -> bool:
    """Behavior data this run will not sample: done in run_dir, or shared by an earlier run
    (the path pipeline.run_behavior_shared reuses)."""
    from pear_exp.pipeline import behavior_key, done

    shared = (Path(cfg.cache_dir).expanduser() / "behavior"
              / f"{cfg.teacher.name}-{behavior_key(cfg)}")
    return done(run_dir / "behavior") or (cfg.behavior.reuse and done(shared))


def unavailable_sources(cfg, run_dir: Path) -> list[Missing]:
    """The needed hub sources that can be neither found in the local cache nor fetched.

    Each is looked up in the cache first; offline (HF_HUB_OFFLINE=1) that is all. Online the
    smallest part the load starts with is fetched (it is cached for the run); after one
    failure to reach the hub the rest are not tried (each try costs ~25 s of retries)."""
    import datasets
    import huggingface_hub

    missing, reachable = [], True
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)  # its retry warnings would bury the message
    try:
        for key, source, kind in needed_hub_sources(cfg, run_dir):
            if _cached(source, kind):
                continue
            offline = (huggingface_hub.constants.HF_HUB_OFFLINE if kind == "model"
                       else datasets.config.HF_HUB_OFFLINE)
            if offline or not reachable:
                missing.append(Missing(key, source, "not in the local cache, and "
                               + ("HF_HUB_OFFLINE=1" if offline else "the hub cannot be reached")))
                continue
            reason, reachable = _fetch(source, kind)
            if reason:
                missing.append(Missing(key, source, reason))
    finally:
        hub_logger.setLevel(level)
    return missing


def _dataset_parts(source: str) -> tuple[str, str | None]:
    repo = source.partition("@")[0]  # owner/name[:config][@split], as tasks.math._load_hub
    repo, _, config = repo.partition(":")
    return repo, config or None


def _cached(source: str, kind: str) -> bool:
    import datasets
    import huggingface_hub

    try:
        if kind == "model":
            return isinstance(huggingface_hub.try_to_load_from_cache(source, "config.json"), str)
        # datasets resolves a hub id from its own cache when offline: the same lookup, no network
        with mock.patch.object(datasets.config, "HF_HUB_OFFLINE", True):
            datasets.load_dataset_builder(*_dataset_parts(source))
        return True
    except Exception:
        return False


def _fetch(source: str, kind: str) -> tuple[str | None, bool]:
    """(None or why it failed, whether the hub answered)."""
    import datasets
    import huggingface_hub

    try:
        if kind == "model":
            huggingface_hub.hf_hub_download(source, "config.json")
        else:
            datasets.load_dataset_builder(*_dataset_parts(source))
        return None, True
    except (huggingface_hub.errors.LocalEntryNotFoundError, ConnectionError):
        return "not in the local cache, and the hub cannot be reached", False
    except Exception as err:  # no such repository, gated, invalid id, ...
        return f"{type(err).__name__}: {_first_line(err)}", True


def _first_line(err: BaseException, limit: int = 200) -> str:
    text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."
