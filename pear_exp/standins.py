"""Stand-in checkpoints: random-init models with a preset's real shape where it matters.

A stand-in of a model preset (conf/model/NAME.yaml) is a from_pretrained directory with the real
checkpoint's model type, vocabulary size (151,936 or 152,064 rows), tokenizer, special tokens and
chat template (built offline by pear_exp.hub_tokenizers), tied-embedding setting, rope theta,
head_dim 128, grouped-query attention, context length and generation_config.json, but only
`layers` decoder layers of width `hidden` (the real numbers with full_size=True). Weights are
random (transformers' initialisation, seeded): a stand-in generates noise, so it checks
memory, shapes, dtypes, templates, generation settings and the plumbing of every stage, never
what a real model would learn.

    python -m pear_exp.standins qwen3_4b_base qwen3_32b        # print the cached directories
    python -m pear_exp +experiment=aime_qwen3 +budget=check \\
        model.path=<student dir> teacher.path=<teacher dir> ...    # tests/test_real_shape.py

Built once and cached under <cache_dir>/standins/<preset>-<hash> (written to a temporary
directory and renamed), like the tiny models.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, GenerationConfig

from pear_exp import hub_tokenizers
from pear_exp.files import atomic_dir
from pear_exp.config import ArchitectureConfig, ModelConfig, ModelType

BUILD_VERSION = 1
CONF_MODEL_DIR = Path(__file__).resolve().parent.parent / "conf" / "model"


@dataclass(frozen=True)
class Checkpoint:
    """What a real checkpoint ships that the preset does not carry: config.json's rope theta and
    special token ids, and generation_config.json (which transformers' generate would apply to
    every field a caller leaves unset). Values of each checkpoint's published config.json /
    generation_config.json as this project knows them (issue 12 quotes Qwen2.5-Instruct's); not
    re-read here: the hub cannot be reached from this project's machines. The Qwen2.5
    checkpoints' own chat template adds a default system message that the Qwen3 template used
    here (pear_exp.hub_tokenizers) does not."""

    tokenizer: str  # a key of hub_tokenizers.TOKENIZERS
    rope_theta: float
    bos_token_id: int
    eos_token_id: int  # config.json's (generation_config.json may list more)
    generation: dict


# generation_config.json of each family. Instruct / chat checkpoints sample with their own
# defaults (Qwen2.5-Instruct: repetition_penalty 1.1 at 1.5B and 1.05 at 7B, top_k 20,
# temperature 0.7, top_p 0.8; Qwen3: top_k 20, 0.6 / 0.95; R1-distill: 0.6 / 0.95); base models
# ship only their token ids and a max_new_tokens.
_QWEN_BASE_GEN = {"bos_token_id": 151643, "eos_token_id": 151643, "max_new_tokens": 2048}
_QWEN_INSTRUCT_GEN = {"bos_token_id": 151643, "pad_token_id": 151643, "do_sample": True,
                      "eos_token_id": [151645, 151643], "temperature": 0.7, "top_p": 0.8,
                      "top_k": 20}
_R1_GEN = {"bos_token_id": 151646, "eos_token_id": 151643, "do_sample": True,
           "temperature": 0.6, "top_p": 0.95}

CHECKPOINTS: dict[str, Checkpoint] = {
    "Qwen/Qwen2.5-1.5B-Instruct": Checkpoint(
        "qwen", 1e6, 151643, 151645, {**_QWEN_INSTRUCT_GEN, "repetition_penalty": 1.1}),
    "Qwen/Qwen2.5-7B-Instruct": Checkpoint(
        "qwen", 1e6, 151643, 151645, {**_QWEN_INSTRUCT_GEN, "repetition_penalty": 1.05}),
    "Qwen/Qwen2.5-Math-1.5B": Checkpoint("qwen", 1e4, 151643, 151643, _QWEN_BASE_GEN),
    "Qwen/Qwen2.5-Math-7B": Checkpoint("qwen", 1e4, 151643, 151643, _QWEN_BASE_GEN),
    "Qwen/Qwen3-1.7B-Base": Checkpoint("qwen", 1e6, 151643, 151643, _QWEN_BASE_GEN),
    "Qwen/Qwen3-4B-Base": Checkpoint("qwen", 1e6, 151643, 151643, _QWEN_BASE_GEN),
    "Qwen/Qwen3-8B-Base": Checkpoint("qwen", 1e6, 151643, 151643, _QWEN_BASE_GEN),
    "Qwen/Qwen3-32B": Checkpoint("qwen", 1e6, 151643, 151645, {
        "bos_token_id": 151643, "pad_token_id": 151643, "do_sample": True,
        "eos_token_id": [151645, 151643], "temperature": 0.6, "top_p": 0.95, "top_k": 20}),
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B": Checkpoint("r1-distill", 1e4, 151646, 151643,
                                                             _R1_GEN),
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B": Checkpoint("r1-distill", 1e4, 151646, 151643,
                                                           _R1_GEN),
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B": Checkpoint("r1-distill", 1e6, 151646, 151643,
                                                            _R1_GEN),
}


def preset(name: str) -> ModelConfig:
    """The model preset conf/model/NAME.yaml as a typed ModelConfig."""
    path = CONF_MODEL_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in CONF_MODEL_DIR.glob("*.yaml"))
        raise ValueError(f"no model preset {name!r}; presets: {', '.join(known)}")
    merged = OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(path))
    return OmegaConf.to_object(merged)


def shrunk(arch: ArchitectureConfig, layers: int, hidden: int) -> ArchitectureConfig:
    """`arch` with `layers` layers and `hidden` width; head_dim, vocabulary, tying and the
    grouped-query ratio's direction (fewer kv heads than heads) stay real."""
    heads = max(1, hidden // arch.head_dim)
    kv_heads = heads if arch.num_kv_heads == arch.num_heads else max(1, heads // 2)
    return dataclasses.replace(arch, num_layers=layers, hidden_size=hidden, num_heads=heads,
                               num_kv_heads=kv_heads, intermediate_size=2 * hidden)


def hf_config(model: ModelConfig, arch: ArchitectureConfig, checkpoint: Checkpoint):
    from transformers import Qwen2Config, Qwen3Config

    common = dict(
        vocab_size=arch.vocab_size, hidden_size=arch.hidden_size,
        intermediate_size=arch.intermediate_size, num_hidden_layers=arch.num_layers,
        num_attention_heads=arch.num_heads, num_key_value_heads=arch.num_kv_heads,
        tie_word_embeddings=arch.tie_word_embeddings, rope_theta=checkpoint.rope_theta,
        max_position_embeddings=model.context_length, bos_token_id=checkpoint.bos_token_id,
        eos_token_id=checkpoint.eos_token_id, rms_norm_eps=1e-6, dtype=model.dtype,
    )
    if arch.model_type == ModelType.qwen3:
        return Qwen3Config(head_dim=arch.head_dim, **common)
    return Qwen2Config(**common)


def _key(model: ModelConfig, arch: ArchitectureConfig, checkpoint: Checkpoint, seed: int) -> str:
    blob = json.dumps([BUILD_VERSION, model.path, dataclasses.asdict(arch),
                       dataclasses.asdict(checkpoint), model.context_length, model.dtype, seed],
                      sort_keys=True, default=lambda v: getattr(v, "value", str(v)))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def standin_dir(name: str, cache_dir: str | Path, *, layers: int = 2, hidden: int = 256,
                full_size: bool = False, seed: int = 0, device: str = "cpu") -> Path:
    """The cached stand-in of model preset `name`, built first if it is not there.

    layers / hidden: the stand-in's depth and width (ignored with full_size: the preset's own
    architecture, e.g. for a memory check on a GPU)."""
    model = preset(name)
    if model.path not in CHECKPOINTS or model.architecture is None:
        raise ValueError(f"model preset {name!r} ({model.path}) has no stand-in recipe")
    checkpoint = CHECKPOINTS[model.path]
    arch = model.architecture if full_size else shrunk(model.architecture, layers, hidden)
    path = Path(cache_dir).expanduser() / "standins" / f"{name}-{_key(model, arch, checkpoint, seed)}"
    if (path / "config.json").exists():
        return path
    tokenizer = hub_tokenizers.TOKENIZERS[checkpoint.tokenizer]()
    # Base checkpoints end text with <|endoftext|>, post-trained Qwen ones with <|im_end|>: the
    # tokenizer's eos is config.json's (Qwen's package builds the post-trained variant).
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(checkpoint.eos_token_id)
    if len(tokenizer) > arch.vocab_size:
        raise ValueError(f"{name}: tokenizer has {len(tokenizer)} tokens > {arch.vocab_size} rows")
    torch.manual_seed(seed)
    with torch.device(device):
        lm = AutoModelForCausalLM.from_config(hf_config(model, arch, checkpoint),
                                              dtype=getattr(torch, model.dtype))
    lm.generation_config = GenerationConfig(**checkpoint.generation)
    with atomic_dir(path) as tmp:  # another process building it first: theirs is identical
        lm.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "STANDIN.md").write_text(
            f"Random-init stand-in of {model.path} (pear_exp.standins, preset {name}): real "
            f"tokenizer, vocabulary, chat template, rope theta and generation_config.json; "
            f"{arch.num_layers} layers of width {arch.hidden_size}. It generates noise.\n")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pear_exp.standins",
        description="Build (or find) random-init stand-in checkpoints of model presets.")
    parser.add_argument("presets", nargs="+", help="names of conf/model presets")
    parser.add_argument("--cache-dir", default=os.environ.get("PEAR_EXP_CACHE",
                                                              "~/.cache/pear_exp"))
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--full-size", action="store_true",
                        help="the preset's real depth and width (random weights)")
    parser.add_argument("--device", default="cpu", help="where to initialise the weights")
    args = parser.parse_args(argv)
    for name in args.presets:
        path = standin_dir(name, args.cache_dir, layers=args.layers, hidden=args.hidden,
                           full_size=args.full_size, device=args.device)
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
