"""Sweeps beyond the basic launcher: the SLURM launcher config composes, and the same submitit
code path runs a sweep here with its local executor."""

import json

import pytest
from hydra import compose, initialize_config_dir

from pear_exp.__main__ import CONF_DIR
from pear_exp.config import register_configs
from tests.test_pipeline import run_cli


def test_slurm_launcher_config_composes():
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["hydra/launcher=slurm"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.gpus_per_node == 8 and launcher.nodes == 1 and "partition" in launcher


@pytest.mark.slow
def test_submitit_local_executor_runs_a_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(["--multirun", "hydra/launcher=local", "+experiment=smoke", "logger=none",
                      "stages=[behavior,sft,evaluate]", "seed=0,1", f"hydra.sweep.dir={sweep}"],
                     tmp_path / "cache", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Submitit 'local' sweep" in result.stdout + result.stderr
    summaries = sorted(sweep.glob("*/summary.json"))
    assert len(summaries) == 2
    assert all(set(json.loads(p.read_text())) == {"base", "sft"} for p in summaries)
    assert list((sweep / ".submitit").iterdir())  # submitit's own job folders
