"""Guards of a real run: a nan / inf stops SFT and RL before anything bad is saved (injected
here), and PEAR weight health is reported once."""

import logging
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

import pear_exp.train.grpo as rl_stage
import pear_exp.train.loop as train_loop
import pear_exp.train.sft as sft_stage
from pear_exp.config import RLConfig, SFTConfig, WeightingConfig, WeightLevel
from pear_exp.errors import NonFiniteError
from pear_exp.tasks.base import PerResponseGrading
from pear_exp.train.sft import train_sft
from pear_exp.weighting import pear_weights_with_stats
from tests.conftest import make_tiny_model
from tests.test_sft import rows_for


# ----------------------------------------------------------------------------- injections
def at_call(calls: set[int], original, corrupt):
    """`original` with its arguments passed through `corrupt` on the given (1-based) calls."""
    count = [0]

    def wrapped(*args, **kwargs):
        count[0] += 1
        if count[0] in calls:
            args, kwargs = corrupt(args, kwargs)
        return original(*args, **kwargs)

    return wrapped


def nan_behavior_logprob(args, kwargs):
    """pear_weights(target, behavior, mask, ...) with the first loss token's b_t = nan."""
    target, behavior, mask = args[:3]
    behavior = behavior.clone()
    row, col = mask.nonzero()[0].tolist()
    behavior[row, col] = float("nan")
    return (target, behavior, mask, *args[3:]), kwargs


class WeightSetter:
    """After the optimizer's `step`-th step, the first element of pick(optimizer) is `value`."""

    def __init__(self, step, value, pick=lambda optimizer: optimizer.param_groups[0]["params"][0]):
        self.step, self.value, self.pick, self.count = step, value, pick, 0

    def __call__(self, optimizer, args, kwargs):
        self.count += 1
        if self.count == self.step:
            with torch.no_grad():
                self.pick(optimizer).view(-1)[0] = self.value

    def __enter__(self):
        self.handle = register_optimizer_step_post_hook(self)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


# ----------------------------------------------------------------------------- SFT
SFT = SFTConfig(steps=6, batch_size=4, micro_batch_size=4, lr=1e-2, warmup_steps=1, log_every=1,
                checkpoint_every=2)  # one micro-batch a step: pear_weights call k is step k


def sft(tokenizer, rows, checkpoint_dir=None):
    model = make_tiny_model(tokenizer, seed=3)
    train_sft(model, rows, SFT, WeightingConfig(level=WeightLevel.token), pad_id=0, seed=0,
              checkpoint_dir=checkpoint_dir)
    return model


def test_sft_nan_behavior_logprob_stops_and_the_rerun_resumes(tokenizer, tmp_path, monkeypatch,
                                                              capsys):
    rows = rows_for(tokenizer, n=8)
    whole = sft(tokenizer, rows)  # uninterrupted, no checkpoints
    ckpt = tmp_path / "checkpoints"
    with monkeypatch.context() as m:
        m.setattr(sft_stage, "pear_weights",
                  at_call({5}, sft_stage.pear_weights, nan_behavior_logprob))
        with pytest.raises(NonFiniteError) as err:
            sft(tokenizer, rows, ckpt)
    # b_t = nan makes W nan on its row, hence the loss and every gradient
    assert str(err.value) == (
        "sft step 5: loss is nan (gradient norm nan); no checkpoint written; the last good "
        f"checkpoint is {ckpt}/step-4 and the same command resumes from it")
    assert sorted(p.name for p in ckpt.iterdir()) == ["step-4"]
    capsys.readouterr()
    resumed = sft(tokenizer, rows, ckpt)  # the same call, without the injection
    assert f"resuming from {ckpt}/step-4" in capsys.readouterr().out
    for (name, a), b in zip(whole.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), name
    assert sorted(p.name for p in ckpt.iterdir()) == ["step-6"]


