"""The KL base loss (sft.base_loss=kl), its top-k data, and ASFT's anchor: formulas by hand,
gradients by independent routes, and the two sources of top-k (sampling, scoring) agreeing."""

import math

import pytest
import torch

from pear_exp.config import BaseLoss, SFTConfig, WeightingConfig, WeightLevel
from pear_exp.data import TOPK_COLUMNS, collate, make_row
from pear_exp.losses import chunked_topk_logprobs, full_kl, token_logprobs, topk_kl, topk_logprobs
from pear_exp.models import prompt_ids
from pear_exp.policy import TokenLogProbs
from pear_exp.rollout.hf import HFEngine
from pear_exp.train.sft import train_sft
from tests.conftest import make_tiny_model
from tests.test_sft import assert_grads_of_written_loss, grads_after_one_step, rows_for

LOG = math.log


def test_topk_kl_by_hand():
    """p = (0.4, 0.3, 0.2, 0.1); q's top-2 are token 1 (0.5) and token 0 (0.3), so q_rest = 0.2
    against p_rest = 0.2 + 0.1: KL = 0.5 ln(0.5/0.3) + 0.3 ln(0.3/0.4) + 0.2 ln(0.2/0.3)."""
    logits = torch.tensor([0.4, 0.3, 0.2, 0.1]).log()
    kl = topk_kl(logits, torch.tensor([1, 0]), torch.tensor([0.5, 0.3]).log())
    assert kl.item() == pytest.approx(0.0880150, abs=1e-6)


def test_full_kl_by_hand():
    """r = (1/2, 1/2), p = (1/4, 3/4): KL(r || p) = 0.5 ln 2 + 0.5 ln(2/3)."""
    kl = full_kl(torch.tensor([0.5, 0.5]).log(), torch.tensor([0.25, 0.75]).log())
    assert kl.item() == pytest.approx(0.1438410, abs=1e-6)


