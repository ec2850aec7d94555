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
from pear_exp.errors import fetching

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
    from pear_exp.distributed import default_device

    with fetching(path):
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code
        )
    return model.to(device or default_device())


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
        from pear_exp import losses

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


def save_dir(path: Path, model, tokenizer, state_dict: dict | None = None) -> None:
    """save_pretrained of model and tokenizer; `state_dict` overrides the model's own tensors
    (the gathered weights of an FSDP-sharded model)."""
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, state_dict=state_dict)
    tokenizer.save_pretrained(path)
