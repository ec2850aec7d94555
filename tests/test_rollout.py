"""The rollout-engine contract, run against every engine: hf always, vllm where it is installed
(CI installs it). n samples per prompt, stop handling, reproducible seeds, log-probs of the
distribution that actually sampled (checked against an independent teacher-forced recompute),
and a weight sync after which the engine samples from the new weights."""

import copy

import pytest
import torch
import torch.nn.functional as F
from transformers import GenerationConfig

from pear_exp.models import end_of_turn_ids, prompt_ids
from pear_exp.rollout.sync import sync_logprob_diff
from pear_exp.rollout.hf import HFEngine
from tests.conftest import make_tiny_model

PROMPTS = ["Make 15 from 3 7 12", "Make 100 from 4 5 20 and a longer prompt", "Hi"]
ATOL = 1e-4  # float32 on both sides


@pytest.fixture(scope="module")
def served(tokenizer):
    """The weights every engine serves at the start of each test."""
    return make_tiny_model(tokenizer)


@pytest.fixture(scope="module", params=["hf", pytest.param("vllm", marks=pytest.mark.vllm)])
def engine(request, served, tokenizer, tmp_path_factory):
    if request.param == "hf":
        yield HFEngine(copy.deepcopy(served), tokenizer, batch_size=4)
        return
    pytest.importorskip("vllm", reason="vLLM is not installed (make install-vllm)")
    from pear_exp.rollout.vllm import VLLMEngine

    path = tmp_path_factory.mktemp("served")
    served.save_pretrained(path)
    tokenizer.save_pretrained(path)
    engine = VLLMEngine(str(path), tokenizer, max_model_len=256, seed=0)
    yield engine
    engine.close()  # its memory back before the next module's engine


