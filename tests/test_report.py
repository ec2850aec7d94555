"""A 2 x 2 multirun (weighting x seed) on the smoke world, and its report."""

import json

import pytest

from pear_exp.report import mean_t_interval, report
from tests.test_pipeline import run_cli


def test_mean_t_interval_hand_values():
    # values 0.2, 0.4: mean 0.3, sd = sqrt(0.02) = 0.1414, half = 12.706 * 0.1414 / sqrt(2) = 1.2706
    mean, half = mean_t_interval([0.2, 0.4])
    assert mean == pytest.approx(0.3) and half == pytest.approx(1.2706, rel=1e-4)
    mean, half = mean_t_interval([1.0, 2.0, 3.0])  # sd 1, t(2) = 4.303 -> 4.303 / sqrt(3)
    assert mean == 2.0 and half == pytest.approx(4.303 / 3**0.5)


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
        mean, half = mean_t_interval(values)
        row = next(line for line in markdown.splitlines() if line.startswith(f"| {level} |"))
        assert f"| {level} | 2 |" in row and f"{mean:.3f} ± {half:.3f}" in row
