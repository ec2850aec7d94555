"""RL stage: GRPO (pear_exp/train/grpo.py states the algorithm) from the SFT checkpoint, with a
held-out evaluation every rl.eval_every steps; the result goes to <run_dir>/rl/model.

Rank 0 holds the rollout engine; under FSDP it serves an unsharded copy of the policy that
receives the weights after every update. The engine's memory is given back before the
checkpoint is saved, also when RL stops early."""

from __future__ import annotations

from pathlib import Path

from pear_exp import models
from pear_exp.config import Config, EvalConfig, ParallelStrategy
from pear_exp.rollout import make_engine
from pear_exp.stages import evaluate
from pear_exp.tracking import Tracker
from pear_exp.train.checkpoint import save_model
from pear_exp.train.distributed import World
from pear_exp.train.grpo import train_grpo


def from_kept(rl_dir: Path, step: int) -> Path:
    """Where the RL run from the model kept after SFT step `step` (sft.keep_steps) goes."""
    return rl_dir / f"from-step-{step}"


def run(cfg: Config, out: Path, start: str, train_problems, eval_problems, task,
        tracker: Tracker, world: World, name: str = "rl") -> None:
    """GRPO from the checkpoint at `start` into `out`, logged as stage `name` (rl@k: the run
    from the model kept after SFT step k), on `task` (the RL task: cfg.rl_task_config)."""
    system_prompt = cfg.rl_task_config.system_prompt
    def load():
        return models.load_model(start, cfg.model.dtype, cfg.model.trust_remote_code)

    model = load()
    tokenizer = models.load_tokenizer(start, cfg.model)
    engine = engine_model = None
    if world.is_main:  # rank 0 samples; under FSDP from an unsharded copy of the policy
        sharded = world.distributed and world.strategy == ParallelStrategy.fsdp
        engine_model = load() if sharded else model
        engine = make_engine(cfg.rollout, start, tokenizer, model=engine_model, seed=cfg.seed)
    held_out = eval_problems[: cfg.rl.eval_problems]
    quick = EvalConfig(num_samples=4, temperature=cfg.rl.temperature, top_p=cfg.rl.top_p,
                       max_new_tokens=cfg.rl.max_new_tokens, greedy=True)

    def evaluate_now(step: int) -> dict:
        summary, _ = evaluate.evaluate_model(engine, tokenizer, held_out, task, quick,
                                             system_prompt=system_prompt,
                                             seed=cfg.seed, label=f"rl step {step}")
        metrics = {k: summary[k] for k in ("greedy", "pass@1", "pass@4")}
        tracker.log(f"{name}_eval", metrics, step)
        return metrics

    reference = load() if cfg.rl.kl_coef > 0 else None  # the SFT policy, also when resuming
    try:
        train_grpo(model, tokenizer, engine, train_problems, task, cfg.rl, seed=cfg.seed,
                   system_prompt=system_prompt, sync_tolerance=cfg.rollout.sync_tolerance,
                   log=lambda m, step: tracker.log(name, m, step), evaluate=evaluate_now,
                   log_samples=lambda rows, step: tracker.table(f"{name}/samples_step_{step}",
                                                                rows),
                   checkpoint_dir=out / "checkpoints", reference=reference, world=world,
                   engine_model=engine_model)
    finally:  # its memory back before saving and evaluating, also when RL stops
        if engine is not None:
            engine.close()
    save_model(world, out / "model", model, tokenizer)
