"""GRPO: hand-computed losses for every aggregation mode, and micro-batch equivalence."""

import math

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from pear_exp.config import LossAggregation, RLConfig
from pear_exp.train.distributed import World
from pear_exp.train.loop import Loop
from pear_exp.losses import aggregation_coefficients, group_advantages, grpo_token_loss
from pear_exp.policy import TokenLogProbs
from pear_exp.train.grpo import RolloutBatch, update
from pear_exp.tasks.base import PerResponseGrading
from tests.conftest import make_tiny_model


def test_group_advantages_hand_computed():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    # group 0: mean 0.5, population std 0.5 -> +-1; group 1: all equal -> 0
    expected = torch.tensor([[1.0, -1.0, -1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(group_advantages(rewards, scale=True), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(group_advantages(rewards, scale=False),
                               torch.tensor([[0.5, -0.5, -0.5, 0.5], [0.0] * 4]))


# Two sequences: lengths 2 and 1 (mask), per-token losses l.
MASK = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
L = torch.tensor([[0.3, 0.6], [0.9, 5.0]])  # 5.0 sits on padding and must not count


@pytest.mark.parametrize("mode, expected", [
    ("token_mean", (0.3 + 0.6 + 0.9) / 3),                      # all tokens of the step
    ("seq_mean_token_mean", ((0.3 + 0.6) / 2 + 0.9 / 1) / 2),   # mean of per-sequence means
    ("seq_mean_token_sum_norm", (0.3 + 0.6 + 0.9) / (2 * 4)),   # / (sequences * max_new_tokens=4)
])
def test_aggregation_modes_hand_computed(mode, expected):
    coef = aggregation_coefficients(MASK, mode, max_new_tokens=4)
    assert (coef * L).sum().item() == pytest.approx(expected)


def test_unknown_aggregation_is_refused():
    with pytest.raises(ValueError, match="valid: token_mean"):
        aggregation_coefficients(MASK, "token-sum", 4)


def test_clipped_ratio_loss_hand_computed():
    # ratios e^0.5 = 1.6487 (A = +1: clipped at 1 + 0.28) and e^-0.5 = 0.6065 (A = -1: clipped
    # at 1 - 0.2 = 0.8, min(-0.6065, -0.8) = -0.8) and e^0.1 = 1.1052 (A = +2: inside the clip)
    logp = torch.tensor([[0.5, -0.5, 0.1]])
    old = torch.zeros(1, 3)
    adv = torch.tensor([[1.0, -1.0, 2.0]])
    loss, stats = grpo_token_loss(logp, old, adv, mask=torch.ones(1, 3), clip_low=0.2,
                                  clip_high=0.28)
    torch.testing.assert_close(loss, torch.tensor([[-1.28, 0.8, -2 * math.exp(0.1)]]))
    torch.testing.assert_close(stats["clipped"], torch.tensor([[1.0, 1.0, 0.0]]))


def test_tis_and_kl_hand_computed():
    logp = torch.tensor([[0.0, 0.0]], requires_grad=True)
    old = torch.zeros(1, 2)
    engine = torch.tensor([[-1.0, 0.5]])  # exp(old - engine) = e^1 -> capped at 2; e^-0.5
    ref = torch.tensor([[math.log(2.0), 0.0]])  # k3: 2 - ln 2 - 1 and 0
    loss, stats = grpo_token_loss(logp, old, torch.ones(1, 1), mask=torch.ones(1, 2), clip_low=0.2,
                                  clip_high=0.2, engine_logprobs=engine, tis_cap=2.0,
                                  ref_logprobs=ref, kl_coef=0.1)
    tis = torch.tensor([[2.0, math.exp(-0.5)]])
    kl = torch.tensor([[1 - math.log(2.0), 0.0]])
    torch.testing.assert_close(stats["tis"], tis)
    torch.testing.assert_close(stats["kl"], kl)
    torch.testing.assert_close(loss, -tis + 0.1 * kl)
    # d/dlogp of -ratio*A*tis at ratio 1 is -tis; of k3 at log r = ln 2 is -(2 - 1) = -1
    loss.sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-2.0 - 0.1, -math.exp(-0.5)]]))