def test_topk_kl_over_the_whole_vocabulary_is_the_kl_and_its_gradient_is_p_minus_q():
    """With k = vocab the coarsening is the identity: topk_kl equals full_kl, and d KL / d logits
    = softmax(logits) - q (the softmax cross-entropy gradient), computed here by hand."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 9, generator=g, requires_grad=True)
    teacher = torch.randn(6, 9, generator=g)
    ids, values = topk_logprobs(teacher, 20)  # k > vocab: the whole distribution, sorted
    assert ids.shape == (6, 9) and torch.all(values[:, :-1] >= values[:, 1:])
    kl = topk_kl(logits, ids, values)
    torch.testing.assert_close(kl, full_kl(teacher, logits.detach()), atol=1e-6, rtol=1e-5)
    kl.sum().backward()
    expected = torch.softmax(logits.detach(), -1) - torch.softmax(teacher, -1)
    torch.testing.assert_close(logits.grad, expected, atol=1e-6, rtol=1e-5)


def test_topk_kl_with_tokens_the_teacher_cannot_emit():
    """top-p sampling leaves -inf log-probs inside the top-k: they add nothing and nothing is
    nan. q = (0.6, 0.4, 0, 0) as top-3 with a -inf entry; p uniform over 4: KL = 0.6 ln(0.6/0.25)
    + 0.4 ln(0.4/0.25), no rest."""
    logits = torch.zeros(4, requires_grad=True)
    kl = topk_kl(logits, torch.tensor([2, 0, 3]), torch.tensor([0.6, 0.4, 0.0]).log())
    assert kl.item() == pytest.approx(0.6 * LOG(2.4) + 0.4 * LOG(1.6), abs=1e-6)
    kl.backward()
    assert torch.isfinite(logits.grad).all()


def distill_rows(tokenizer, k, seed=0, one_hot=False):
    """rows_for's rows with a random teacher's top-k per response token (or, one_hot, the data
    token with log-prob 0: then KL(q || p) = -log p(y_t), the NLL)."""
    g = torch.Generator().manual_seed(seed)
    rows = rows_for(tokenizer, seed=seed)
    for row in rows:
        start = row["loss_mask"].index(1)
        response = row["input_ids"][start:]
        if one_hot:
            top = ([[t] for t in response], [[0.0] for _ in response])
        else:
            ids, values = topk_logprobs(torch.randn(len(response), len(tokenizer), generator=g) * 3, k)
            top = (ids.tolist(), values.tolist())
        row.update(make_row(row["input_ids"][:start], response,
                            row["behavior_logprobs"][start:], top))
    return rows


def test_collate_puts_each_response_tokens_topk_at_its_position(tokenizer):
    rows = distill_rows(tokenizer, k=3)[:2]
    batch = collate(rows, tokenizer.pad_token_id)
    for b, row in enumerate(rows):
        start, n = row["loss_mask"].index(1), len(row["input_ids"])
        assert batch["behavior_topk_ids"][b, start:n].tolist() == row["behavior_topk_ids"]
        torch.testing.assert_close(batch["behavior_topk_logprobs"][b, start:n],
                                   torch.tensor(row["behavior_topk_logprobs"]))
        assert not batch["behavior_topk_ids"][b, :start].any()


def test_topk_arrays_read_the_stored_columns_as_views_and_collate_follows_the_loss_mask(
        tokenizer, tmp_path):
    """Saved as the behavior stage saves them and read back as (tokens, k) arrays: the same
    numbers; and a row whose loss tokens have a gap gets each list at its own loss token."""
    from datasets import Dataset, load_from_disk

    from pear_exp.data import topk_arrays
    from pear_exp.stages.behavior import features

    rows = [{"problem_id": str(i), "prompt": "p", "response": "r", **row}
            for i, row in enumerate(distill_rows(tokenizer, k=3))]
    Dataset.from_list(rows, features=features(True)).save_to_disk(str(tmp_path / "d"))
    data = load_from_disk(str(tmp_path / "d")).select(range(2, 8))  # a slice: offsets not at 0
    for row, (ids, logp) in zip(rows[2:8], topk_arrays(data)):
        assert ids.shape == (sum(row["loss_mask"]), 3)
        assert ids.tolist() == row["behavior_topk_ids"]
        torch.testing.assert_close(torch.tensor(logp), torch.tensor(row["behavior_topk_logprobs"]))
    gap = {"input_ids": [1, 2, 3, 4, 5], "loss_mask": [0, 1, 0, 1, 1],
           "behavior_logprobs": [0.0, -1.0, 0.0, -1.0, -1.0],
           "behavior_topk_ids": [[7], [8], [9]], "behavior_topk_logprobs": [[-0.1], [-0.2], [-0.3]]}
    batch = collate([gap], pad_id=0)
    assert batch["behavior_topk_ids"][0, :, 0].tolist() == [0, 7, 0, 8, 9]


def test_kl_on_a_one_hot_teacher_is_plain_sft(tokenizer):
    """Independent route: q one-hot on the data token makes every KL term -log p(y_t), so the
    KL base loss must give plain SFT's gradient, for plain SFT and for PEAR's weights."""
    rows = distill_rows(tokenizer, k=1, one_hot=True)
    for level in (WeightLevel.none, WeightLevel.block):
        kl, _ = grads_after_one_step(tokenizer, rows, 4, level, base_loss=BaseLoss.kl)
        nll, _ = grads_after_one_step(tokenizer, rows, 4, level)
        for name in nll:
            torch.testing.assert_close(kl[name], nll[name], atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("level", [WeightLevel.none, WeightLevel.token, WeightLevel.sequence,
                                   WeightLevel.dft])
def test_kl_base_loss_gradient_is_that_of_its_loss_written_out(tokenizer, level):
    """sum_t W_t KL_t / N on one padded batch (W: PEAR's weights of the same p and b, unchanged)
    against the trainer's 2 micro-batches of 4; and 8 micro-batches of 1 give the same."""
    from pear_exp.weighting import dft_weights, pear_weights
    rows = distill_rows(tokenizer, k=5)
    grads, _ = grads_after_one_step(tokenizer, rows, 4, level, base_loss=BaseLoss.kl)
    split, _ = grads_after_one_step(tokenizer, rows, 1, level, base_loss=BaseLoss.kl)
    for name in grads:
        torch.testing.assert_close(split[name], grads[name], atol=1e-6, rtol=1e-4)
    model = make_tiny_model(tokenizer, seed=3).train()
    batch = collate(rows, tokenizer.pad_token_id)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logp = token_logprobs(logits, batch["input_ids"])
    mask = batch["loss_mask"]
    kl = torch.nn.functional.pad(topk_kl(logits[:, :-1], batch["behavior_topk_ids"][:, 1:],
                                         batch["behavior_topk_logprobs"][:, 1:]), (1, 0))
    if level == WeightLevel.none:
        w = mask
    elif level == WeightLevel.dft:
        w = dft_weights(logp, mask)
    else:
        w = pear_weights(logp.detach(), batch["behavior_logprobs"], mask, level=level.value,
                         block_size=2, gamma=0.9)
    ((w * kl).sum() / mask.sum()).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, atol=1e-6, rtol=1e-4)


