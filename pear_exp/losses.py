"""Per-token log-probabilities and the weighted SFT loss: pure functions of tensors.

Alignment convention: every tensor is (batch, seq) over the *input* positions; the value at
position t belongs to token input_ids[:, t] given the tokens before it. Position 0 has no
prediction and gets 0. Mask convention everywhere: 1 = this token carries loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, temperature: float = 1.0):
    """log softmax(logits / temperature) of each input token given its prefix.

    logits: (batch, seq, vocab) from a causal LM over input_ids (batch, seq).
    Returns (batch, seq) float32, 0 at position 0.
    """
    logits = logits[:, :-1].float()
    if temperature != 1.0:
        logits = logits / temperature
    targets = input_ids[:, 1:]  # (batch, seq-1)
    logp = torch.gather(F.log_softmax(logits, dim=-1), -1, targets.unsqueeze(-1)).squeeze(-1)
    return F.pad(logp, (1, 0))  # (batch, seq)


def weighted_nll_sum(logprobs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_t W_t * l_t with l_t = -log pi_theta(y_t): the numerator of the PEAR loss.

    logprobs: (batch, seq) with gradient; weights: (batch, seq), detached, 0 off the loss mask.
    The caller divides by N, the normaliser over the whole optimizer step (PEAR.md), so that
    gradient accumulation and data parallelism do not change the objective.
    """
    return -(weights * logprobs).sum()
