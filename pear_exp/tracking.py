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
    """One W&B run per pipeline run directory: its id is kept in <run_dir>/tracking.json, so a
    resumed pipeline continues the same W&B run."""

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
            ids = run_dir / "tracking.json"
            run_id = json.loads(ids.read_text())["wandb_run_id"] if ids.exists() else None
            self.run = wandb.init(project=cfg.project, entity=cfg.entity, dir=str(run_dir),
                                  mode=mode, config=config, name=name, group=group, tags=tags,
                                  id=run_id, resume="allow" if run_id else None,
                                  settings=wandb.Settings(quiet=True))
            ids.write_text(json.dumps({"wandb_run_id": self.run.id}))

    def log(self, stage: str, metrics: dict, step: int) -> None:
        """Metrics namespaced by stage (sft/loss, ...) on that stage's own step axis. Tensor
        values are logged as W&B histograms and left out of metrics.jsonl."""
        scalars = {f"{stage}/{k}": v for k, v in metrics.items() if not hasattr(v, "shape")}
        with self.path.open("a") as f:
            f.write(json.dumps({"stage": stage, "step": step, **scalars}) + "\n")
        if self.run is not None:
            import wandb

            hists = {f"{stage}/{k}": wandb.Histogram(v.float().cpu().numpy())
                     for k, v in metrics.items() if hasattr(v, "shape")}
            self.run.define_metric(f"{stage}/*", step_metric=f"{stage}/step")
            self.run.log({**scalars, **hists, f"{stage}/step": step})

    def table(self, key: str, rows: list[dict]) -> None:
        """A table of rows (per-problem results, sample rollouts) under `key`."""
        if self.run is not None and rows:
            import wandb

            columns = list(rows[0])
            self.run.log({key: wandb.Table(columns=columns,
                                           data=[[_cell(r[c]) for c in columns] for r in rows])})

    def line_plot(self, key: str, xs: list, series: dict[str, list], x_name: str) -> None:
        if self.run is not None:
            import wandb

            self.run.log({key: wandb.plot.line_series(
                xs=xs, ys=list(series.values()), keys=list(series), title=key, xname=x_name)})

    def summary(self, values: dict) -> None:
        if self.run is not None:
            self.run.summary.update(values)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()


def _cell(value):
    return value if isinstance(value, (int, float, str, bool)) or value is None else json.dumps(value)


class NullTracker:
    """What ranks other than 0 log to in multi-process runs: nothing (rank 0 records the run)."""

    def log(self, *args, **kwargs) -> None:
        pass

    table = line_plot = summary = finish = log