def recompute(model, prompt, completion, temperature, top_p=1.0):
    """log-probs of the completion tokens under softmax(logits / T) restricted to the top-p set."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1 : -1] / temperature  # (steps, vocab)
    logp = F.log_softmax(logits, -1)
    if top_p < 1.0:  # nucleus: smallest set of most likely tokens with mass >= top_p, renormalised
        sorted_lp, order = logp.sort(-1, descending=True)
        mass_before = sorted_lp.exp().cumsum(-1) - sorted_lp.exp()
        keep = torch.zeros_like(mass_before, dtype=torch.bool).scatter(-1, order, mass_before < top_p)
        logp = F.log_softmax(logits.masked_fill(~keep, float("-inf")), -1)
    return logp.gather(-1, torch.tensor(completion).unsqueeze(-1)).squeeze(-1)


def max_diff(model, prompts, out, temperature):
    """Max |engine log-prob - teacher-forced recompute| over all sampled tokens."""
    diffs = [torch.tensor(c.logprobs) - recompute(model, p, c.token_ids, temperature)
             for p, samples in zip(prompts, out) for c in samples]
    return max(d.abs().max().item() for d in diffs)


def test_samples_shape_and_sampling_logprobs(engine, served, tokenizer):
    prompts = [prompt_ids(tokenizer, p) for p in PROMPTS]
    out = engine.generate(prompts, n=3, temperature=0.7, max_new_tokens=12,
                          stop_token_ids=end_of_turn_ids(tokenizer), seed=1)
    assert [len(samples) for samples in out] == [3, 3, 3]
    for samples in out:
        assert len({tuple(c.token_ids) for c in samples}) > 1  # n samples, not one repeated
        assert all(len(c.token_ids) == len(c.logprobs) > 0 for c in samples)
    assert max_diff(served, prompts, out, 0.7) < ATOL


def test_top_p_logprobs_are_of_the_renormalised_nucleus(engine, served, tokenizer):
    prompt = prompt_ids(tokenizer, PROMPTS[0])
    (samples,) = engine.generate([prompt], n=4, temperature=1.0, top_p=0.5, max_new_tokens=8,
                                 stop_token_ids=end_of_turn_ids(tokenizer), seed=3)
    for c in samples:
        expected = recompute(served, prompt, c.token_ids, 1.0, top_p=0.5)
        torch.testing.assert_close(torch.tensor(c.logprobs), expected, atol=ATOL, rtol=ATOL)
        # The nucleus renormalises: each sampled token is at least as likely as without top-p.
        assert (torch.tensor(c.logprobs) >= recompute(served, prompt, c.token_ids, 1.0) - 1e-5).all()


def test_greedy_is_independent_of_batching_and_padding(engine, tokenizer):
    prompts = [prompt_ids(tokenizer, p) for p in PROMPTS]
    kwargs = dict(n=1, temperature=0.0, max_new_tokens=10, stop_token_ids=end_of_turn_ids(tokenizer))
    together = engine.generate(prompts, **kwargs)
    alone = [engine.generate([p], **kwargs)[0] for p in prompts]
    for a, b in zip(together, alone):
        assert a[0].token_ids == b[0].token_ids


def test_stop_token_ends_the_completion_and_length_is_reported(engine, tokenizer):
    prompt = prompt_ids(tokenizer, PROMPTS[0])
    kwargs = dict(n=1, temperature=1.0, max_new_tokens=6, seed=11)
    (free,) = engine.generate([prompt], stop_token_ids=[], **kwargs)[0]
    assert free.finish_reason == "length" and len(free.token_ids) == 6
    # Same seed, with a later sampled token (at its first appearance) as the stop token:
    # generation must end there, inclusive.
    k = next(k for k in range(1, 6) if free.token_ids[k] not in free.token_ids[:k])
    (cut,) = engine.generate([prompt], stop_token_ids=[free.token_ids[k]], **kwargs)[0]
    assert cut.finish_reason == "stop" and cut.token_ids == free.token_ids[: k + 1]


def test_sampling_is_reproducible_for_a_seed(engine, tokenizer):
    prompts = [prompt_ids(tokenizer, p) for p in PROMPTS]
    kwargs = dict(n=2, temperature=1.0, max_new_tokens=8, stop_token_ids=end_of_turn_ids(tokenizer))
    ids = lambda out: [[c.token_ids for c in s] for s in out]  # noqa: E731
    a = engine.generate(prompts, seed=5, **kwargs)
    assert ids(engine.generate(prompts, seed=5, **kwargs)) == ids(a)
    assert ids(engine.generate(prompts, seed=6, **kwargs)) != ids(a)


def perturbed(model, scale=0.05, seed=0):
    """A copy of `model` with noise on every parameter, the tied embedding / LM head included."""
    new = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in new.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    assert new.lm_head.weight is new.model.embed_tokens.weight  # still tied
    return new


def test_sync_weights_makes_the_engine_sample_from_the_new_weights(engine, served, tokenizer):
    # A prompt longer than a KV block (128 tokens on vLLM's CPU backend) is prefix-cached: the
    # sync must drop it.
    prompts = [prompt_ids(tokenizer, p) for p in PROMPTS] + [prompt_ids(tokenizer, "count " * 25)]
    stops = end_of_turn_ids(tokenizer)
    kwargs = dict(n=2, temperature=1.0, max_new_tokens=10, stop_token_ids=stops)
    new = perturbed(served)
    before = engine.generate(prompts, seed=7, **kwargs)
    assert max_diff(served, prompts, before, 1.0) < ATOL
    assert max_diff(new, prompts, before, 1.0) > 0.1  # the perturbation matters
    try:
        engine.sync_weights(new)
        after = engine.generate(prompts, seed=7, **kwargs)
        assert max_diff(new, prompts, after, 1.0) < ATOL
        # A few SGD steps (what RL does) rather than noise: the sync follows those too.
        opt = torch.optim.SGD(new.parameters(), lr=1.0)
        batch = torch.tensor([prompts[0] + after[0][0].token_ids])
        for _ in range(3):
            new(batch, labels=batch).loss.backward()
            opt.step()
            opt.zero_grad()
        engine.sync_weights(new)
        drift = lambda model: sync_logprob_diff(  # noqa: E731
            engine, model, prompts, temperature=1.0, stop_token_ids=stops)[1]  # the max
        assert drift(new) < ATOL
        assert drift(served) > 1e-3
    finally:
        engine.sync_weights(copy.deepcopy(served))  # the other tests expect the original weights
    assert sync_logprob_diff(engine, served, prompts, temperature=1.0,
                             stop_token_ids=stops)[1] < ATOL


# ---------------------------------------------------------------------------------------------
# A checkpoint's generation_config.json must not shape sampling (issue 12, 2.1)


@pytest.fixture(scope="module")
def instruct_like(tokenizer):
    """A model whose generation_config penalises and truncates, as Instruct checkpoints ship
    (Qwen2.5-Instruct: repetition_penalty 1.05 / 1.1, top_k 20, temperature 0.7, top_p 0.8),
    exaggerated so that any field that leaks into sampling changes the result."""
    model = make_tiny_model(tokenizer, seed=2)
    model.generation_config = GenerationConfig(
        do_sample=True, temperature=0.7, top_p=0.8, top_k=3, min_p=0.1, repetition_penalty=1.3,
        no_repeat_ngram_size=2, min_new_tokens=4, suppress_tokens=[5],
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return model


@pytest.fixture(scope="module", params=["hf", pytest.param("vllm", marks=pytest.mark.vllm)])
def instruct_engine(request, instruct_like, tokenizer, tmp_path_factory):
    if request.param == "hf":
        yield HFEngine(instruct_like, tokenizer, batch_size=4)
        return
    pytest.importorskip("vllm", reason="vLLM is not installed (make install-vllm)")
    from pear_exp.rollout.vllm import VLLMEngine

    path = tmp_path_factory.mktemp("instruct")
    instruct_like.save_pretrained(path)  # writes generation_config.json
    tokenizer.save_pretrained(path)
    assert (path / "generation_config.json").exists()
    engine = VLLMEngine(str(path), tokenizer, max_model_len=256, seed=0)
    yield engine
    engine.close()


def manual_greedy(model, prompt, max_new_tokens, stops):
    """argmax of the plain logits, one full forward per token: no cache, no processors."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(max_new_tokens):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
            if ids[-1] in stops:
                break
    return ids[len(prompt):]


