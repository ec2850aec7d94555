"""vLLM-specific checks; the shared engine contract runs against vLLM in test_rollout.py.

Needs vLLM (`make install-vllm`); skipped without it. One engine is started per module (5-20 s)
and serves every test; the weight-sync test puts the original weights back when it is done.
"""

import types

import pytest
import torch

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm

from pear_exp.models import end_of_turn_ids, prompt_ids  # noqa: E402
from pear_exp.rollout.hf import HFEngine  # noqa: E402
from pear_exp.rollout.sync import sync_logprob_diff  # noqa: E402
from pear_exp.rollout.vllm import (  # noqa: E402
    VLLMEngine,
    _clamp_max_model_len,
    _reload_weights_on_worker,
)
from tests.conftest import make_tiny_model  # noqa: E402
from tests.test_rollout import perturbed  # noqa: E402

PROMPTS = ["Make 15 from 3 7 12", "Make 100 from 4 5 20 and a longer prompt", "Hi"]
ATOL = 1e-4  # float32 on both sides


@pytest.fixture(scope="module")
def model_dir(tokenizer, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_vllm")
    make_tiny_model(tokenizer).save_pretrained(path)  # the same weights as the `model` fixture
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def engine(model_dir, tokenizer):
    engine = VLLMEngine(model_dir, tokenizer, max_model_len=256, seed=0)
    yield engine
    engine.close()


def test_greedy_matches_the_hf_engine(engine, model, tokenizer):
    prompts = [prompt_ids(tokenizer, p) for p in PROMPTS]
    kwargs = dict(n=1, temperature=0.0, max_new_tokens=10,
                  stop_token_ids=end_of_turn_ids(tokenizer))
    ours = engine.generate(prompts, **kwargs)
    theirs = HFEngine(model, tokenizer).generate(prompts, **kwargs)
    for a, b in zip(ours, theirs):
        assert a[0].token_ids == b[0].token_ids and a[0].finish_reason == b[0].finish_reason
        torch.testing.assert_close(torch.tensor(a[0].logprobs), torch.tensor(b[0].logprobs),
                                   atol=ATOL, rtol=ATOL)  # greedy: plain log_softmax(logits)


def test_a_prompts_samples_do_not_depend_on_the_other_prompts(engine, tokenizer):
    prompts = [prompt_ids(tokenizer, p) for p in PROMPTS]
    kwargs = dict(n=2, temperature=1.0, max_new_tokens=8, stop_token_ids=end_of_turn_ids(tokenizer))
    ids = lambda out: [[c.token_ids for c in s] for s in out]  # noqa: E731
    assert ids(engine.generate(prompts[:1], seed=5, **kwargs)) == ids(engine.generate(prompts, seed=5, **kwargs))[:1]


def parity(engine, model, prompts):
    return sync_logprob_diff(engine, model, prompts, temperature=1.0, stop_token_ids=[])[1]  # max


def test_reload_without_the_tied_lm_head_tensor_refreshes_the_cpu_lm_head(engine, model, tokenizer):
    """named_parameters() (and a save_pretrained checkpoint) lack the tied lm_head.weight: vLLM's
    reload then leaves the CPU backend's packed LM-head copy stale, unless it is re-dispatched."""
    prompts = [prompt_ids(tokenizer, p) for p in PROMPTS]
    new = perturbed(model, seed=1)
    weights = [(name, p.detach()) for name, p in new.named_parameters()]
    assert not any(name.startswith("lm_head") for name, _ in weights)
    try:
        engine.llm.collective_rpc(_reload_weights_on_worker, args=(weights,))
        engine.llm.reset_prefix_cache()
        assert parity(engine, new, prompts) < ATOL
    finally:
        engine.sync_weights(model)
    assert parity(engine, model, prompts) < ATOL


def test_a_large_seeded_batch_is_scheduled_over_several_steps(engine, tokenizer):
    """More prompt tokens than one step schedules (4096): on CPU a chunked prefill used to rewind
    seeded generators, which CPU generators cannot do."""
    prompts = [prompt_ids(tokenizer, f"{PROMPTS[1]} number {i}") for i in range(40)]
    assert sum(map(len, prompts)) * 8 > 4096
    kwargs = dict(n=8, temperature=1.0, max_new_tokens=4, stop_token_ids=[], seed=2)
    out = engine.generate(prompts, **kwargs)
    assert [len(s) for s in out] == [8] * 40 and all(len(c.token_ids) == 4 for s in out for c in s)
    alone = engine.generate(prompts[:1], **kwargs)[0]
    assert [c.token_ids for c in alone] == [c.token_ids for c in out[0]]


def test_the_in_process_engine_leaves_the_process_usable(engine, tokenizer):
    # vLLM's CPU worker swaps torch.set_num_threads for a no-op; the engine puts it back.
    assert isinstance(torch.set_num_threads, types.BuiltinFunctionType)
    assert engine.generate([], n=2, temperature=1.0, stop_token_ids=[2]) == []


def test_max_model_len_is_clamped_to_the_checkpoint(model_dir):
    # The rollout config's default (4096) exceeds the tiny models' 256 positions; vLLM would refuse.
    assert _clamp_max_model_len(model_dir, 4096) == 256
    assert _clamp_max_model_len(model_dir, 128) == 128
    assert _clamp_max_model_len(model_dir, None) is None


def test_sampled_topk_match_teacher_forced_topk(engine, model, tokenizer):
    """vLLM's top-k of each step's processed distribution (temperature 0.7) against the same
    sampled sequences scored teacher-forced by the hf model at 0.7 (an independent route)."""
    from pear_exp.policy import TokenLogProbs

    prompts = [prompt_ids(tokenizer, p) for p in PROMPTS]
    out = engine.generate(prompts, n=2, temperature=0.7, max_new_tokens=8,
                          stop_token_ids=end_of_turn_ids(tokenizer), seed=3, top_k=5)
    scorer = TokenLogProbs(model)
    for prompt, samples in zip(prompts, out):
        for c in samples:
            ids = torch.tensor([prompt + c.token_ids])
            scored = scorer(ids, torch.ones_like(ids), temperature=0.7, top_k=5)
            n = len(c.token_ids)
            assert c.top_ids.shape == (n, 5)
            torch.testing.assert_close(torch.from_numpy(c.top_logprobs),
                                       scored.topk_logprobs[0, -n:], atol=ATOL, rtol=ATOL)
            assert c.top_ids.tolist() == scored.topk_ids[0, -n:].tolist()


def test_scoring_a_dataset_through_vllm_equals_the_hf_forward(engine, model, tokenizer, tmp_path):
    """behavior.source=dataset scored by vLLM's prompt log-probs (temperature 1) against the hf
    model's teacher-forced pass on the same rows: log-probs within ATOL, the same top-k ids."""
    import json

    from pear_exp.config import BehaviorConfig, BehaviorSource
    from pear_exp.stages import behavior

    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": f"Make {i} from 1 2 3 and more words",
                                          "response": "1+2=3" * (i + 1)}) for i in range(5)))
    cfg = BehaviorConfig(source=BehaviorSource.dataset, dataset=str(path), top_k=5)
    by = {name: behavior.score_dataset(scorer, tokenizer, tokenizer, str(path), cfg, 2, None,
                                       eval_problems=[])[0]
          for name, scorer in (("vllm", engine), ("hf", model))}
    for a, b in zip(by["vllm"], by["hf"]):
        assert a["input_ids"] == b["input_ids"]
        torch.testing.assert_close(torch.tensor(a["behavior_logprobs"]),
                                   torch.tensor(b["behavior_logprobs"]), atol=ATOL, rtol=ATOL)
        assert a["behavior_topk_ids"].tolist() == b["behavior_topk_ids"].tolist()
        torch.testing.assert_close(torch.from_numpy(a["behavior_topk_logprobs"]),
                                   torch.from_numpy(b["behavior_topk_logprobs"]),
                                   atol=ATOL, rtol=ATOL)
        assert a["behavior_topk_ids"].shape == (sum(a["loss_mask"]), 5)
