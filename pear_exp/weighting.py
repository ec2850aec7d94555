"""PEAR loss weights: pure tensor functions, the public API for any SFT trainer.

Per row, t = 1..T indexes only the tokens that carry loss (mask != 0), in order; prompt tokens,
padding (left or right) and the gaps between turns of a multi-turn example are skipped, and their
log-probs are never read (they may be anything, even nan/inf). With p_t the current model's
detached log-prob of the data token and b_t the behavior policy's:

    delta_t = clip(p_t - b_t, d_lo, d_hi)
    sequence: logG_t = sum_{j=1..T} delta_j                                (no discount)
    token:    logG_t = (T - t) log(gamma) + sum_{j>t} delta_j              (strict suffix)
    block:    e(t) = min(B * ceil(t / B), T), the last loss token of t's block of B
              logG_t = (T - e(t)) log(gamma) + sum_{j>e(t)} delta_j
    none:     logG_t = 0                                                   (plain SFT)
    W_t = exp(clip(logG_t, L_lo, L_hi)) on loss tokens, 0 elsewhere; no gradient flows through W.

Decided here (the paper leaves them open): the discount enters before the final clip; the
sequence level has no discount; the target policy is the current model at the RL temperature.
Sums run in float64 over suffix sums built from one cumsum, and exp is taken only after the clip,
so 32k-token rows stay accurate and finite. Weights come back as float32 (float64 for float64 input).
"""

from __future__ import annotations

import math
from enum import Enum

import torch
from torch import Tensor

from pear_exp.config import WeightLevel

# The names pear_weights accepts: plain SFT and PEAR's granularities (WeightLevel also holds
# PEAR's relatives, which have their own functions below).
LEVELS = tuple(level.value for level in WeightLevel if level.is_pear or level == WeightLevel.none)
STAT_KEYS = ("weight_mean", "weight_min", "weight_max", "weight_ess", "delta_clip_low_frac",
             "delta_clip_high_frac", "log_weight_clip_frac", "log_weight_floor_frac", "delta_mean")


def _check(policy_logprobs: Tensor, behavior_logprobs: Tensor, mask: Tensor, level, block_size: int,
           gamma: float, delta_clip, log_weight_clip) -> str:
    level = level.value if isinstance(level, Enum) else level
    if level not in LEVELS:
        raise ValueError(f"unknown PEAR weighting level {level!r}; valid: {', '.join(LEVELS)}")
    if not (policy_logprobs.shape == behavior_logprobs.shape == mask.shape) or mask.dim() != 2:
        shapes = [tuple(x.shape) for x in (policy_logprobs, behavior_logprobs, mask)]
        raise ValueError(f"policy/behavior log-probs and mask must share one (batch, seq) shape, got {shapes}")
    if int(block_size) != block_size or block_size < 1:
        raise ValueError(f"block_size must be an integer >= 1, got {block_size!r}")
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"gamma must be in (0, 1], got {gamma!r}")
    for name, (lo, hi) in (("delta_clip", delta_clip), ("log_weight_clip", log_weight_clip)):
        if not lo <= hi:
            raise ValueError(f"{name} must be (low, high) with low <= high, got {(lo, hi)!r}")
    return level


