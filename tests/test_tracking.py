"""A real offline W&B run: config, namespaced metrics on stage step axes, the evaluation table,
and a resumed pipeline continuing the same run."""

import json
import os
import subprocess
import sys

import pytest

from tests.wandb_log import history, records


@pytest.mark.slow  # tens of seconds: the slow tier (CI runs it)
def test_offline_wandb_run_holds_config_metrics_and_tables(tmp_path):
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env["PEAR_EXP_CACHE"] = str(tmp_path / "cache")
    args = [sys.executable, "-m", "pear_exp", "+experiment=smoke", "logger=wandb",
            "logger.mode=offline", f"run_dir={run_dir}", "stages=[behavior,sft,evaluate]"]
    result = subprocess.run(args, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_file,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    run_id = json.loads((run_dir / "tracking.json").read_text())["wandb_run_id"]
    assert run_file.name == f"run-{run_id}.wandb"

    kinds = {}
    for r in records(run_file):
        kinds.setdefault(r.WhichOneof("record_type"), []).append(r)
    (run,) = kinds["run"]
    config = {u.key: json.loads(u.value_json) for u in run.run.config.update}
    assert config["weighting"]["level"] == "block"
    assert config["choices"]["weighting"] == "block"
    assert config["sft"]["steps"] == 6
    assert "smoke" == run.run.run_group and "weighting=block" in run.run.tags

    logged = history(run_file)
    sft_rows = [row for row in logged if "sft/loss" in row]
    assert [json.loads(row["sft/step"]) for row in sft_rows] == [2, 4, 6]
    assert all("sft/weight_ess" in row and row["sft/weight_hist/_type"] == '"histogram"'
               for row in sft_rows)
    key = "eval/countdown/sft/problems"
    (table,) = [row for row in logged if f"{key}/_type" in row]
    assert json.loads(table[f"{key}/_type"]) == "table-file"
    assert json.loads(table[f"{key}/nrows"]) == 16  # one row per held-out problem
    (table_file,) = (run_file.parent / "files" / "media" / "table").glob(f"{key}_*.table.json")
    content = json.loads(table_file.read_text())
    assert len(content["data"]) == 16 and {"problem_id", "correct", "n"} <= set(content["columns"])
    assert any("eval/countdown/pass@k_table/_type" in row for row in logged)  # the pass@k plot
    summary_keys = {u.key for r in kinds["summary"] for u in r.summary.update}
    assert {"eval/countdown/base/pass@1", "eval/countdown/sft/pass@2"} <= summary_keys

    # Running the same command again continues the same W&B run.
    again = subprocess.run(args, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((run_dir / "tracking.json").read_text())["wandb_run_id"] == run_id
    assert len(list((run_dir / "wandb").glob(f"offline-run-*-{run_id}"))) == 2
