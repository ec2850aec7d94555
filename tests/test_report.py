"""A 2 x 2 multirun (weighting x seed) on the smoke world, and its report."""

import json

import pytest
import yaml

from pear_exp.metrics import mean_ci95
from pear_exp.report import paired_differences, report, sweep_axes, table
from tests.test_pipeline import run_cli


def jobs_of(*runs):
    """Jobs as load_jobs makes them, from (config overrides, seed, {checkpoint: {metric: v}})."""
    jobs = []
    for overrides, seed, summary in runs:
        config = {"weighting.level": "block", "weighting.block_size": "4", "sft.lr": "0.002",
                  "run_dir": f"/r/{len(jobs)}", "seed": str(seed), **overrides}
        jobs.append({"config": config, "seed": seed, "summary": summary, "rewards": {}})
    axes = sweep_axes(jobs)
    for job in jobs:
        job["point"] = tuple((a, job["config"][a]) for a in axes)
    return jobs


def test_table_orders_levels_as_the_enum_with_t_intervals():
    def run(level, seed, pass1):
        return {"weighting.level": level}, seed, {"sft": {"pass@1": pass1}}

    jobs = jobs_of(run("sequence", 0, 0.5), run("none", 0, 0.2), run("none", 1, 0.4),
                   run("sequence", 1, 0.5))
    markdown, stats = table(jobs, ["pass@1"])
    rows = markdown.splitlines()[2:]
    # none before sequence (WeightLevel's order); 2 seeds: t(1) = 12.706, so 0.2, 0.4 give
    # 0.300 +- 12.706 * sqrt(0.02) / sqrt(2) = 1.271; equal values give a zero half-width
    assert rows == ["| none | 2 | 0.300 ± 1.271 |", "| sequence | 2 | 0.500 ± 0.000 |"]
    assert stats[((("weighting.level", "none"),), "sft", "pass@1")] == mean_ci95(
        [0.2, 0.4], student_t=True)


def test_the_axes_are_the_keys_that_vary_less_the_seed_operational_and_following_keys():
    jobs = jobs_of(({"weighting.level": "none", "weighting.block_size": "1"}, 0, {}),
                   ({"weighting.level": "block", "sft.lr": "0.01"}, 0, {}),
                   ({"weighting.level": "none", "weighting.block_size": "1"}, 1, {}),
                   ({"weighting.level": "block"}, 1, {}))
    # run_dir (operational) and seed vary too; block_size only follows the level
    assert sweep_axes(jobs) == ["weighting.level", "sft.lr"]


def test_paired_differences_from_plain_sft_at_the_same_other_axes_and_seeds():
    def run(level, lr, seed, sft, rl):
        return ({"weighting.level": level, "sft.lr": lr}, seed,
                {"sft": {"pass@1": sft}, "rl": {"pass@1": rl}})

    jobs = jobs_of(run("none", "0.1", 0, 0.20, 0.30), run("none", "0.1", 1, 0.40, 0.50),
                   run("block", "0.1", 0, 0.25, 0.40), run("block", "0.1", 1, 0.35, 0.70),
                   run("block", "0.1", 2, 0.90, 0.90),  # seed 2 has no plain-SFT partner
                   run("none", "0.2", 0, 0.10, 0.10), run("token", "0.2", 0, 0.30, 0.20))
    markdown, stats = paired_differences(jobs, ["pass@1"])
    block = (("weighting.level", "block"), ("sft.lr", "0.1"))
    # sft: (0.25 - 0.20, 0.35 - 0.40) = (+0.05, -0.05): mean 0, sd 0.0707, t(1) 12.706,
    # half-width 12.706 * 0.0707 / sqrt(2) = 0.635; rl: (+0.10, +0.20): mean 0.15, half 0.635
    mean, half, n = stats[(block, "sft", "pass@1")]
    assert n == 2 and abs(mean) < 1e-12 and half == pytest.approx(0.6353, abs=1e-4)
    mean, half, n = stats[(block, "rl", "pass@1")]
    assert (mean, n) == (pytest.approx(0.15), 2) and half == pytest.approx(0.6353, abs=1e-4)
    token = (("weighting.level", "token"), ("sft.lr", "0.2"))
    assert stats[(token, "rl", "pass@1")][:1] == (pytest.approx(0.10),)  # one seed: 0.2 - 0.1
    rows = markdown.splitlines()[2:]
    assert rows[1].startswith("| weighting.level=block, sft.lr=0.1 - none | 2 | +0.000 ± 0.635 |")
    assert rows[0].startswith("| weighting.level=token, sft.lr=0.2 - none | 1 | +0.200 ± nan |")
    assert len(rows) == 2  # block and token; no row for plain SFT itself