def test_sft_non_finite_gradient_norm_stops_before_the_step(tokenizer, tmp_path, monkeypatch):
    ckpt = tmp_path / "checkpoints"
    norms = iter([0.5, 0.5, float("inf")])
    monkeypatch.setattr(train_loop, "clip_grad_norm", lambda params, clip: next(norms))
    with pytest.raises(NonFiniteError, match=(
            r"^sft step 3: gradient norm is inf \(loss \d+\.\d+\); no checkpoint written; the "
            rf"last good checkpoint is {ckpt}/step-2 and the same command resumes from it$")):
        sft(tokenizer, rows_for(tokenizer, n=8), ckpt)
    assert sorted(p.name for p in ckpt.iterdir()) == ["step-2"]


def test_sft_non_finite_weight_stops_and_no_checkpoint_holds_it(tokenizer, tmp_path):
    ckpt = tmp_path / "checkpoints"
    model = make_tiny_model(tokenizer, seed=3)
    weight = model.model.layers[0].mlp.up_proj.weight
    with WeightSetter(4, float("-inf"), lambda optimizer: weight):
        with pytest.raises(NonFiniteError) as err:
            train_sft(model, rows_for(tokenizer, n=8), SFT, WeightingConfig(), pad_id=0, seed=0,
                      checkpoint_dir=ckpt)
    assert str(err.value).startswith(
        "sft step 4: weight model.layers.0.mlp.up_proj.weight is inf after the optimizer step; "
        f"no checkpoint written; the last good checkpoint is {ckpt}/step-2 and")
    assert sorted(p.name for p in ckpt.iterdir()) == ["step-2"]
    state = torch.load(ckpt / "step-2" / "state.pt", weights_only=False)
    assert all(torch.isfinite(t).all() for t in state["model"].values())


def test_sft_non_finite_at_the_first_step_says_there_is_no_checkpoint(tokenizer, tmp_path,
                                                                      monkeypatch):
    monkeypatch.setattr(sft_stage, "pear_weights",
                        at_call({1}, sft_stage.pear_weights, nan_behavior_logprob))
    with pytest.raises(NonFiniteError, match=r"^sft step 1: loss is nan .*; there is no earlier "
                                             r"checkpoint: the same command restarts the stage$"):
        sft(tokenizer, rows_for(tokenizer, n=8), tmp_path / "checkpoints")
    assert not (tmp_path / "checkpoints").exists()


# ----------------------------------------------------------------------------- RL
class ParityTask(PerResponseGrading):
    """Rewards responses of even character length: mixed rewards from a random model."""

    def score(self, problem, response):
        return float(len(response) % 2 == 0)


def grpo(tokenizer, checkpoint_dir=None, steps=4):
    from pear_exp.rollout.hf import HFEngine
    from pear_exp.train.grpo import train_grpo
    from pear_exp.tasks.countdown import Countdown

    model = make_tiny_model(tokenizer, seed=2)
    bias = torch.zeros(len(tokenizer))  # responses that end, so rewards are mixed
    bias[tokenizer.convert_tokens_to_ids("<|im_end|>")] = 3.0
    model.lm_head.register_forward_hook(lambda module, inputs, logits: logits + bias)
    cfg = RLConfig(steps=steps, prompts_per_step=4, group_size=2, max_new_tokens=6, lr=1e-2,
                   skip_uniform_groups=False, eval_every=0, checkpoint_every=2)
    train_grpo(model, tokenizer, HFEngine(model, tokenizer, 64),
               Countdown().sample_problems(16, seed=0), ParityTask(), cfg, seed=0,
               system_prompt=None, sync_tolerance=1e-3, checkpoint_dir=checkpoint_dir)
    return model


def nan_loss(args, kwargs):
    """grpo_token_loss(logp, ...) with logp + nan: a nan loss whose gradient is nan too."""
    return (args[0] + float("nan"), *args[1:]), kwargs


