"""Before a run writes anything: every hub id its stages will load (model.path, teacher.path,
task.train_set, task.eval_set, behavior.dataset) is looked up in the local cache or, online,
fetched in its smallest part (config.json / the dataset's card), so that a machine without hub
access gets one message naming each key and the override to a local copy (errors.SourceUnavailable).
"""

from __future__ import annotations

import logging
from pathlib import Path
from unittest import mock

import datasets
import huggingface_hub

from pear_exp.config import BehaviorSource, Stage, TaskKind
from pear_exp.errors import Missing, first_line, hub_keys
from pear_exp.files import done
from pear_exp.stages import behavior
from pear_exp.tasks.math import SHIPPED_SETS, looks_like_path  # the loader's own rules


def needed_hub_sources(cfg, run_dir: Path) -> list[tuple[str, str, str]]:
    """(key, hub id, "model" | "dataset") for every hub source the configured stages load."""
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
        for key in ("task.train_set", "task.eval_set"):
            value = hub_keys(cfg)[key]
            if value and value not in SHIPPED_SETS and not looks_like_path(value):
                out.append((key, value, "dataset"))
    return out


def _behavior_ready(cfg, run_dir: Path) -> bool:
    """Behavior data this run will not sample: done in run_dir, or shared by an earlier run
    (the copy stages.behavior.run reuses)."""
    shared = behavior.shared_dir(cfg)
    return done(run_dir / "behavior") or (cfg.behavior.reuse and done(shared))


def unavailable_sources(cfg, run_dir: Path) -> list[Missing]:
    """The needed hub sources that can be neither found in the local cache nor fetched.

    Each is looked up in the cache first; offline (HF_HUB_OFFLINE=1) that is all. Online the
    smallest part the load starts with is fetched (it is cached for the run); after one
    failure to reach the hub the rest are not tried (each try costs ~25 s of retries)."""
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
    try:
        if kind == "model":
            huggingface_hub.hf_hub_download(source, "config.json")
        else:
            datasets.load_dataset_builder(*_dataset_parts(source))
        return None, True
    except (huggingface_hub.errors.LocalEntryNotFoundError, ConnectionError):
        return "not in the local cache, and the hub cannot be reached", False
    except Exception as err:  # no such repository, gated, invalid id, ...
        return f"{type(err).__name__}: {first_line(err)}", True
