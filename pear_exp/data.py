"""The training row, built in one place, and how rows become batches.

A row is one sequence a trainer learns from:
    input_ids          prompt + response token ids (the response ends with the end-of-turn token)
    loss_mask          1 on the response tokens (they carry loss), 0 on the prompt
    behavior_logprobs  log-prob of each response token under the policy that produced it (the
                       behavior policy of that data: the teacher for SFT rows, the rollout engine
                       for RL rows); 0.0 on the prompt
    behavior_topk_ids, behavior_topk_logprobs  (only with behavior.top_k > 0) one list of k per
                       loss token, in order (lists or (n, k) arrays): the behavior policy's k
                       most likely tokens at that position and their log-probs
                       (sft.base_loss=kl distils from them)
The behavior stage stores rows with these columns (and problem_id, prompt, response);
`validate_rows` checks such data before any training step and names the first bad row.
"""

from __future__ import annotations

import math
import random
from typing import Iterator, NotRequired, Sequence, TypedDict

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from pear_exp.errors import DataError


class Row(TypedDict):
    input_ids: list[int]
    loss_mask: list[int]
    behavior_logprobs: list[float]
    behavior_topk_ids: NotRequired[list[list[int]] | np.ndarray]
    behavior_topk_logprobs: NotRequired[list[list[float]] | np.ndarray]


TOPK_COLUMNS = ("behavior_topk_ids", "behavior_topk_logprobs")


def make_row(prompt: list[int], response: list[int], logprobs: Sequence[float] = (),
             topk: tuple[list[list[int]], list[list[float]]] | None = None) -> Row:
    """A row from a prompt's and a response's token ids; `logprobs`: one per response token
    (empty: zeros, for data without behavior log-probs, e.g. pretraining or data to be scored);
    `topk`: (ids, log-probs), one list of k per response token."""
    response_logprobs = [float(x) for x in logprobs] or [0.0] * len(response)
    row: Row = {
        "input_ids": prompt + response,
        "loss_mask": [0] * len(prompt) + [1] * len(response),
        "behavior_logprobs": [0.0] * len(prompt) + response_logprobs,
    }
    if topk is not None:
        row["behavior_topk_ids"], row["behavior_topk_logprobs"] = topk
    return row


def collate(rows: Sequence[Row], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad rows into (batch, seq) tensors: input_ids, attention_mask, loss_mask,
    behavior_logprobs; with top-k columns also behavior_topk_ids / behavior_topk_logprobs,
    (batch, seq, k), each response token's list at its own position (id 0 and log-prob 0
    elsewhere)."""

    def pad(key: str, value, dtype) -> torch.Tensor:
        return pad_sequence([torch.tensor(r[key], dtype=dtype) for r in rows], batch_first=True,
                            padding_value=value)

    input_ids = pad("input_ids", pad_id, torch.long)
    lengths = torch.tensor([len(r["input_ids"]) for r in rows])
    batch = {
        "input_ids": input_ids,
        "attention_mask": (torch.arange(input_ids.shape[1]) < lengths[:, None]).long(),
        "loss_mask": pad("loss_mask", 0, torch.float32),
        "behavior_logprobs": pad("behavior_logprobs", 0.0, torch.float32),
    }
    if TOPK_COLUMNS[0] in rows[0]:
        k = len(rows[0][TOPK_COLUMNS[0]][0])
        on_loss = batch["loss_mask"] > 0  # the response tokens, in order, the lists belong to
        for key, dtype in zip(TOPK_COLUMNS, (torch.long, torch.float32)):
            out = torch.zeros(*input_ids.shape, k, dtype=dtype)
            for b, r in enumerate(rows):
                out[b, on_loss[b]] = torch.tensor(np.asarray(r[key]), dtype=dtype)  # a copy
            batch[key] = out
    return batch


def topk_arrays(data) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each row's top-k (ids (n, k), log-probs (n, k)) from a datasets Dataset, as views into
    one array per column (of the memory-mapped file when the dataset is on disk): a long-trace
    dataset at k = 20 would take ~1.8 KB per token as Python lists, 8 bytes per entry here."""
    columns = []
    for name in TOPK_COLUMNS:
        per_row = data.data.column(name).combine_chunks()  # list<list<value>>: rows of tokens
        per_token = per_row.flatten()
        k = len(per_token[0]) if len(per_token) else 0
        values = per_token.flatten().to_numpy(zero_copy_only=False).reshape(-1, k)
        offsets = per_row.offsets.to_numpy() - per_row.offsets[0].as_py()
        columns.append([values[a:b] for a, b in zip(offsets[:-1], offsets[1:])])
    return list(zip(*columns))


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