def test_rl_nan_loss_stops_and_the_rerun_resumes(tokenizer, tmp_path, monkeypatch, capsys):
    whole = grpo(tokenizer)
    ckpt = tmp_path / "checkpoints"
    with monkeypatch.context() as m:  # one micro-batch a step: call k is step k
        m.setattr(rl_stage, "grpo_token_loss", at_call({3}, rl_stage.grpo_token_loss, nan_loss))
        with pytest.raises(NonFiniteError) as err:
            grpo(tokenizer, ckpt)
    assert str(err.value) == (
        "rl step 3: loss is nan (gradient norm nan); no checkpoint written; the last good "
        f"checkpoint is {ckpt}/step-2 and the same command resumes from it")
    assert sorted(p.name for p in ckpt.iterdir()) == ["step-2"]
    capsys.readouterr()
    resumed = grpo(tokenizer, ckpt)
    assert f"resuming from {ckpt}/step-2" in capsys.readouterr().out
    for (name, a), b in zip(whole.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), name


def test_rl_non_finite_weight_stops_before_the_engine_and_a_checkpoint(tokenizer, tmp_path):
    ckpt = tmp_path / "checkpoints"
    with WeightSetter(4, float("nan")):  # the policy's first parameter: the embeddings
        with pytest.raises(NonFiniteError) as err:
            grpo(tokenizer, ckpt)
    assert str(err.value).startswith(
        "rl step 4: weight model.embed_tokens.weight is nan after the optimizer step; no "
        f"checkpoint written; the last good checkpoint is {ckpt}/step-2 and")
    assert sorted(p.name for p in ckpt.iterdir()) == ["step-2"]


# ----------------------------------------------------------------------------- weight health
def test_floor_fraction_stat_by_hand():
    # one row of 5 loss tokens, every p - b = -1 (clipped to -0.08), gamma 1, token level:
    # log G_t = -0.08 (5 - t) = -0.32, -0.24, -0.16, -0.08, 0; the floor -0.2 clips t = 1, 2
    p = torch.full((1, 5), -1.0)
    _, s = pear_weights_with_stats(p, torch.zeros(1, 5), torch.ones(1, 5), level="token",
                                   gamma=1.0, log_weight_clip=(-0.2, 5.0))
    assert s["log_weight_floor_frac"] == pytest.approx(2 / 5)
    # the ceiling is not the floor: a +0.3 delta per token, ceiling 0.5 clips t = 1, 2, 3
    _, s = pear_weights_with_stats(-p, torch.zeros(1, 5), torch.ones(1, 5), level="token",
                                   gamma=1.0, log_weight_clip=(-0.2, 0.5))
    assert s["log_weight_floor_frac"] == 0.0 and s["log_weight_clip_frac"] == pytest.approx(3 / 5)


def test_weight_health_thresholds_by_hand():
    cfg = WeightingConfig()  # delta clip -0.08, floor -10, target temperature 1
    healthy = {"log_weight_floor_frac": 0.5, "weight_ess": 0.1, "delta_mean": -0.02}
    assert sft_stage.weight_health(healthy, cfg) is None  # both thresholds are strict
    text = sft_stage.weight_health({**healthy, "log_weight_floor_frac": 0.75}, cfg)
    assert text.startswith("PEAR weights: 75% of the loss tokens sit at the log-weight floor "
                           "(log G clipped at log_weight_clip[0]=-10: weight 4.5e-05) (mean "
                           "p - b per token -0.02). Check: behavior.temperature and "
                           "behavior.top_p against weighting.target_temperature=1 ")
    assert "(delta_clip[0]=-0.08 reaches the floor after 125 tokens)" in text  # 10 / 0.08
    text = sft_stage.weight_health({**healthy, "weight_ess": 0.04}, cfg)
    assert text.startswith("PEAR weights: the weights' effective sample size is 4.0% of the "
                           "loss tokens (mean")


