"""Evaluate stage: n sampled responses per held-out problem, scored by the task's verifier.

Reports per checkpoint: avg@n (pass@1 as the mean over n samples), the unbiased pass@k for
k = 1, 2, 4, ... <= n, each with a 95% interval over problems, and greedy accuracy. Every
checkpoint is evaluated with the same sampling settings and the same seed. A response that hits
max_new_tokens without a stop token scores 0.
"""

from __future__ import annotations

import json
from pathlib import Path

from pear_exp.config import EvalConfig
from pear_exp.metrics import mean_ci95, pass_at_k
from pear_exp.models import end_of_turn_ids, prompt_ids
from pear_exp.rollout import Completion, RolloutEngine
from pear_exp.tasks.base import Problem


def grade(task, problem: Problem, completion: Completion, tokenizer) -> float:
    if completion.finish_reason != "stop":
        return 0.0
    return task.score(problem, tokenizer.decode(completion.token_ids, skip_special_tokens=True))


def ks_up_to(n: int) -> list[int]:
    ks, k = [], 1
    while k <= n:
        ks.append(k)
        k *= 2
    return ks


def evaluate_model(engine: RolloutEngine, tokenizer, problems: list[Problem], task,
                   cfg: EvalConfig, *, system_prompt: str | None, seed: int,
                   label: str) -> tuple[dict[str, float], list[dict]]:
    """(summary metrics, per-problem rows) for the checkpoint the engine serves."""
    prompts = [prompt_ids(tokenizer, p.prompt, system_prompt) for p in problems]
    stops = end_of_turn_ids(tokenizer)
    sampled = engine.generate(prompts, n=cfg.num_samples, temperature=cfg.temperature,
                              top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                              stop_token_ids=stops, seed=seed, desc=f"evaluate {label}")
    greedy = None
    if cfg.greedy:
        greedy = engine.generate(prompts, n=1, temperature=0.0, max_new_tokens=cfg.max_new_tokens,
                                 stop_token_ids=stops, desc=f"evaluate {label} greedy")
    rows = []
    for i, (problem, samples) in enumerate(zip(problems, sampled)):
        if len(samples) != cfg.num_samples:
            raise RuntimeError(f"problem {problem.id} got {len(samples)} samples, "
                               f"expected {cfg.num_samples}")
        correct = sum(grade(task, problem, c, tokenizer) == 1.0 for c in samples)
        row = {"problem_id": problem.id, "n": cfg.num_samples, "correct": correct,
               "mean_length": sum(len(c.token_ids) for c in samples) / len(samples),
               "sample": tokenizer.decode(samples[0].token_ids, skip_special_tokens=True)}
        if greedy is not None:
            row["greedy_correct"] = grade(task, problem, greedy[i][0], tokenizer)
        rows.append(row)
    summary: dict[str, float] = {}
    for k in ks_up_to(cfg.num_samples):
        mean, ci = mean_ci95([pass_at_k(r["n"], r["correct"], k) for r in rows])
        summary[f"pass@{k}"], summary[f"pass@{k}_ci95"] = mean, ci
    summary["avg@n"] = summary["pass@1"]
    if greedy is not None:
        summary["greedy"], summary["greedy_ci95"] = mean_ci95([r["greedy_correct"] for r in rows])
    summary["response_length"] = sum(r["mean_length"] for r in rows) / max(len(rows), 1)
    return summary, rows


def save(summary: dict, rows: list[dict], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(summary, indent=2))
    with (out_dir / "problems.jsonl").open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
