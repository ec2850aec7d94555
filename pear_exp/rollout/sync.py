"""Weight-sync verification (pear_exp/train/grpo.py, step 6).

Staleness is checked exactly, by a fingerprint: per group of weights, the float64 sum, sum of
absolute values and sum of squares of the values the engine computes with, against the same of
the trainer's weights cast to the engine's dtype (the cast that vLLM's weight loader does:
`copy_` into its bf16 parameter rounds to nearest even, like `.to`). Groups are a decoder
layer ("model.layers.3") or a module outside the layers ("model.embed_tokens", "model.norm",
"lm_head"): sums over a group do not depend on how vLLM fuses (qkv_proj, gate_up_proj),
transposes or packs the tensors in it. One update at lr 1e-7 moves a fraction of the weights
by one bf16 step, far above float64 rounding; the sum of squares keeps an up and a down step
of equal size from cancelling.
"""

from __future__ import annotations

import re
from typing import Iterable

import torch

from pear_exp.data import collate, make_row
from pear_exp.losses import token_logprobs
from pear_exp.rollout.base import RolloutEngine


_LAYER = re.compile(r"(.*\.layers\.\d+)\.")
FINGERPRINT_RTOL = 1e-12  # float64 rounding of differently ordered sums: about 1e-15


def fingerprint_group(name: str) -> str:
    """'model.layers.3.mlp.up_proj.weight' -> 'model.layers.3'; 'lm_head.weight' -> 'lm_head'."""
    match = _LAYER.match(name)
    return match.group(1) if match else name.rpartition(".")[0]


def weight_fingerprint(named_tensors: Iterable[tuple[str, torch.Tensor]],
                       dtype: torch.dtype | None = None) -> dict[str, list[float]]:
    """{group: [sum, sum |x|, sum x^2]} in float64 of the tensors, each cast to `dtype` first."""
    sums: dict[str, torch.Tensor] = {}
    for name, tensor in named_tensors:
        total = torch.zeros(3, dtype=torch.float64, device=tensor.device)
        for chunk in tensor.detach().reshape(-1).split(1 << 24):  # bounded float64 copies
            x = (chunk.to(dtype) if dtype is not None else chunk).double()
            total += torch.stack([x.sum(), x.abs().sum(), (x * x).sum()])
        key = fingerprint_group(name)
        sums[key] = sums[key] + total.cpu() if key in sums else total.cpu()
    return {key: total.tolist() for key, total in sums.items()}


def _kind(name: str) -> str:
    """'model.layers.3.self_attn.q_proj.bias' -> 'model.layers.3:bias' (fusion-independent)."""
    return f"{fingerprint_group(name)}:{name.rpartition('.')[2]}"


def stored_dtypes(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> dict[str, str]:
    """{'model.layers.3:bias': 'torch.float32', ...}: the dtype an engine holds each kind of
    tensor of each group in, where it differs from the engine's dtype."""
    return {_kind(name): str(t.dtype) for name, t in named_tensors}


def trainer_fingerprint(model, dtype: torch.dtype,
                        stored: dict[str, str] | None = None) -> dict[str, list[float]]:
    """The fingerprint an engine in `dtype` holding `model`'s weights must have; `stored` (from
    the engine) names tensors it holds in another dtype, each then cast to that one (vLLM's CPU
    backend keeps packed biases in float32 and loads them unrounded). A tied LM head counts
    under lm_head too (remove_duplicate=False): the engine's LM head is a module of its own, and
    on CPU it computes with its own packed copy, which must have been refreshed."""
    stored = stored or {}
    named = model.named_parameters(remove_duplicate=False)
    sums: dict[str, list[float]] = {}
    for name, tensor in named:
        cast = getattr(torch, stored.get(_kind(name), str(dtype)).removeprefix("torch."))
        for key, total in weight_fingerprint([(name, tensor)], cast).items():
            sums[key] = [a + b for a, b in zip(sums[key], total)] if key in sums else total
    return sums


def fingerprint_mismatch(engine: dict[str, list[float]], trainer: dict[str, list[float]],
                         rtol: float = FINGERPRINT_RTOL) -> list[str]:
    """The groups whose weights differ between the engine and the trainer (or exist in one only)."""
    bad = []
    for key in sorted(set(engine) | set(trainer), key=_natural):
        e, t = engine.get(key), trainer.get(key)
        scales = (t[1], t[1], t[2]) if t else ()  # sum |x| bounds the rounding of the sum
        if e is None or t is None or any(abs(a - b) > rtol * s for a, b, s in zip(e, t, scales)):
            bad.append(key)
    return bad


def _natural(key: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


def sync_logprob_diff(engine: RolloutEngine, model, prompts: list[list[int]], *,
                      temperature: float, stop_token_ids: list[int], max_new_tokens: int = 16,
                      pad_id: int = 0, dtype: torch.dtype | None = None) -> tuple[float, float]:
    """Log-prob drift: (mean, max) |engine log-prob - trainer log-prob| over the sampled tokens
    of a fixed probe batch (top_p = 1, fixed seed). `dtype`: the engine's; a lower precision
    than the model's runs the trainer's forward under autocast to it (matched precision): the
    bf16-vs-fp32 gap then does not count (measured at logits of 30: the mean halves)."""
    completions = engine.generate(prompts, n=1, temperature=temperature, top_p=1.0,
                                  max_new_tokens=max_new_tokens, stop_token_ids=stop_token_ids,
                                  seed=1234, desc="sync probe")
    rows = [make_row(p, c[0].token_ids, c[0].logprobs) for p, c in zip(prompts, completions)]
    batch = collate(rows, pad_id)
    param = next(model.parameters())
    lower = dtype is not None and dtype.itemsize < param.dtype.itemsize
    with torch.no_grad(), torch.autocast(param.device.type, dtype=dtype, enabled=lower):
        logits = model(input_ids=batch["input_ids"].to(param.device),
                       attention_mask=batch["attention_mask"].to(param.device)).logits
    trainer = token_logprobs(logits, batch["input_ids"].to(param.device), temperature).cpu()
    mask = batch["loss_mask"].bool()
    diff = (trainer[mask] - batch["behavior_logprobs"][mask]).abs()
    return diff.mean().item(), diff.max().item()