def test_degenerate_weights_are_reported_once(tokenizer, caplog):
    # b_t = 0 on every token: p - b = log p ~ log(1/103) for a random model, clipped to -0.08;
    # gamma 1 and a floor of -0.2: a token with 3 or more loss tokens after it is floored
    rows = rows_for(tokenizer, n=8)
    for r in rows:
        r["behavior_logprobs"] = [0.0] * len(r["behavior_logprobs"])
    weighting = WeightingConfig(level=WeightLevel.token, gamma=1.0, log_weight_clip=[-0.2, 5.0])
    cfg = SFTConfig(steps=3, batch_size=8, micro_batch_size=8, lr=1e-3, warmup_steps=1,
                    log_every=1)
    logged = []
    with caplog.at_level(logging.WARNING, logger="pear_exp.train.sft"):
        train_sft(make_tiny_model(tokenizer, seed=3), rows, cfg, weighting, pad_id=0, seed=0,
                  log=lambda m, s: logged.append(m))
    lengths = [sum(r["loss_mask"]) for r in rows]  # every row is in each step's batch
    expected = sum(n - 3 for n in lengths) / sum(lengths)
    assert all(m["log_weight_floor_frac"] == pytest.approx(expected) for m in logged)
    assert expected > 0.5
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and warnings[0].startswith(
        f"sft step 1: PEAR weights: {expected:.0%} of the loss tokens sit at the log-weight floor")
    assert math.isfinite(logged[-1]["weight_ess"])


# ----------------------------------------------------------------------------- several ranks
def test_a_nan_on_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    """torchrun, 2 processes, FSDP (tests/nonfinite_worker.py): the nan or inf is on rank 1 only;
    a rank that went on would wait for the other in the next collective and time out."""
    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "stops"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "tests.nonfinite_worker", str(out)], cwd=root, capture_output=True, text=True,
        timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (Path(f"{out}.rank{r}").read_text().splitlines() for r in (0, 1))
    end = "; no checkpoint written"
    assert rank0[0] == rank1[0] == f"sft step 2: loss is nan (gradient norm nan){end}"
    assert rank1[1] == ("sft step 3: weight model.embed_tokens.weight is inf after the optimizer "
                        f"step{end}")  # rank 1 holds the shard
    assert rank0[1] == ("sft step 3: a weight on another rank is not finite after the "
                        f"optimizer step{end}")
    assert rank0[2] == rank1[2] == f"rl step 2: loss is nan (gradient norm nan){end}"


# ----------------------------------------------------------------------------- the command
INJECT = """
import pear_exp.stages.sft as sft_stage
import pear_exp.train.loop as loop
train, clip, calls = sft_stage.train_sft, loop.clip_grad_norm, []
def nan_at_step_3(params, max_norm):  # the gradient norm of step 3 is nan
    calls.append(1)
    return float("nan") if len(calls) == 3 else clip(params, max_norm)
def train_sft(*args, **kwargs):  # in the SFT stage, not in the tiny models' pretraining
    loop.clip_grad_norm = nan_at_step_3
    try:
        return train(*args, **kwargs)
    finally:
        loop.clip_grad_norm = clip
sft_stage.train_sft = train_sft
from pear_exp.__main__ import cli
cli()
"""


@pytest.mark.slow  # tens of seconds: the slow tier (CI runs it)
def test_the_command_stops_with_the_message_and_the_same_command_resumes(tmp_path):
    run_dir = tmp_path / "run"
    args = ["+experiment=smoke", "logger=none", "stages=[behavior,sft]", "sft.checkpoint_every=2",
            f"run_dir={run_dir}"]
    env = {**os.environ, "PEAR_EXP_CACHE": str(tmp_path / "cache")}
    first = subprocess.run([sys.executable, "-c", INJECT, *args], capture_output=True, text=True,
                           env=env, cwd=tmp_path, timeout=900)
    checkpoints = run_dir / "sft" / "checkpoints"
    assert first.returncode == 1
    assert re.fullmatch(  # the message alone, no traceback
        r"error: sft step 3: gradient norm is nan \(loss \d+\.\d+\); no checkpoint written; the "
        rf"last good checkpoint is {re.escape(str(checkpoints))}/step-2 and the same command "
        "resumes from it", first.stderr.splitlines()[-1])
    assert "Traceback" not in first.stderr
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-2"]
    assert not (run_dir / "sft" / "model").exists() and not (run_dir / "sft" / "DONE").exists()
    again = subprocess.run([sys.executable, "-m", "pear_exp", *args], capture_output=True,
                           text=True, env=env, cwd=tmp_path, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming from {checkpoints}/step-2" in again.stdout
    assert (run_dir / "sft" / "DONE").exists()