def test_with_a_base_loss_axis_plain_sft_is_nll_without_weights():
    """kl x block is compared with plain SFT (nll, none), not with kl x none; the second table
    takes kl - nll at the same weighting."""
    def run(level, loss, seed, rl):
        return {"weighting.level": level, "sft.base_loss": loss}, seed, {"rl": {"pass@1": rl}}

    jobs = jobs_of(*(run(level, loss, seed, value + seed / 100)
                     for seed in (0, 1)
                     for level, loss, value in (("none", "nll", 0.10), ("block", "nll", 0.20),
                                                ("none", "kl", 0.30), ("block", "kl", 0.50))))
    markdown, stats = paired_differences(jobs, ["pass@1"])
    point = lambda level, loss: (("weighting.level", level), ("sft.base_loss", loss))  # noqa: E731
    # the seed offsets cancel in every pair: differences exact, half-widths 0
    assert stats[(point("block", "kl"), "rl", "pass@1")][:2] == (pytest.approx(0.40), pytest.approx(0))
    assert stats[(point("none", "kl"), "rl", "pass@1")][0] == pytest.approx(0.20)
    assert "| weighting.level=block, sft.base_loss=kl - weighting.level=none, sft.base_loss=nll | 2 |" in markdown
    by_loss, stats = paired_differences(jobs, ["pass@1"], {"sft.base_loss": "nll"})
    assert stats[(point("block", "kl"), "rl", "pass@1")][0] == pytest.approx(0.30)
    assert stats[(point("none", "kl"), "rl", "pass@1")][0] == pytest.approx(0.20)
    assert len(by_loss.splitlines()) == 4  # header, rule, two kl points


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
    # block - none, seed by seed (both seeds ran both levels)
    configs = {p: yaml.safe_load((p.parent / "config.yaml").read_text()) for p in summaries}
    runs = {(configs[p]["weighting"]["level"], configs[p]["seed"]):
            json.loads(p.read_text())["rl"]["pass@1"] for p in summaries}
    mean, half = mean_ci95([runs[("block", s)] - runs[("none", s)] for s in (0, 1)],
                           student_t=True)
    assert "| block - none | 2 |" in markdown
    assert f"{round(mean, 3) + 0.0:+.3f} ± {half:.3f}" in markdown


def rank_jobs():
    """4 weightings x 2 seeds. Seed 0: SFT pass@1 ranks none > token > block > sequence, RL
    ranks the exact reverse; seed 1: the same SFT values, RL in the SFT order."""
    sft = {"none": 0.4, "token": 0.3, "block": 0.2, "sequence": 0.1}
    rl = {0: {"none": 0.1, "token": 0.2, "block": 0.3, "sequence": 0.4},
          1: {"none": 0.8, "token": 0.7, "block": 0.6, "sequence": 0.5}}
    return jobs_of(*[({"weighting.level": lv}, seed,
                      {"sft": {"pass@1": sft[lv], "greedy": 0.5},
                       "rl": {"pass@1": rl[seed][lv]}})
                     for seed in (0, 1) for lv in sft])


def test_rank_agreement_within_seeds_then_over_seeds():
    from pear_exp.report import rank_agreement

    markdown, stats = rank_agreement(rank_jobs(), "pass@1", ["pass@1", "greedy"])
    # seed 0: fully reversed (tau = rho = -1); seed 1: identical order (+1): mean 0, and the
    # t-interval of (-1, +1) is 12.706 * sqrt(2) / sqrt(2) = 12.706
    tau, tau_half, rho, rho_half, seeds = stats["pass@1"]
    assert (tau, rho, seeds) == (0.0, 0.0, 2)
    assert tau_half == pytest.approx(12.706, abs=1e-3) and rho_half == pytest.approx(12.706,
                                                                                  abs=1e-3)
    assert "greedy" not in stats  # constant after SFT: no ranking to correlate
    assert "| sft pass@1 | 2 | +0.00 ± 12.71 | +0.00 ± 12.71 |" in markdown


def test_reversals_are_named_with_both_paired_differences():
    from pear_exp.report import reversals

    jobs = [j for j in rank_jobs() if j["seed"] == 0]  # one seed: every pair reverses
    found = reversals(jobs, "pass@1", "pass@1")
    assert len(found) == 6  # C(4, 2) pairs
    assert found[0] == ("- none is ahead of token after SFT (+0.100 ± nan) and behind after RL "
                        "(-0.100 ± nan); 1 seeds")
    both = rank_jobs()  # seed 1 agrees with SFT: the RL means tie, so no pair reverses
    assert reversals(both, "pass@1", "pass@1") == []


def test_training_predictors_come_from_the_last_sft_log_at_or_before_each_checkpoint():
    from pear_exp.report import add_training_predictors

    summary = {"base": {}, "sft": {"pass@1": 0.5}, "sft@4": {"pass@1": 0.3}, "rl": {}}
    logs = {2: {"sft/nll": 2.0, "sft/delta_mean": -0.2}, 5: {"sft/nll": 1.5},
            6: {"sft/nll": 1.0, "sft/delta_mean": 0.1}}
    add_training_predictors(summary, logs, steps=6)
    assert summary["sft"] == {"pass@1": 0.5, "train_nll": 1.0, "delta_mean": 0.1}
    assert summary["sft@4"] == {"pass@1": 0.3, "train_nll": 2.0, "delta_mean": -0.2}  # step 2
    assert summary["base"] == {} and summary["rl"] == {}


def test_shifted_task_reversals_compare_the_sft_task_offline_with_the_rl_task_online():
    from pear_exp.report import reversals

    # none leads block on the SFT task after SFT (diffs 0.10, 0.11, 0.12) and after RL (0.1);
    # on the RL task after RL it trails (diffs -0.10, -0.12, -0.14)
    sft = {"none": [0.30, 0.32, 0.34], "block": [0.20, 0.21, 0.22]}
    shifted = {"none": [0.10, 0.10, 0.10], "block": [0.20, 0.22, 0.24]}
    rl = {"none": 0.5, "block": 0.4}
    jobs = jobs_of(*[({"weighting.level": lv}, seed,
                      {"sft": {"pass@1": sft[lv][seed]},
                       "rl": {"pass@1": rl[lv], "c4/pass@1": shifted[lv][seed]}})
                     for seed in range(3) for lv in ("none", "block")])
    assert reversals(jobs, "pass@1", "pass@1") == []  # the same task keeps its order
    # half-widths: t(0.975, 2) = 4.303 x sd / sqrt(3): sd 0.01 -> 0.025, sd 0.02 -> 0.050
    assert reversals(jobs, "pass@1", "c4/pass@1") == [
        "- none is ahead of block after SFT (+0.110 ± 0.025) and behind after RL "
        "(-0.120 ± 0.050); 3 seeds; clear (both intervals exclude 0)"]
