"""Turn a sweep directory into a markdown table and PNG plots.

    python -m pear_exp.report multirun/2026-11-25/07-45-09 --out experiments/my_study

Reads every job directory below the sweep (any folder holding config.yaml and summary.json) and
groups the jobs by every axis of the sweep: each config key whose value differs between jobs,
other than the seed and the operational keys (config.OPERATIONAL_KEYS); a key that only follows
another (block_size with the weighting option) is not an axis of its own. For each sweep point,
checkpoint (sft, rl) and metric it reports the mean over seeds with a 95% t-interval (Student's
t, seeds - 1 degrees of freedom), and, where weighting.level or sft.base_loss is an axis, each
point's paired difference from plain SFT (level none and base loss nll, the other axes equal)
over the seeds both ran; where both are axes, also kl minus nll at the same weighting. Jobs
without a summary (failed or unfinished) are listed, not silently dropped. A run with
sft.keep_steps counts as one more job per kept model (sft.steps = that step, its own RL), so SFT
strength is an axis like any other.
With 3 or more sweep points it also asks whether offline and online rankings agree: Kendall's
tau and Spearman's rho between each SFT-time quantity (post-SFT pass@1, greedy, pass@k and maj@k
at the largest k, the NLL of held-out teacher data (behavior/heldout: the teacher's samples on
the evaluation problems), the NLL of its own samples = their per-token entropy estimate, the
training NLL of the teacher data and PEAR's mean log-ratio at its last SFT log, response length,
no-answer fraction) and post-RL pass@1 across the points, within each seed, then mean ± 95%
t-interval over seeds; and every pair of points whose order after SFT is the opposite of its
order after RL, with both paired differences. With shifted-task RL (every job with the same
rl_task) the online side is the RL task's pass@1 and the RL task's metrics join the tables.
Writes report.md, post_sft_vs_post_rl.png, rl_reward.png and rank_sft_vs_rl.png into --out.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path

import yaml

from pear_exp.config import OPERATIONAL_KEYS, BaseLoss, WeightLevel
from pear_exp.metrics import mean_ci95

LEVEL = "weighting.level"
KEEP_STEPS = "sft.keep_steps"  # bookkeeping: each kept model becomes a point at its sft.steps
BASE_LOSS = "sft.base_loss"
LEVEL_ORDER = {level.value: i for i, level in enumerate(WeightLevel)}
BASELINE = WeightLevel.none.value
# plain SFT, what the paired differences are taken against: no weights, the NLL base loss
PLAIN_SFT = {LEVEL: BASELINE, BASE_LOSS: BaseLoss.nll.value}


def flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    """{'sft.lr': '0.001', ...}: every leaf as text (lists and None compare as written)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value) if not isinstance(value, str) else value
    return out


def sweep_axes(jobs: list[dict]) -> list[str]:
    """The keys whose values differ between the jobs (not the seed, not operational keys), less
    those that only follow the axes before them (a key whose value the earlier axes' values
    determine: block_size or iw_clip with the weighting option). weighting.level first."""
    keys = sorted({k for job in jobs for k in job["config"]}, key=lambda k: (k != LEVEL, k))
    axes: list[str] = []
    for key in keys:
        if key in ("seed", KEEP_STEPS) or key.split(".")[0] in OPERATIONAL_KEYS:
            continue
        values = [job["config"].get(key) for job in jobs]
        if len(set(values)) < 2:
            continue
        seen: dict[tuple, str | None] = {}  # the earlier axes' values -> this key's value
        follows = all(seen.setdefault(tuple(job["config"].get(a) for a in axes), v) == v
                      for job, v in zip(jobs, values))
        if not (axes and follows):
            axes.append(key)
    return axes


def point_order(point: tuple[tuple[str, str], ...]):
    """Sweep points in the order of WeightLevel, then of the other axes' values."""
    return [(LEVEL_ORDER.get(v, len(LEVEL_ORDER)), v) if k == LEVEL else (0, v) for k, v in point]


