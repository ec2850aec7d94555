"""The pipeline: stages in order, each reading the previous stage's artifact from the run directory.

    <run_dir>/behavior/data, meta.json, DONE      offline data with behavior log-probs
    <run_dir>/sft/model/, DONE                    the SFT checkpoint (save_pretrained)
    <run_dir>/evaluate/<checkpoint>/results.json, problems.jsonl; evaluate/DONE
    <run_dir>/metrics.jsonl, summary.json, config.yaml

A stage whose DONE marker exists is skipped, so re-running the same command on the same run
directory continues after the last finished stage.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import datasets
import torch
from datasets import load_from_disk
from rich.console import Console
from rich.table import Table

from pear_exp import models
from pear_exp.config import Config, Stage
from pear_exp.stages import behavior, evaluate, sft
from pear_exp.tasks import make_task, split
from pear_exp.tracking import Tracker

console = Console()


def done(stage_dir: Path) -> bool:
    return (stage_dir / "DONE").exists()


def mark_done(stage_dir: Path) -> None:
    (stage_dir / "DONE").write_text(time.strftime("%Y-%m-%d %H:%M:%S\n"))


def run_behavior(cfg: Config, out: Path, train_problems, task) -> None:
    teacher, teacher_tok, _ = models.load(cfg.teacher, cfg.task, cfg.cache_dir)
    _, student_tok, _ = load_student(cfg, tokenizer_only=True)
    out.mkdir(parents=True, exist_ok=True)
    _, meta = behavior.run(
        teacher, teacher_tok, student_tok, train_problems, task, cfg.behavior,
        batch_size=cfg.rollout.batch_size, system_prompt=cfg.task.system_prompt,
        teacher_name=cfg.teacher.name, seed=cfg.seed, out_dir=out,
    )
    console.print(f"behavior: kept {meta['kept']} of {meta['samples']} teacher samples "
                  f"(teacher accuracy {meta.get('teacher_accuracy', float('nan')):.3f})")


def load_student(cfg: Config, tokenizer_only: bool = False):
    path = models.resolve_path(cfg.model, cfg.task, cfg.cache_dir)
    tokenizer = models.load_tokenizer(path, cfg.model.trust_remote_code)
    if tokenizer_only:
        return None, tokenizer, path
    return models.load_model(path, cfg.model.dtype, cfg.model.trust_remote_code), tokenizer, path


def run_sft(cfg: Config, out: Path, behavior_dir: Path, tracker: Tracker) -> None:
    model, tokenizer, _ = load_student(cfg)
    data = load_from_disk(str(behavior_dir / "data"))
    behavior.validate_rows(data, tokenizer, cfg.task.system_prompt, cfg.sft.max_seq_len,
                           name=str(behavior_dir / "data"))
    rows = data.select_columns(["input_ids", "loss_mask", "behavior_logprobs"]).to_list()
    sft.train_sft(model, rows, cfg.sft, cfg.weighting, pad_id=tokenizer.pad_token_id,
                  seed=cfg.seed, log=lambda m, step: tracker.log("sft", m, step))
    models.save_dir(out / "model", model, tokenizer)


def run_evaluate(cfg: Config, out: Path, eval_problems, task, tracker: Tracker,
                 checkpoints: dict[str, str]) -> dict[str, dict]:
    results = {}
    for label, path in checkpoints.items():
        target = out / label
        if (target / "results.json").exists():
            results[label] = json.loads((target / "results.json").read_text())
            continue
        model = models.load_model(path, cfg.model.dtype, cfg.model.trust_remote_code)
        tokenizer = models.load_tokenizer(path, cfg.model.trust_remote_code)
        summary, rows = evaluate.evaluate_model(
            model, tokenizer, eval_problems, task, cfg.evaluate,
            batch_size=cfg.rollout.batch_size, system_prompt=cfg.task.system_prompt,
            seed=cfg.seed, label=label,
        )
        evaluate.save(summary, rows, target)
        tracker.summary({f"eval/{cfg.task.name}/{label}/{k}": v for k, v in summary.items()})
        results[label] = summary
    return results


def print_summary(results: dict[str, dict], n: int) -> None:
    table = Table(title=f"held-out accuracy (n={n} samples per problem, 95% intervals)")
    table.add_column("checkpoint")
    columns = [c for c in ("greedy", "pass@1") if c in next(iter(results.values()))]
    columns += [f"pass@{k}" for k in evaluate.ks_up_to(n)[1:]]
    for c in columns:
        table.add_column(c, justify="right")
    for label, summary in results.items():
        table.add_row(label, *[f"{summary[c]:.3f} ± {summary[c + '_ci95']:.3f}" for c in columns])
    console.print(table)


def run(cfg: Config, run_dir: Path, resolved_config: dict, choices: dict[str, str]) -> dict:
    """Run cfg.stages in order under run_dir; returns the evaluation results."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    datasets.disable_progress_bars()  # our own bars cover the long work
    run_dir.mkdir(parents=True, exist_ok=True)
    task = make_task(cfg.task)
    train_problems, eval_problems = split(cfg.task)
    tracker = Tracker(
        cfg.logger, run_dir, resolved_config, name=run_dir.name, group=cfg.experiment,
        tags=[f"{k}={v}" for k, v in choices.items()] + [f"seed={cfg.seed}"],
    )
    results: dict = {}
    try:
        if Stage.behavior in cfg.stages and not done(run_dir / "behavior"):
            run_behavior(cfg, run_dir / "behavior", train_problems, task)
            mark_done(run_dir / "behavior")
        if Stage.sft in cfg.stages and not done(run_dir / "sft"):
            if not done(run_dir / "behavior"):
                raise FileNotFoundError(f"sft needs the behavior stage's data in {run_dir}/behavior")
            run_sft(cfg, run_dir / "sft", run_dir / "behavior", tracker)
            mark_done(run_dir / "sft")
        if Stage.evaluate in cfg.stages:
            checkpoints = {"base": load_student(cfg, tokenizer_only=True)[2]}
            if done(run_dir / "sft"):
                checkpoints["sft"] = str(run_dir / "sft" / "model")
            results = run_evaluate(cfg, run_dir / "evaluate", eval_problems, task, tracker,
                                   checkpoints)
            (run_dir / "summary.json").write_text(json.dumps(results, indent=2))
    finally:
        tracker.finish()
    if results:
        print_summary(results, cfg.evaluate.num_samples)
    console.print(f"run directory: {run_dir}")
    return results
