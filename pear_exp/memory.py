"""The memory model behind plan mode: parameter counts and byte estimates, from config numbers.

Nothing here reads a run configuration or prints; pear_exp/plan.py turns these terms into the
rows it shows. Every term is a pure function, so each can be checked by hand
(tests/test_plan.py does).

Architecture. A model's numbers come from, in order: a config.json found locally (model.path a
directory, or the Hugging Face cache, read with local_files_only), the preset's `architecture`
block, the tiny model's settings. Parameter counts are exact: the model is built from its
architecture on the meta device (shapes, no storage) and its parameters counted (tied embeddings
once).

Memory per GPU, in bytes. It is an estimate for choosing micro-batch sizes, sharding and tensor
parallelism, not a measurement: the CUDA context (about 0.5-1 GiB), allocator fragmentation,
communication buffers and short-lived temporaries are not counted. P parameters, b bytes per
element of model.dtype (the trainer keeps its master weights, gradients and AdamW states in that
dtype), L layers, h hidden size, q = heads x head_dim, k = kv_heads x head_dim, i intermediate
size, V vocabulary rows, T tokens of one micro-batch (micro_batch_size x sequence length), W the
world size.
  weights / grads    P*b each;  AdamW  2*P*b (exp_avg, exp_avg_sq)        all / W under FSDP
  activations        what autograd keeps per token and layer, with e bytes per element of the
                     compute dtype (2 under bf16 autocast or for bf16 weights):
                     a = 4bh + 5eh + 2e(q + k) + 4ei: two RMSNorms keep their input and
                     normalised output in the residual dtype (4bh); the q, k, v, gate and up
                     projections each keep their own bf16 copy of a norm output (5eh; 2bh, the
                     norm outputs themselves, when b = e and nothing is cast); q, k, v and the
                     attention output; gate, up, silu(gate) and their product.
                     Autocast also makes compute-dtype copies of fp32 weights (c = P*e when
                     b != e), cached for the whole forward pass and kept for backward.
                     Without checkpointing: L*T*a + c. With: L*T*h*b (each layer's input)
                     + max(c, T*a) (the forward pass's weight copies, or the one layer recomputed
                     during backward).
                     Checked on an H100 (torch 2.11, transformers 5.17, sdpa) with random
                     Qwen2.5-1.5B and Qwen3-4B shapes, fp32 weights, bf16 autocast: measured
                     peaks of forward + backward were within -8% and +14% of activations +
                     log-probs here, at 2 x 4k tokens with checkpointing and 1 x 4k or 1 x 2k
                     without.
  log-probs          12 bytes per token and vocabulary entry at peak (bf16 logits, their fp32
                     copy, the fp32 log-softmax kept for backward, its gradient): T*V*12, or
                     min(c, T)*V*12 with logprob_chunk_size c > 0
  scoring forward    a forward pass without gradient keeps one layer's tensors at a time:
                     T*(4h + 3i)*b, plus its log-probs (behavior.source=dataset)
  reference          P*b (/ W under FSDP) when rl.kl_coef > 0
  vLLM engine        reserves gpu_memory_utilization x GPU memory on each of its
                     tensor_parallel_size GPUs: weights P*e/tp (e = 2 for bf16 serving), the rest
                     is KV cache at 2*L*k*2 bytes per token (/tp)
  hf engine          weights P*b (none in RL, where it generates with the trainer's own model)
                     plus a KV cache (model.dtype) for rollout.batch_size full-length sequences
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, Qwen2Config, Qwen3Config

from pear_exp.config import ArchitectureConfig, ModelConfig, ModelType
from pear_exp.tiny import build_char_tokenizer

GiB = 2**30
LOGPROB_BYTES = 12  # per token and vocabulary entry at the log-softmax's peak (module docstring)
DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2}


# ----------------------------------------------------------------------------- architecture
def architecture_of(model: ModelConfig):
    """(transformers config, ArchitectureConfig, where they came from), without the network; the
    configs are None when nothing describes the model."""
    if model.path is not None:
        found = local_hf_config(model.path, model.trust_remote_code)
        if found is not None:
            config, where = found
            return config, from_hf_config(config), where
    if model.architecture is not None:
        return hf_config(model.architecture), model.architecture, "preset"
    if model.tiny is not None:
        arch = tiny_architecture(model)
        return hf_config(arch), arch, "tiny settings"
    return None, None, "unknown: no config.json found locally, no architecture block"


def local_hf_config(path: str, trust_remote_code: bool = False):
    """(config, where) from path/config.json or from the Hugging Face cache; None if neither."""
    directory = Path(path).expanduser()
    if directory.is_dir():
        source, where = str(directory), f"{directory}/config.json"
    else:
        source, where = path, "Hugging Face cache"
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=True,
                                            trust_remote_code=trust_remote_code)
    except Exception:  # not cached / not a transformers config: the preset's numbers are used
        return None
    return config, where


def from_hf_config(config) -> ArchitectureConfig:
    """The numbers plan mode uses, read from a transformers config (any decoder-only model)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = text.num_attention_heads
    model_type = ModelType.qwen3 if text.model_type == "qwen3" else ModelType.qwen2
    return ArchitectureConfig(
        model_type=model_type,
        num_layers=text.num_hidden_layers,
        hidden_size=text.hidden_size,
        num_heads=heads,
        num_kv_heads=getattr(text, "num_key_value_heads", None) or heads,
        head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads,
        intermediate_size=text.intermediate_size,
        vocab_size=text.vocab_size,
        tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
    )


