"""The training forward: a causal LM's log-probs of its own tokens, what every trainer (and
teacher-forced scoring) computes, in one module that DDP / FSDP wrap."""

from __future__ import annotations

import torch

from pear_exp import losses


class TokenLogProbs(torch.nn.Module):
    """A causal LM that returns the log-probs of its own input tokens: the one forward pass that
    the trainers run, and that DDP / FSDP wrap (the LM head runs inside forward, where their
    hooks see it).

    forward -> (logprobs, target, entropy), each (batch, seq) and aligned like
    losses.token_logprobs: logprobs at `temperature` with gradient; `target` the detached
    log-probs at `target_temperature` (None unless asked); `entropy` of the sampling distribution
    at `temperature`, detached (None unless asked).
    chunk_size > 0: from the last hidden states, chunk_size positions at a time, never holding
    (batch, seq, vocab) logits (large vocabularies); 0: through the model's full logits.
    """

    def __init__(self, model, chunk_size: int = 0):
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size

    def forward(self, input_ids, attention_mask, temperature: float = 1.0,
                target_temperature: float | None = None, entropy: bool = False):
        target = ent = None
        if not self.chunk_size:
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
            logp = losses.token_logprobs(logits, input_ids, temperature)
            with torch.no_grad():
                if target_temperature is not None:
                    target = losses.token_logprobs(logits, input_ids, target_temperature)
                if entropy:
                    ent = losses.token_entropy(logits, temperature)
            return logp, target, ent
        hidden = self.model.base_model(input_ids=input_ids,
                                       attention_mask=attention_mask).last_hidden_state
        weight = self.model.get_output_embeddings().weight
        logp = losses.chunked_token_logprobs(hidden, weight, input_ids, temperature,
                                             self.chunk_size)
        with torch.no_grad():
            if target_temperature is not None:
                target = losses.chunked_token_logprobs(hidden, weight, input_ids,
                                                       target_temperature, self.chunk_size)
            if entropy:
                ent = losses.chunked_token_entropy(hidden, weight, temperature, self.chunk_size)
        return logp, target, ent


def decoder_layers(model) -> list[torch.nn.Module]:
    """The transformer blocks of a causal LM (FSDP shards each as one unit)."""
    return list(model.base_model.layers)
