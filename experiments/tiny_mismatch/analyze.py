"""Study-specific tables for a tiny_mismatch sweep, beside `python -m pear_exp.report`.

    python experiments/tiny_mismatch/analyze.py multirun/tiny_mismatch --out experiments/tiny_mismatch

Writes analysis.md with
- paired differences from plain SFT (weighting none) per seed: every job of one seed shares the
  behavior data (the seed drives the teacher's sampling), SFT batch order, RL prompt order and
  evaluation seeds, so "level minus none" within a seed removes the variation they share;
  mean over seeds with a 95% t-interval;
- the style the student writes (terse: the answer alone, the student base's style; steps: worked
  steps, the teacher's main style) and each style's accuracy, for base, SFT and RL checkpoints,
  from the first evaluation sample of every held-out problem (problems.jsonl keeps one);
- the PEAR diagnostics SFT logged at its first and last logged step (weight ESS, mean log-ratio,
  fraction of tokens at the lower delta clip), mean over seeds.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from pear_exp.config import WeightLevel
from pear_exp.metrics import mean_ci95
from pear_exp.report import load_jobs
from pear_exp.tasks.base import Problem
from pear_exp.tasks.countdown import Countdown

LEVELS = [level.value for level in WeightLevel]

METRICS = ("greedy", "pass@1", "pass@8")
CHECKPOINTS = ("base", "sft", "rl")


def fmt(values: list[float]) -> str:
    if not values:
        return "n/a"
    mean, half = mean_ci95(values, student_t=True)
    return f"{mean:+.3f} ± {half:.3f}"


def paired_table(jobs: list[dict]) -> list[str]:
    by = {(j["level"], j["seed"]): j["summary"] for j in jobs}
    lines = ["| weighting minus none | seeds | " + " | ".join(
        f"{c} {m}" for c in ("sft", "rl") for m in METRICS) + " |"]
    lines.append("|" + "---|" * (2 + 2 * len(METRICS)))
    for level in LEVELS[1:]:
        seeds = sorted(s for (lv, s) in by if lv == level and ("none", s) in by)
        if not seeds:
            continue
        cells = [fmt([by[(level, s)][c][m] - by[("none", s)][c][m] for s in seeds])
                 for c in ("sft", "rl") for m in METRICS]
        lines.append(f"| {level} | {len(seeds)} | " + " | ".join(cells) + " |")
    return lines


def style_counts(job_dir: Path, checkpoint: str, task: Countdown) -> dict[str, list[int]]:
    """{style: [samples, correct]} over the first sample of every held-out problem."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    path = job_dir / "evaluate" / checkpoint / "problems.jsonl"
    for line in path.read_text().splitlines():
        row = json.loads(line)
        parts = row["problem_id"].split("-")  # countdown-<sorted numbers>-<target>
        problem = Problem(id=row["problem_id"], prompt="", answer="",
                          data=(tuple(int(n) for n in parts[1:-1]), int(parts[-1])))
        style = "terse" if "\n" not in row["sample"].strip() else "steps"
        counts[style][0] += 1
        counts[style][1] += int(task.score(problem, row["sample"]) == 1.0)
    return counts


def style_table(jobs: list[dict]) -> list[str]:
    task = Countdown()
    lines = ["| weighting | checkpoint | terse share | terse accuracy | steps accuracy |",
             "|---|---|---|---|---|"]
    for level in LEVELS:
        group = [j for j in jobs if j["level"] == level]
        if not group:
            continue
        for checkpoint in CHECKPOINTS:
            totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
            for job in group:
                for style, (n, ok) in style_counts(job["dir"], checkpoint, task).items():
                    totals[style][0] += n
                    totals[style][1] += ok
            n_all = sum(n for n, _ in totals.values())
            acc = lambda s: (f"{totals[s][1] / totals[s][0]:.3f} (n={totals[s][0]})"  # noqa: E731
                             if totals[s][0] else "n/a")
            lines.append(f"| {level} | {checkpoint} | {totals['terse'][0] / max(n_all, 1):.3f} | "
                         f"{acc('terse')} | {acc('steps')} |")
    return lines


def sft_diagnostics(jobs: list[dict]) -> list[str]:
    keys = ("weight_ess", "delta_mean", "delta_clip_low_frac")
    lines = ["| weighting | " + " | ".join(f"{k} first → last" for k in keys) + " |",
             "|---|" + "---|" * len(keys)]
    for level in LEVELS[1:]:
        firsts, lasts = defaultdict(list), defaultdict(list)
        for job in (j for j in jobs if j["level"] == level):
            records = [json.loads(x) for x in (job["dir"] / "metrics.jsonl").read_text().splitlines()]
            sft = [r for r in records if r["stage"] == "sft" and "sft/weight_ess" in r]
            if sft:
                for k in keys:
                    firsts[k].append(sft[0][f"sft/{k}"])
                    lasts[k].append(sft[-1][f"sft/{k}"])
        if firsts:
            mean = lambda v: sum(v) / len(v)  # noqa: E731
            lines.append(f"| {level} | " + " | ".join(
                f"{mean(firsts[k]):.3f} → {mean(lasts[k]):.3f}" for k in keys) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    jobs, failed = load_jobs(args.sweep)
    if not jobs:
        raise SystemExit(f"error: no finished job under {args.sweep}")
    out = args.out or args.sweep / "report"
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# tiny_mismatch analysis: {args.sweep}", "",
             f"{len(jobs)} finished jobs" + (f", {len(failed)} without results" if failed else "")
             + ".", "", "## Difference from plain SFT, paired by seed (mean ± 95% t-interval)", ""]
    lines += paired_table(jobs)
    lines += ["", "## Which style the student writes, and how well (first sample per problem, "
              "all seeds pooled)", ""]
    lines += style_table(jobs)
    lines += ["", "## PEAR diagnostics during SFT (first and last logged step, mean over seeds)",
              ""]
    lines += sft_diagnostics(jobs)
    text = "\n".join(lines) + "\n"
    (out / "analysis.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
