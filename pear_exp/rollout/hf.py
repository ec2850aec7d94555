"""Rollout engine on transformers' generate (batched, KV cache): CPU runs and tests.

Only the configured temperature and top_p shape sampling. transformers fills every generation
setting a call leaves unset from the checkpoint's generation_config.json (an Instruct checkpoint
ships repetition_penalty, top_k, min_p ...), so generate runs with a blank generation_config in
place of the model's, and temperature and top-p are applied by our own processors.

The log-prob recorded for each sampled token is that of the distribution that actually sampled it:
the processed scores (after temperature and top-p) put through log_softmax. A processor that runs
last gathers it step by step, so memory holds one step's (batch, vocab) scores, never all of them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import (
    GenerationConfig, LogitsProcessor, LogitsProcessorList, TemperatureLogitsWarper,
    TopPLogitsWarper,
)

from pear_exp.rollout.base import Completion


class SampledLogProbs(LogitsProcessor):
    """The last processor: each call gathers the log-prob of the token sampled at the previous step
    (the last column of input_ids) under that step's processed scores, then keeps only the current
    step's scores. The final token's is gathered by `finish` once generate returns."""

    def __init__(self, top_k: int = 0):
        self.logprobs: list[torch.Tensor] = []  # (batch,) per step
        self.top_k = top_k  # > 0: also each step's top-k ids and log-probs, (batch, k) per step
        self.top: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.last: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.last is not None:
            self._gather(input_ids[:, -1])
        self.last = scores
        return scores

    def _gather(self, tokens: torch.Tensor) -> None:
        logq = F.log_softmax(self.last.float(), -1)
        self.logprobs.append(logq.gather(-1, tokens.unsqueeze(-1)).squeeze(-1).cpu())
        if self.top_k:
            values, ids = logq.topk(min(self.top_k, logq.shape[-1]), dim=-1)
            self.top.append((ids.cpu(), values.cpu()))

    def finish(self, last_tokens: torch.Tensor) -> tuple[torch.Tensor, tuple | None]:
        """(batch, steps) log-probs, given the tokens sampled at the last step; with top_k also
        ((batch, steps, k) ids, (batch, steps, k) log-probs), else None."""
        self._gather(last_tokens)
        self.last = None
        top = (tuple(torch.stack(t, dim=1) for t in zip(*self.top)) if self.top_k else None)
        return torch.stack(self.logprobs, dim=1), top


class HFEngine:
    """Generates with the very model object it is given: after an optimizer step the next
    generate already uses the new weights, so sync_weights only has to point at the model."""

    def __init__(self, model, tokenizer, batch_size: int = 512):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size

    def sync_weights(self, model) -> None:
        self.model = model

    @torch.no_grad()
    def generate(
        self,
        prompts: list[list[int]],
        *,
        n: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 64,
        stop_token_ids: list[int],
        seed: int = 0,
        desc: str = "generate",
        top_k: int = 0,
    ) -> list[list[Completion]]:
        """n completions for each prompt (token ids); temperature 0 means greedy; top_k > 0 also
        records the top-k of each step's processed distribution (Completion.top_ids).

        Returns completions[prompt_index][sample_index].
        """
        flat = [p for p in prompts for _ in range(n)]
        # Sort by length so each batch pads little; results are put back in order.
        order = sorted(range(len(flat)), key=lambda i: len(flat[i]))
        sampled = temperature > 0
        # Everything else at its neutral value: nothing is inherited from the checkpoint, whose
        # generation_config is swapped out below; top_k off (the global default is 50).
        gen_cfg = GenerationConfig(
            do_sample=sampled, temperature=1.0, top_p=1.0, top_k=0 if sampled else None,
            max_new_tokens=max_new_tokens, eos_token_id=stop_token_ids,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        # Our own warpers, so that the recorder can run after them (generate puts the warpers
        # it builds itself after any processor passed in).
        warpers = []
        if sampled and temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(temperature))
        if sampled and top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p))
        was_training = self.model.training
        checkpoint_defaults = self.model.generation_config
        self.model.eval()
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        device = next(self.model.parameters()).device
        results: list[Completion | None] = [None] * len(flat)
        stops = set(stop_token_ids)
        try:
            self.model.generation_config = GenerationConfig()  # blank: global defaults only
            for start in tqdm(range(0, len(order), self.batch_size), desc=desc, leave=False):
                idx = order[start : start + self.batch_size]
                width = max(len(flat[i]) for i in idx)
                pad = self.tokenizer.pad_token_id
                ids = torch.tensor([[pad] * (width - len(flat[i])) + flat[i] for i in idx])
                attn = torch.tensor([[0] * (width - len(flat[i])) + [1] * len(flat[i]) for i in idx])
                recorder = SampledLogProbs(top_k)
                out = self.model.generate(
                    input_ids=ids.to(device), attention_mask=attn.to(device),
                    generation_config=gen_cfg,
                    logits_processor=LogitsProcessorList([*warpers, recorder]),
                )
                logp, top = recorder.finish(out[:, -1])  # (batch, steps), top-k or None
                new = out[:, width:].cpu()
                for row, i in enumerate(idx):
                    toks = new[row].tolist()
                    end = next((k + 1 for k, t in enumerate(toks) if t in stops), None)
                    reason = "stop" if end is not None else "length"
                    end = end if end is not None else len(toks)
                    results[i] = Completion(toks[:end], logp[row, :end].tolist(), reason)
                    if top is not None:  # (tokens, k) arrays: compact at long traces
                        results[i].top_ids = top[0][row, :end].to(torch.int32).numpy()
                        results[i].top_logprobs = top[1][row, :end].numpy()
        finally:
            torch.random.set_rng_state(generator_state)
            self.model.generation_config = checkpoint_defaults
            self.model.train(was_training)
        return [results[k * n : (k + 1) * n] for k in range(len(prompts))]

    def close(self) -> None:
        """Drop the reference to the model: all the engine holds (in RL the model is the
        trainer's own, which lives on)."""
        self.model = None
