"""Rollout engines: every generation in the pipeline (teacher sampling, RL rollouts, evaluation)
goes through the engine `rollout.engine` chooses: `hf` (transformers generate on the model
object itself) or `vllm`. base.py says what an engine is; sync.py checks a weight sync."""

from __future__ import annotations

from pear_exp import models
from pear_exp.config import Engine, RolloutConfig
from pear_exp.rollout.base import Completion, RolloutEngine, grade_finished
from pear_exp.rollout.hf import HFEngine
from pear_exp.rollout.vllm import VLLMEngine

__all__ = ["Completion", "RolloutEngine", "grade_finished", "make_engine"]


def make_engine(cfg: RolloutConfig, path: str, tokenizer, *, model=None, dtype: str = "float32",
                trust_remote_code: bool = False, policy: bool = True,
                seed: int = 0, max_logprobs: int = 0, prefill_chunk: int | None = None
                ) -> RolloutEngine:
    """The configured engine serving the checkpoint at `path`: the student's (`policy`) or the
    teacher's, each at its own tensor parallelism. The hf engine generates with `model` when
    given (the trainer's own object), else loads `path` in `dtype`. max_logprobs: the largest
    generate(top_k=...) it will be asked for (vLLM sizes for it); prefill_chunk: a vLLM engine
    that only scores (VLLMEngine.score) runs prompts this many tokens a step."""
    if cfg.engine == Engine.hf:
        if model is None:
            model = models.load_model(path, dtype, trust_remote_code)
        return HFEngine(model, tokenizer, cfg.batch_size)
    return VLLMEngine(path, tokenizer, tensor_parallel_size=cfg.engine_tensor_parallel(policy),
                      gpu_memory_utilization=cfg.gpu_memory_utilization, dtype=cfg.dtype,
                      max_model_len=cfg.max_model_len, enable_sleep_mode=cfg.enable_sleep_mode,
                      seed=seed, max_logprobs=max_logprobs, prefill_chunk=prefill_chunk)