def label(point: tuple[tuple[str, str], ...]) -> str:
    return ", ".join(v if k == LEVEL and len(point) == 1 else f"{k}={v}" for k, v in point) or "all"


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
        rewards: dict[str, dict[int, float]] = defaultdict(dict)  # rl, rl@k: step -> reward
        sft_logs: dict[int, dict] = {}  # step -> the SFT metrics logged there
        if (job / "metrics.jsonl").exists():
            for line in (job / "metrics.jsonl").read_text().splitlines():
                record = json.loads(line)
                stage = record["stage"]
                if stage == "rl" or (stage.startswith("rl@") and not stage.endswith("_eval")):
                    rewards[stage][record["step"]] = record[f"{stage}/reward_mean"]
                elif stage == "sft":
                    sft_logs[record["step"]] = record
        summary = json.loads((job / "summary.json").read_text())
        add_training_predictors(summary, sft_logs, cfg.get("sft", {}).get("steps"))
        config = flatten(cfg)
        main = {"dir": job, "config": config, "seed": cfg["seed"],
                "level": cfg["weighting"]["level"],
                "summary": {c: summary[c] for c in ("base", "sft", "rl") if c in summary},
                "rewards": rewards["rl"]}
        jobs.append(main)
        for k in cfg.get("sft", {}).get("keep_steps") or []:  # one more point per kept model
            if f"sft@{k}" in summary:
                kept = {"sft": summary[f"sft@{k}"], **({"base": summary["base"]}
                                                       if "base" in summary else {})}
                if f"rl@{k}" in summary:
                    kept["rl"] = summary[f"rl@{k}"]
                jobs.append({**main, "config": {**config, "sft.steps": str(k)},
                             "summary": kept, "rewards": rewards[f"rl@{k}"]})
    axes = sweep_axes(jobs)
    for job in jobs:  # the job's sweep point: its value on every axis
        job["point"] = tuple((axis, job["config"].get(axis, "")) for axis in axes)
    return jobs, failed


def add_training_predictors(summary: dict, sft_logs: dict[int, dict], steps: int | None) -> None:
    """Into each SFT checkpoint's summary (sft, sft@k), from the SFT log at the last logged step
    at or before it: train_nll (NLL of the teacher data it trains on, per loss token) and, for
    PEAR weightings, delta_mean (mean log-ratio log pi_theta - log pi_b over loss tokens)."""
    for label, at in [("sft", steps), *((c, int(c[4:])) for c in summary if c.startswith("sft@"))]:
        logged = [s for s in sft_logs if at is None or s <= at]
        if label not in summary or not logged:
            continue
        record = sft_logs[max(logged)]
        for name, key in (("train_nll", "sft/nll"), ("delta_mean", "sft/delta_mean")):
            if key in record:
                summary[label][name] = record[key]


def table(jobs: list[dict], metrics: list[str]) -> tuple[str, dict]:
    """Markdown table of the sweep points, and {(point, checkpoint, metric): (mean, half)}."""
    by_point = defaultdict(list)
    for job in jobs:
        by_point[job["point"]].append(job)
    points = sorted(by_point, key=point_order)
    axes = [k for k, _ in points[0]]
    checkpoints = [c for c in ("base", "sft", "rl") if any(c in j["summary"] for j in jobs)]
    names = ["weighting" if axes == [LEVEL] else a for a in axes] or ["jobs"]
    header = "| " + " | ".join(names) + " | seeds | " + " | ".join(
        f"{c} {m}" for c in checkpoints if c != "base" for m in metrics) + " |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    stats = {}
    for point in points:
        group = by_point[point]
        cells = []
        for c in checkpoints:
            for m in metrics:
                values = [j["summary"][c][m] for j in group if c in j["summary"]]
                stats[(point, c, m)] = mean_ci95(values, student_t=True)
                if c != "base":
                    mean, half = stats[(point, c, m)]
                    cells.append(f"{mean:.3f} ± {half:.3f}")
        values = [v for _, v in point] or ["all"]
        lines.append("| " + " | ".join(values) + f" | {len(group)} | " + " | ".join(cells) + " |")
    return "\n".join(lines), stats


