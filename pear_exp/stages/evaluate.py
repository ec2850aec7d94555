"""Evaluate stage: n sampled responses per held-out problem, scored by the task's verifier.

Reports per checkpoint: avg@n (pass@1 as the mean over n samples), the unbiased pass@k for
k = 1, 2, 4, ... <= n (`metrics.pass_at_k`, not "best of the first k"), maj@k (the most frequent
extracted answer among the first k samples is correct; ties go to the earliest), each with a 95%
interval over problems, greedy accuracy, and the fraction of responses with no answer at all
(counted apart from wrong answers). Every checkpoint is evaluated with the same sampling
settings and seed, and every problem must get exactly n samples. A response that hits
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


def outcomes(task, problems: list[Problem], completions: list[Completion],
             texts: list[str]) -> list[str]:
    """"correct" | "wrong" | "no_answer" | "timeout" | "truncated" for each decoded response."""
    if hasattr(task, "classify_many"):  # math: one batch through the grading workers
        labels = task.classify_many(problems, texts)
    else:
        labels = ["correct" if task.score(p, t) == 1.0
                  else "no_answer" if task.extract(t) is None else "wrong"
                  for p, t in zip(problems, texts)]
    return ["truncated" if c.finish_reason != "stop" else label
            for c, label in zip(completions, labels)]


def majority_correct(answers: list[str | None], correct: list[bool]) -> bool:
    """Is the most frequent non-empty answer (earliest on ties) a correct one?"""
    counts: dict[str, int] = {}
    for a in answers:
        if a is not None:
            counts[a] = counts.get(a, 0) + 1
    if not counts:
        return False
    best = max(counts, key=lambda a: (counts[a], -answers.index(a)))
    return correct[answers.index(best)]


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
    n = cfg.num_samples
    for problem, samples in zip(problems, sampled):
        if len(samples) != n:
            raise RuntimeError(f"problem {problem.id} got {len(samples)} samples, expected {n}")
    flat = [c for samples in sampled for c in samples]
    decode = lambda cs: [tokenizer.decode(c.token_ids, skip_special_tokens=True) for c in cs]  # noqa: E731
    texts = decode(flat)
    labels = outcomes(task, [p for p in problems for _ in range(n)], flat, texts)
    greedy_labels = None
    if greedy:
        firsts = [g[0] for g in greedy]
        greedy_labels = outcomes(task, problems, firsts, decode(firsts))
    rows = []
    for i, problem in enumerate(problems):
        mine = labels[i * n : (i + 1) * n]
        answers = [task.extract(t) for t in texts[i * n : (i + 1) * n]]
        ok = [label == "correct" for label in mine]
        row = {"problem_id": problem.id, "n": n, "correct": sum(ok),
               "no_answer": sum(label in ("no_answer", "truncated") for label in mine),
               "maj": {k: majority_correct(answers[:k], ok[:k]) for k in ks_up_to(n)},
               "mean_length": sum(len(c.token_ids) for c in sampled[i]) / n,
               "sample": texts[i * n]}
        if greedy_labels is not None:
            row["greedy_correct"] = float(greedy_labels[i] == "correct")
        rows.append(row)
    summary: dict[str, float] = {}
    for k in ks_up_to(n):
        mean, ci = mean_ci95([pass_at_k(r["n"], r["correct"], k) for r in rows])
        summary[f"pass@{k}"], summary[f"pass@{k}_ci95"] = mean, ci
        mean, ci = mean_ci95([float(r["maj"][k]) for r in rows])
        summary[f"maj@{k}"], summary[f"maj@{k}_ci95"] = mean, ci
    summary["no_answer_frac"] = sum(r["no_answer"] for r in rows) / max(n * len(rows), 1)
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
