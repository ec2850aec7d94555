import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from pear_exp.tiny import build_char_tokenizer

torch.set_num_threads(2)


def make_tiny_model(tokenizer, seed=0, hidden=64, layers=1):
    torch.manual_seed(seed)
    return Qwen3ForCausalLM(Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=2, num_key_value_heads=2, head_dim=32, intermediate_size=128,
        max_position_embeddings=256, tie_word_embeddings=True, bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )).eval()


@pytest.fixture(scope="session")
def tokenizer():
    return build_char_tokenizer()


@pytest.fixture
def model(tokenizer):
    return make_tiny_model(tokenizer)
