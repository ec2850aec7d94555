"""What the KL base loss costs: disk for the top-k columns, time and memory per SFT step.

    python experiments/relatives/cost.py --behavior <run_dir>/behavior/data    # ~5 min, 2 cores

1. Disk: the behavior data saved as the behavior stage saves it, with and without its top-k
   columns; bytes per response token.
2. SFT step time, sft.base_loss=kl against nll, in one process, interleaved (nll, kl, nll, kl,
   ...; median of REPEATS), on (a) the tiny models' shape with that behavior data (vocabulary
   106, top-16, full logits, batches of 64) and (b) a random-init Qwen3-shaped model at Qwen3's vocabulary
   (151,936; hidden 256, 2 layers, tied head) on 4 rows of 512 tokens with a random top-20,
   log-probs in chunks of 1024 positions, as a real preset trains.
3. Peak memory of (b): each base loss in a fresh process (peak RSS, ru_maxrss), since one
   process's peak hides the second.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from datasets import Dataset, load_from_disk
from transformers import Qwen3Config, Qwen3ForCausalLM

from pear_exp.config import BaseLoss, SFTConfig, WeightingConfig, WeightLevel
from pear_exp.data import TOPK_COLUMNS, make_row
from pear_exp.stages.behavior import features
from pear_exp.tiny import build_char_tokenizer
from pear_exp.train.sft import train_sft

REPEATS = 5
STEPS = 4  # optimizer steps per timed call (after one warm-up call per base loss)


def disk(path: str) -> dict:
    rows = load_from_disk(path).to_list()
    tokens = sum(sum(r["loss_mask"]) for r in rows)
    plain = [{k: v for k, v in r.items() if k not in TOPK_COLUMNS} for r in rows]

    def size(data: Dataset) -> int:
        with tempfile.TemporaryDirectory() as tmp:
            data.save_to_disk(tmp)
            return sum(os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp))

    without = size(Dataset.from_list(plain, features=features(False)))
    with_topk = size(Dataset.from_list(rows, features=features(True)))
    k = len(rows[0][TOPK_COLUMNS[0]][0])
    return {"rows": len(rows), "response_tokens": tokens, "k": k,
            "bytes_per_token_without_topk": without / tokens,
            "bytes_per_token_with_topk": with_topk / tokens,
            "topk_bytes_per_token": (with_topk - without) / tokens}


def big_model_and_rows(seed: int = 0):
    torch.manual_seed(seed)
    vocab = 151_936
    model = Qwen3ForCausalLM(Qwen3Config(
        vocab_size=vocab, hidden_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=64, intermediate_size=768, max_position_embeddings=1024,
        tie_word_embeddings=True))
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(4):
        prompt = torch.randint(0, vocab, (64,), generator=g).tolist()
        response = torch.randint(0, vocab, (448,), generator=g).tolist()
        logq = torch.log_softmax(torch.randn(448, 20, generator=g), -1) - 0.1  # mass 0.9
        ids = torch.randint(0, vocab, (448, 20), generator=g)
        rows.append(make_row(prompt, response, [-1.0] * 448, (ids.tolist(), logq.tolist())))
    return model, rows


def tiny_model_and_rows(path: str):
    tok = build_char_tokenizer()
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(Qwen3Config(
        vocab_size=len(tok), hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, head_dim=32, intermediate_size=384, max_position_embeddings=256,
        tie_word_embeddings=True))  # the tiny models' shape (config.TinyModelConfig), random init
    keep = ["input_ids", "loss_mask", "behavior_logprobs", *TOPK_COLUMNS]
    return model, load_from_disk(path).select_columns(keep).to_list()[:640]


def step_seconds(model, rows, base_loss: BaseLoss, batch: int, chunk: int) -> float:
    cfg = SFTConfig(steps=STEPS, batch_size=batch, micro_batch_size=batch, lr=1e-5,
                    warmup_steps=1, log_every=1000, base_loss=base_loss,
                    logprob_chunk_size=chunk, checkpoint_every=0)
    started = time.perf_counter()
    train_sft(model, rows, cfg, WeightingConfig(level=WeightLevel.block), pad_id=0, seed=0)
    return (time.perf_counter() - started) / STEPS


def timing(model, rows, batch: int, chunk: int) -> dict:
    for loss in BaseLoss:  # warm-up
        step_seconds(model, rows, loss, batch, chunk)
    times = {loss.value: [] for loss in BaseLoss}
    for _ in range(REPEATS):
        for loss in BaseLoss:
            times[loss.value].append(step_seconds(model, rows, loss, batch, chunk))
    median = {k: statistics.median(v) for k, v in times.items()}
    return {"step_s": median, "kl_over_nll": median["kl"] / median["nll"]}


def peak_rss(base_loss: str) -> float:
    """GiB peak RSS of a fresh process that builds the 152k-vocabulary model and trains 2 steps."""
    code = ("import resource, sys; sys.path.insert(0, %r); import cost; from pear_exp.config "
            "import BaseLoss; m, r = cost.big_model_and_rows(); "
            "cost.step_seconds(m, r, BaseLoss(%r), 4, 1024); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
            % (os.path.dirname(os.path.abspath(__file__)), base_loss))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1]) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--behavior", required=True, help="a behavior data dir with top-k")
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    figures = {"disk": disk(args.behavior)}
    figures["tiny_step"] = timing(*tiny_model_and_rows(args.behavior), batch=64, chunk=0)
    figures["qwen3_vocab_step"] = timing(*big_model_and_rows(), batch=4, chunk=1024)
    figures["qwen3_vocab_peak_rss_gib"] = {loss.value: peak_rss(loss.value) for loss in BaseLoss}
    print(json.dumps(figures, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
