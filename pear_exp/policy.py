"""The training forward: a causal LM's log-probs of its own tokens, what every trainer (and
teacher-forced scoring) computes, in one module that DDP / FSDP wrap."""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

from pear_exp import losses
from pear_exp.packing import Packed


class Forward(NamedTuple):
    """What TokenLogProbs computes; each (batch, seq[, k]) and aligned like losses.token_logprobs
    (position t: the prediction of token t; position 0 holds zeros)."""

    logprobs: torch.Tensor  # of the input tokens at `temperature`, with gradient
    target: Optional[torch.Tensor] = None  # the same at `target_temperature`, detached
    entropy: Optional[torch.Tensor] = None  # of the distribution at `temperature`, detached
    kl: Optional[torch.Tensor] = None  # KL(other || model) at temperature 1, with gradient
    topk_ids: Optional[torch.Tensor] = None  # (batch, seq, k) most likely tokens at `temperature`
    topk_logprobs: Optional[torch.Tensor] = None  # and their log-probs, detached


class TokenLogProbs(torch.nn.Module):
    """A causal LM that returns the log-probs of its own input tokens: the one forward pass that
    the trainers run, and that DDP / FSDP wrap (the LM head runs inside forward, where their
    hooks see it).

    forward -> Forward: logprobs at `temperature` with gradient; `target` the detached log-probs
    at `target_temperature` (None unless asked); `entropy` of the sampling distribution at
    `temperature` (None unless asked); `kl` per position against `kl_topk` (a behavior policy's
    stored top-k ids and log-probs, each (batch, seq, k): losses.topk_kl) or `kl_reference` (a
    frozen model's `reference_for(...)`: its full logits when chunk_size is 0, else its (last
    hidden states, LM-head weight), the logits then made chunk by chunk: losses.full_kl);
    the top `top_k` tokens and log-probs at `temperature` when top_k > 0 (teacher scoring).
    chunk_size > 0: from the last hidden states, chunk_size positions at a time, never holding
    (batch, seq, vocab) logits (large vocabularies); 0: through the model's full logits.
    packed: the padded batch's rows run end to end (pear_exp/packing.py; the model must be inside
    packing.padding_free): input_ids / attention_mask / kl_topk are still the padded batch's
    and every output comes back in its padded layout; kl_reference is then the reference's
    reference_for(..., packed=packed).
    """

    def __init__(self, model, chunk_size: int = 0):
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size

    def forward(self, input_ids, attention_mask, temperature: float = 1.0,
                target_temperature: float | None = None, entropy: bool = False, top_k: int = 0,
                kl_topk=None, kl_reference=None, packed: Packed | None = None) -> Forward:
        if packed is not None:
            kl_topk = None if kl_topk is None else tuple(packed.pack(t) for t in kl_topk)
            out = self._forward(packed.input_ids, model_inputs(input_ids, attention_mask, packed),
                                temperature, target_temperature, entropy, top_k, kl_topk,
                                kl_reference)
            return Forward(*(None if t is None else packed.unpack(t) for t in out))
        return self._forward(input_ids, model_inputs(input_ids, attention_mask, None),
                             temperature, target_temperature, entropy, top_k, kl_topk, kl_reference)

    def _forward(self, input_ids, inputs: dict, temperature, target_temperature, entropy, top_k,
                 kl_topk, kl_reference) -> Forward:
        out = {}
        if not self.chunk_size:
            logits = self.model(**inputs).logits
            logp = losses.token_logprobs(logits, input_ids, temperature)
            if kl_topk is not None:
                out["kl"] = F.pad(losses.topk_kl(logits[:, :-1], *(t[:, 1:] for t in kl_topk)),
                                  (1, 0))
            if kl_reference is not None:  # the reference's full logits, (batch, seq, vocab)
                out["kl"] = F.pad(losses.full_kl(kl_reference[:, :-1], logits[:, :-1]), (1, 0))
            with torch.no_grad():
                if target_temperature is not None:
                    out["target"] = losses.token_logprobs(logits, input_ids, target_temperature)
                if entropy:
                    out["entropy"] = losses.token_entropy(logits, temperature)
                if top_k:
                    ids, values = losses.topk_logprobs(logits[:, :-1], top_k, temperature)
                    out["topk_ids"], out["topk_logprobs"] = (F.pad(t, (0, 0, 1, 0))
                                                             for t in (ids, values))
            return Forward(logp, **out)
        hidden = self.model.base_model(**inputs).last_hidden_state
        weight = self.model.get_output_embeddings().weight
        chunk = self.chunk_size
        logp = losses.chunked_token_logprobs(hidden, weight, input_ids, temperature, chunk)
        if kl_topk is not None or kl_reference is not None:
            out["kl"] = losses.chunked_kl(hidden, weight, chunk, topk=kl_topk,
                                          reference=kl_reference)
        with torch.no_grad():
            if target_temperature is not None:
                out["target"] = losses.chunked_token_logprobs(hidden, weight, input_ids,
                                                              target_temperature, chunk)
            if entropy:
                out["entropy"] = losses.chunked_token_entropy(hidden, weight, temperature, chunk)
            if top_k:
                out["topk_ids"], out["topk_logprobs"] = losses.chunked_topk_logprobs(
                    hidden, weight, top_k, temperature, chunk)
        return Forward(logp, **out)

    @torch.no_grad()
    def reference_for(self, input_ids, attention_mask, chunk_size: int,
                      packed: Packed | None = None):
        """What this (frozen) model hands to another's forward as `kl_reference`: its full
        logits (batch, seq, vocab) for a chunk_size of 0, else (last hidden states (batch, seq,
        hidden), LM-head weight (vocab, hidden)); with `packed`, in the packed layout (1, T, ...)
        that the other's packed forward works in. Not for a wrapped model: DDP / FSDP see only
        `forward`."""
        inputs = model_inputs(input_ids, attention_mask, packed)
        if not chunk_size:
            return self.model(**inputs).logits
        hidden = self.model.base_model(**inputs).last_hidden_state
        return hidden, self.model.get_output_embeddings().weight


def model_inputs(input_ids, attention_mask, packed: Packed | None) -> dict:
    """The causal LM's forward arguments: the padded batch's, or its packed form's."""
    if packed is not None:
        return packed.model_inputs()
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def decoder_layers(model) -> list[torch.nn.Module]:
    """The transformer blocks of a causal LM (FSDP shards each as one unit)."""
    return list(model.base_model.layers)