def tiny_architecture(model: ModelConfig) -> ArchitectureConfig:
    """The tiny world's Qwen3 (pear_exp/tiny.py builds it with these numbers)."""
    # Imported here while the tokenizer moves from pear_exp.models to pear_exp.tiny (tiny already
    # re-exports it, so this works before and after the move).
    t = model.tiny
    return ArchitectureConfig(
        model_type=ModelType.qwen3, num_layers=t.num_layers, hidden_size=t.hidden_size,
        num_heads=t.num_heads, num_kv_heads=t.num_heads, head_dim=t.head_dim,
        intermediate_size=t.intermediate_size, vocab_size=len(build_char_tokenizer()),
        tie_word_embeddings=True,
    )


def hf_config(arch: ArchitectureConfig):
    """A transformers Qwen2Config / Qwen3Config with these numbers."""
    common = dict(
        vocab_size=arch.vocab_size, hidden_size=arch.hidden_size,
        intermediate_size=arch.intermediate_size, num_hidden_layers=arch.num_layers,
        num_attention_heads=arch.num_heads, num_key_value_heads=arch.num_kv_heads,
        tie_word_embeddings=arch.tie_word_embeddings,
    )
    if arch.model_type == ModelType.qwen3:
        return Qwen3Config(head_dim=arch.head_dim, **common)
    if arch.head_dim * arch.num_heads != arch.hidden_size:
        raise ValueError(f"qwen2 needs head_dim * num_heads == hidden_size, got {arch}")
    return Qwen2Config(**common)


def count_parameters(config) -> int:
    """Exact parameter count of a transformers config: the model built on the meta device."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())  # shared (tied) tensors counted once


# ----------------------------------------------------------------------------- memory terms
def dtype_bytes(dtype: str) -> int:
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}; choose from {sorted(DTYPE_BYTES)}")
    return DTYPE_BYTES[dtype]


def training_state_bytes(params: int, param_bytes: int, shards: int = 1) -> dict[str, int]:
    """Weights, gradients and AdamW's two moments, each in the parameters' dtype, per GPU."""
    weights = params * param_bytes
    return {"weights": weights // shards, "grads": weights // shards,
            "adamw": 2 * weights // shards}


def activation_bytes_per_token_layer(arch: ArchitectureConfig, residual_bytes: int,
                                     compute_bytes: int = 2) -> int:
    """a: what autograd keeps per token in one decoder layer (module docstring)."""
    b, e, h = residual_bytes, compute_bytes, arch.hidden_size
    q = arch.num_heads * arch.head_dim
    k = arch.num_kv_heads * arch.head_dim
    projection_inputs = 5 * e * h if b != e else 2 * b * h  # cast copies, or the norm outputs
    return 4 * b * h + projection_inputs + 2 * e * (q + k) + 4 * e * arch.intermediate_size


def activation_bytes(arch: ArchitectureConfig, tokens: int, residual_bytes: int,
                     checkpointing: bool, params: int = 0, compute_bytes: int = 2) -> int:
    """Activations of one micro-batch of `tokens`, including the compute-dtype copies of the
    `params` weights that autocast makes when they are stored in a wider dtype."""
    per_layer = activation_bytes_per_token_layer(arch, residual_bytes, compute_bytes)
    copies = params * compute_bytes if residual_bytes != compute_bytes else 0
    if not checkpointing:
        return arch.num_layers * tokens * per_layer + copies
    inputs = arch.num_layers * tokens * arch.hidden_size * residual_bytes
    return inputs + max(copies, tokens * per_layer)


def scoring_forward_bytes(arch: ArchitectureConfig, tokens: int, element_bytes: int) -> int:
    """A forward pass without gradient: only one layer's tensors are alive at a time, about
    4 of hidden size and 3 of intermediate size per token."""
    return tokens * (4 * arch.hidden_size + 3 * arch.intermediate_size) * element_bytes


def logprob_bytes(tokens: int, vocab: int, chunk_size: int = 0) -> int:
    """Peak memory of the log-probs of `tokens` positions: full logits, or one chunk at a time."""
    rows = min(chunk_size, tokens) if chunk_size > 0 else tokens
    return rows * vocab * LOGPROB_BYTES


def kv_bytes_per_token(arch: ArchitectureConfig, element_bytes: int = 2) -> int:
    """K and V of every layer for one token."""
    return 2 * arch.num_layers * arch.num_kv_heads * arch.head_dim * element_bytes


def vllm_bytes(params: int, engine_bytes: int, tensor_parallel: int, utilization: float,
               gpu_bytes: int, kv_per_token: int, seq_len: int) -> dict[str, float]:
    """One vLLM engine per GPU it spans: its reservation, weights, KV cache and how many
    full-length sequences that KV cache holds at once."""
    reserved = int(utilization * gpu_bytes)
    weights = params * engine_bytes // tensor_parallel
    kv = max(reserved - weights, 0)
    per_sequence = kv_per_token * seq_len / tensor_parallel
    return {"reserved": reserved, "weights": weights, "kv_cache": kv,
            "sequences": kv / per_sequence if per_sequence else 0.0}
