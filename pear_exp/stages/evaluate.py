"""Evaluate stage: n sampled responses per held-out problem, scored by the task's verifier.

Reports per checkpoint: avg@n (pass@1 as the mean over n samples), the unbiased pass@k for
k = 1, 2, 4, ... <= n (`metrics.pass_at_k`, not "best of the first k"), maj@k (a vote among
the first k samples that answered, equal answers together: `vote_groups`, `majority_correct`),
each with a 95% interval over problems, greedy accuracy, and the fraction of responses with no
answer at all (counted apart from wrong answers). Every checkpoint is evaluated with the same
sampling settings and seed, and every problem must get exactly n samples. A response that hits
max_new_tokens without a stop token scores 0.
"""

from __future__ import annotations

import json
from collections import Counter
from contextlib import closing
from pathlib import Path
from typing import Callable

import torch
from datasets import load_from_disk
from rich.console import Console
from rich.table import Table

from pear_exp import models
from pear_exp.config import BehaviorConfig, Config, Engine, EvalConfig, TaskConfig
from pear_exp.metrics import mean_ci95, pass_at_k
from pear_exp.models import end_of_turn_ids, prompt_ids
from pear_exp.rollout import Completion, RolloutEngine, grade_finished, make_engine
from pear_exp.stages.behavior import SCORE_TOKENS, score_with_model
from pear_exp.tasks.base import Problem
from pear_exp.tracking import Tracker


def outcomes(task, problems: list[Problem], completions: list[Completion],
             texts: list[str]) -> list[str]:
    """"correct" | "wrong" | "no_answer" | "timeout" | "truncated" for each decoded response
    (one batch through the task's grader: math grades on its worker pool)."""
    return grade_finished(task.classify_many, problems, completions, texts, cut_off="truncated")


ANSWERED = ("correct", "wrong")  # outcomes that vote in maj@k


def vote_groups(answers: list[str | None], labels: list[str],
                equivalent: Callable[[list[tuple[str, str]]], list[bool]] | None = None,
                ) -> list[int | None]:
    """maj@k's vote group of each sample of one problem: the index of the earliest sample holding
    the same answer; None for a sample that does not vote (truncated, timeout, no_answer).

    Same answer: identical extracted strings (the grader's notion for countdown and games) or,
    with `equivalent` (a batched check, math: math-verify on the grading workers), distinct
    strings it calls equal, grouped transitively. Only distinct wrong answers need the check:
    every correct answer equals the gold and so the others (one group), and a correct answer
    never equals a wrong one.
    """
    first: dict[str, int] = {}
    groups = [first.setdefault(a, i) if label in ANSWERED else None
              for i, (a, label) in enumerate(zip(answers, labels))]
    if equivalent is None:
        return groups
    reps = sorted({g for g in groups if g is not None})
    parent = {r: r for r in reps}  # union-find; a root is the earliest index of its group

    def root(r: int) -> int:
        while parent[r] != r:
            r = parent[r]
        return r

    def join(a: int, b: int) -> None:
        a, b = root(a), root(b)
        parent[max(a, b)] = min(a, b)

    right = [r for r in reps if labels[r] == "correct"]
    for r in right[1:]:
        join(right[0], r)
    wrong = [r for r in reps if labels[r] == "wrong"]
    pairs = [(a, b) for i, a in enumerate(wrong) for b in wrong[i + 1:]]
    for (a, b), same in zip(pairs, equivalent([(answers[a], answers[b]) for a, b in pairs])):
        if same:
            join(a, b)
    return [None if g is None else root(g) for g in groups]