def paired_differences(jobs: list[dict], metrics: list[str],
                       reference: dict[str, str] | None = None) -> tuple[str, dict]:
    """Each sweep point minus its reference point, seed by seed over the seeds both ran: the
    reference is the point with the `reference` axes set to their values and the other axes
    equal (default: plain SFT, PLAIN_SFT on whichever of its axes the sweep has). Returns
    markdown (empty when none of the reference axes is an axis or no seeds are shared), and
    {(point, checkpoint, metric): (mean difference, half-width, seeds)}."""
    axes = dict(jobs[0]["point"]) if jobs else {}
    reference = {k: v for k, v in (reference or PLAIN_SFT).items() if k in axes}
    if not reference:
        return "", {}
    runs = {(j["point"], j["seed"]): j for j in jobs}
    checkpoints = [c for c in ("sft", "rl") if any(c in j["summary"] for j in jobs)]
    lines, stats = [], {}
    for point in sorted({j["point"] for j in jobs}, key=point_order):
        base = tuple((k, reference.get(k, v)) for k, v in point)
        if base == point:
            continue
        seeds = sorted(s for p, s in runs if p == point and (base, s) in runs)
        if not seeds:
            continue
        cells = []
        for c in checkpoints:
            for m in metrics:
                diffs = [runs[(point, s)]["summary"][c][m] - runs[(base, s)]["summary"][c][m]
                         for s in seeds if c in runs[(point, s)]["summary"]
                         and c in runs[(base, s)]["summary"]]
                mean, half = mean_ci95(diffs, student_t=True)
                stats[(point, c, m)] = (mean, half, len(diffs))
                cells.append(f"{round(mean, 3) + 0.0:+.3f} ± {half:.3f}")  # no "-0.000"
        lines.append(f"| {label(point)} - {label(tuple(reference.items()))} | {len(seeds)} | "
                     + " | ".join(cells) + " |")
    if not lines:
        return "", {}
    header = "| difference | seeds | " + " | ".join(
        f"{c} {m}" for c in checkpoints for m in metrics) + " |"
    return "\n".join([header, "|" + "---|" * (header.count("|") - 1), *lines]), stats


# SFT-time quantities the rank analysis tries as predictors of the post-RL metric, where the
# summaries hold them (pass@{k_max} and maj@{k_max} are added at the sweep's largest k)
PREDICTORS = ("pass@1", "greedy", "teacher_nll", "sample_nll", "train_nll", "delta_mean",
              "response_length", "no_answer_frac")


def correlations(x: list[float], y: list[float]) -> tuple[float, float]:
    """(Kendall's tau-b, Spearman's rho) of two paired lists; nan when either is constant or
    there are fewer than 3 pairs."""
    from scipy.stats import kendalltau, spearmanr

    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return float("nan"), float("nan")
    return float(kendalltau(x, y).statistic), float(spearmanr(x, y).statistic)


def per_seed(jobs: list[dict], x_key: tuple[str, str], y_key: tuple[str, str]
             ) -> dict[int, tuple[list, list]]:
    """seed -> (x values, y values) over the sweep points (in point order) that ran that seed
    and hold both (checkpoint, metric) values."""
    out: dict[int, tuple[list, list]] = {}
    for job in sorted(jobs, key=lambda j: point_order(j["point"])):
        (cx, mx), (cy, my) = x_key, y_key
        summary = job["summary"]
        if mx in summary.get(cx, {}) and my in summary.get(cy, {}):
            xs, ys = out.setdefault(job["seed"], ([], []))
            xs.append(summary[cx][mx])
            ys.append(summary[cy][my])
    return out


