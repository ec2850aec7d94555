"""The premise study's fixed analysis (plan.md), on top of pear_exp.report's loading.

    python experiments/premise/analyze.py multirun/premise/d1_screen            # screening rule
    python experiments/premise/analyze.py multirun/premise/d1_confirm --confirm  # PEAR's effect

Points are weighting.level x one other axis (sft.steps: kept SFT models count as points, or the
teacher). Offline score: post-SFT pass@1 on the SFT task; online score: post-RL pass@1 on the RL
task (the shifted task's when every job has one). Screening: a pair (p, q) shows the premise if
offline(p) - offline(q) >= 0.02 and online(q) - online(p) >= 0.02 in every seed. Confirmation
(--confirm): block - none on the online score at each level of the other axis, and the
interaction [online(b) - online(a)] under block minus the same under none, each paired over
seeds with a 95% t-interval. Rank correlations and reversals are the report's
(python -m pear_exp.report).
"""

import argparse
import itertools
from pathlib import Path

from pear_exp.metrics import mean_ci95
from pear_exp.report import LEVEL, correlations, load_jobs, shifted_task

GAP = 0.02


def scores(sweep: Path):
    jobs, failed = load_jobs(sweep)
    name = shifted_task(jobs)
    online = f"{name}/pass@1" if name else "pass@1"
    table = {}  # (point, seed) -> (offline, online)
    for j in jobs:
        if "sft" in j["summary"] and "rl" in j["summary"]:
            table[(j["point"], j["seed"])] = (j["summary"]["sft"]["pass@1"],
                                              j["summary"]["rl"][online])
    points = sorted({p for p, _ in table})
    seeds = sorted({s for _, s in table})
    missing = [(p, s) for p in points for s in seeds if (p, s) not in table]
    points = [p for p in points if all((p, s) in table for s in seeds)]  # every seed ran
    return table, points, seeds, online, failed, missing


def show(point) -> str:
    return ", ".join(f"{k}={v}" for k, v in point)


def interval(values) -> str:
    mean, half = mean_ci95(values, student_t=True)
    verdict = "excludes 0" if abs(mean) > half else "includes 0"
    return f"{mean:+.3f} ± {half:.3f} ({len(values)} seeds; {verdict})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--confirm", action="store_true")
    args = parser.parse_args()
    table, points, seeds, online, failed, missing = scores(args.sweep)
    print(f"{args.sweep}: {len(points)} points x seeds {seeds}; online score = post-RL {online}")
    if failed or missing:
        print(f"unfinished jobs: {failed}; missing (point, seed): {missing}")
    for p in points:
        off = [table[(p, s)][0] for s in seeds]
        on = [table[(p, s)][1] for s in seeds]
        print(f"  {show(p)}: offline {[round(v, 3) for v in off]}  online {[round(v, 3) for v in on]}")
    taus = [correlations([table[(p, s)][0] for p in points], [table[(p, s)][1] for p in points])[0]
            for s in seeds]
    print(f"Kendall tau (offline vs online) per seed: {[round(t, 2) for t in taus]}")
    shows = []
    for p, q in itertools.permutations(points, 2):
        off = [table[(p, s)][0] - table[(q, s)][0] for s in seeds]
        on = [table[(q, s)][1] - table[(p, s)][1] for s in seeds]
        if all(d >= GAP for d in off) and all(d >= GAP for d in on):
            gap = min(sum(off) / len(off), sum(on) / len(on))
            shows.append((gap, p, q))
    print("screening: the premise shows in pairs (ahead offline, behind online, >= "
          f"{GAP} in every seed): " + ("none" if not shows else ""))
    for gap, p, q in sorted(shows, reverse=True):
        print(f"  {show(p)} ahead of {show(q)} offline, behind online; min mean gap {gap:.3f}")
    if not args.confirm:
        return
    (other,) = [k for k, _ in points[0] if k != LEVEL]
    levels = sorted({dict(p)[other] for p in points}, key=lambda v: (len(v), v))

    online_at = {(dict(p)[LEVEL], dict(p)[other], s): v[1] for (p, s), v in table.items()}

    def at(level, weighting, s):
        return online_at[(weighting, level, s)]

    for level in levels:
        print(f"block - none, online, {other}={level}: "
              + interval([at(level, "block", s) - at(level, "none", s) for s in seeds]))
    a, b = levels[0], levels[-1]
    print(f"interaction: [online({other}={b}) - online({other}={a})] under block minus under "
          "none: " + interval([(at(b, "block", s) - at(a, "block", s))
                               - (at(b, "none", s) - at(a, "none", s)) for s in seeds]))
    for w in ("none", "block"):
        print(f"  under {w}: online({b}) - online({a}) = "
              + interval([at(b, w, s) - at(a, w, s) for s in seeds]))


if __name__ == "__main__":
    main()
