"""Multi-process training (torchrun, gloo backend, 2 processes) gives the result of one process.

tests/distributed_worker.py runs PEAR-weighted SFT and then GRPO (hf engine on rank 0, 2 epochs
per batch, KL, uneven micro-batch counts); it is run once as a plain process and once under
torchrun for each strategy. Logged losses and gradient norms must agree (a missing or doubled
world-size factor would change them), and the weights must agree up to float summation order.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def run(cmd, cwd=ROOT, **env):
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1", **env})
    assert out.returncode == 0, out.stderr[-4000:]
    return out


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    path = tmp_path_factory.mktemp("single") / "result.pt"
    run([sys.executable, "-m", "tests.distributed_worker", str(path), "ddp"])
    return torch.load(path, weights_only=False)


def assert_same_training(one, two):
    assert (one["world_size"], two["world_size"]) == (1, 2)
    for stage, atol in (("sft", 1e-4), ("rl", 5e-4)):
        assert one[stage].keys() == two[stage].keys()
        for name in one[stage]:
            torch.testing.assert_close(two[stage][name], one[stage][name], atol=atol, rtol=0)
    # the tolerances are far below how far the RL steps moved the weights
    rl_move = max((one["rl"][k] - one["sft"][k]).abs().max().item() for k in one["rl"])
    assert rl_move > 20 * 5e-4
    # (pad_frac and the PEAR diagnostics describe each rank's share of a step: not compared)
    for key, logs in (("sft_logs", ("loss", "nll", "grad_norm", "lr")),
                      ("rl_logs", ("reward_mean", "loss", "grad_norm", "kl", "clip_frac",
                                   "entropy", "tis_mean"))):
        assert len(one[key]) == len(two[key]) == 3
        for a, b in zip(one[key], two[key]):
            for name in logs:
                assert b[name] == pytest.approx(a[name], rel=1e-4, abs=1e-6), (key, name)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_train_like_one(single, strategy, tmp_path):
    path = tmp_path / "result.pt"
    run(TORCHRUN + ["-m", "tests.distributed_worker", str(path), strategy])
    assert_same_training(single, torch.load(path, weights_only=False))


@pytest.mark.slow  # tens of seconds: the slow tier (CI runs it)
def test_pipeline_with_two_ranks_matches_a_single_process(tmp_path):
    """`torchrun -m pear_exp` (FSDP) and a 2-task submitit job (DDP): rank 0 samples, evaluates
    and writes, both ranks train; the checkpoints equal the single-process ones and the run
    directory holds one run's records."""
    cache = tmp_path / "cache"
    common = ["+experiment=smoke", "logger=none", "behavior.reuse=false"]  # rank 0 samples
    run([sys.executable, "-m", "pear_exp", *common, f"run_dir={tmp_path / 'one'}"],
        cwd=tmp_path, PEAR_EXP_CACHE=str(cache))
    two = run(TORCHRUN + ["-m", "pear_exp", *common, f"run_dir={tmp_path / 'two'}",
                          "distributed.strategy=fsdp"], cwd=tmp_path, PEAR_EXP_CACHE=str(cache))
    assert two.stdout.count("held-out accuracy") == 1  # the summary table, from rank 0 only
    # the same through a SLURM-style launcher: submitit's local executor with 2 tasks per job,
    # which become 2 ranks through submitit's environment (no torchrun)
    run([sys.executable, "-m", "pear_exp", "--multirun", "hydra/launcher=local",
         "hydra.launcher.tasks_per_node=2", f"hydra.sweep.dir={tmp_path / 'sweep'}", *common,
         "distributed.strategy=ddp"], cwd=tmp_path, PEAR_EXP_CACHE=str(cache))
    logs = sorted((tmp_path / "sweep" / ".submitit").glob("*/*_log.out"))
    assert [log.read_text().count("held-out accuracy") for log in logs] == [1, 0]
    (swept,) = [p for p in (tmp_path / "sweep").iterdir() if p.name.startswith("0_")]
    for run_dir in (tmp_path / "two", swept):
        for stage in ("sft", "rl"):
            a = load_file(tmp_path / "one" / stage / "model" / "model.safetensors")
            b = load_file(run_dir / stage / "model" / "model.safetensors")
            assert a.keys() == b.keys()  # tied weights saved once, as save_pretrained does
            for name in a:
                torch.testing.assert_close(b[name], a[name], atol=1e-4, rtol=0)
    records = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["stage"] == "sft"] == [2, 4, 6]
    summary_one = json.loads((tmp_path / "one" / "summary.json").read_text())
    assert json.loads((tmp_path / "two" / "summary.json").read_text()).keys() == summary_one.keys()


@pytest.mark.slow  # tens of seconds: the slow tier (CI runs it)
@pytest.mark.vllm
def test_vllm_engine_inside_a_torchrun_job(single, tmp_path):
    """Rank 0's vLLM engine runs out of process (it must not join the trainers' process group)
    and receives the weights after every update: the parity probe passes after updates that
    moved the weights (vLLM samples other rollouts than hf, so RL is not compared with hf)."""
    pytest.importorskip("vllm")
    path = tmp_path / "result.pt"
    run(TORCHRUN + ["-m", "tests.distributed_worker", str(path), "ddp", "vllm"])
    result = torch.load(path, weights_only=False)
    assert len(result["rl_logs"]) == 3
    assert all(m["sync_logprob_diff_max"] < 1e-4 for m in result["rl_logs"])
    assert max((result["rl"][k] - result["sft"][k]).abs().max().item() for k in result["rl"]) > 1e-2
    for name in single["sft"]:
        torch.testing.assert_close(result["sft"][name], single["sft"][name], atol=1e-4, rtol=0)