def test_checkpoint_generation_defaults_do_not_shape_sampling(instruct_engine, instruct_like,
                                                              tokenizer):
    prompts = [prompt_ids(tokenizer, p) for p in PROMPTS]
    stops = end_of_turn_ids(tokenizer)
    greedy = instruct_engine.generate(prompts, temperature=0.0, max_new_tokens=12,
                                      stop_token_ids=stops)
    for prompt, (c,) in zip(prompts, greedy):
        expected = manual_greedy(instruct_like, prompt, 12, stops)
        # a random model repeats itself: no_repeat_ngram_size / repetition_penalty would bite
        assert len(set(zip(expected, expected[1:]))) < len(expected) - 1
        assert c.token_ids == expected
    for temperature, top_p in ((1.0, 1.0), (0.7, 0.9)):
        out = instruct_engine.generate(prompts, n=3, temperature=temperature, top_p=top_p,
                                       max_new_tokens=12, stop_token_ids=stops, seed=4)
        for prompt, samples in zip(prompts, out):
            for c in samples:
                expected = recompute(instruct_like, prompt, c.token_ids, temperature, top_p)
                torch.testing.assert_close(torch.tensor(c.logprobs), expected, atol=ATOL, rtol=ATOL)


# ---------------------------------------------------------------------------------------------
# The hf engine keeps one step's scores, not all of them (issue 12, 2.7)


def stacked_scores_generate(model, tokenizer, prompts, n, temperature, top_p, max_new_tokens,
                            stops, seed):
    """The former HFEngine computation, for one batch: generate returns every step's processed
    scores, stacked into (batch, steps, vocab) and put through log_softmax."""
    flat = [p for p in prompts for _ in range(n)]
    order = sorted(range(len(flat)), key=lambda i: len(flat[i]))
    width, pad = max(map(len, flat)), tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(flat[i])) + flat[i] for i in order])
    attn = torch.tensor([[0] * (width - len(flat[i])) + [1] * len(flat[i]) for i in order])
    sampled = temperature > 0
    cfg = GenerationConfig(do_sample=sampled, temperature=temperature if sampled else None,
                           top_p=top_p if sampled else None, top_k=0 if sampled else None,
                           max_new_tokens=max_new_tokens, eos_token_id=stops, pad_token_id=pad,
                           output_scores=True, return_dict_in_generate=True)
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=attn, generation_config=cfg)
    new = out.sequences[:, width:]
    logp = F.log_softmax(torch.stack(out.scores, 1).float(), -1).gather(-1, new.unsqueeze(-1))
    results = [None] * len(flat)
    for row, i in enumerate(order):
        toks = new[row].tolist()
        end = next((k + 1 for k, t in enumerate(toks) if t in stops), len(toks))
        results[i] = (toks[:end], logp[row, :end, 0].tolist())
    return results


@pytest.mark.parametrize("temperature, top_p", [(0.7, 1.0), (1.0, 0.8), (0.0, 1.0)])
def test_hf_logprobs_equal_the_stacked_scores_computation(served, tokenizer, temperature, top_p):
    prompts = [prompt_ids(tokenizer, p) for p in PROMPTS]
    # sampled: a stop token that some rows sample and others do not, so both endings are
    # covered (a random model's greedy rows are all alike: no stop there)
    free = stacked_scores_generate(served, tokenizer, prompts, 2, temperature, top_p, 10, [], 9)
    rows = [toks for toks, _ in free]
    stops = []
    if temperature:
        stops = [next(t for r in rows for t in r[1:] if any(t not in o for o in rows))]
    engine = HFEngine(copy.deepcopy(served), tokenizer, batch_size=16)  # one batch, as below
    out = engine.generate(prompts, n=2, temperature=temperature, top_p=top_p, max_new_tokens=10,
                          stop_token_ids=stops, seed=9)
    expected = stacked_scores_generate(served, tokenizer, prompts, 2, temperature, top_p, 10,
                                       stops, 9)
    got = [(c.token_ids, c.logprobs) for samples in out for c in samples]
    assert [g[0] for g in got] == [e[0] for e in expected]
    assert any(len(e[0]) == 10 and e[0][-1] not in stops for e in expected)
    assert any(e[0][-1] in stops for e in expected) or not temperature
    for (_, a), (_, b) in zip(got, expected):
        assert a == b  # bit for bit
