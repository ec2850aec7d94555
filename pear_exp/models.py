"""Model and tokenizer loading and saving, and chat formatting.

One code path serves a real checkpoint (hub id or local directory) and the tiny world: a tiny
model is built once by `pear_exp.tiny`, saved with save_pretrained into the cache, and from then on
loaded exactly like a hub checkpoint with from_pretrained (pear_exp.tiny.resolve_path says which
directory a model config means).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pear_exp.config import ModelConfig
from pear_exp.errors import fetching

# ChatML, the convention of Qwen2.5 / Qwen3 (without tools): the assistant turn ends with
# <|im_end|>, which carries loss so the model learns to stop.
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
END_OF_TURN = "<|im_end|>"


def default_device() -> torch.device:
    """This process's GPU (LOCAL_RANK under torchrun) if there is one, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def load_tokenizer(path: str, cfg: ModelConfig | None = None):
    """The tokenizer at `path`, carrying the model config's chat-template switches (e.g. Qwen3's
    enable_thinking) so that every prompt built with it follows the same convention."""
    cfg = cfg or ModelConfig()
    with fetching(path):  # a hub id that cannot be fetched stops with a short message
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        raise ValueError(f"tokenizer at {path!r} has no chat template")
    tokenizer.chat_template_kwargs = dict(cfg.chat_template_kwargs)
    return tokenizer


def load_model(path: str, dtype: str = "float32", trust_remote_code: bool = False,
               device: torch.device | str | None = None):
    """The checkpoint at `path` on `device` (default: this process's GPU if there is one)."""
    with fetching(path):
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code
        )
    return model.to(device or default_device())


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


def save_dir(path: Path, model, tokenizer, state_dict: dict | None = None) -> None:
    """save_pretrained of model and tokenizer; `state_dict` overrides the model's own tensors
    (the gathered weights of an FSDP-sharded model)."""
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, state_dict=state_dict)
    tokenizer.save_pretrained(path)


def tied_duplicates(model) -> set[str]:
    """Names under which a parameter appears a second time (a tied LM head: lm_head.weight is
    model.embed_tokens.weight): state dicts store such a tensor once."""
    seen: dict[int, str] = {}
    return {name for name, p in model.named_parameters(remove_duplicate=False)
            if seen.setdefault(id(p), name) != name}
