"""Rollout engine on transformers' generate (batched, KV cache): CPU runs and tests.

The log-prob recorded for each sampled token is that of the distribution that actually sampled it:
generate's processed scores (after temperature and top-p) put through log_softmax. top_k is
switched off explicitly, since a checkpoint's generation_config may default to top_k=50.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import GenerationConfig

from pear_exp.rollout import Completion


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
    ) -> list[list[Completion]]:
        """n completions for each prompt (token ids); temperature 0 means greedy.

        Returns completions[prompt_index][sample_index].
        """
        flat = [p for p in prompts for _ in range(n)]
        # Sort by length so each batch pads little; results are put back in order.
        order = sorted(range(len(flat)), key=lambda i: len(flat[i]))
        sampled = temperature > 0
        gen_cfg = GenerationConfig(
            do_sample=sampled,
            temperature=temperature if sampled else None,
            top_p=top_p if sampled else None,
            top_k=0 if sampled else None,
            max_new_tokens=max_new_tokens,
            eos_token_id=stop_token_ids,
            pad_token_id=self.tokenizer.pad_token_id,
            output_scores=True,
            return_dict_in_generate=True,
        )
        was_training = self.model.training
        self.model.eval()
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        device = next(self.model.parameters()).device
        results: list[Completion | None] = [None] * len(flat)
        stops = set(stop_token_ids)
        try:
            for start in tqdm(range(0, len(order), self.batch_size), desc=desc, leave=False):
                idx = order[start : start + self.batch_size]
                width = max(len(flat[i]) for i in idx)
                pad = self.tokenizer.pad_token_id
                ids = torch.tensor([[pad] * (width - len(flat[i])) + flat[i] for i in idx])
                attn = torch.tensor([[0] * (width - len(flat[i])) + [1] * len(flat[i]) for i in idx])
                out = self.model.generate(
                    input_ids=ids.to(device), attention_mask=attn.to(device), generation_config=gen_cfg
                )
                new = out.sequences[:, width:].cpu()  # (batch, steps)
                scores = torch.stack(out.scores, dim=1).float()  # (batch, steps, vocab), processed
                logp = torch.gather(F.log_softmax(scores, -1), -1, new.to(scores.device).unsqueeze(-1))
                logp = logp.squeeze(-1).cpu()
                for row, i in enumerate(idx):
                    toks = new[row].tolist()
                    end = next((k + 1 for k, t in enumerate(toks) if t in stops), None)
                    reason = "stop" if end is not None else "length"
                    end = end if end is not None else len(toks)
                    results[i] = Completion(toks[:end], logp[row, :end].tolist(), reason)
        finally:
            torch.random.set_rng_state(generator_state)
            self.model.train(was_training)
        return [results[k * n : (k + 1) * n] for k in range(len(prompts))]
