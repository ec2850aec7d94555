"""The hf engine's contract: n samples per prompt, stop handling, and log-probs of the
distribution that actually sampled, checked against an independent teacher-forced recompute."""

import torch
import torch.nn.functional as F

from pear_exp.models import end_of_turn_ids, prompt_ids
from pear_exp.rollout.hf import HFEngine

PROMPTS = ["Make 15 from 3 7 12", "Make 100 from 4 5 20 and a longer prompt", "Hi"]


def recompute(model, prompt, completion, temperature, top_p=1.0):
    """log-probs of the completion tokens under softmax(logits / T) restricted to the top-p set."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1 : -1] / temperature  # (steps, vocab)
    logp = F.log_softmax(logits, -1)
    if top_p < 1.0:  # nucleus: smallest set of most likely tokens with mass >= top_p, renormalised
        sorted_lp, order = logp.sort(-1, descending=True)
        mass_before = sorted_lp.exp().cumsum(-1) - sorted_lp.exp()
        keep_sorted = mass_before < top_p
        keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
        logp = F.log_softmax(logits.masked_fill(~keep, float("-inf")), -1)
    return logp.gather(-1, torch.tensor(completion).unsqueeze(-1)).squeeze(-1)


def test_samples_shape_and_sampling_logprobs(model, tokenizer):
    engine = HFEngine(model, tokenizer, batch_size=4)
    prompts = [prompt_ids(tokenizer, p) for p in PROMPTS]
    out = engine.generate(prompts, n=3, temperature=0.7, max_new_tokens=12,
                          stop_token_ids=end_of_turn_ids(tokenizer), seed=1)
    assert [len(samples) for samples in out] == [3, 3, 3]
    for prompt, samples in zip(prompts, out):
        for c in samples:
            assert len(c.token_ids) == len(c.logprobs) > 0
            expected = recompute(model, prompt, c.token_ids, 0.7)
            torch.testing.assert_close(torch.tensor(c.logprobs), expected, atol=1e-4, rtol=1e-4)


def test_top_p_logprobs_are_of_the_renormalised_nucleus(model, tokenizer):
    engine = HFEngine(model, tokenizer, batch_size=8)
    prompt = prompt_ids(tokenizer, PROMPTS[0])
    (samples,) = engine.generate([prompt], n=4, temperature=1.0, top_p=0.5, max_new_tokens=8,
                                 stop_token_ids=end_of_turn_ids(tokenizer), seed=3)
    for c in samples:
        expected = recompute(model, prompt, c.token_ids, 1.0, top_p=0.5)
        torch.testing.assert_close(torch.tensor(c.logprobs), expected, atol=1e-4, rtol=1e-4)
        # The nucleus renormalises: each sampled token is at least as likely as without top-p.
        assert (torch.tensor(c.logprobs) >= recompute(model, prompt, c.token_ids, 1.0) - 1e-5).all()


def test_greedy_is_independent_of_batching_and_padding(model, tokenizer):
    engine = HFEngine(model, tokenizer, batch_size=8)
    prompts = [prompt_ids(tokenizer, p) for p in PROMPTS]
    kwargs = dict(n=1, temperature=0.0, max_new_tokens=10, stop_token_ids=end_of_turn_ids(tokenizer))
    together = engine.generate(prompts, **kwargs)
    alone = [engine.generate([p], **kwargs)[0] for p in prompts]
    for a, b in zip(together, alone):
        assert a[0].token_ids == b[0].token_ids


def test_stop_token_ends_the_completion_and_length_is_reported(model, tokenizer):
    engine = HFEngine(model, tokenizer, batch_size=8)
    prompt = prompt_ids(tokenizer, PROMPTS[0])
    kwargs = dict(n=1, temperature=0.0, max_new_tokens=6)
    (free,) = engine.generate([prompt], stop_token_ids=end_of_turn_ids(tokenizer), **kwargs)[0]
    assert free.finish_reason == "length" and len(free.token_ids) == 6
    # Make the greedy path's third token a stop token: generation must end there, inclusive.
    stop = free.token_ids[2]
    if stop in free.token_ids[:2]:
        return
    (cut,) = engine.generate([prompt], stop_token_ids=[stop], **kwargs)[0]
    assert cut.finish_reason == "stop" and cut.token_ids == free.token_ids[:3]


def test_sampling_is_reproducible_for_a_seed(model, tokenizer):
    engine = HFEngine(model, tokenizer, batch_size=8)
    prompts = [prompt_ids(tokenizer, p) for p in PROMPTS]
    kwargs = dict(n=2, temperature=1.0, max_new_tokens=8, stop_token_ids=end_of_turn_ids(tokenizer))
    a = engine.generate(prompts, seed=5, **kwargs)
    b = engine.generate(prompts, seed=5, **kwargs)
    assert [[c.token_ids for c in s] for s in a] == [[c.token_ids for c in s] for s in b]
