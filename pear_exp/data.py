"""The training row, built in one place, and how rows become batches.

A row is one sequence a trainer learns from:
    input_ids          prompt + response token ids (the response ends with the end-of-turn token)
    loss_mask          1 on the response tokens (they carry loss), 0 on the prompt
    behavior_logprobs  log-prob of each response token under the policy that produced it (the
                       behavior policy of that data: the teacher for SFT rows, the rollout engine
                       for RL rows); 0.0 on the prompt
The behavior stage stores rows with these columns (and problem_id, prompt, response);
`validate_rows` checks such data before any training step and names the first bad row.
"""

from __future__ import annotations

import math
import random
from typing import Iterator, Sequence, TypedDict

import torch
from torch.nn.utils.rnn import pad_sequence

from pear_exp.errors import DataError


class Row(TypedDict):
    input_ids: list[int]
    loss_mask: list[int]
    behavior_logprobs: list[float]


def make_row(prompt: list[int], response: list[int], logprobs: Sequence[float] = ()) -> Row:
    """A row from a prompt's and a response's token ids; `logprobs`: one per response token
    (empty: zeros, for data without behavior log-probs, e.g. pretraining or data to be scored)."""
    response_logprobs = [float(x) for x in logprobs] or [0.0] * len(response)
    return {
        "input_ids": prompt + response,
        "loss_mask": [0] * len(prompt) + [1] * len(response),
        "behavior_logprobs": [0.0] * len(prompt) + response_logprobs,
    }


def collate(rows: Sequence[Row], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad rows into (batch, seq) tensors: input_ids, attention_mask, loss_mask,
    behavior_logprobs."""

    def pad(key: str, value, dtype) -> torch.Tensor:
        return pad_sequence([torch.tensor(r[key], dtype=dtype) for r in rows], batch_first=True,
                            padding_value=value)

    input_ids = pad("input_ids", pad_id, torch.long)
    lengths = torch.tensor([len(r["input_ids"]) for r in rows])
    return {
        "input_ids": input_ids,
        "attention_mask": (torch.arange(input_ids.shape[1]) < lengths[:, None]).long(),
        "loss_mask": pad("loss_mask", 0, torch.float32),
        "behavior_logprobs": pad("behavior_logprobs", 0.0, torch.float32),
    }


def length_grouped_batches(lengths: Sequence[int], batch_size: int, seed: int,
                           window: int = 50) -> Iterator[list[int]]:
    """Endless stream of batches (lists of row indices), epoch after epoch: rows grouped by
    length within windows of `window` batches, then the batch order shuffled, so little compute
    goes to padding while the data order stays random."""
    rng = random.Random(seed)
    while True:
        order = list(range(len(lengths)))
        rng.shuffle(order)
        batches = []
        span = batch_size * window
        for start in range(0, len(order), span):
            chunk = sorted(order[start : start + span], key=lambda i: lengths[i])
            batches += [chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size)]
        rng.shuffle(batches)
        yield from (b for b in batches if len(b) == batch_size)


def token_budget_batches(rows: list[Row], max_rows: int, max_tokens: int) -> Iterator[list[Row]]:
    """Rows sorted by length, grouped so that a group's padded size (rows x its longest row) stays
    within max_tokens (a longer row goes alone) and it has at most max_rows rows."""
    batch: list[Row] = []
    for row in sorted(rows, key=lambda r: len(r["input_ids"])):
        if batch and (len(batch) == max_rows
                      or (len(batch) + 1) * len(row["input_ids"]) > max_tokens):
            yield batch
            batch = []
        batch.append(row)
    if batch:
        yield batch


COLUMNS = ("problem_id", "prompt", "response", "input_ids", "loss_mask", "behavior_logprobs")


def validate_rows(data, tokenizer, prompt_ids, max_seq_len: int, name: str) -> None:
    """Refuse bad behavior data with an error that names the row; changes nothing.
    `prompt_ids(prompt) -> ids`: the student's chat formatting, which the prompt part must equal."""
    missing = [c for c in COLUMNS if c not in data.column_names]
    if missing:
        raise DataError(f"{name}: missing column(s) {missing}; found {data.column_names}")
    vocab = len(tokenizer)
    prompts: dict[str, list[int]] = {}
    for i, row in enumerate(data):
        ids, mask, logp = row["input_ids"], row["loss_mask"], row["behavior_logprobs"]
        where = f"{name}: row {i} (problem {row['problem_id']})"
        if not (len(ids) == len(mask) == len(logp)):
            raise DataError(f"{where}: {len(ids)} token ids, {len(mask)} loss-mask entries and "
                            f"{len(logp)} behavior log-probs; they must be equal")
        if len(ids) > max_seq_len:
            raise DataError(f"{where}: {len(ids)} tokens exceeds sft.max_seq_len={max_seq_len}")
        if any(m not in (0, 1) for m in mask) or not any(mask):
            raise DataError(f"{where}: loss_mask must be 0/1 with at least one 1")
        for t, (m, v) in enumerate(zip(mask, logp)):
            if m and (not math.isfinite(v) or v > 1e-4):
                raise DataError(f"{where}: behavior log-prob {v} at token {t} is not a finite "
                                f"log-probability (<= 0)")
        bad = next((t for t in ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise DataError(f"{where}: token id {bad} is outside the student's vocabulary ({vocab})")
        start = mask.index(1)
        if row["prompt"] not in prompts:  # rows share prompts (several samples per prompt)
            prompts[row["prompt"]] = prompt_ids(row["prompt"])
        expected = prompts[row["prompt"]]
        if ids[:start] != expected:
            k = next((k for k, (a, b) in enumerate(zip(ids, expected)) if a != b),
                     min(start, len(expected)))
            raise DataError(f"{where}: prompt token ids differ from the student's chat formatting "
                            f"of the prompt at position {k}; made with another tokenizer or "
                            f"chat template?")
        decoded = tokenizer.decode(ids[start:], skip_special_tokens=True)
        if decoded != row["response"]:
            raise DataError(f"{where}: response token ids decode to {decoded[:60]!r}, not the "
                            f"stored response {row['response'][:60]!r}")
