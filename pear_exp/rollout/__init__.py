"""Rollout engines: generate n completions per prompt and report the sampling log-probs.

Every generation in the pipeline (teacher sampling, RL rollouts, evaluation) goes through an
engine chosen by `rollout.engine`: `hf` (transformers generate) or `vllm`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass
class Completion:
    token_ids: list[int]  # sampled tokens, including the stop token when one was produced
    logprobs: list[float]  # log-prob of each sampled token under the sampling distribution
    finish_reason: str  # "stop" (a stop token) or "length" (max_new_tokens reached)


class RolloutEngine(Protocol):
    def generate(self, prompts: list[list[int]], *, n: int, temperature: float, top_p: float,
                 max_new_tokens: int, stop_token_ids: list[int], seed: int = 0,
                 desc: str = "generate") -> list[list[Completion]]:
        """completions[prompt_index][sample_index]; temperature 0 means greedy."""
        ...

    def sync_weights(self, model) -> None:
        """Make the engine generate with `model`'s current weights."""
        ...


def sync_logprob_diff(engine: RolloutEngine, model, prompts: list[list[int]], *,
                      temperature: float, stop_token_ids: list[int], max_new_tokens: int = 16,
                      pad_id: int = 0) -> float:
    """Parity probe: max |engine log-prob - trainer log-prob| over the sampled tokens of a fixed
    probe batch (top_p = 1, fixed seed). Large values mean the engine's weights are stale."""
    import torch

    from pear_exp.losses import token_logprobs
    from pear_exp.stages.sft import collate

    completions = engine.generate(prompts, n=1, temperature=temperature, top_p=1.0,
                                  max_new_tokens=max_new_tokens, stop_token_ids=stop_token_ids,
                                  seed=1234, desc="sync probe")
    rows = [{"input_ids": p + c[0].token_ids, "loss_mask": [0] * len(p) + [1] * len(c[0].token_ids),
             "behavior_logprobs": [0.0] * len(p) + c[0].logprobs} for p, c in zip(prompts, completions)]
    batch = collate(rows, pad_id)
    device = next(model.parameters()).device
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"].to(device),
                       attention_mask=batch["attention_mask"].to(device)).logits
        trainer = token_logprobs(logits, batch["input_ids"].to(device), temperature).cpu()
    mask = batch["loss_mask"].bool()
    return (trainer[mask] - batch["behavior_logprobs"][mask]).abs().max().item()
