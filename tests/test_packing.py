"""Padding-free SFT: the packed layout by hand, the token-budget micro-batches by hand, and the
trainer's loss and gradients equal to the padded path on the same rows (a row straddling a
micro-batch boundary included), for every weighting and both base losses."""

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook
from transformers import Qwen3Config, Qwen3ForCausalLM

from pear_exp.config import BaseLoss, SFTConfig, WeightingConfig, WeightLevel
from pear_exp.data import collate, make_row, token_budget_groups
from pear_exp.packing import Packed, padding_free
from pear_exp.policy import TokenLogProbs
from tests.conftest import make_tiny_model
from tests.test_distill import distill_rows


def test_packed_layout_by_hand():
    # rows of 3, 1 and 2 tokens, right-padded to 3
    ids = torch.tensor([[5, 6, 7], [8, 0, 0], [9, 4, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0]])
    p = Packed.from_padded(ids, mask)
    assert p.input_ids.tolist() == [[5, 6, 7, 8, 9, 4]]
    assert p.position_ids.tolist() == [[0, 1, 2, 0, 0, 1]]
    assert p.row_starts == (0, 3, 4, 6)
    assert p.slot.tolist() == [[0, 1, 2], [3, 0, 0], [4, 5, 0]]
    out = torch.tensor([[10.0, 11, 12, 13, 14, 15]])  # a per-position output of the packed forward
    # position 0 of each row and the pad slots are 0, as a padded forward's log-probs
    assert p.unpack(out).tolist() == [[0, 11, 12], [0, 0, 0], [0, 15, 0]]
    assert p.unpack(torch.arange(12).view(1, 6, 2)).tolist() == [
        [[0, 0], [2, 3], [4, 5]], [[0, 0]] * 3, [[0, 0], [10, 11], [0, 0]]]
    assert p.pack(ids * 10).tolist() == [[50, 60, 70, 80, 90, 40]]


def test_token_budget_groups_by_hand():
    assert token_budget_groups([5, 4, 3, 6], 9) == [[0, 1], [2, 3]]  # 9 and 9: exactly full
    assert token_budget_groups([5, 4, 3, 6], 8) == [[0], [1, 2], [3]]  # row 1 would straddle
    assert token_budget_groups([12, 2], 8) == [[0], [1]]  # a row over the budget goes alone
    # as many groups as another rank needs: the one with the most tokens is halved first
    assert token_budget_groups([5, 4, 3, 6], 9, groups=3) == [[0], [1], [2, 3]]
    assert token_budget_groups([5, 4, 3, 6], 9, groups=4) == [[0], [1], [2], [3]]
    with pytest.raises(ValueError, match="at least 3"):
        token_budget_groups([5, 4, 3, 6], 8, groups=2)


def step_of(tokenizer, rows, level, reference=None, **overrides):
    """One optimizer step (lr 0): the logged loss and the gradients the optimizer sees."""
    from pear_exp.train.sft import train_sft
    model = make_tiny_model(tokenizer, seed=3)
    cfg = SFTConfig(steps=1, batch_size=len(rows), lr=0.0, warmup_steps=1, grad_clip=1e9,
                    log_every=1, max_seq_len=64, **overrides)
    grads, logged = {}, []
    handle = register_optimizer_step_pre_hook(lambda *_: grads.update(
        {n: p.grad.clone() for n, p in model.named_parameters()}))
    try:
        train_sft(model, rows, cfg, WeightingConfig(level=level, block_size=2, gamma=0.9),
                  pad_id=tokenizer.pad_token_id, seed=0, reference=reference,
                  log=lambda m, step: logged.append(m))
    finally:
        handle.remove()
    assert model.config._attn_implementation == "sdpa"  # its own attention back after SFT
    return logged[0], grads


CASES = [(WeightLevel.none, BaseLoss.nll), (WeightLevel.block, BaseLoss.nll),
         (WeightLevel.token, BaseLoss.nll), (WeightLevel.sequence, BaseLoss.nll),
         (WeightLevel.dft, BaseLoss.nll), (WeightLevel.iw_sft, BaseLoss.nll),
         (WeightLevel.asft, BaseLoss.nll), (WeightLevel.block, BaseLoss.kl)]


