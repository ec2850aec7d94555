"""Experiment tracking behind one small interface: metrics.jsonl always, W&B when enabled.

W&B mode `auto` goes online only when an API key is configured (WANDB_API_KEY or a netrc entry)
and is offline otherwise, so no run ever waits on the network; offline runs are uploaded later
with `wandb sync <run_dir>/wandb/offline-run-*`.
"""

from __future__ import annotations

import json
import netrc
import os
from pathlib import Path

from pear_exp.config import LoggerBackend, LoggerConfig, WandbMode


def _api_key_configured() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        hosts = netrc.netrc().hosts
    except (FileNotFoundError, netrc.NetrcParseError):
        return False
    return any("wandb" in host for host in hosts)


class Tracker:
    def __init__(self, cfg: LoggerConfig, run_dir: Path, config: dict, *, name: str,
                 group: str | None, tags: list[str]):
        self.path = run_dir / "metrics.jsonl"
        self.run = None
        if cfg.backend == LoggerBackend.wandb:
            import wandb

            mode = cfg.mode.value
            if cfg.mode == WandbMode.auto:
                mode = "online" if _api_key_configured() else "offline"
                if mode == "offline":
                    print("[pear_exp] W&B: no API key configured, logging offline to "
                          f"{run_dir / 'wandb'} (upload later with `wandb sync`)")
            self.run = wandb.init(project=cfg.project, entity=cfg.entity, dir=str(run_dir),
                                  mode=mode, config=config, name=name, group=group, tags=tags,
                                  settings=wandb.Settings(quiet=True))

    def log(self, stage: str, metrics: dict, step: int) -> None:
        """Metrics namespaced by stage (sft/loss, ...) on that stage's own step axis."""
        record = {f"{stage}/{k}": v for k, v in metrics.items()}
        with self.path.open("a") as f:
            f.write(json.dumps({"stage": stage, "step": step, **record}) + "\n")
        if self.run is not None:
            self.run.define_metric(f"{stage}/*", step_metric=f"{stage}/step")
            self.run.log({**record, f"{stage}/step": step})

    def summary(self, values: dict) -> None:
        if self.run is not None:
            self.run.summary.update(values)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
