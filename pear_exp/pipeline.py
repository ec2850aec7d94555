"""The pipeline: the stages in order, each reading the previous stage's artifact from the run
directory and writing its own (each stage's whole job is in pear_exp/stages/<stage>.py).

    <run_dir>/behavior/data, meta.json, DONE      offline data with behavior log-probs (a copy
                                                  of <cache_dir>/behavior/<key> when reused)
    <run_dir>/sft/model/, checkpoints/, DONE      the SFT checkpoint (save_pretrained)
    <run_dir>/sft/step-<k>/model/                 the model after SFT step k (sft.keep_steps)
    <run_dir>/rl/model/, checkpoints/, DONE       GRPO from the SFT checkpoint
    <run_dir>/rl/from-step-<k>/model/, ..., DONE  the same GRPO from the model after SFT step k
    <run_dir>/evaluate/<checkpoint>/results.json, problems.jsonl; evaluate/DONE
    <run_dir>/evaluate/rl_task/<checkpoint>/...   the same on the RL task (shifted-task RL)
    <run_dir>/metrics.jsonl, summary.json, config.yaml

A stage whose DONE marker exists is skipped, and an unfinished SFT or RL stage resumes from its
latest checkpoint (checkpoints/step-N, written atomically), so re-running the same command on the
same run directory continues where it stopped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import datasets
import torch
from rich.console import Console

from pear_exp import tiny
from pear_exp.config import Config, Stage
from pear_exp.files import done, mark_done
from pear_exp.stages import behavior, evaluate, rl, sft
from pear_exp.tasks import make_task, split
from pear_exp.tracking import NullTracker, Tracker
from pear_exp.train.distributed import World

console = Console()


def run(cfg: Config, run_dir: Path, resolved_config: dict, choices: dict[str, str],
        world: World | None = None, group: str | None = None) -> dict:
    """Run cfg.stages in order under run_dir, logged to the W&B group `group`; returns the
    evaluation results.

    With several processes (pear_exp/train/distributed.py) every rank calls this: SFT and RL
    train on all ranks, the other stages run on rank 0 while the rest wait."""
    world = world or World()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    datasets.disable_progress_bars()  # our own bars cover the long work
    run_dir.mkdir(parents=True, exist_ok=True)
    task = make_task(cfg.task, cfg.cache_dir)
    train_problems, eval_problems = split(cfg.task, cfg.cache_dir)
    rl_task, rl_train, rl_eval = task, train_problems, eval_problems
    if cfg.rl_task is not None:  # shifted-task RL: GRPO's prompts, rewards and checks
        rl_task = make_task(cfg.rl_task, cfg.cache_dir)
        rl_train, rl_eval = split(cfg.rl_task, cfg.cache_dir)
    student = lambda: tiny.resolve_path(cfg.model, cfg.task, cfg.cache_dir)  # noqa: E731
    tracker = NullTracker()
    if world.is_main:
        tracker = Tracker(
            cfg.logger, run_dir, resolved_config, name=run_dir.name, group=group,
            tags=[f"{k}={v}" for k, v in choices.items()] + [f"seed={cfg.seed}"],
        )

    def pending(stage: Stage) -> bool:  # decided by rank 0, so every rank takes the same path
        return world.broadcast(stage in cfg.stages and not done(run_dir / stage.value))

    results: dict = {}
    try:
        if pending(Stage.behavior):
            if world.is_main:
                behavior.run(cfg, run_dir / "behavior", train_problems, eval_problems, task)
                mark_done(run_dir / "behavior")
            world.barrier()
        if pending(Stage.sft):
            if not done(run_dir / "behavior"):
                raise FileNotFoundError(f"sft needs the behavior stage's data in {run_dir}/behavior")
            sft.run(cfg, run_dir / "sft", run_dir / "behavior", tracker, world)
            if world.is_main:
                mark_done(run_dir / "sft")
        kept = cfg.sft.keep_steps if done(run_dir / "sft") else []
        if pending(Stage.rl):
            start = str(run_dir / "sft" / "model") if done(run_dir / "sft") else student()
            rl.run(cfg, run_dir / "rl", start, rl_train, rl_eval, rl_task, tracker, world)
            for k in kept:  # the identical RL from each kept SFT model
                out = rl.from_kept(run_dir / "rl", k)
                kept_start = sft.kept_model(run_dir / "sft", k)
                if not kept_start.exists():
                    raise FileNotFoundError(
                        f"no model kept after SFT step {k} in {run_dir / 'sft'}: sft.keep_steps "
                        "was set after the SFT stage ran; use a new run directory")
                if not world.broadcast(done(out)):
                    rl.run(cfg, out, str(kept_start), rl_train, rl_eval, rl_task, tracker,
                           world, name=f"rl@{k}")
                    if world.is_main:
                        mark_done(out)
            if world.is_main:
                mark_done(run_dir / "rl")
        if Stage.evaluate in cfg.stages and world.is_main:
            checkpoints = {"base": student()}
            for stage in ("sft", "rl"):
                if done(run_dir / stage):
                    checkpoints[stage] = str(run_dir / stage / "model")
            for k in kept:  # labels sft@k, rl@k
                checkpoints[f"sft@{k}"] = str(sft.kept_model(run_dir / "sft", k))
                if done(rl.from_kept(run_dir / "rl", k)):
                    checkpoints[f"rl@{k}"] = str(rl.from_kept(run_dir / "rl", k) / "model")
            results = evaluate.run(cfg, cfg.task, run_dir / "evaluate", eval_problems, task,
                                   tracker, checkpoints,
                                   teacher_data=run_dir / "behavior" / behavior.HELD_OUT / "data")
            if cfg.rl_task is not None:  # every checkpoint on the RL task too: <name>/<metric>
                name = cfg.rl_task.name
                shifted = evaluate.run(cfg, cfg.rl_task, run_dir / "evaluate" / "rl_task",
                                       rl_eval, rl_task, tracker, checkpoints)
                for label, summary in shifted.items():
                    results[label].update({f"{name}/{k}": v for k, v in summary.items()})
            (run_dir / "summary.json").write_text(json.dumps(results, indent=2))
        world.barrier()
    finally:
        tracker.finish()
    if results:
        evaluate.print_summary(results, cfg.evaluate.num_samples, console, cfg.task.name)
        if cfg.rl_task is not None:
            evaluate.print_summary(results, cfg.evaluate.num_samples, console, cfg.rl_task.name,
                                   prefix=f"{cfg.rl_task.name}/")
    if world.is_main:
        console.print(f"run directory: {run_dir}")
    return results