@pytest.mark.parametrize("level, base_loss", CASES)
@pytest.mark.parametrize("chunk", [0, 7])
def test_padding_free_step_equals_the_padded_step(tokenizer, level, base_loss, chunk):
    """Padded: 2 micro-batches of 4 rows. Padding-free: micro-batches of at most 50 tokens,
    where a row straddles the boundary (it moves whole to the next micro-batch). Same loss,
    same gradients; the reference model (iw-SFT, ASFT) runs packed as well."""
    rows = distill_rows(tokenizer, k=5)
    lengths = [len(r["input_ids"]) for r in rows]
    reference = make_tiny_model(tokenizer, seed=9) if level.needs_reference else None
    padded, padded_grads = step_of(tokenizer, rows, level, reference, base_loss=base_loss,
                                   logprob_chunk_size=chunk, padding_free=False,
                                   micro_batch_size=4)
    free, free_grads = step_of(tokenizer, rows, level, reference, base_loss=base_loss,
                               logprob_chunk_size=chunk, micro_batch_tokens=50)
    # the step's batch is a length-grouped order of the 8 rows; in any order of these
    # lengths the 50-token budget breaks a run of rows before one that would straddle
    assert sum(lengths) > 100 and max(lengths) < 50
    assert padded["pad_frac"] > 0 and free["pad_frac"] == 0
    assert free["loss"] == pytest.approx(padded["loss"], rel=1e-5)
    assert free["nll"] == pytest.approx(padded["nll"], rel=1e-5)
    for name in padded_grads:
        torch.testing.assert_close(free_grads[name], padded_grads[name], atol=1e-6, rtol=1e-4)


def test_packed_forward_with_grouped_query_attention_equals_padded(tokenizer):
    """4 query heads on 2 key/value heads (the presets' layout), rows of very different lengths:
    the packed forward's log-probs and gradients equal the padded forward's."""
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, intermediate_size=128, max_position_embeddings=256,
        tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id))
    g = torch.Generator().manual_seed(1)
    rows = [make_row(torch.randint(3, 100, (p,), generator=g).tolist(),
                     torch.randint(3, 100, (r,), generator=g).tolist())
            for p, r in [(5, 9), (3, 2), (7, 40), (4, 1)]]
    batch = collate(rows, tokenizer.pad_token_id)
    policy = TokenLogProbs(model)
    results = []
    for packed in (None, Packed.from_padded(batch["input_ids"], batch["attention_mask"])):
        model.zero_grad()
        with padding_free(model):
            logp = policy(batch["input_ids"], batch["attention_mask"], packed=packed).logprobs
        (logp * batch["loss_mask"]).sum().backward()
        results.append((logp.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (a, grads_a), (b, grads_b) = results
    torch.testing.assert_close(b, a * batch["attention_mask"], atol=1e-5, rtol=1e-5)
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("epochs", [1, 2])
def test_padding_free_grpo_update_equals_the_padded_update(tokenizer, epochs):
    """GRPO's update with each micro-batch's rows packed (rl.padding_free) against padded
    micro-batches: the same gradients at every optimizer step, with the KL reference and the
    old-policy pass (epochs 2) packed as well."""
    from tests.test_grpo import grad_of_update, rollout_batch

    batch = rollout_batch(tokenizer)
    kwargs = dict(kl_coef=0.05, tis_cap=1.5, epochs=epochs)
    padded = grad_of_update(tokenizer, batch, 3, padding_free=False, **kwargs)
    free = grad_of_update(tokenizer, batch, 3, **kwargs)
    assert len(free) == len(padded) == epochs
    for a, b in zip(padded, free):
        for name in a:
            torch.testing.assert_close(b[name], a[name], atol=1e-6, rtol=1e-4)


def test_padding_free_bf16_step_is_the_padded_bf16_step_within_bf16_rounding(tokenizer):
    """Under bf16 autocast the packed path runs its attention in float32 (padded: in bf16), so
    the two agree to bf16 rounding, not to float32's: loss within 1%, gradients aligned."""
    from pear_exp.config import Precision

    rows = distill_rows(tokenizer, k=5)
    runs = [step_of(tokenizer, rows, WeightLevel.block, precision=Precision.bf16, **extra)
            for extra in (dict(padding_free=False, micro_batch_size=4),
                          dict(micro_batch_tokens=50))]
    (padded, padded_grads), (free, free_grads) = runs
    assert free["loss"] == pytest.approx(padded["loss"], rel=1e-2)
    a, b = (torch.cat([g[n].flatten() for n in sorted(g)]) for g in (padded_grads, free_grads))
    assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.99
