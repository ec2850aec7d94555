"""Model and tokenizer loading, and chat formatting.

One code path serves a real checkpoint (hub id or local directory) and the tiny world: a tiny
model is built once by `pear_exp.tiny`, saved with save_pretrained into the cache, and from then on
loaded exactly like a hub checkpoint with from_pretrained.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from pear_exp.config import ModelConfig, TaskConfig

# ChatML, the convention of Qwen2.5 / Qwen3 (without tools): the assistant turn ends with
# <|im_end|>, which carries loss so the model learns to stop.
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
END_OF_TURN = "<|im_end|>"
CHAT_ROLES = ["system", "user", "assistant"]


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer over printable ASCII plus ChatML's special tokens.

    With a 152k vocabulary the LM head would dominate a tiny model's cost (ENVIRONMENT.md), so the
    tiny world uses one token per character (3 special tokens + 100 printable characters), plus
    the chat roles as whole tokens so that ChatML framing costs 8 tokens a turn, not 20.
    """
    chars = list(string.printable)  # digits, letters, punctuation, whitespace: 100 characters
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + chars + CHAT_ROLES)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|endoftext|>"))
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


def load_tokenizer(path: str, cfg: ModelConfig | None = None):
    """The tokenizer at `path`, carrying the model config's chat-template switches (e.g. Qwen3's
    enable_thinking) so that every prompt built with it follows the same convention."""
    cfg = cfg or ModelConfig()
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        raise ValueError(f"tokenizer at {path!r} has no chat template")
    tokenizer.chat_template_kwargs = dict(cfg.chat_template_kwargs)
    return tokenizer


def load_model(path: str, dtype: str = "float32", trust_remote_code: bool = False):
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code
    )
    return model


def resolve_path(cfg: ModelConfig, task: TaskConfig, cache_dir: str) -> str:
    """The checkpoint to load: the configured hub id / directory, or the cached tiny model."""
    if cfg.path is not None:
        return cfg.path
    if cfg.tiny is None:
        raise ValueError(f"model {cfg.name!r}: set either `path` or `tiny`")
    from pear_exp.tiny import tiny_model_dir

    return str(tiny_model_dir(cfg, task, cache_dir))


def end_of_turn_ids(tokenizer) -> list[int]:
    """Token ids that end an assistant turn: generation stops on them and they carry loss."""
    ids = {tokenizer.eos_token_id}
    im_end = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        ids.add(im_end)
    return sorted(i for i in ids if i is not None)


def prompt_ids(tokenizer, user: str, system: str | None = None) -> list[int]:
    """Token ids of a one-turn chat prompt, ending with the assistant header."""
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}
    ]
    extra = getattr(tokenizer, "chat_template_kwargs", {})  # set by load_tokenizer
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                        **extra)
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # BatchEncoding in some versions
        ids = ids["input_ids"]
    return list(ids)


def response_ids(tokenizer, response: str) -> list[int]:
    """Token ids of an assistant response followed by the end-of-turn token (which carries loss)."""
    eot = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    if not isinstance(eot, int) or eot == tokenizer.unk_token_id:
        eot = tokenizer.eos_token_id
    return tokenizer.encode(response, add_special_tokens=False) + [eot]


def save_dir(path: Path, model, tokenizer) -> None:
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