def rank_agreement(jobs: list[dict], metric: str, predictors: list[str]) -> tuple[str, dict]:
    """Do the sweep points rank the same after SFT as after RL? Kendall's tau and Spearman's
    rho between the post-SFT and post-RL `metric` across the points, computed within each seed
    and summarised over seeds (mean ± 95% t-interval), and over the seed means; then each SFT-
    time predictor's correlation with post-RL `metric`. Returns markdown (empty with fewer than
    3 points) and {predictor: (tau mean, tau half, rho mean, rho half, seeds)}."""
    if len({j["point"] for j in jobs}) < 3:
        return "", {}
    rows, stats = [], {}
    for predictor in predictors:
        seeds = per_seed(jobs, ("sft", predictor), ("rl", metric))
        found = [correlations(xs, ys) for xs, ys in seeds.values()]
        found = [(t, r) for t, r in found if not math.isnan(t)]
        if not found:
            continue
        tau, tau_half = mean_ci95([t for t, _ in found], student_t=True)
        rho, rho_half = mean_ci95([r for _, r in found], student_t=True)
        stats[predictor] = (tau, tau_half, rho, rho_half, len(found))
        fmt = lambda m, h: f"{m:+.2f}" + ("" if math.isnan(h) else f" ± {h:.2f}")  # noqa: E731
        rows.append(f"| sft {predictor} | {len(found)} | {fmt(tau, tau_half)} | "
                    f"{fmt(rho, rho_half)} |")
    if not rows:
        return "", {}
    header = [f"| predictor of rl {metric} | seeds | Kendall tau | Spearman rho |",
              "|---|---|---|---|"]
    return "\n".join(header + rows), stats


def reversals(jobs: list[dict], offline: str, online: str) -> list[str]:
    """Pairs of sweep points whose order by post-SFT `offline` is the opposite of their order by
    post-RL `online` (by the mean over the seeds both ran; the same metric unless RL ran on a
    shifted task), each with both paired differences (mean ± 95% t): a reversal is called clear
    when both intervals exclude 0."""
    runs = {(j["point"], j["seed"]): j["summary"] for j in jobs}
    points = sorted({j["point"] for j in jobs}, key=point_order)
    found = []
    for i, a in enumerate(points):
        for b in points[i + 1:]:
            seeds = [s for p, s in runs if p == a and (b, s) in runs
                     and all(c in runs[(q, s)] for q in (a, b) for c in ("sft", "rl"))]
            if not seeds:
                continue
            sft = mean_ci95([runs[(a, s)]["sft"][offline] - runs[(b, s)]["sft"][offline]
                             for s in seeds], student_t=True)
            rl = mean_ci95([runs[(a, s)]["rl"][online] - runs[(b, s)]["rl"][online]
                            for s in seeds], student_t=True)
            if sft[0] * rl[0] >= 0 or min(abs(sft[0]), abs(rl[0])) < 1e-9:  # same order, tie
                continue
            clear = all(abs(m) > h for m, h in (sft, rl))  # nan half-width: never clear
            first, second = (a, b) if sft[0] > 0 else (b, a)
            sign = 1 if first == a else -1
            diff = lambda m: f"{sign * m:+.3f}"  # noqa: E731 (a sign that matters: "-0.000")
            found.append(f"- {label(first)} is ahead of {label(second)} after SFT "
                         f"({diff(sft[0])} ± {sft[1]:.3f}) and behind after RL "
                         f"({diff(rl[0])} ± {rl[1]:.3f}); {len(seeds)} seeds"
                         + ("; clear (both intervals exclude 0)" if clear else ""))
    return found


