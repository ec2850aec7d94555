"""The SFT step: the PEAR objective sum W l / N, exact under any micro-batch split."""

import math

import pytest
import torch

from torch.optim.optimizer import register_optimizer_step_pre_hook

from pear_exp.config import Normalization, SFTConfig, WeightingConfig, WeightLevel
from pear_exp.losses import token_logprobs, weighted_nll_sum
from pear_exp.models import prompt_ids, response_ids
from pear_exp.data import collate, length_grouped_batches
from pear_exp.train.loop import lr_lambda
from pear_exp.train.sft import train_sft
from pear_exp.weighting import pear_weights
from tests.conftest import make_tiny_model


def rows_for(tokenizer, n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        p = prompt_ids(tokenizer, f"Make {10 + i} from {i} {i + 1} {2 * i}")
        r = response_ids(tokenizer, f"{i}+{i + 1}={2 * i + 1}" + "x" * (i % 3))
        b = (-torch.rand(len(r), generator=g) * 2).tolist()  # behavior log-probs in (-2, 0]
        rows.append({"input_ids": p + r, "loss_mask": [0] * len(p) + [1] * len(r),
                     "behavior_logprobs": [0.0] * len(p) + b})
    return rows


def test_token_logprobs_hand_computed():
    # vocab 2, logits favour token 1 at step 0 and token 0 at step 1; input ids [0, 1, 0].
    logits = torch.tensor([[[0.0, math.log(3.0)], [math.log(4.0), 0.0], [0.0, 0.0]]])
    ids = torch.tensor([[0, 1, 0]])
    # p(1 | first) = 3/4, p(0 | second) = 4/5; position 0 has no prediction.
    expected = torch.tensor([[0.0, math.log(0.75), math.log(0.8)]])
    torch.testing.assert_close(token_logprobs(logits, ids), expected)
    # temperature 2: logits halved -> p(1) = sqrt(3)/(1+sqrt(3)), p(0) = 2/(2+1)
    expected_t2 = torch.tensor([[0.0, math.log(3**0.5 / (1 + 3**0.5)), math.log(2 / 3)]])
    torch.testing.assert_close(token_logprobs(logits, ids, temperature=2.0), expected_t2)


def test_weighted_nll_sum_hand_computed():
    logp = torch.tensor([[0.0, -1.0, -2.0], [-0.5, -0.5, 0.0]])
    w = torch.tensor([[0.0, 2.0, 0.5], [1.0, 0.0, 0.0]])
    assert weighted_nll_sum(logp, w).item() == pytest.approx(2.0 * 1.0 + 0.5 * 2.0 + 0.5)


def test_lr_schedule_warmup_then_cosine_to_floor():
    f = lr_lambda(warmup_steps=4, total_steps=14, min_ratio=0.1)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(9) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the cosine
    assert f(14) == pytest.approx(0.1) and f(100) == pytest.approx(0.1)


def test_length_grouped_batches_cover_each_epoch_once():
    lengths = [5, 1, 9, 3, 7, 2, 8, 4]
    stream = length_grouped_batches(lengths, batch_size=2, seed=0, window=2)
    epoch = [next(stream) for _ in range(4)]
    assert sorted(i for b in epoch for i in b) == list(range(8))
    # within a window of 2 batches the 4 examples are sorted by length before chunking
    for b in epoch:
        assert len(b) == 2


def grads_after_one_step(tokenizer, rows, micro, weighting, normalization=Normalization.tokens,
                         model=None, reference=None, **sft_overrides):
    model = model or make_tiny_model(tokenizer, seed=3)
    cfg = SFTConfig(steps=1, batch_size=8, micro_batch_size=micro, lr=0.0, warmup_steps=1,
                    grad_clip=1e9, log_every=1, **sft_overrides)
    captured = {}

    def capture(optimizer, args, kwargs):  # the gradient the optimizer sees, after clipping
        captured.update({n: p.grad.clone() for n, p in model.named_parameters()})

    handle = register_optimizer_step_pre_hook(capture)
    try:
        w = WeightingConfig(level=weighting, block_size=2, gamma=0.9, normalization=normalization)
        train_sft(model, rows, cfg, w, pad_id=tokenizer.pad_token_id, seed=0, reference=reference)
    finally:
        handle.remove()
    return captured, model


@pytest.mark.parametrize("level", [WeightLevel.none, WeightLevel.block, WeightLevel.sequence,
                                   WeightLevel.dft, WeightLevel.iw_sft, WeightLevel.iw_sft_token])
@pytest.mark.parametrize("normalization", [Normalization.tokens, Normalization.weights])
def test_one_batch_of_8_equals_8_micro_batches_of_1(tokenizer, level, normalization):
    rows = rows_for(tokenizer)
    full, _ = grads_after_one_step(tokenizer, rows, 8, level, normalization)
    split, _ = grads_after_one_step(tokenizer, rows, 1, level, normalization)
    for name in full:
        torch.testing.assert_close(split[name], full[name], atol=1e-6, rtol=1e-4)


def assert_grads_of_written_loss(tokenizer, rows, grads, loss_of, with_logits=False):
    """The trainer's gradient `grads` equals autograd of `loss_of(logp, batch)` (with_logits:
    `loss_of(logp, batch, logits)`) on one padded batch through the same initial model."""
    model = make_tiny_model(tokenizer, seed=3).train()
    batch = collate(rows, tokenizer.pad_token_id)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logp = token_logprobs(logits, batch["input_ids"])
    (loss_of(logp, batch, logits) if with_logits else loss_of(logp, batch)).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, atol=1e-6, rtol=1e-4)


