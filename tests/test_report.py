"""A 2 x 2 multirun (weighting x seed) on the smoke world, and its report."""

import json

import pytest

from pear_exp.metrics import mean_ci95
from pear_exp.report import report, table
from tests.test_pipeline import run_cli


def test_table_orders_levels_as_the_enum_with_t_intervals():
    def job(level, seed, pass1):
        return {"level": level, "seed": seed, "summary": {"sft": {"pass@1": pass1}}}

    jobs = [job("sequence", 0, 0.5), job("none", 0, 0.2), job("none", 1, 0.4),
            job("sequence", 1, 0.5)]
    markdown, stats = table(jobs, ["pass@1"])
    rows = markdown.splitlines()[2:]
    # none before sequence (WeightLevel's order); 2 seeds: t(1) = 12.706, so 0.2, 0.4 give
    # 0.300 +- 12.706 * sqrt(0.02) / sqrt(2) = 1.271; equal values give a zero half-width
    assert rows == ["| none | 2 | 0.300 ± 1.271 |", "| sequence | 2 | 0.500 ± 0.000 |"]
    assert stats[("none", "sft", "pass@1")] == mean_ci95([0.2, 0.4], student_t=True)


@pytest.mark.slow
def test_two_by_two_multirun_and_report(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(["--multirun", "+experiment=smoke", "logger=none", "weighting=none,block",
                      "seed=0,1", f"hydra.sweep.dir={sweep}"], tmp_path / "cache", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = sorted(sweep.glob("*/summary.json"))
    assert len(summaries) == 4  # each job in its own run directory
    markdown = report(sweep, tmp_path / "report")
    assert (tmp_path / "report" / "report.md").read_text() == markdown
    assert (tmp_path / "report" / "post_sft_vs_post_rl.png").stat().st_size > 0
    assert (tmp_path / "report" / "rl_reward.png").stat().st_size > 0
    # the table's numbers, recomputed from the job directories
    by_level = {}
    for path in summaries:
        cfg = (path.parent / "config.yaml").read_text()
        level = "block" if "level: block" in cfg else "none"
        by_level.setdefault(level, []).append(json.loads(path.read_text())["rl"]["pass@1"])
    for level, values in by_level.items():
        mean, half = mean_ci95(values, student_t=True)
        row = next(line for line in markdown.splitlines() if line.startswith(f"| {level} |"))
        assert f"| {level} | 2 |" in row and f"{mean:.3f} ± {half:.3f}" in row