def majority_correct(groups: list[int | None], labels: list[str]) -> bool:
    """maj@k over these samples (the first k): is the group with the most votes graded correct?

    `groups` from `vote_groups`; samples that did not answer have no vote, and no vote at all
    scores 0. Ties go to the group whose first member comes earliest (the smallest group index).
    """
    counts = Counter(g for g in groups if g is not None)
    if not counts:
        return False
    best = max(counts, key=lambda g: (counts[g], -g))
    return labels[best] == "correct"


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
        groups = vote_groups(answers, mine, getattr(task, "equivalent_many", None))
        row = {"problem_id": problem.id, "n": n, "correct": mine.count("correct"),
               "no_answer": sum(label in ("no_answer", "truncated") for label in mine),
               "maj": {k: majority_correct(groups[:k], mine) for k in ks_up_to(n)},
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
    # -log p of the sampled tokens under the distribution that sampled them, per token: a
    # Monte-Carlo estimate of the sampling policy's per-token entropy at evaluate.temperature
    # (what RL explores with); an SFT-time predictor in the sweep report
    tokens = sum(len(c.logprobs) for c in flat)
    summary["sample_nll"] = -sum(sum(c.logprobs) for c in flat) / max(tokens, 1)
    return summary, rows


@torch.no_grad()
def data_nll(model, rows: list[dict], pad_id: int, max_rows: int = 64,
             max_tokens: int = SCORE_TOKENS) -> float:
    """Mean -log pi(y_t) over the loss tokens of `rows` (input_ids, loss_mask) under `model` at
    temperature 1: the behavior stage's teacher-forced scoring, with `model` as the scorer."""
    scored = [dict(row) for row in rows]  # scoring writes behavior_logprobs; the rows stay
    score_with_model(model, scored, BehaviorConfig(temperature=1.0, top_k=0), max_rows,
                     max_tokens, pad_id, desc="evaluate: teacher-data NLL")
    logprobs = [v for row in scored for v, on in zip(row["behavior_logprobs"], row["loss_mask"])
                if on]
    return -sum(logprobs) / max(len(logprobs), 1)


def save(summary: dict, rows: list[dict], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(summary, indent=2))
    with (out_dir / "problems.jsonl").open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


# ----------------------------------------------------------------------------- the stage
CHECKPOINT_STEP = {"base": 0, "sft": 1, "rl": 2}  # the checkpoint axis of the eval/* charts


def run(cfg: Config, task_cfg: TaskConfig, out: Path, eval_problems, task, tracker: Tracker,
        checkpoints: dict[str, str], teacher_data: Path | None = None) -> dict[str, dict]:
    """Evaluate each checkpoint ({label: path}) on `task` (configured by task_cfg: cfg.task or
    cfg.rl_task) into out/<label>/ (one engine each; a checkpoint with results.json already is
    read back, not evaluated again); returns {label: summary}. With `teacher_data` (the
    behavior stage's held-out teacher samples, a saved dataset) each summary also holds
    teacher_nll, the checkpoint's per-token NLL of them."""
    held_out = None
    if teacher_data is not None and teacher_data.exists():
        held_out = load_from_disk(str(teacher_data)).select_columns(
            ["input_ids", "loss_mask", "behavior_logprobs"]).to_list() or None
    results = {}
    for label, path in checkpoints.items():
        target = out / label
        if (target / "results.json").exists():
            results[label] = json.loads((target / "results.json").read_text())
            continue
        tokenizer = models.load_tokenizer(path, cfg.model)
        # the hf engine generates with the model that scores the teacher data: one load
        model = None
        if held_out is not None and cfg.rollout.engine == Engine.hf:
            model = models.load_model(path, cfg.model.dtype, cfg.model.trust_remote_code)
        with closing(make_engine(cfg.rollout, path, tokenizer, model=model, dtype=cfg.model.dtype,
                                 trust_remote_code=cfg.model.trust_remote_code,
                                 seed=cfg.seed)) as engine:
            summary, rows = evaluate_model(engine, tokenizer, eval_problems, task, cfg.evaluate,
                                           system_prompt=task_cfg.system_prompt, seed=cfg.seed,
                                           label=f"{label} {task_cfg.name}")
        if held_out is not None:  # vLLM: loaded after its engine is closed, one at a time
            if model is None:
                model = models.load_model(path, cfg.model.dtype, cfg.model.trust_remote_code)
            summary["teacher_nll"] = data_nll(model, held_out, tokenizer.pad_token_id)
            del model
        save(summary, rows, target)
        tracker.summary({f"eval/{task_cfg.name}/{label}/{k}": v for k, v in summary.items()})
        # the same numbers on a checkpoint axis (0 base, 1 sft, 2 rl): W&B draws one chart per
        # metric in which every run of a sweep group is a line across its checkpoints
        checkpoint, _, kept = label.partition("@")  # sft@k, rl@k: their own eval@k charts
        tracker.log("eval" + (f"@{kept}" if kept else ""),
                    {f"{task_cfg.name}/{k}": v for k, v in summary.items()
                     if not k.endswith("_ci95")}, CHECKPOINT_STEP[checkpoint])
        tracker.table(f"eval/{task_cfg.name}/{label}/problems", rows)
        results[label] = summary
    ks = ks_up_to(cfg.evaluate.num_samples)
    tracker.line_plot(f"eval/{task_cfg.name}/pass@k", ks,
                      {label: [s[f"pass@{k}"] for k in ks] for label, s in results.items()}, "k")
    return results


def print_summary(results: dict[str, dict], n: int, console: Console, task_name: str,
                  prefix: str = "") -> None:
    """One table of every checkpoint's accuracy on one task: its metrics are the summary keys
    that start with `prefix` (the RL task's: "<rl_task.name>/")."""
    table = Table(title=f"{task_name}: held-out accuracy (n={n} samples per problem, 95% "
                        "intervals)")
    table.add_column("checkpoint")
    columns = [c for c in ("greedy", "pass@1") if prefix + c in next(iter(results.values()))]
    columns += [f"pass@{k}" for k in ks_up_to(n)[1:]]
    for c in columns:
        table.add_column(c, justify="right")
    for label, summary in results.items():
        table.add_row(label, *[f"{summary[prefix + c]:.3f} ± {summary[prefix + c + '_ci95']:.3f}"
                               for c in columns])
    console.print(table)