def test_chunked_kl_and_topk_equal_the_full_logits_path(tokenizer):
    """TokenLogProbs from hidden states in chunks of 5 positions against full logits: the KL to
    a top-k teacher and to a reference model, their gradients, and the top-k themselves."""
    rows = distill_rows(tokenizer, k=4)
    batch = collate(rows, tokenizer.pad_token_id)
    reference = TokenLogProbs(make_tiny_model(tokenizer, seed=9))
    results = []
    for chunk in (0, 5):
        anchor = reference.reference_for(batch["input_ids"], batch["attention_mask"], chunk)
        model = make_tiny_model(tokenizer, seed=3).train()
        policy = TokenLogProbs(model, chunk)
        out = policy(batch["input_ids"], batch["attention_mask"], top_k=4, temperature=0.7,
                     kl_topk=tuple(batch[c] for c in TOPK_COLUMNS))
        ref = policy(batch["input_ids"], batch["attention_mask"], kl_reference=anchor)
        (out.kl * batch["loss_mask"]).sum().add(ref.kl.sum()).backward()
        results.append((out, ref, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (full, full_ref, full_grads), (chunked, chunked_ref, chunked_grads) = results
    for a, b in ((full.kl, chunked.kl), (full_ref.kl, chunked_ref.kl),
                 (full.topk_logprobs, chunked.topk_logprobs)):
        torch.testing.assert_close(a.detach(), b.detach(), atol=1e-5, rtol=1e-5)
    assert torch.equal(full.topk_ids, chunked.topk_ids)
    for a, b in ((full.logprobs, chunked.logprobs), (full_ref.logprobs, chunked_ref.logprobs)):
        torch.testing.assert_close(a.detach(), b.detach(), atol=1e-5, rtol=1e-5)  # T 0.7 and 1
    assert (full_ref.kl[:, 1:] > 0).all()  # two different random models
    for name in full_grads:
        torch.testing.assert_close(chunked_grads[name], full_grads[name], atol=1e-6, rtol=1e-4)
    ids, values = chunked_topk_logprobs(torch.zeros(1, 3, 2), torch.randn(7, 2), k=9)
    assert ids.shape == (1, 3, 7)  # k capped at the vocabulary


def test_asft_gradient_is_that_of_its_loss_written_out(tokenizer):
    """ASFT, written out as its official trainer computes it: DFT's loss plus 0.1 x the
    full-vocabulary KL(pi_ref || pi_theta) on every loss token, over N loss tokens. The frozen
    reference is a different model here (seed 9), so the anchor's gradient is not zero."""
    rows = rows_for(tokenizer)
    reference = make_tiny_model(tokenizer, seed=9)
    grads, _ = grads_after_one_step(tokenizer, rows, 4, WeightLevel.asft, reference=reference)
    batch = collate(rows, tokenizer.pad_token_id)
    with torch.no_grad():
        ref_logits = reference(input_ids=batch["input_ids"],
                               attention_mask=batch["attention_mask"]).logits

    def asft_loss(logp, batch, logits):
        mask = batch["loss_mask"]
        dft = -(logp.exp().detach() * logp * mask).sum()
        logr = torch.log_softmax(ref_logits[:, :-1], -1)
        kl = (logr.exp() * (logr - torch.log_softmax(logits[:, :-1], -1))).sum(-1)
        return (dft + 0.1 * (kl * mask[:, 1:]).sum()) / mask.sum()

    assert_grads_of_written_loss(tokenizer, rows, grads, asft_loss, with_logits=True)
    dft, _ = grads_after_one_step(tokenizer, rows, 4, WeightLevel.dft)
    assert any(not torch.allclose(dft[n], grads[n], atol=1e-5) for n in grads)


@pytest.mark.parametrize("level, base_loss", [(WeightLevel.asft, BaseLoss.nll),
                                              (WeightLevel.block, BaseLoss.kl)])
def test_chunked_kl_trains_like_full_logits(tokenizer, level, base_loss):
    """The trainer's gradient with log-probs and KL from chunks of 7 positions (one LM-head
    product per chunk for both) equals the full-logits path's: ASFT's NLL and anchor, and PEAR
    on the KL base loss."""
    rows = distill_rows(tokenizer, k=5)
    reference = make_tiny_model(tokenizer, seed=9) if level == WeightLevel.asft else None
    full, _ = grads_after_one_step(tokenizer, rows, 4, level, base_loss=base_loss,
                                   reference=reference)
    chunked, _ = grads_after_one_step(tokenizer, rows, 4, level, base_loss=base_loss,
                                      reference=reference, logprob_chunk_size=7)
    for name in full:
        torch.testing.assert_close(chunked[name], full[name], atol=1e-6, rtol=1e-4)


def test_kl_base_loss_training_lowers_the_kl(tokenizer):
    rows = distill_rows(tokenizer, k=5)
    logged = []
    cfg = SFTConfig(steps=30, batch_size=8, micro_batch_size=4, lr=3e-3, warmup_steps=3,
                    log_every=1, base_loss=BaseLoss.kl)
    train_sft(make_tiny_model(tokenizer, seed=1), rows, cfg, WeightingConfig(level=WeightLevel.block),
              pad_id=0, seed=0, log=lambda m, step: logged.append(m))
    assert logged[-1]["kl"] < 0.7 * logged[0]["kl"]


def test_kl_base_loss_refuses_rows_without_topk(tokenizer):
    cfg = SFTConfig(steps=1, batch_size=8, micro_batch_size=8, base_loss=BaseLoss.kl)
    with pytest.raises(ValueError, match="behavior.top_k"):
        train_sft(make_tiny_model(tokenizer), rows_for(tokenizer), cfg, WeightingConfig(),
                  pad_id=0, seed=0)


@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.7, 0.9)])
def test_sampled_topk_match_teacher_forced_topk(tokenizer, temperature, top_p):
    """The hf engine's top-k of each step's processed distribution, against an independent
    route: the same sequences scored teacher-forced at the temperature (top_p = 1 only: scoring
    has no nucleus; under top_p < 1 the nucleus's log-probs are renormalised, so only the order
    is checked). The sampled token's log-prob is its entry there."""
    model = make_tiny_model(tokenizer, seed=4)
    prompts = [prompt_ids(tokenizer, f"Make {i} from 1 2 3") for i in range(3)]
    engine = HFEngine(model, tokenizer)
    completions = engine.generate(prompts, n=2, temperature=temperature, top_p=top_p,
                                  max_new_tokens=6, stop_token_ids=[tokenizer.eos_token_id],
                                  seed=1, top_k=4)
    scorer = TokenLogProbs(model)
    for prompt, samples in zip(prompts, completions):
        for c in samples:
            assert c.top_ids.shape == (len(c.token_ids), 4)
            for tok, lp, ids, values in zip(c.token_ids, c.logprobs, c.top_ids.tolist(),
                                            c.top_logprobs.tolist()):
                if tok in ids:
                    assert values[ids.index(tok)] == pytest.approx(lp, abs=1e-6)
                assert values == sorted(values, reverse=True)
            if top_p < 1:
                continue
            ids = torch.tensor([prompt + c.token_ids])
            out = scorer(ids, torch.ones_like(ids), temperature=temperature, top_k=4)
            n = len(c.token_ids)
            assert out.topk_ids[0, -n:].tolist() == c.top_ids.tolist()
            torch.testing.assert_close(out.topk_logprobs[0, -n:], torch.tensor(c.top_logprobs),
                                       atol=1e-5, rtol=1e-5)
