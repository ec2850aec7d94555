"""Teacher-forced scoring and hf generation run in bounded memory at a real (151,936-token)
vocabulary: neither holds (batch, seq, vocab) or (batch, steps, vocab) float32 scores. Peak RSS
of a fresh process, as in test_chunked_logprobs.py. Larger measurements (issue 12: 4,096-token
rows, 512-token generations) run the same probe from the command line:

    python tests/test_real_vocab_memory.py score 8 4096
    python tests/test_real_vocab_memory.py generate 16 512
    python tests/test_real_vocab_memory.py score-vllm 2 4096     # needs vLLM
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VOCAB = 151_936


def probe(kind: str, rows: int, length: int) -> dict:
    """Run in this process (a fresh one): a 2-layer, hidden-64 random Qwen2 of a 151,936-token
    vocabulary scores `rows` rows of `length` tokens, or generates `rows` sequences of `length`
    new tokens; returns the peak RSS above the RSS before that work."""
    import resource
    import tempfile
    import types

    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from pear_exp.config import BehaviorConfig, BehaviorSource
    from pear_exp.tiny import build_char_tokenizer
    from pear_exp.rollout.hf import HFEngine
    from pear_exp.stages import behavior

    torch.manual_seed(0)
    heads = 1 if kind == "score-vllm" else 2  # vLLM's CPU attention takes head_dim 64, not 32
    model = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=heads, num_key_value_heads=heads,
        max_position_embeddings=2 * length + 64,
        tie_word_embeddings=True)).eval()
    if kind == "score":  # a character tokenizer: its ids are valid ids of the large vocabulary
        tok = build_char_tokenizer()
        path = Path(tempfile.mkdtemp()) / "data.jsonl"
        path.write_text("\n".join(json.dumps({"prompt": f"p{i}", "response": "ab" * (length // 2)})
                                  for i in range(rows)))
        cfg = BehaviorConfig(source=BehaviorSource.dataset, dataset=str(path))
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out, _ = behavior.score_dataset(model, tok, tok, str(path), cfg, 512, None,
                                        eval_problems=[])
        tokens = sum(len(r["input_ids"]) for r in out)
    elif kind == "score-vllm":  # the engine-only score path, prompts run 512 tokens a step
        from pear_exp.rollout.vllm import VLLMEngine

        tok = build_char_tokenizer()
        path = Path(tempfile.mkdtemp())
        model.save_pretrained(path)
        tok.save_pretrained(path)
        engine = VLLMEngine(str(path), tok, max_model_len=length + 8, prefill_chunk=512,
                            kv_cache_memory_bytes=256 << 20)
        del model
        sequences = [[3 + (i + t) % 90 for t in range(length)] for i in range(rows)]
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out = engine.score(sequences, [1] * rows)
        tokens = sum(len(logprobs) + 1 for logprobs, _, _ in out)
    else:
        engine = HFEngine(model, types.SimpleNamespace(pad_token_id=0), batch_size=rows)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out = engine.generate([[1 + i, 2, 3] for i in range(rows)], temperature=0.7, top_p=1.0,
                              max_new_tokens=length, stop_token_ids=[], seed=0)
        tokens = sum(len(c.token_ids) for (c,) in out)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"extra_mib": (peak - base) / 1024, "tokens": tokens}


def peak_extra(kind: str, rows: int, length: int) -> dict:
    out = subprocess.run([sys.executable, __file__, kind, str(rows), str(length)], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.splitlines()[-1])


def test_teacher_forced_scoring_never_holds_the_whole_logits():
    result = peak_extra("score", 2, 1024)
    assert result["tokens"] > 2 * 1024
    full = 2 * 1024 * VOCAB * 4 / 2**20  # (2, 1024, vocab) float32 logits: 1187 MiB
    assert result["extra_mib"] < full / 2, result


@pytest.mark.vllm
def test_vllm_scoring_never_holds_a_whole_rows_log_probs():
    pytest.importorskip("vllm")
    result = peak_extra("score-vllm", 2, 4096)
    assert result["tokens"] == 2 * 4096
    row = 4096 * VOCAB * 4 / 2**20  # one row's (4096, vocab) float32 log-probs: 2374 MiB
    assert result["extra_mib"] < row / 2, result  # 512-token steps: 297 MiB a block


def test_hf_generation_never_holds_every_steps_scores():
    result = peak_extra("generate", 16, 48)
    assert result["tokens"] == 16 * 48
    stacked = 16 * 48 * VOCAB * 4 / 2**20  # (16, 48, vocab) float32 scores: 445 MiB
    assert result["extra_mib"] < stacked / 2, result  # the former code held 3 x stacked


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    print(json.dumps(probe(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))))