def rank_plot(jobs: list[dict], stats: dict, offline: str, online: str,
              out: Path) -> str | None:
    """rank_sft_vs_rl.png: each sweep point's rank by mean post-SFT `offline` (left) joined to
    its rank by mean post-RL `online` (right); crossing lines are reversals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sides = {"sft": offline, "rl": online}
    points = [p for p in sorted({j["point"] for j in jobs}, key=point_order)
              if not any(math.isnan(stats.get((p, c, m), (float("nan"),))[0])
                         for c, m in sides.items())]
    if len(points) < 2:
        return None
    rank = {c: {p: r for r, p in enumerate(sorted(points, key=lambda p: -stats[(p, c, m)][0]),
                                          start=1)} for c, m in sides.items()}
    fig, ax = plt.subplots(figsize=(8, max(3, 0.45 * len(points) + 1.5)))
    for p in points:  # the points in the legend, each side's mean beside its rank
        ax.plot([0, 1], [rank["sft"][p], rank["rl"][p]], marker="o",
                label=", ".join(v for _, v in p) or "all")
        ax.annotate(f"{stats[(p, 'sft', offline)][0]:.3f}", (0, rank["sft"][p]),
                    xytext=(-8, 0), textcoords="offset points", ha="right", va="center")
        ax.annotate(f"{stats[(p, 'rl', online)][0]:.3f}", (1, rank["rl"][p]),
                    xytext=(8, 0), textcoords="offset points", ha="left", va="center")
    ax.legend(title=" / ".join(k for k, _ in points[0]), loc="upper left",
              bbox_to_anchor=(1.02, 1), fontsize="small")
    ax.set_xlim(-0.4, 1.4)
    ax.set_ylim(len(points) + 0.5, 0.5)
    ax.set_xticks([0, 1], [f"after SFT ({offline})", f"after RL ({online})"])
    ax.set_yticks(range(1, len(points) + 1))
    ax.set_ylabel("rank by mean over seeds (1 = best)")
    fig.tight_layout()
    fig.savefig(out / "rank_sft_vs_rl.png", dpi=120)
    plt.close(fig)
    return "rank_sft_vs_rl.png"


def plots(jobs: list[dict], stats: dict, metric: str, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = sorted({j["point"] for j in jobs}, key=point_order)
    longest = max((len(v) for p in points for _, v in p), default=0)  # tick label characters
    fig, ax = plt.subplots(figsize=(max(6, len(points) * max(1.2, 0.1 * longest + 0.3)), 4))
    width = 0.38
    for offset, checkpoint in ((-width / 2, "sft"), (width / 2, "rl")):
        means = [stats.get((p, checkpoint, metric), (float("nan"),) * 2)[0] for p in points]
        halves = [stats.get((p, checkpoint, metric), (float("nan"),) * 2)[1] for p in points]
        ax.bar([i + offset for i in range(len(points))], means, width,
               yerr=[0 if math.isnan(h) else h for h in halves], capsize=4,
               label=f"after {checkpoint.upper()}")
    ax.set_xticks(range(len(points)), ["\n".join(v for _, v in p) or "all" for p in points])
    ax.set_ylabel(f"held-out {metric} (mean over seeds, 95% CI)")
    ax.set_xlabel(" / ".join(k for k, _ in points[0]) if [k for k, _ in points[0]] != [LEVEL]
                  else "SFT weighting")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "post_sft_vs_post_rl.png", dpi=120)
    plt.close(fig)
    written = ["post_sft_vs_post_rl.png"]
    if any(j["rewards"] for j in jobs):
        fig, ax = plt.subplots(figsize=(6, 4))
        for point in points:
            curves = [j["rewards"] for j in jobs if j["point"] == point and j["rewards"]]
            steps = sorted(set.intersection(*(set(c) for c in curves)))
            mean = [sum(c[s] for c in curves) / len(curves) for s in steps]
            window = 10  # moving average: one step's reward is noisy
            smooth = [sum(mean[max(0, i - window + 1) : i + 1]) / len(mean[max(0, i - window + 1) : i + 1])
                      for i in range(len(mean))]
            ax.plot(steps, smooth, label=f"{', '.join(v for _, v in point) or 'all'} "
                                         f"({len(curves)} seeds)")
        ax.set_xlabel("RL step")
        ax.set_ylabel("rollout reward (10-step moving mean)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "rl_reward.png", dpi=120)
        plt.close(fig)
        written.append("rl_reward.png")
    return written


def shifted_task(jobs: list[dict]) -> str | None:
    """The RL task's name when every job ran RL on the same shifted task (rl_task), else None."""
    names = {j["config"].get("rl_task.name") for j in jobs}
    return names.pop() if len(names) == 1 and None not in names else None


