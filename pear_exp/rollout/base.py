"""What every rollout engine is: generate n completions per prompt and report the sampling
log-probs, take new weights, free its memory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Protocol, Sequence, TypeVar

import numpy as np

Grade = TypeVar("Grade")


@dataclass
class Completion:
    token_ids: list[int]  # sampled tokens, including the stop token when one was produced
    logprobs: list[float]  # log-prob of each sampled token under the sampling distribution
    finish_reason: str  # "stop" (a stop token) or "length" (max_new_tokens reached)
    # generate(top_k=k > 0): per sampled token, the sampling distribution's k most likely tokens
    # (most likely first; all of them when the vocabulary is smaller) and their log-probs, as
    # (tokens, k) int32 / float32 arrays
    top_ids: Optional[np.ndarray] = None
    top_logprobs: Optional[np.ndarray] = None


class RolloutEngine(Protocol):
    def generate(self, prompts: list[list[int]], *, n: int, temperature: float, top_p: float,
                 max_new_tokens: int, stop_token_ids: list[int], seed: int = 0,
                 desc: str = "generate", top_k: int = 0) -> list[list[Completion]]:
        """completions[prompt_index][sample_index]; temperature 0 means greedy; top_k > 0 also
        records each step's top-k (Completion.top_ids / top_logprobs)."""
        ...

    def sync_weights(self, model) -> None:
        """Make the engine generate with `model`'s current weights."""
        ...

    def close(self) -> None:
        """Free the engine's memory (vLLM: its engine core, weights and KV cache); idempotent."""
        ...


def grade_finished(grade_many: Callable[[list, list[str]], list[Grade]], problems: Sequence,
                   completions: Sequence[Completion], texts: Sequence[str],
                   cut_off: Grade) -> list[Grade]:
    """The grade of each completion (flat lists, one problem each): the completions that stopped
    go through the task's batched grader in one call (task.score_many, task.classify_many); one
    cut off at max_new_tokens is not graded and gets `cut_off`."""
    stopped = [i for i, c in enumerate(completions) if c.finish_reason == "stop"]
    graded = iter(grade_many([problems[i] for i in stopped], [texts[i] for i in stopped]))
    return [next(graded) if c.finish_reason == "stop" else cut_off for c in completions]
