"""One loading path for tiny and real checkpoints: save_pretrained / from_pretrained, chat
formatting with the end-of-turn token carrying loss, and chat-template switches."""

import torch

from pear_exp.config import ModelConfig
from pear_exp.models import end_of_turn_ids, load_model, load_tokenizer, prompt_ids, response_ids
from pear_exp.tiny import build_char_tokenizer
from tests.conftest import make_tiny_model


def test_char_tokenizer_chatml_round_trip(tokenizer):
    ids = prompt_ids(tokenizer, "Make 15 from 3 7 12")
    assert tokenizer.decode(ids) == (
        "<|im_start|>user\nMake 15 from 3 7 12<|im_end|>\n<|im_start|>assistant\n")
    # roles are single tokens: <|im_start|> user \n ... <|im_end|> \n <|im_start|> assistant \n
    assert len(ids) == 3 + len("Make 15 from 3 7 12") + 5
    resp = response_ids(tokenizer, "12-7=5\nanswer: (12-7)*3")
    assert resp[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>") and resp[-1] in end_of_turn_ids(tokenizer)
    assert tokenizer.decode(resp, skip_special_tokens=True) == "12-7=5\nanswer: (12-7)*3"


def test_saved_tiny_model_reloads_identically(tmp_path, tokenizer):
    model = make_tiny_model(tokenizer)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    again, tok = load_model(str(tmp_path)), load_tokenizer(str(tmp_path))
    ids = torch.tensor([prompt_ids(tok, "Make 15 from 3 7 12")])
    assert prompt_ids(tok, "x") == prompt_ids(tokenizer, "x")
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, model(ids).logits)


def test_chat_template_kwargs_reach_every_prompt(tmp_path):
    tok = build_char_tokenizer()
    tok.chat_template = tok.chat_template + (  # a Qwen3-style thinking switch
        "{%- if add_generation_prompt and enable_thinking is defined and not enable_thinking %}"
        "{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}")
    tok.save_pretrained(tmp_path)
    plain = load_tokenizer(str(tmp_path))
    no_think = load_tokenizer(str(tmp_path), ModelConfig(chat_template_kwargs={"enable_thinking": False}))
    assert not tok.decode(prompt_ids(plain, "hi")).endswith("</think>\n\n")
    assert tok.decode(prompt_ids(no_think, "hi")).endswith("assistant\n<think>\n\n</think>\n\n")