def test_gradient_is_that_of_sum_w_l_over_n(tokenizer):
    """Independent route: autograd of the PEAR loss written out on one padded batch."""
    rows = rows_for(tokenizer)
    grads, _ = grads_after_one_step(tokenizer, rows, 4, WeightLevel.token)

    def pear_loss(logp, batch):
        w = pear_weights(logp.detach(), batch["behavior_logprobs"], batch["loss_mask"],
                         level="token", gamma=0.9)
        return -(w * logp).sum() / batch["loss_mask"].sum()

    assert_grads_of_written_loss(tokenizer, rows, grads, pear_loss)


def test_dft_gradient_is_that_of_its_loss_written_out(tokenizer):
    """Independent route: DFT's loss as its paper writes it, -sum_t sg(p_t) log p_t / N, on one
    padded batch, against the trainer's 2 micro-batches of 4."""
    rows = rows_for(tokenizer)
    grads, _ = grads_after_one_step(tokenizer, rows, 4, WeightLevel.dft)

    def dft_loss(logp, batch):
        mask = batch["loss_mask"]
        return -(logp.exp().detach() * logp * mask).sum() / mask.sum()

    assert_grads_of_written_loss(tokenizer, rows, grads, dft_loss)


def test_training_lowers_the_loss(tokenizer):
    rows = rows_for(tokenizer, n=16)
    model = make_tiny_model(tokenizer, seed=1)
    logged = []
    cfg = SFTConfig(steps=40, batch_size=8, micro_batch_size=4, lr=3e-3, warmup_steps=4, log_every=1)
    train_sft(model, rows, cfg, WeightingConfig(level=WeightLevel.block), pad_id=0, seed=0,
              log=lambda m, step: logged.append(m))
    assert len(logged) == 40
    assert logged[-1]["nll"] < 0.5 * logged[0]["nll"]
    for key in ("weight_mean", "weight_ess", "delta_mean", "grad_norm", "lr", "loss_tokens_per_s"):
        assert math.isfinite(logged[-1][key])


def test_batch_size_must_be_a_multiple_of_micro_batch(tokenizer):
    cfg = SFTConfig(steps=1, batch_size=8, micro_batch_size=3, padding_free=False)
    with pytest.raises(ValueError, match="multiple"):
        train_sft(make_tiny_model(tokenizer), rows_for(tokenizer), cfg, WeightingConfig(), pad_id=0, seed=0)


def test_gradient_checkpointing_gives_the_same_gradient(tokenizer):
    rows = rows_for(tokenizer)
    plain, _ = grads_after_one_step(tokenizer, rows, 4, WeightLevel.token)
    checkpointed, model = grads_after_one_step(tokenizer, rows, 4, WeightLevel.token,
                                               gradient_checkpointing=True)
    assert not model.is_gradient_checkpointing  # switched off again after training
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-4)


def test_chunked_log_probs_give_the_same_gradient(tokenizer):
    rows = rows_for(tokenizer)
    full, _ = grads_after_one_step(tokenizer, rows, 4, WeightLevel.token)
    chunked, _ = grads_after_one_step(tokenizer, rows, 4, WeightLevel.token, logprob_chunk_size=7)
    for name in full:
        torch.testing.assert_close(chunked[name], full[name], atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("level", [WeightLevel.iw_sft, WeightLevel.iw_sft_token])
def test_iw_sft_gradient_is_that_of_its_loss_written_out(tokenizer, level):
    """Independent route: at its first step the model is its own frozen reference, so every
    log-ratio is 0 and iw-SFT's weights are exp(0) = 1 (inside both clamps): the gradient is
    plain SFT's. After a step of training the reference differs: checked against a loss written
    out with a hand-built reference forward."""
    rows = rows_for(tokenizer)
    iw, _ = grads_after_one_step(tokenizer, rows, 4, level)
    plain, _ = grads_after_one_step(tokenizer, rows, 4, WeightLevel.none)
    for name in iw:
        torch.testing.assert_close(iw[name], plain[name], atol=1e-6, rtol=1e-4)
    # a trained model against the untrained reference
    trained = make_tiny_model(tokenizer, seed=3)
    cfg = SFTConfig(steps=3, batch_size=8, micro_batch_size=8, lr=1e-2, warmup_steps=1,
                    log_every=100)
    train_sft(trained, rows, cfg, WeightingConfig(level=WeightLevel.none), pad_id=0, seed=0)
    initial = make_tiny_model(tokenizer, seed=3)
    batch = collate(rows, tokenizer.pad_token_id)
    with torch.no_grad():
        ref = token_logprobs(initial(input_ids=batch["input_ids"],
                                     attention_mask=batch["attention_mask"]).logits,
                             batch["input_ids"])
    trained.train()
    logits = trained(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logp = token_logprobs(logits, batch["input_ids"])
    mask = batch["loss_mask"]
    d = (logp.detach() - ref) * mask
    if level == WeightLevel.iw_sft:  # exp of the row's mean log-ratio, clamped to [0, 16]
        w = (d.sum(1, keepdim=True) / mask.sum(1, keepdim=True)).exp().clamp(0, 16) * mask
    else:
        w = d.exp().clamp(0.2, 1.8) * mask
    assert not torch.allclose(w[mask.bool()], torch.ones(int(mask.sum())))  # the test has teeth
    (-(w * logp).sum() / mask.sum()).backward()
    expected = {n: p.grad.clone() for n, p in trained.named_parameters()}
    # the trainer, one step of lr 0 from the trained weights, the initial model as reference
    start = make_tiny_model(tokenizer, seed=3)
    start.load_state_dict(trained.state_dict())
    got, _ = grads_after_one_step(tokenizer, rows, 4, level, model=start,
                                  reference=make_tiny_model(tokenizer, seed=3))
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-6, rtol=1e-4)
