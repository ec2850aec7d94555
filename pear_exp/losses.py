"""Per-token log-probabilities and the weighted SFT loss: pure functions of tensors.

Alignment convention: every tensor is (batch, seq) over the *input* positions; the value at
position t belongs to token input_ids[:, t] given the tokens before it. Position 0 has no
prediction and gets 0. Mask convention everywhere: 1 = this token carries loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pear_exp.config import LossAggregation


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
    The caller divides by N, the normaliser over the whole optimizer step (docs/method.md,
    Normalisation), so that gradient accumulation and data parallelism do not change the
    objective.
    """
    return -(weights * logprobs).sum()


# ---------------------------------------------------------------------------------------------
# GRPO


def group_advantages(rewards: torch.Tensor, scale: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """Advantages within each group of samples of one prompt.

    rewards: (groups, n). Returns (groups, n): r - mean(r), divided by std(r) + eps when `scale`
    (GRPO); unscaled is Dr. GRPO's choice, which avoids up-weighting near-uniform groups. The std
    is the population std over the group's n samples.
    """
    centered = rewards - rewards.mean(dim=1, keepdim=True)
    if not scale:
        return centered
    return centered / (rewards.std(dim=1, unbiased=False, keepdim=True) + eps)


AGGREGATIONS = tuple(mode.value for mode in LossAggregation)


def aggregation_coefficients(mask: torch.Tensor, mode: str, max_new_tokens: int) -> torch.Tensor:
    """Per-token coefficients c such that the step's loss is sum_t c_t * l_t.

    mask: (batch, seq), 1 on response tokens, over ALL sequences of the optimizer step, so that
    any micro-batch split of the step sums to the same loss.
      token_mean:               c = 1 / (total response tokens in the step)
      seq_mean_token_mean:      c = 1 / (num sequences * tokens of that sequence)
      seq_mean_token_sum_norm:  c = 1 / (num sequences * max_new_tokens)   (Dr. GRPO; a constant
                                normaliser, so long responses are not down-weighted per token)
    """
    mask = mask.float()
    num_seqs = mask.shape[0]
    if mode == "token_mean":
        return mask / mask.sum().clamp(min=1)
    if mode == "seq_mean_token_mean":
        return mask / (num_seqs * mask.sum(dim=1, keepdim=True).clamp(min=1))
    if mode == "seq_mean_token_sum_norm":
        return mask / (num_seqs * max_new_tokens)
    raise ValueError(f"unknown loss aggregation {mode!r}; valid: {', '.join(AGGREGATIONS)}")


def grpo_token_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    *,
    mask: torch.Tensor,
    clip_low: float,
    clip_high: float,
    engine_logprobs: torch.Tensor | None = None,
    tis_cap: float | None = None,
    ref_logprobs: torch.Tensor | None = None,
    kl_coef: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token GRPO loss (batch, seq) and per-token diagnostics; aggregate with coefficients.

    logprobs: current policy, with gradient; old_logprobs: the policy that the rollout batch is
    attributed to (trainer-side, detached); advantages: (batch, 1) or (batch, seq); mask: (batch,
    seq), 1 on the tokens that carry loss. Off the mask every log-prob difference is set to 0
    before any exp: prompt and pad positions may hold anything (the engine reports 0 there), and
    an overflowing exp would turn their zero coefficient into inf * 0 = NaN. The loss there is
    then that of ratio 1 (finite, with zero gradient); the caller's coefficients drop it.
        ratio = exp(logprobs - old_logprobs)
        pg    = -min(ratio * A, clip(ratio, 1 - clip_low, 1 + clip_high) * A)
        pg   *= min(exp(old_logprobs - engine_logprobs), tis_cap)   truncated importance weight
                for the gap between the engine that sampled and the trainer (detached)
        kl    = exp(ref - logprobs) - (ref - logprobs) - 1          k3 estimator, >= 0
        loss  = pg + kl_coef * kl
    """
    on = mask.bool()
    off = lambda diff: diff.masked_fill(~on, 0.0)  # noqa: E731  (before exp: see above)
    ratio = torch.exp(off(logprobs - old_logprobs))
    unclipped = ratio * advantages
    clipped = ratio.clamp(1 - clip_low, 1 + clip_high) * advantages
    loss = -torch.minimum(unclipped, clipped)
    stats = {"clipped": (clipped < unclipped).float()}  # the clip changed this token's objective
    if engine_logprobs is not None and tis_cap is not None:
        tis = torch.exp(off(old_logprobs - engine_logprobs)).clamp(max=tis_cap).detach()
        loss = loss * tis
        stats["tis"] = tis
    if ref_logprobs is not None:
        log_r = off(ref_logprobs - logprobs)
        kl = torch.exp(log_r) - log_r - 1
        loss = loss + kl_coef * kl
        stats["kl"] = kl.detach()
    return loss, stats


# ---------------------------------------------------------------------------------------------
# Large vocabularies


def _chunk_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                    temperature: float) -> torch.Tensor:
    logits = (hidden @ weight.T).float()  # (chunk, vocab): the only vocab-wide tensor alive
    if temperature != 1.0:
        logits = logits / temperature
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)


def chunked_token_logprobs(hidden: torch.Tensor, lm_head_weight: torch.Tensor,
                           input_ids: torch.Tensor, temperature: float = 1.0,
                           chunk_size: int = 1024) -> torch.Tensor:
    """token_logprobs computed from the last hidden states, `chunk_size` positions at a time.

    hidden: (batch, seq, hidden) before the LM head; lm_head_weight: (vocab, hidden).
    The (batch, seq, vocab) logits are never materialised: each chunk's logits exist only inside
    a checkpointed function and are recomputed in the backward pass, so peak memory holds one
    (chunk_size, vocab) float32 block instead of the whole sequence's.
    Returns (batch, seq) float32, 0 at position 0, equal to token_logprobs(lm_head(hidden), ...).
    """
    batch, seq, width = hidden.shape
    flat_hidden = hidden[:, :-1].reshape(-1, width)  # (batch * (seq-1), hidden)
    targets = input_ids[:, 1:].reshape(-1)
    parts = []
    for start in range(0, flat_hidden.shape[0], chunk_size):
        h, t = flat_hidden[start : start + chunk_size], targets[start : start + chunk_size]
        if torch.is_grad_enabled() and (h.requires_grad or lm_head_weight.requires_grad):
            parts.append(torch.utils.checkpoint.checkpoint(
                _chunk_logprobs, h, lm_head_weight, t, temperature, use_reentrant=False))
        else:
            parts.append(_chunk_logprobs(h, lm_head_weight, t, temperature))
    logp = torch.cat(parts).view(batch, seq - 1)
    return F.pad(logp, (1, 0))


def token_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of softmax(logits / temperature) at each prediction, aligned like token_logprobs:
    (batch, seq), position t holds the entropy of the distribution that predicted token t."""
    logq = F.log_softmax(logits[:, :-1].float() / temperature, dim=-1)
    return F.pad(-(logq.exp() * logq).sum(-1), (1, 0))


@torch.no_grad()
def chunked_token_entropy(hidden: torch.Tensor, lm_head_weight: torch.Tensor,
                          temperature: float = 1.0, chunk_size: int = 1024) -> torch.Tensor:
    """token_entropy(lm_head(hidden)) without materialising (batch, seq, vocab) logits."""
    batch, seq, width = hidden.shape
    flat = hidden[:, :-1].reshape(-1, width)
    parts = []
    for start in range(0, flat.shape[0], chunk_size):
        logq = F.log_softmax((flat[start : start + chunk_size] @ lm_head_weight.T).float()
                             / temperature, dim=-1)
        parts.append(-(logq.exp() * logq).sum(-1))
    return F.pad(torch.cat(parts).view(batch, seq - 1), (1, 0))


# ---------------------------------------------------------------------------------------------
# Distillation: per-position KL against another distribution (the KL base loss, ASFT's anchor)

# Teacher mass outside its top-k below this is float rounding of a complete distribution, not a
# tail: the stored log-probs are float32, so their probabilities sum to 1 within ~1e-7 per token.
TAIL_FLOOR = 1e-6


def topk_kl(logits: torch.Tensor, topk_ids: torch.Tensor,
            topk_logprobs: torch.Tensor) -> torch.Tensor:
    """KL(q || p) per position, with q known only on its top-k tokens.

    logits: (..., vocab), the model p (softmax at temperature 1); topk_ids / topk_logprobs:
    (..., k), q's k most likely tokens and their log-probs (-inf allowed: a token q cannot emit).
    The rest of the vocabulary is one bucket on both sides, q_rest = 1 - sum_k q and
    p_rest = 1 - sum_k p (from a log-sum-exp over the other tokens, so it stays exact when tiny):
        KL = sum_{v in top-k} q(v) (log q(v) - log p(v)) + q_rest (log q_rest - log p_rest)
    the exact KL between the two distributions coarsened to k + 1 outcomes: a lower bound of the
    full KL, equal to it when the top-k hold all of q's mass (k >= vocab). Returns (...) float32
    with gradient through logits only."""
    logp = F.log_softmax(logits.float(), dim=-1)                                 # (..., vocab)
    logq = topk_logprobs.float()
    q = logq.exp()
    on = q > 0
    head = torch.where(on, q * (logq.masked_fill(~on, 0.0) - logp.gather(-1, topk_ids)), 0.0)
    if topk_ids.shape[-1] >= logp.shape[-1]:  # the whole distribution: no rest (and no
        return head.sum(-1)                    # log-sum-exp over nothing, whose gradient is nan)
    q_rest = (1.0 - q.double().sum(-1)).clamp(min=0.0).float()                  # (...)
    log_p_rest = logp.scatter(-1, topk_ids, float("-inf")).logsumexp(-1)         # (...)
    has_rest = (q_rest > TAIL_FLOOR) & torch.isfinite(log_p_rest)
    rest = torch.where(has_rest, q_rest * (q_rest.clamp(min=TAIL_FLOOR).log()
                                           - log_p_rest.masked_fill(~has_rest, 0.0)), 0.0)
    return head.sum(-1) + rest


def full_kl(reference_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(r || p) per position over the whole vocabulary, both at temperature 1.

    reference_logits, logits: (..., vocab). Returns (...) float32, gradient through logits only
    (the reference is detached): sum_v r(v) (log r(v) - log p(v))."""
    logr = F.log_softmax(reference_logits.detach().float(), dim=-1)
    logp = F.log_softmax(logits.float(), dim=-1)
    return (logr.exp() * (logr - logp)).sum(-1)


def topk_logprobs(logits: torch.Tensor, k: int, temperature: float = 1.0
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The k most likely tokens of softmax(logits / temperature) (all of them when the vocabulary
    is smaller) and their log-probs: (..., min(k, vocab)) ids (long) and log-probs (float32),
    most likely first."""
    logp = F.log_softmax(logits.float() / temperature, dim=-1)
    values, ids = logp.topk(min(k, logp.shape[-1]), dim=-1)
    return ids, values


def _chunk_topk_kl(hidden, weight, topk_ids, topk_logprobs):
    return topk_kl(hidden @ weight.T, topk_ids, topk_logprobs)


def _chunk_full_kl(hidden, weight, reference_hidden, reference_weight):
    with torch.no_grad():
        reference_logits = reference_hidden @ reference_weight.T
    return full_kl(reference_logits, hidden @ weight.T)


def chunked_kl(hidden: torch.Tensor, lm_head_weight: torch.Tensor, chunk_size: int, *,
               topk: tuple[torch.Tensor, torch.Tensor] | None = None,
               reference: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Per-position KL of the model against `topk` (topk_kl) or a `reference` model (full_kl),
    from the last hidden states, chunk_size positions at a time, each chunk checkpointed as in
    chunked_token_logprobs (one (chunk, vocab) block alive, recomputed in the backward pass).

    hidden: (batch, seq, hidden); lm_head_weight: (vocab, hidden); topk: (ids, log-probs), each
    (batch, seq, k), position t holding the distribution that predicts token t; reference:
    (hidden (batch, seq, hidden'), lm_head_weight (vocab, hidden')) of the reference model.
    Returns (batch, seq) float32, 0 at position 0, aligned like token_logprobs."""
    if (topk is None) == (reference is None):
        raise ValueError("chunked_kl needs exactly one of topk and reference")
    batch, seq, width = hidden.shape
    flat = hidden[:, :-1].reshape(-1, width)
    if topk is not None:  # per-position tensors, sliced with the chunk; tensors shared by all
        fn, shared = _chunk_topk_kl, []
        per_position = [t[:, 1:].reshape(flat.shape[0], -1) for t in topk]
    else:
        fn, shared = _chunk_full_kl, [reference[1]]
        per_position = [reference[0][:, :-1].reshape(flat.shape[0], -1)]
    parts = []
    for start in range(0, flat.shape[0], chunk_size):
        piece = slice(start, start + chunk_size)
        args = [flat[piece], lm_head_weight] + [t[piece] for t in per_position] + shared
        if torch.is_grad_enabled() and (flat.requires_grad or lm_head_weight.requires_grad):
            parts.append(torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False))
        else:
            parts.append(fn(*args))
    return F.pad(torch.cat(parts).view(batch, seq - 1), (1, 0))


@torch.no_grad()
def chunked_topk_logprobs(hidden: torch.Tensor, lm_head_weight: torch.Tensor, k: int,
                          temperature: float = 1.0, chunk_size: int = 1024
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """topk_logprobs of lm_head(hidden) chunk by chunk, aligned like token_logprobs: (batch,
    seq, k) ids and log-probs, position t holding the distribution that predicts token t
    (zeros at position 0)."""
    batch, seq, width = hidden.shape
    flat = hidden[:, :-1].reshape(-1, width)
    ids, values = zip(*(topk_logprobs(flat[s : s + chunk_size] @ lm_head_weight.T, k, temperature)
                        for s in range(0, flat.shape[0], chunk_size)))
    k = ids[0].shape[-1]
    pad = lambda t: F.pad(torch.cat(t).view(batch, seq - 1, k), (0, 0, 1, 0))  # noqa: E731
    return pad(ids), pad(values)