def rollout_batch(tokenizer, n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows, adv = [], []
    for i in range(n):
        prompt = torch.randint(3, 100, (4 + i % 3,), generator=g).tolist()
        resp = torch.randint(3, 100, (2 + (i * 5) % 7,), generator=g).tolist()
        rows.append({"input_ids": prompt + resp, "loss_mask": [0] * len(prompt) + [1] * len(resp),
                     "behavior_logprobs": [0.0] * len(prompt)
                     + (-torch.rand(len(resp), generator=g) * 3 - 2).tolist()})
        adv.append(float(i % 3) - 1.0)
    return RolloutBatch(rows, adv, torch.zeros(2, 4), [len(r["input_ids"]) for r in rows], [])


def grad_of_update(tokenizer, batch, micro, **rl):
    model = make_tiny_model(tokenizer, seed=4).train()
    cfg = RLConfig(micro_batch_size=micro, lr=0.0, grad_clip=1e9, temperature=0.7, **rl)
    params = list(model.parameters())
    optimizer = torch.optim.AdamW(params, lr=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    seen = []
    handle = register_optimizer_step_pre_hook(
        lambda opt, a, k: seen.append({n: p.grad.clone() for n, p in model.named_parameters()}))
    reference = TokenLogProbs(make_tiny_model(tokenizer, seed=5)) if rl.get("kl_coef", 0) else None
    try:
        loop = Loop(model, TokenLogProbs(model), params, optimizer, schedule, start=0,
                    gradient_checkpointing=False)
        update(loop, reference, batch, cfg, torch.device("cpu"), tokenizer.pad_token_id, World())
    finally:
        handle.remove()
    return seen


@pytest.mark.parametrize("aggregation", list(LossAggregation))
def test_one_batch_of_8_equals_8_micro_batches_of_1(tokenizer, aggregation):
    batch = rollout_batch(tokenizer)
    kwargs = dict(loss_aggregation=aggregation, kl_coef=0.05, tis_cap=1.5)
    whole = grad_of_update(tokenizer, batch, 8, **kwargs)
    single = grad_of_update(tokenizer, batch, 1, **kwargs)
    assert len(whole) == len(single) == 1
    for name, g in whole[0].items():
        assert g.abs().sum() > 0 or "norm" in name
        torch.testing.assert_close(single[0][name], g, atol=1e-6, rtol=1e-4)


def test_epochs_take_that_many_optimizer_steps(tokenizer):
    assert len(grad_of_update(tokenizer, rollout_batch(tokenizer), 4, epochs=3)) == 3


def model_that_stops(tokenizer, bias_value: float):
    """A random tiny model rarely ends its turn, and truncated responses score 0: bias its
    logits towards <|im_end|> so that responses end and rewards are mixed."""
    model = make_tiny_model(tokenizer, seed=2)
    bias = torch.zeros(len(tokenizer))
    bias[tokenizer.convert_tokens_to_ids("<|im_end|>")] = bias_value
    model.lm_head.register_forward_hook(lambda module, inputs, logits: logits + bias)
    return model


class StaleEngine:
    """An engine whose weight sync silently does nothing: it keeps sampling the old policy."""

    def __init__(self, model, tokenizer):
        import copy

        from pear_exp.rollout.hf import HFEngine

        self.inner = HFEngine(copy.deepcopy(model), tokenizer, 64)

    def generate(self, *args, **kwargs):
        return self.inner.generate(*args, **kwargs)

    def sync_weights(self, model):
        pass


class ParityTask(PerResponseGrading):
    """Rewards responses of even character length: a random model gets mixed rewards, so the
    policy gradient is non-zero from the first step (the Countdown verifier would give all 0)."""

    def score(self, problem, response):
        return float(len(response) % 2 == 0)


def run_grpo(tokenizer, engine_factory, **rl):
    from pear_exp.rollout.hf import HFEngine
    from pear_exp.train.grpo import train_grpo
    from pear_exp.tasks.countdown import Countdown

    task = ParityTask()
    problems = Countdown().sample_problems(16, seed=0)
    model = model_that_stops(tokenizer, 3.0)
    engine = engine_factory(model, tokenizer) if engine_factory else HFEngine(model, tokenizer, 64)
    logged, evaluated = [], []
    cfg = RLConfig(steps=2, prompts_per_step=4, group_size=2, max_new_tokens=6,
                   skip_uniform_groups=False, eval_every=2, **rl)
    train_grpo(model, tokenizer, engine, problems, task, cfg, seed=0, system_prompt=None,
               sync_tolerance=1e-3, log=lambda m, s: logged.append((s, m)),
               evaluate=lambda s: evaluated.append(s))
    return logged, evaluated


def test_rl_stage_runs_logs_and_evaluates(tokenizer):
    logged, evaluated = run_grpo(tokenizer, None, lr=1e-2, kl_coef=0.1)
    assert [s for s, _ in logged] == [1, 2] and evaluated == [2]
    # the hf engine generates with the trained model itself: probed after the first update only
    assert logged[0][1]["sync_logprob_diff_max"] < 1e-4
    assert all("sync_logprob_diff_max" not in m for _, m in logged[1:])
    for _, m in logged:
        assert m["grad_norm"] > 0
        for key in ("kl", "reward_mean", "accuracy", "response_length", "clip_frac", "entropy",
                    "rollout_tokens_per_s", "train_tokens_per_s", "kept_frac", "tis_mean"):
            assert math.isfinite(m[key]), key


def test_stale_engine_weights_stop_the_run(tokenizer):
    with pytest.raises(RuntimeError, match=r"rl step 1: .* refusing to train on stale weights"):
        run_grpo(tokenizer, StaleEngine, lr=0.05, warmup_steps=1)


class ShortAnswerTask(PerResponseGrading):
    def score(self, problem, response):
        return float(len(response) <= 3)


def test_grpo_raises_a_learnable_reward(tokenizer):
    """End to end through rollouts, rewards, advantages and updates: rewarding short answers
    must make answers short (reward from about 0.2 to above 0.6 in 15 steps)."""
    from pear_exp.rollout.hf import HFEngine
    from pear_exp.train.grpo import train_grpo
    from pear_exp.tasks.countdown import Countdown

    model = model_that_stops(tokenizer, 2.0)
    rewards = []
    cfg = RLConfig(steps=15, prompts_per_step=8, group_size=8, max_new_tokens=12, lr=5e-3,
                   eval_every=0)
    train_grpo(model, tokenizer, HFEngine(model, tokenizer, 256), Countdown().sample_problems(32, 0),
               ShortAnswerTask(), cfg, seed=0, system_prompt=None, sync_tolerance=1e-3,
               log=lambda m, s: rewards.append(m["reward_mean"]))
    assert sum(rewards[:3]) / 3 < 0.4
    assert sum(rewards[-3:]) / 3 > 0.6


def test_huge_differences_off_the_mask_leave_the_loss_and_gradients_finite():
    """Prompt and pad positions may hold any log-prob (the engine reports 0 there, a padded
    forward anything): exp of a huge difference there must not reach the loss as inf * 0 = NaN."""
    mask = torch.tensor([[0.0, 1.0, 1.0, 0.0]])  # prompt, two response tokens, pad
    logp = torch.tensor([[200.0, -0.5, 0.1, -300.0]], requires_grad=True)
    old = torch.tensor([[-200.0, -0.5, 0.0, 300.0]])  # exp(+-400) overflows float32
    ref = torch.tensor([[300.0, -0.5, 0.1, 400.0]])
    engine = torch.tensor([[-500.0, -0.5, 0.0, 500.0]])
    loss, stats = grpo_token_loss(logp, old, torch.ones(1, 1), mask=mask, clip_low=0.2,
                                  clip_high=0.28, engine_logprobs=engine, tis_cap=2.0,
                                  ref_logprobs=ref, kl_coef=0.1)
    total = (loss * mask).sum()
    # on the mask: ratio 1 (k3 0) and e^0.1 (inside the clip, k3 e^0 - 0 - 1 = 0): -(1 + e^0.1)
    assert total.item() == pytest.approx(-(1 + math.exp(0.1)), rel=1e-6)
    total.backward()
    assert torch.isfinite(logp.grad).all() and (logp.grad[0, [0, 3]] == 0).all()
    assert all(torch.isfinite(v).all() for v in stats.values())
