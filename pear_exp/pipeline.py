"""The pipeline: stages in order, each reading the previous stage's artifact from the run directory.

    <run_dir>/behavior/data, meta.json, DONE      offline data with behavior log-probs (a copy
                                                  of <cache_dir>/behavior/<key> when reused)
    <run_dir>/sft/model/, checkpoints/, DONE      the SFT checkpoint (save_pretrained)
    <run_dir>/rl/model/, checkpoints/, DONE       GRPO from the SFT checkpoint
    <run_dir>/evaluate/<checkpoint>/results.json, problems.jsonl; evaluate/DONE
    <run_dir>/metrics.jsonl, summary.json, config.yaml

A stage whose DONE marker exists is skipped, and an unfinished SFT or RL stage resumes from its
latest checkpoint (checkpoints/step-N, written atomically), so re-running the same command on the
same run directory continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from contextlib import closing
from pathlib import Path

import datasets
import torch
from datasets import load_from_disk
from rich.console import Console
from rich.table import Table

from pear_exp import models
from pear_exp.config import BehaviorSource, Config, Engine, EvalConfig, ParallelStrategy, Stage
from pear_exp.distributed import World
from pear_exp.rollout import RolloutEngine
from pear_exp.rollout.hf import HFEngine
from pear_exp.stages import behavior, evaluate, rl, sft
from pear_exp.tasks import make_task, split
from pear_exp.tracking import NullTracker, Tracker

console = Console()


def done(stage_dir: Path) -> bool:
    return (stage_dir / "DONE").exists()


def mark_done(stage_dir: Path) -> None:
    (stage_dir / "DONE").write_text(time.strftime("%Y-%m-%d %H:%M:%S\n"))


def make_engine(cfg: Config, path: str, tokenizer, model=None, *,
                policy: bool = True) -> RolloutEngine:
    """The configured rollout engine serving the checkpoint at `path` (or `model`, for hf):
    the student's (`policy`) or the teacher's, each at its own tensor parallelism."""
    if cfg.rollout.engine == Engine.hf:
        if model is None:
            model = models.load_model(path, cfg.model.dtype, cfg.model.trust_remote_code)
        return HFEngine(model, tokenizer, cfg.rollout.batch_size)
    from pear_exp.rollout.vllm import VLLMEngine

    r = cfg.rollout
    return VLLMEngine(path, tokenizer,
                      tensor_parallel_size=r.engine_tensor_parallel(policy),
                      gpu_memory_utilization=r.gpu_memory_utilization, dtype=r.dtype,
                      max_model_len=r.max_model_len, enable_sleep_mode=r.enable_sleep_mode,
                      seed=cfg.seed)


def student_path(cfg: Config) -> str:
    return models.resolve_path(cfg.model, cfg.task, cfg.cache_dir)


def behavior_key(cfg: Config) -> str:
    """A hash of what determines the behavior data: teacher, student (its tokenizer and chat
    template build the ids), task, behavior settings, rollout settings and seed."""
    parts = [cfg.teacher, cfg.model, cfg.task, cfg.behavior, cfg.rollout, cfg.seed]
    text = json.dumps([dataclasses.asdict(p) if dataclasses.is_dataclass(p) else p
                       for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def run_behavior_shared(cfg: Config, out: Path, train_problems, eval_problems, task) -> None:
    """run_behavior, or a copy of the same data sampled earlier by another run (behavior.reuse):
    a weighting sweep samples its teacher once per seed, not once per weighting. The shared copy
    is written whole and renamed into place, so a killed or concurrent job never leaves half."""
    if not cfg.behavior.reuse:
        return run_behavior(cfg, out, train_problems, eval_problems, task)
    shared = Path(cfg.cache_dir).expanduser() / "behavior" / f"{cfg.teacher.name}-{behavior_key(cfg)}"
    if done(shared):
        console.print(f"behavior: reusing the data sampled earlier in {shared}")
    else:
        tmp = shared.with_name(f".tmp-{shared.name}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        run_behavior(cfg, tmp, train_problems, eval_problems, task)
        mark_done(tmp)
        try:
            os.rename(tmp, shared)
        except OSError:  # another job finished the same data first: theirs is identical
            shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(shared, out, dirs_exist_ok=True)


def run_behavior(cfg: Config, out: Path, train_problems, eval_problems, task) -> None:
    teacher_path = models.resolve_path(cfg.teacher, cfg.task, cfg.cache_dir)
    teacher_tok = models.load_tokenizer(teacher_path, cfg.teacher)
    student_tok = models.load_tokenizer(student_path(cfg), cfg.model)
    out.mkdir(parents=True, exist_ok=True)
    b, system = cfg.behavior, cfg.task.system_prompt
    if b.source == BehaviorSource.teacher:
        teacher = None
        if cfg.rollout.engine == Engine.hf:
            teacher = models.load_model(teacher_path, cfg.teacher.dtype, cfg.teacher.trust_remote_code)
        with closing(make_engine(cfg, teacher_path, teacher_tok, teacher,
                                 policy=False)) as engine:
            rows, stats = behavior.sample_from_teacher(engine, teacher_tok, student_tok,
                                                       train_problems, task, b, system, cfg.seed)
    else:
        if not b.dataset:
            raise behavior.DataError("behavior.source=dataset needs behavior.dataset=<JSONL or id>")
        teacher = models.load_model(teacher_path, cfg.teacher.dtype, cfg.teacher.trust_remote_code)
        rows, stats = behavior.score_dataset(teacher, teacher_tok, student_tok, b.dataset, b,
                                             cfg.rollout.batch_size, system,
                                             eval_problems=eval_problems)
    _, meta = behavior.finish(rows, stats, b, cfg.teacher.name, out)
    console.print(f"behavior: kept {meta['kept']} of {meta['samples']} examples"
                  + (f" (teacher accuracy {meta['teacher_accuracy']:.3f})"
                     if "teacher_accuracy" in meta else "")
                  + (f" (removed {meta['eval_removed']} rows that hold evaluation problems)"
                     if "eval_removed" in meta else ""))


def save_trained(world: World, path: Path, model, tokenizer) -> None:
    """save_pretrained of a trained model by rank 0; under FSDP every rank first helps gather it."""
    state = None
    if world.distributed and world.strategy == ParallelStrategy.fsdp:
        state = world.full_state(model)[0]
        names = {}  # gathered copies of tied weights (lm_head = embeddings) are saved once
        for name, param in model.named_parameters(remove_duplicate=False):
            if names.setdefault(id(param), name) != name:
                state.pop(name, None)
    if world.is_main:
        models.save_dir(path, model, tokenizer, state_dict=state)
    world.barrier()


def run_sft(cfg: Config, out: Path, behavior_dir: Path, tracker: Tracker, world: World) -> None:
    path = student_path(cfg)
    model = models.load_model(path, cfg.model.dtype, cfg.model.trust_remote_code)
    tokenizer = models.load_tokenizer(path, cfg.model)
    data = load_from_disk(str(behavior_dir / "data"))
    behavior.validate_rows(data, tokenizer, cfg.task.system_prompt, cfg.sft.max_seq_len,
                           name=str(behavior_dir / "data"))
    rows = data.select_columns(["input_ids", "loss_mask", "behavior_logprobs"]).to_list()
    sft.train_sft(model, rows, cfg.sft, cfg.weighting, pad_id=tokenizer.pad_token_id,
                  seed=cfg.seed, log=lambda m, step: tracker.log("sft", m, step),
                  checkpoint_dir=out / "checkpoints", world=world)
    save_trained(world, out / "model", model, tokenizer)


def run_rl(cfg: Config, out: Path, start: str, train_problems, eval_problems, task,
           tracker: Tracker, world: World) -> None:
    load = lambda: models.load_model(start, cfg.model.dtype, cfg.model.trust_remote_code)  # noqa: E731
    model = load()
    tokenizer = models.load_tokenizer(start, cfg.model)
    engine = engine_model = None
    if world.is_main:  # rank 0 samples; under FSDP from an unsharded copy of the policy
        sharded = world.distributed and world.strategy == ParallelStrategy.fsdp
        engine_model = load() if sharded else model
        engine = make_engine(cfg, start, tokenizer, engine_model)
    held_out = eval_problems[: cfg.rl.eval_problems]
    quick = EvalConfig(num_samples=4, temperature=cfg.rl.temperature, top_p=cfg.rl.top_p,
                       max_new_tokens=cfg.rl.max_new_tokens, greedy=True)

    def evaluate_now(step: int) -> dict:
        summary, _ = evaluate.evaluate_model(engine, tokenizer, held_out, task, quick,
                                             system_prompt=cfg.task.system_prompt,
                                             seed=cfg.seed, label=f"rl step {step}")
        metrics = {k: summary[k] for k in ("greedy", "pass@1", "pass@4")}
        tracker.log("rl_eval", metrics, step)
        return metrics

    reference = None
    if cfg.rl.kl_coef > 0:  # the SFT policy, also when resuming from a later checkpoint
        reference = models.load_model(start, cfg.model.dtype, cfg.model.trust_remote_code)
    try:
        rl.train_grpo(model, tokenizer, engine, train_problems, task, cfg.rl, seed=cfg.seed,
                      system_prompt=cfg.task.system_prompt,
                      sync_tolerance=cfg.rollout.sync_tolerance,
                      log=lambda m, step: tracker.log("rl", m, step), evaluate=evaluate_now,
                      log_samples=lambda rows, step: tracker.table(f"rl/samples_step_{step}", rows),
                      checkpoint_dir=out / "checkpoints", reference=reference, world=world,
                      engine_model=engine_model)
    finally:  # its memory back before saving and evaluating, also when RL stops
        if engine is not None:
            engine.close()
    save_trained(world, out / "model", model, tokenizer)


def run_evaluate(cfg: Config, out: Path, eval_problems, task, tracker: Tracker,
                 checkpoints: dict[str, str]) -> dict[str, dict]:
    results = {}
    for label, path in checkpoints.items():
        target = out / label
        if (target / "results.json").exists():
            results[label] = json.loads((target / "results.json").read_text())
            continue
        tokenizer = models.load_tokenizer(path, cfg.model)
        with closing(make_engine(cfg, path, tokenizer)) as engine:  # one engine per checkpoint
            summary, rows = evaluate.evaluate_model(
                engine, tokenizer, eval_problems, task, cfg.evaluate,
                system_prompt=cfg.task.system_prompt, seed=cfg.seed, label=label,
            )
        evaluate.save(summary, rows, target)
        tracker.summary({f"eval/{cfg.task.name}/{label}/{k}": v for k, v in summary.items()})
        tracker.table(f"eval/{cfg.task.name}/{label}/problems", rows)
        results[label] = summary
    ks = evaluate.ks_up_to(cfg.evaluate.num_samples)
    tracker.line_plot(f"eval/{cfg.task.name}/pass@k", ks,
                      {label: [s[f"pass@{k}"] for k in ks] for label, s in results.items()}, "k")
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


def run(cfg: Config, run_dir: Path, resolved_config: dict, choices: dict[str, str],
        world: World | None = None) -> dict:
    """Run cfg.stages in order under run_dir; returns the evaluation results.

    With several processes (pear_exp/distributed.py) every rank calls this: SFT and RL train on
    all ranks, the other stages run on rank 0 while the rest wait."""
    world = world or World()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    datasets.disable_progress_bars()  # our own bars cover the long work
    run_dir.mkdir(parents=True, exist_ok=True)
    task = make_task(cfg.task)
    train_problems, eval_problems = split(cfg.task)
    tracker = NullTracker()
    if world.is_main:
        tracker = Tracker(
            cfg.logger, run_dir, resolved_config, name=run_dir.name, group=cfg.experiment,
            tags=[f"{k}={v}" for k, v in choices.items()] + [f"seed={cfg.seed}"],
        )

    def pending(stage: Stage) -> bool:  # decided by rank 0, so every rank takes the same path
        return world.broadcast(stage in cfg.stages and not done(run_dir / stage.value))

    results: dict = {}
    try:
        if pending(Stage.behavior):
            if world.is_main:
                run_behavior_shared(cfg, run_dir / "behavior", train_problems, eval_problems,
                                    task)
                mark_done(run_dir / "behavior")
            world.barrier()
        if pending(Stage.sft):
            if not done(run_dir / "behavior"):
                raise FileNotFoundError(f"sft needs the behavior stage's data in {run_dir}/behavior")
            run_sft(cfg, run_dir / "sft", run_dir / "behavior", tracker, world)
            if world.is_main:
                mark_done(run_dir / "sft")
        if pending(Stage.rl):
            start = str(run_dir / "sft" / "model") if done(run_dir / "sft") else student_path(cfg)
            run_rl(cfg, run_dir / "rl", start, train_problems, eval_problems, task, tracker, world)
            if world.is_main:
                mark_done(run_dir / "rl")
        if Stage.evaluate in cfg.stages and world.is_main:
            checkpoints = {"base": student_path(cfg)}
            for stage in ("sft", "rl"):
                if done(run_dir / stage):
                    checkpoints[stage] = str(run_dir / stage / "model")
            results = run_evaluate(cfg, run_dir / "evaluate", eval_problems, task, tracker,
                                   checkpoints)
            (run_dir / "summary.json").write_text(json.dumps(results, indent=2))
        world.barrier()
    finally:
        tracker.finish()
    if results:
        print_summary(results, cfg.evaluate.num_samples)
    if world.is_main:
        console.print(f"run directory: {run_dir}")
    return results