@torch.no_grad()
def _pear(policy_logprobs, behavior_logprobs, mask, level, block_size, gamma, delta_clip,
          log_weight_clip):
    """Return (W float64, loss mask, raw p - b, logG, clipped logG), all (batch, seq)."""
    level = _check(policy_logprobs, behavior_logprobs, mask, level, block_size, gamma, delta_clip,
                   log_weight_clip)
    f64 = torch.float64
    m = mask.detach() != 0                                                      # (batch, seq) bool
    raw = torch.where(m, policy_logprobs.detach().to(f64) - behavior_logprobs.detach().to(f64), 0.0)
    delta = torch.where(m, raw.clamp(*delta_clip), 0.0)                         # (batch, seq) float64
    if level == "none":
        log_g = torch.zeros_like(delta)
        return m.to(f64), m, raw, log_g, log_g

    prefix = delta.cumsum(dim=1)                                                # (batch, seq) sum_{j<=t}
    total = delta.sum(dim=1, keepdim=True)                                      # (batch, 1)
    rank = m.long().cumsum(dim=1)                                               # (batch, seq) t, 1-based
    T = m.long().sum(dim=1, keepdim=True)                                       # (batch, 1)
    log_gamma = math.log(gamma)
    if level == "sequence":
        log_g = total.expand_as(delta)
    elif level == "token":
        log_g = (T - rank).to(f64) * log_gamma + (total - prefix)
    else:  # block: suffix sum after e(t) = total - (prefix at the loss token of rank e(t))
        end = torch.minimum((rank + block_size - 1) // block_size * block_size, T)  # (batch, seq) e(t)
        # prefix_by_rank[:, r] = sum of the first r clipped deltas; column seq+1 absorbs non-loss tokens
        prefix_by_rank = delta.new_zeros(delta.shape[0], delta.shape[1] + 2)      # (batch, seq + 2)
        prefix_by_rank.scatter_(1, torch.where(m, rank, delta.shape[1] + 1), prefix)
        log_g = (T - end).to(f64) * log_gamma + (total - prefix_by_rank.gather(1, end))
    clipped = log_g.clamp(*log_weight_clip)
    return torch.where(m, clipped.exp(), 0.0), m, raw, log_g, clipped


def pear_weights(policy_logprobs: Tensor, behavior_logprobs: Tensor, mask: Tensor, level="token",
                 block_size: int = 4, gamma: float = 0.999, delta_clip=(-0.08, 0.3),
                 log_weight_clip=(-10.0, 5.0)) -> Tensor:
    """PEAR weights W, shape (batch, seq), detached, 0 where mask == 0.

    policy_logprobs, behavior_logprobs: (batch, seq) log-probs of the data tokens under the current
    model and the behavior policy; mask: (batch, seq), nonzero on tokens that carry loss (bool, int
    or float). level: "none" | "token" | "block" | "sequence" (or a str Enum with those values).
    """
    weights = _pear(policy_logprobs, behavior_logprobs, mask, level, block_size, gamma, delta_clip,
                    log_weight_clip)[0]
    return weights.to(torch.promote_types(policy_logprobs.dtype, torch.float32))


def pear_weights_with_stats(policy_logprobs: Tensor, behavior_logprobs: Tensor, mask: Tensor,
                            level="token", block_size: int = 4, gamma: float = 0.999,
                            delta_clip=(-0.08, 0.3), log_weight_clip=(-10.0, 5.0)
                            ) -> tuple[Tensor, dict[str, float]]:
    """Same weights as `pear_weights`, plus diagnostics over all loss tokens of the batch.

    Keys (python floats, all 0.0 when there is no loss token): weight_mean, weight_min, weight_max,
    weight_ess = (sum W)^2 / (N sum W^2), delta_clip_low_frac / delta_clip_high_frac (fraction of
    loss tokens whose p - b lay below / above delta_clip), log_weight_clip_frac (fraction whose
    logG was clipped), log_weight_floor_frac (fraction clipped at the floor log_weight_clip[0]:
    weight exp(L_lo), next to nothing), delta_mean (mean unclipped p - b).
    """
    weights, m, raw, log_g, clipped = _pear(policy_logprobs, behavior_logprobs, mask, level,
                                            block_size, gamma, delta_clip, log_weight_clip)
    n = int(m.sum())
    stats = dict.fromkeys(STAT_KEYS, 0.0)
    if n > 0:
        w = weights[m]                                                          # (N,) float64
        values = torch.stack([
            w.mean(), w.min(), w.max(), w.sum() ** 2 / (n * (w * w).sum()),
            (m & (raw < delta_clip[0])).sum().double() / n,
            (m & (raw > delta_clip[1])).sum().double() / n,
            (m & (log_g != clipped)).sum().double() / n,
            (m & (log_g < log_weight_clip[0])).sum().double() / n, raw.sum() / n,
        ]).tolist()                                                             # one device sync
        stats = dict(zip(STAT_KEYS, values))
    return weights.to(torch.promote_types(policy_logprobs.dtype, torch.float32)), stats


def dft_weights(policy_logprobs: Tensor, mask: Tensor) -> Tensor:
    """DFT's token weights (arXiv 2508.05629; its official fsdp_dft_trainer.py): the current
    model's probability of each data token, detached, 0 off the loss mask; no clamp.

    policy_logprobs: (batch, seq) log pi_theta(y_t | x, y_<t) at temperature 1.
    Returns (batch, seq): exp(policy_logprobs) where mask is 1. The loss sum_t W_t nll_t / N then
    has the gradient of -sum_t sg(p_t) log p_t / N."""
    if policy_logprobs.shape != mask.shape or mask.dim() != 2:
        raise ValueError(f"policy_logprobs {tuple(policy_logprobs.shape)} and mask "
                         f"{tuple(mask.shape)} must be the same (batch, seq) shape")
    return torch.where(mask.bool(), policy_logprobs.detach().exp(), torch.zeros_like(mask,
                       dtype=policy_logprobs.dtype))


# iw-SFT's clamps in its official code: the sequence weight in [0, 16], a token's in [0.2, 1.8]
IW_SFT_CLIPS = {"sequence": (0.0, 16.0), "token": (0.2, 1.8)}


def iw_sft_weights(policy_logprobs: Tensor, reference_logprobs: Tensor, mask: Tensor, *,
                   per_token: bool, clip: tuple[float, float], temperature: float = 1.0) -> Tensor:
    """iw-SFT's weights (arXiv 2507.12856; its official bounding_trainers.py IwSFTLoss): the
    current model against a frozen reference (the initial model), both at temperature 1.

        d_t = log pi_theta(y_t) (detached) - log pi_ref(y_t)      on loss tokens
        sequence: W_t = clamp(exp(temperature * mean_t d_t), clip) for every loss token of the row
                  (the official code divides the summed log-ratio by the row's loss tokens)
        token:    W_t = clamp(exp(d_t), clip)

    policy_logprobs, reference_logprobs, mask: (batch, seq). Returns (batch, seq), detached, 0
    off the loss mask."""
    if not (policy_logprobs.shape == reference_logprobs.shape == mask.shape) or mask.dim() != 2:
        raise ValueError("policy_logprobs, reference_logprobs and mask must be the same "
                         "(batch, seq) shape")
    lo, hi = clip
    d = (policy_logprobs.detach() - reference_logprobs) * mask
    if per_token:
        w = d.exp().clamp(lo, hi)
    else:
        mean = d.sum(dim=1, keepdim=True) / mask.sum(dim=1, keepdim=True).clamp(min=1)
        w = (temperature * mean).exp().clamp(lo, hi).expand_as(d)
    return w * mask
