"""Kill -9 during SFT and during RL, rerun the same command: the finished run equals an
uninterrupted one (weights and final metrics)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

ARGS = ["+experiment=smoke", "logger=none", "deterministic=true", "sft.steps=60", "sft.checkpoint_every=5",
        "sft.log_every=5", "rl.steps=12", "rl.checkpoint_every=3", "rl.eval_every=6"]


def start(run_dir, cache, cwd):
    env = {**os.environ, "PEAR_EXP_CACHE": str(cache)}
    return subprocess.Popen([sys.executable, "-m", "pear_exp", *ARGS, f"run_dir={run_dir}"],
                            env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def kill_when(proc, path, timeout=300):
    """SIGKILL the process as soon as `path` exists; the stage must still be running then."""
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, f"finished before {path} appeared: {proc.stderr.read()[-2000:]}"
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def finish(proc):
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return out


def same_weights(a, b):
    wa, wb = load_file(a), load_file(b)
    assert wa.keys() == wb.keys()
    return all((wa[k] == wb[k]).all() for k in wa)


def final_records(run_dir):
    """The last logged record of each stage, without wall-clock measurements."""
    last = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        last[r["stage"]] = {k: v for k, v in r.items() if "per_s" not in k and "seconds" not in k}
    return last


@pytest.mark.slow  # tens of seconds: the slow tier (CI runs it)
def test_kill_during_sft_and_rl_then_resume_matches_an_uninterrupted_run(tmp_path):
    cache = tmp_path / "cache"
    whole = tmp_path / "whole"
    finish(start(whole, cache, tmp_path))

    resumed = tmp_path / "resumed"
    proc = start(resumed, cache, tmp_path)
    kill_when(proc, resumed / "sft" / "checkpoints" / "step-20")
    assert not (resumed / "sft" / "DONE").exists()
    proc = start(resumed, cache, tmp_path)
    kill_when(proc, resumed / "rl" / "checkpoints" / "step-6")
    assert (resumed / "sft" / "DONE").exists() and not (resumed / "rl" / "DONE").exists()
    out = finish(start(resumed, cache, tmp_path))
    assert "resuming from" in out

    for stage in ("sft", "rl"):
        assert same_weights(whole / stage / "model" / "model.safetensors",
                            resumed / stage / "model" / "model.safetensors"), stage
    assert json.loads((whole / "summary.json").read_text()) == json.loads(
        (resumed / "summary.json").read_text())
    assert final_records(whole) == final_records(resumed)
    assert set(final_records(whole)) == {"sft", "rl", "rl_eval", "eval"}