def report(sweep: Path, out: Path) -> str:
    jobs, failed = load_jobs(sweep)
    if not jobs:
        raise SystemExit(f"error: no finished job (config.yaml + summary.json) under {sweep}")
    out.mkdir(parents=True, exist_ok=True)
    first = next(iter(jobs[0]["summary"].values()))
    k_max = max(int(k[5:]) for k in first if k.startswith("pass@") and not k.endswith("_ci95"))
    metrics = [m for m in ("greedy", "pass@1", f"pass@{k_max}") if m in first]
    metrics = list(dict.fromkeys(metrics))  # pass@1 once when n = 1
    # shifted-task RL (every job's rl_task the same task): the online ranking is by the RL
    # task's pass@1, its metrics get a table of their own, its SFT-time values are predictors too
    rl_task = shifted_task(jobs)
    shifted = [f"{rl_task}/{m}" for m in metrics] if rl_task else []
    offline, online = "pass@1", shifted[metrics.index("pass@1")] if rl_task else "pass@1"
    text, stats = table(jobs, metrics + shifted)
    differences, _ = paired_differences(jobs, metrics + shifted)
    axes = [k for k, _ in jobs[0]["point"]]
    by_base_loss = ""  # where the base loss is an axis: kl - nll at the same weighting
    if BASE_LOSS in axes and len(axes) > 1:
        by_base_loss, _ = paired_differences(jobs, metrics + shifted,
                                             {BASE_LOSS: PLAIN_SFT[BASE_LOSS]})
    images = plots(jobs, stats, online, out)
    candidates = (*PREDICTORS, f"pass@{k_max}", f"maj@{k_max}")
    if rl_task:
        candidates += tuple(f"{rl_task}/{m}" for m in candidates)
    predictors = [m for m in dict.fromkeys(candidates)
                  if any(m in j["summary"].get("sft", {}) for j in jobs)]
    agreement, _ = rank_agreement(jobs, online, predictors)
    reversed_pairs = reversals(jobs, offline, online) if agreement else []
    rank_image = rank_plot(jobs, stats, offline, online, out) if agreement else None
    lines = [f"# Sweep report: {sweep}", "",
             f"{len(jobs)} finished jobs; sweep axes: {', '.join(axes) or 'none'}; mean over "
             "seeds ± 95% t-interval half-width (Student's t, seeds - 1 degrees of freedom).",
             *([f"RL ran on a shifted task, {rl_task}: its metrics are the columns named "
                f"{rl_task}/..., the others are on the SFT task."] if rl_task else []),
             "", text, ""]
    if differences:
        plain = ", ".join(f"{k}={v}" for k, v in PLAIN_SFT.items() if k in axes)
        lines += [f"Paired differences from plain SFT ({plain}, the other axes equal), seed by "
                  "seed over the seeds both ran; mean ± 95% t-interval:", "", differences, ""]
    if by_base_loss:
        lines += [f"Paired differences between base losses ({BASE_LOSS}=kl minus nll, the other "
                  "axes equal); mean ± 95% t-interval:", "", by_base_loss, ""]
    if agreement:
        lines += ["Offline against online ranking: each SFT-time quantity's rank correlation "
                  f"with post-RL {online} across the sweep points, within each seed, then mean "
                  "± 95% t-interval over the seeds (the first row: do the points rank the same "
                  "after SFT as after RL?):", "", agreement, ""]
        lines += ([f"Ranking reversals (order by {offline} after SFT opposite to order by "
                   f"{online} after RL, by means over shared seeds; paired differences first "
                   "minus second):", "",
                   *reversed_pairs, ""] if reversed_pairs
                  else ["No pair of sweep points changes order between SFT and RL.", ""])
    if rank_image:
        images.append(rank_image)
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
