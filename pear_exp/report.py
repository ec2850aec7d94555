"""Turn a sweep directory into a markdown table and PNG plots.

    python -m pear_exp.report multirun/2026-11-25/07-45-09 --out experiments/my_study

Reads every job directory below the sweep (any folder holding config.yaml and summary.json),
groups the jobs by weighting level and reports, for each checkpoint (sft, rl) and metric, the
mean over seeds with a 95% t-interval (Student's t with seeds - 1 degrees of freedom). Jobs
without a summary (failed or unfinished) are listed, not silently dropped.
Writes report.md, post_sft_vs_post_rl.png and rl_reward.png into --out.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path

import yaml

from pear_exp.config import WeightLevel
from pear_exp.metrics import mean_ci95


def load_jobs(sweep: Path) -> tuple[list[dict], list[Path]]:
    jobs, failed = [], []
    for config_path in sorted(sweep.rglob("config.yaml")):
        if ".hydra" in config_path.parts or "wandb" in config_path.parts:
            continue
        job = config_path.parent
        cfg = yaml.safe_load(config_path.read_text())
        if not (job / "summary.json").exists():
            failed.append(job)
            continue
        rewards: dict[int, float] = {}
        if (job / "metrics.jsonl").exists():
            for line in (job / "metrics.jsonl").read_text().splitlines():
                record = json.loads(line)
                if record["stage"] == "rl":
                    rewards[record["step"]] = record["rl/reward_mean"]
        jobs.append({"dir": job, "level": cfg["weighting"]["level"], "seed": cfg["seed"],
                     "summary": json.loads((job / "summary.json").read_text()),
                     "rewards": rewards})
    return jobs, failed


def table(jobs: list[dict], metrics: list[str]) -> tuple[str, dict]:
    """Markdown table, and {(level, checkpoint, metric): (mean, half-width)}."""
    by_level = defaultdict(list)
    for job in jobs:
        by_level[job["level"]].append(job)
    checkpoints = [c for c in ("base", "sft", "rl") if any(c in j["summary"] for j in jobs)]
    header = "| weighting | seeds | " + " | ".join(
        f"{c} {m}" for c in checkpoints if c != "base" for m in metrics) + " |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    stats = {}
    for level in [lv.value for lv in WeightLevel if lv.value in by_level]:
        group = by_level[level]
        cells = []
        for c in checkpoints:
            for m in metrics:
                values = [j["summary"][c][m] for j in group if c in j["summary"]]
                stats[(level, c, m)] = mean_ci95(values, student_t=True)
                if c != "base":
                    mean, half = stats[(level, c, m)]
                    cells.append(f"{mean:.3f} ± {half:.3f}")
        lines.append(f"| {level} | {len(group)} | " + " | ".join(cells) + " |")
    return "\n".join(lines), stats


def plots(jobs: list[dict], stats: dict, metric: str, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = [lv.value for lv in WeightLevel if any(j["level"] == lv.value for j in jobs)]
    fig, ax = plt.subplots(figsize=(6, 4))
    width = 0.38
    for offset, checkpoint in ((-width / 2, "sft"), (width / 2, "rl")):
        means = [stats.get((lv, checkpoint, metric), (float("nan"),) * 2)[0] for lv in levels]
        halves = [stats.get((lv, checkpoint, metric), (float("nan"),) * 2)[1] for lv in levels]
        ax.bar([i + offset for i in range(len(levels))], means, width,
               yerr=[0 if math.isnan(h) else h for h in halves], capsize=4,
               label=f"after {checkpoint.upper()}")
    ax.set_xticks(range(len(levels)), levels)
    ax.set_ylabel(f"held-out {metric} (mean over seeds, 95% CI)")
    ax.set_xlabel("SFT weighting")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "post_sft_vs_post_rl.png", dpi=120)
    plt.close(fig)
    written = ["post_sft_vs_post_rl.png"]
    if any(j["rewards"] for j in jobs):
        fig, ax = plt.subplots(figsize=(6, 4))
        for level in levels:
            curves = [j["rewards"] for j in jobs if j["level"] == level and j["rewards"]]
            steps = sorted(set.intersection(*(set(c) for c in curves)))
            mean = [sum(c[s] for c in curves) / len(curves) for s in steps]
            window = 10  # moving average: one step's reward is noisy
            smooth = [sum(mean[max(0, i - window + 1) : i + 1]) / len(mean[max(0, i - window + 1) : i + 1])
                      for i in range(len(mean))]
            ax.plot(steps, smooth, label=f"{level} ({len(curves)} seeds)")
        ax.set_xlabel("RL step")
        ax.set_ylabel("rollout reward (10-step moving mean)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "rl_reward.png", dpi=120)
        plt.close(fig)
        written.append("rl_reward.png")
    return written


def report(sweep: Path, out: Path) -> str:
    jobs, failed = load_jobs(sweep)
    if not jobs:
        raise SystemExit(f"error: no finished job (config.yaml + summary.json) under {sweep}")
    out.mkdir(parents=True, exist_ok=True)
    first = next(iter(jobs[0]["summary"].values()))
    k_max = max(int(k[5:]) for k in first if k.startswith("pass@") and not k.endswith("_ci95"))
    metrics = [m for m in ("greedy", "pass@1", f"pass@{k_max}") if m in first]
    metrics = list(dict.fromkeys(metrics))  # pass@1 once when n = 1
    text, stats = table(jobs, metrics)
    images = plots(jobs, stats, "pass@1", out)
    lines = [f"# Sweep report: {sweep}", "",
             f"{len(jobs)} finished jobs; mean over seeds ± 95% t-interval half-width "
             "(Student's t, seeds - 1 degrees of freedom).", "", text, ""]
    if failed:
        lines += ["Jobs without results (failed or unfinished):", ""]
        lines += [f"- {job}" for job in failed] + [""]
    lines += [f"![{name}]({name})" for name in images]
    markdown = "\n".join(lines) + "\n"
    (out / "report.md").write_text(markdown)
    return markdown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path, help="a Hydra multirun directory")
    parser.add_argument("--out", type=Path, default=None, help="default: <sweep>/report")
    args = parser.parse_args()
    print(report(args.sweep, args.out or args.sweep / "report"))


if __name__ == "__main__":
    main()
