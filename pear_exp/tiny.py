"""The tiny world's models: built, pretrained and cached by the framework, never downloaded.

A tiny model is a small Qwen3-architecture causal LM with the character tokenizer of
`build_char_tokenizer`, pretrained with the SFT loop (weighting none) on one of:
- `solutions`: random valid solver answers to the task's training-side problems (never evaluation
  instances). This makes a teacher, the behavior policy pi_b.
- `domain`: text of the task's domain that is not the task (Countdown: arithmetic exercises in the
  same step format). This makes a student base that has learned something, so pi_theta differs
  from pi_b from the start the way a real base model differs from a real teacher.
Two knobs build a deliberate mismatch (experiments/tiny_mismatch), both off by default:
`solutions_frac` mixes that fraction of game solutions into a `domain` corpus, so the student base
already solves some instances its own way; `alt_style` / `alt_style_frac` write that fraction of
the game solutions (a teacher's or a student's) in another style (Countdown's `restyle`: terse,
reverse), so teacher and student can solve the game in different styles.
The result is saved with save_pretrained under <cache_dir>/tiny/<name>-<hash of everything that
determines it>, written to a temporary directory and renamed, and then loaded like any checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import random
import string
from dataclasses import asdict
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers
from tokenizers import models as tokenizer_models
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

from pear_exp.config import (
    ModelConfig, PretrainData, SFTConfig, SolutionStyle, TaskConfig, TaskKind, WeightingConfig,
    WeightLevel,
)
from pear_exp.data import Row, make_row
from pear_exp.files import atomic_dir
from pear_exp.models import CHATML_TEMPLATE, END_OF_TURN, prompt_ids, response_ids, save_dir
from pear_exp.tasks import make_task
from pear_exp.tasks.countdown import restyle
from pear_exp.train.sft import train_sft

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_ROLES = ["system", "user", "assistant"]
BUILD_VERSION = 1  # bump when the build recipe changes, so stale caches are not reused


# TinyModelConfig fields added after models were first cached, with the default that reproduces
# the earlier recipe: left out of the cache key at that default, so existing caches stay valid.
_LATER_FIELDS = {"solutions_frac": 0.0, "alt_style": SolutionStyle.steps, "alt_style_frac": 0.0}


def _key(cfg: ModelConfig, task: TaskConfig) -> str:
    tiny = {k: v for k, v in asdict(cfg.tiny).items()
            if not (k in _LATER_FIELDS and v == _LATER_FIELDS[k])}
    blob = json.dumps(
        {"tiny": tiny, "task": asdict(task), "version": BUILD_VERSION},
        sort_keys=True, default=lambda v: getattr(v, "value", str(v)),
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def resolve_path(cfg: ModelConfig, task: TaskConfig, cache_dir: str) -> str:
    """The checkpoint to load: the configured hub id / directory, or the cached tiny model."""
    if cfg.path is not None:
        return cfg.path
    if cfg.tiny is None:
        raise ValueError(f"model {cfg.name!r}: set either `path` or `tiny`")
    return str(tiny_model_dir(cfg, task, cache_dir))


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer over printable ASCII plus ChatML's special tokens.

    With a 152k vocabulary the LM head would dominate a tiny model's cost (docs/environment.md,
    "The tiny world's character tokenizer"), so the tiny world uses one token per character (3 special tokens + 100 printable characters), plus
    the chat roles as whole tokens so that ChatML framing costs 8 tokens a turn, not 20.
    """
    chars = list(string.printable)  # digits, letters, punctuation, whitespace: 100 characters
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + chars + CHAT_ROLES)}
    backend = Tokenizer(tokenizer_models.WordLevel(vocab=vocab, unk_token="<|endoftext|>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_tokens(CHAT_ROLES)  # matched before the per-character split
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=END_OF_TURN,
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def tiny_model_dir(cfg: ModelConfig, task: TaskConfig, cache_dir: str) -> Path:
    """Directory of the cached tiny model, building it first if it is not there."""
    path = Path(cache_dir).expanduser() / "tiny" / f"{cfg.name}-{_key(cfg, task)}"
    if not (path / "config.json").exists():
        build_tiny_model(cfg, task, path, cache_dir)
    return path


def solution_pairs(cfg: ModelConfig, task_cfg: TaskConfig, task, n: int,
                   rng: random.Random) -> list[tuple[str, str]]:
    """`n` (prompt, random valid solution) pairs, never on evaluation instances; a fraction
    `alt_style_frac` of the solutions rewritten in `alt_style`."""
    tiny = cfg.tiny
    restyled = tiny.alt_style != SolutionStyle.steps and tiny.alt_style_frac > 0
    if restyled and task_cfg.kind != TaskKind.countdown:
        raise ValueError(f"model {cfg.name!r}: tiny.alt_style needs task.kind=countdown")
    _, eval_problems = task.split(task_cfg.num_train, task_cfg.num_eval, task_cfg.data_seed)
    problems = task.sample_problems(n, seed=tiny.seed, exclude={p.id for p in eval_problems})
    pairs = []
    for p in problems:
        response = rng.choice(task.solutions(p))
        if restyled and rng.random() < tiny.alt_style_frac:  # no draw at all when off
            response = restyle(response, tiny.alt_style.value)
        pairs.append((p.prompt, response))
    return pairs


def pretraining_rows(cfg: ModelConfig, task_cfg: TaskConfig, tokenizer,
                     cache_dir: str | Path) -> list[Row]:
    tiny = cfg.tiny
    task = make_task(task_cfg, cache_dir)
    rng = random.Random(tiny.seed)
    if tiny.pretrain == PretrainData.solutions:
        pairs = solution_pairs(cfg, task_cfg, task, tiny.pretrain_examples, rng)
    else:
        n_game = round(tiny.solutions_frac * tiny.pretrain_examples)
        pairs = task.domain_corpus(tiny.pretrain_examples - n_game, seed=tiny.seed)
        if n_game:
            pairs += solution_pairs(cfg, task_cfg, task, n_game, rng)
    return [make_row(prompt_ids(tokenizer, user, task_cfg.system_prompt),
                     response_ids(tokenizer, response)) for user, response in pairs]


def build_tiny_model(cfg: ModelConfig, task: TaskConfig, path: Path, cache_dir: str | Path) -> None:
    tiny = cfg.tiny
    print(f"[pear_exp] building tiny model {cfg.name!r} ({tiny.pretrain.value} pretraining, "
          f"{tiny.pretrain_steps} steps) -> {path}")
    tokenizer = build_char_tokenizer()
    torch.manual_seed(tiny.seed)
    model = Qwen3ForCausalLM(Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=tiny.hidden_size,
        num_hidden_layers=tiny.num_layers, num_attention_heads=tiny.num_heads,
        num_key_value_heads=tiny.num_heads, head_dim=tiny.head_dim,
        intermediate_size=tiny.intermediate_size, max_position_embeddings=tiny.max_positions,
        tie_word_embeddings=True, bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))
    rows = pretraining_rows(cfg, task, tokenizer, cache_dir)
    sft = SFTConfig(
        steps=tiny.pretrain_steps, batch_size=tiny.batch_size, micro_batch_size=tiny.batch_size,
        lr=tiny.lr, warmup_steps=max(1, tiny.pretrain_steps // 10), log_every=10**9,
    )
    train_sft(model, rows, sft, WeightingConfig(level=WeightLevel.none),
              pad_id=tokenizer.pad_token_id, seed=tiny.seed, desc=f"pretrain {cfg.name}")
    with atomic_dir(path) as tmp:  # another process finishing the same build first: theirs stays
        save_dir(tmp, model, tokenizer)