def token_budget_groups(lengths: Sequence[int], max_tokens: int, groups: int = 0
                        ) -> list[list[int]]:
    """Consecutive runs of positions 0..len(lengths)-1 whose lengths sum to at most max_tokens
    (padding-free micro-batches): a row that would straddle a boundary starts the next group
    (a row longer than max_tokens goes alone). groups > 0: exactly that many groups (it must be
    >= what the budget needs and <= the number of rows), the largest ones split further, so that
    every rank of a data-parallel world runs the same number of forwards (FSDP gathers weights in
    each)."""
    runs: list[list[int]] = []
    used = max_tokens + 1  # start a group at the first row
    for i, n in enumerate(lengths):
        if used + n > max_tokens:
            runs.append([])
            used = 0
        runs[-1].append(i)
        used += n
    if groups and not len(runs) <= groups <= len(lengths):
        raise ValueError(f"{groups} groups of {len(lengths)} rows within {max_tokens} tokens: "
                         f"at least {len(runs)} and at most {len(lengths)}")
    while len(runs) < groups:  # halve the group with the most tokens (of those with >= 2 rows)
        g = max((g for g in range(len(runs)) if len(runs[g]) > 1),
                key=lambda g: sum(lengths[i] for i in runs[g]))
        half = len(runs[g]) // 2
        runs[g : g + 1] = [runs[g][:half], runs[g][half:]]
    return runs


COLUMNS = ("problem_id", "prompt", "response", "input_ids", "loss_mask", "behavior_logprobs")


def validate_rows(data, tokenizer, prompt_ids, max_seq_len: int, name: str,
                  need_topk: bool = False) -> None:
    """Refuse bad behavior data with an error that names the row; changes nothing.
    `prompt_ids(prompt) -> ids`: the student's chat formatting, which the prompt part must equal.
    need_topk: the data must hold the behavior policy's top-k (sft.base_loss=kl)."""
    missing = [c for c in COLUMNS if c not in data.column_names]
    if missing:
        raise DataError(f"{name}: missing column(s) {missing}; found {data.column_names}")
    if need_topk and any(c not in data.column_names for c in TOPK_COLUMNS):
        raise DataError(f"{name}: sft.base_loss=kl needs the behavior policy's top-k token "
                        f"log-probs ({', '.join(TOPK_COLUMNS)}), which this data does not hold; "
                        f"sample or score it with behavior.top_k > 0")
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
        if need_topk:
            check_topk(row, sum(mask), vocab, where)


def check_topk(row: dict, responses: int, vocab: int, where: str) -> None:
    """One list of k ids in the vocabulary and k log-probs <= 0 (or -inf) per response token."""
    top_ids, top_logp = row[TOPK_COLUMNS[0]], row[TOPK_COLUMNS[1]]
    if not (len(top_ids) == len(top_logp) == responses):
        raise DataError(f"{where}: {len(top_ids)} top-k id lists and {len(top_logp)} top-k "
                        f"log-prob lists for {responses} response tokens; they must be equal")
    k = len(top_ids[0])
    for t, (ids, logp) in enumerate(zip(top_ids, top_logp)):
        if len(ids) != k or len(logp) != k:
            raise DataError(f"{where}: response token {t} has {len(ids)} top-k ids and "
                            f"{len(logp)} log-probs; every token needs the same k={k}")
        if any(not 0 <= i < vocab for i in ids):
            raise DataError(f"{where}: a top-k id of response token {t} is outside the "
                            f"student's vocabulary ({vocab})")
        if any(math.isnan(v) or v > 1e-4 for v in logp) or sum(map(math.exp, logp)) > 1 + 1e-3:
            raise DataError(f"{where}: the top-k log-probs of response token {t} are not "
                            f"log-probabilities of one distribution (each <= 0, summing to <= 1)")
