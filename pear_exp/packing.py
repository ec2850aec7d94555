"""Padding-free batches: a micro-batch's rows laid end to end as one sequence, each row keeping
its own positions, with an attention that never crosses rows.

A padded (rows, seq) batch spends compute on its pad slots; SFT rows of reasoning traces vary in
length by an order of magnitude. Here the model sees input_ids (1, T) with T the real tokens
only, position_ids restarting at 0 on every row (rotary embeddings see what they would see
unpacked) and attention restricted to each row's causal triangle:
- CUDA: torch's flash-attention variable-length kernel (torch.nn.attention.varlen);
- elsewhere (and for float32 on CUDA, which flash attention does not take): one
  scaled_dot_product_attention per row (the CPU has no varlen kernel; a block-diagonal mask
  over the whole packed sequence would cost T^2 instead of the sum of row^2).
Everything after the forward (PEAR weights, losses, statistics) works on the padded (rows, seq)
layout, through `Packed.unpack`, so it is the same code on both paths and every weight is
computed per original row.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTENTION = "pear_varlen"  # the model's attn_implementation while it trains padding-free


@dataclass(frozen=True)
class Packed:
    """The packed form of a right-padded batch (data.collate's)."""

    input_ids: torch.Tensor  # (1, T): the real tokens of every row, row after row
    position_ids: torch.Tensor  # (1, T): 0, 1, ... within each row
    row_starts: tuple[int, ...]  # offsets of the rows in the packed sequence, then T
    slot: torch.Tensor  # (rows, seq): the packed index of each padded slot (0 on pad slots)
    real: torch.Tensor  # (rows, seq) bool: the slots that hold a token
    keep: torch.Tensor  # (rows, seq) bool: real slots after each row's first (position 0 has
    # no prediction: padded log-probs are 0 there, and packed ones belong to the previous row)

    @classmethod
    def from_padded(cls, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> "Packed":
        real = attention_mask.bool()
        lengths = real.sum(1)
        positions = real.long().cumsum(1) - 1
        slot = (real.flatten().long().cumsum(0) - 1).view_as(real)
        keep = real & (positions > 0)
        starts = F.pad(lengths.cumsum(0), (1, 0))
        return cls(input_ids[real][None], positions[real][None], tuple(starts.tolist()),
                   slot.masked_fill(~real, 0), real, keep)

    def pack(self, padded: torch.Tensor) -> torch.Tensor:
        """A per-slot tensor (rows, seq, ...) in the packed layout (1, T, ...)."""
        return padded[self.real][None]

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """A per-position output (1, T, ...) of the packed forward in the padded layout (rows,
        seq, ...): 0 on pad slots and at each row's position 0, as the padded forward gives."""
        values = packed[0][self.slot]  # (rows, seq, ...)
        keep = self.keep.view(*self.keep.shape, *(1,) * (values.dim() - 2))
        return torch.where(keep, values, torch.zeros((), dtype=values.dtype))

    def model_inputs(self) -> dict:
        """Keyword arguments of the model's forward: no mask is built (both layer types' masks
        are None: `row_starts` tells the attention where rows begin)."""
        return {"input_ids": self.input_ids, "position_ids": self.position_ids,
                "attention_mask": {"full_attention": None, "sliding_attention": None},
                "row_starts": self.row_starts}


def varlen_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                     scaling: float | None = None, row_starts: tuple[int, ...] | None = None,
                     sliding_window: int | None = None, **kwargs):
    """transformers' attention-function signature: query (1, heads, T, head_dim), key / value
    (1, kv_heads, T, head_dim); returns ((1, T, heads, head_dim), None). Without `row_starts`
    (generation, padded batches) it is transformers' sdpa."""
    if row_starts is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, sliding_window=sliding_window, **kwargs)
    if sliding_window is not None:
        raise NotImplementedError("padding-free SFT does not implement sliding-window attention; "
                                  "set sft.padding_free=false")
    gqa = query.shape[1] != key.shape[1]
    if query.is_cuda and query.dtype in (torch.bfloat16, torch.float16):  # flash: no fp32
        from torch.nn.attention.varlen import varlen_attn

        starts = torch.tensor(row_starts, dtype=torch.int32, device=query.device)
        longest = max(b - a for a, b in zip(row_starts, row_starts[1:]))
        q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (T, heads, head_dim)
        out = varlen_attn(q, k, v, starts, starts, longest, longest, scale=scaling,
                          window_size=(-1, 0), enable_gqa=gqa)
        return out[None], None
    # One causal attention per row, in float32: under bf16 autocast the CPU's attention backward
    # runs 5x slower in bf16 than in float32 (measured on the benchmark model), and attention is
    # a small share of the FLOPs. split, not slices: the backward of one split is one
    # concatenation, while each slice's backward would fill and add a whole (T, ...) gradient.
    lengths = [b - a for a, b in zip(row_starts, row_starts[1:])]
    with torch.autocast(query.device.type, enabled=False):
        parts = [F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling,
                                                enable_gqa=gqa)
                 for q, k, v in zip(*(t.float().split(lengths, dim=2)
                                      for t in (query, key, value)))]
    return torch.cat(parts, dim=2).transpose(1, 2).to(query.dtype).contiguous(), None


AttentionInterface.register(ATTENTION, varlen_attention)
AttentionMaskInterface.register(ATTENTION, sdpa_mask)  # unpacked calls build sdpa's masks


@contextlib.contextmanager
def padding_free(*models):
    """The models (None: skipped) attend with varlen_attention inside the block (each its own
    implementation back after it); unpacked forwards (generation in between) behave as sdpa."""
    models = [m for m in models if m is not None]
    before = [m.config._attn_implementation for m in models]
    for m in models:
        m.set_attn_implementation(ATTENTION)
    try:
        yield
    finally:
        for m, implementation in zip(models, before):
            m.set_attn_implementation(implementation)
