"""Behavior stage: offline SFT data with behavior log-probs b_t = log pi_b(y_t | x, y_<t).

Two sources (behavior.source):
- teacher: the teacher samples `samples_per_prompt` responses for every training prompt through
  the rollout engine; responses the task's verifier scores 1.0 are kept (all of them, duplicates
  included: they are samples of pi_b), and b_t is the log-prob of the distribution that sampled
  each token, i.e. after temperature and top-p.
- dataset: an existing prompt/response dataset (a JSONL file or a datasets id) is scored by the
  teacher in one teacher-forced pass at behavior.temperature. top_p < 1 is refused there: a
  response token outside the nucleus would have probability 0. Rows whose prompt holds the text of
  an evaluation problem are removed first (meta.json counts them as eval_removed), as the
  training problems of the teacher path exclude them. The pass runs in micro-batches of at most
  SCORE_TOKENS padded tokens, with log-probs taken from the hidden states SCORE_CHUNK positions
  at a time, so memory does not grow with the vocabulary times the batch.

Either way the stored token ids are the student's: the prompt goes through the student's chat
template and the teacher must share the student's tokenizer (a mismatch is an error, never
silently realigned). The artifact is a datasets dataset with one row per example:
    problem_id, prompt, response: str
    input_ids: list[int]           prompt + response + end-of-turn token
    loss_mask: list[int]           1 on the response tokens and the end-of-turn token
    behavior_logprobs: list[float] b_t on loss tokens, 0.0 elsewhere
and meta.json beside it (teacher, source, temperature, top_p, counts).
`validate_rows` checks such data before any training step and names the first bad row.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from pathlib import Path
from typing import Iterator, Sequence

import torch
from datasets import Dataset, load_dataset
from tqdm.auto import tqdm

from pear_exp.config import BehaviorConfig
from pear_exp.models import TokenLogProbs, end_of_turn_ids, prompt_ids, response_ids
from pear_exp.rollout import RolloutEngine
from pear_exp.stages.sft import collate
from pear_exp.tasks.base import Problem
from pear_exp.tasks.math import INSTRUCTION

COLUMNS = ("problem_id", "prompt", "response", "input_ids", "loss_mask", "behavior_logprobs")
# Teacher-forced scoring: padded tokens per forward pass, and LM-head positions at a time (one
# (SCORE_CHUNK, vocab) float32 block: 156 MB at a 152k vocabulary).
SCORE_TOKENS = 16_384
SCORE_CHUNK = 256


class DataError(ValueError):
    """Bad offline data: raised before any training step, naming the row and the problem."""


def check_same_tokenizer(teacher_tok, student_tok) -> None:
    if teacher_tok.get_vocab() != student_tok.get_vocab():
        raise DataError(
            "the teacher's tokenizer differs from the student's: behavior data must use the token "
            "ids the student trains on (PEAR.md); use a teacher of the same tokenizer family"
        )


def make_row(problem_id: str, prompt: str, response: str, prompt_tokens: list[int],
             completion: list[int], logprobs: list[float]) -> dict:
    return {
        "problem_id": problem_id,
        "prompt": prompt,
        "response": response,
        "input_ids": prompt_tokens + completion,
        "loss_mask": [0] * len(prompt_tokens) + [1] * len(completion),
        "behavior_logprobs": [0.0] * len(prompt_tokens) + [float(x) for x in logprobs],
    }


def sample_from_teacher(engine: RolloutEngine, teacher_tok, student_tok, problems: list[Problem],
                        task, cfg: BehaviorConfig, system_prompt: str | None,
                        seed: int) -> tuple[list[dict], dict]:
    check_same_tokenizer(teacher_tok, student_tok)
    prompts = [prompt_ids(student_tok, p.prompt, system_prompt) for p in problems]
    completions = engine.generate(
        prompts, n=cfg.samples_per_prompt, temperature=cfg.temperature, top_p=cfg.top_p,
        max_new_tokens=cfg.max_new_tokens, stop_token_ids=end_of_turn_ids(student_tok),
        seed=seed, desc="behavior: teacher sampling",
    )
    rows, correct, truncated = [], 0, 0
    for problem, ids, samples in zip(problems, prompts, completions):
        for c in samples:
            text = student_tok.decode(c.token_ids, skip_special_tokens=True)
            reward = task.score(problem, text) if c.finish_reason == "stop" else 0.0
            correct += reward == 1.0
            truncated += c.finish_reason != "stop"
            if reward == 1.0 or not cfg.keep_only_correct:
                rows.append(make_row(problem.id, problem.prompt, text, ids, c.token_ids, c.logprobs))
    total = len(problems) * cfg.samples_per_prompt
    stats = {"samples": total, "kept": len(rows), "teacher_accuracy": correct / max(total, 1),
             "truncated_frac": truncated / max(total, 1)}
    return rows, stats


_WORD_OR_SYMBOL = re.compile(r"\w+|[^\w\s]")


def spaced_text(text: str) -> str:
    """NFKC and lower case, as words and single symbols joined by one space and padded with one:
    whitespace does not matter ("$(a,b)$" = "$(a, b)$") but word boundaries do, so one text found
    inside another starts and ends on them ("make 15 from 1 2 3" is not inside "make 15 from 12
    3 4", as it would be with the whitespace removed)."""
    return " " + " ".join(_WORD_OR_SYMBOL.findall(unicodedata.normalize("NFKC", text).lower())) + " "


def problem_text(prompt: str) -> str:
    """A problem's normalised text, for finding it inside other prompts: the math tasks' prompts
    end with INSTRUCTION, which a dataset's prompt may or may not repeat, so it is left out."""
    return spaced_text(prompt.strip().removesuffix(INSTRUCTION))


def micro_batches(rows: list[dict], max_rows: int, max_tokens: int) -> Iterator[list[dict]]:
    """Rows sorted by length, grouped so that a group's padded size (rows x its longest row) stays
    within max_tokens (a longer row goes alone) and it has at most max_rows rows."""
    batch: list[dict] = []
    for row in sorted(rows, key=lambda r: len(r["input_ids"])):
        if batch and (len(batch) == max_rows
                      or (len(batch) + 1) * len(row["input_ids"]) > max_tokens):
            yield batch
            batch = []
        batch.append(row)
    if batch:
        yield batch


@torch.no_grad()
def score_dataset(teacher, teacher_tok, student_tok, source: str, cfg: BehaviorConfig,
                  batch_size: int, system_prompt: str | None, *,
                  eval_problems: Sequence[Problem],
                  max_tokens: int = SCORE_TOKENS) -> tuple[list[dict], dict]:
    """Teacher-forced behavior log-probs for an existing prompt/response dataset.

    A row whose normalised prompt contains the text of one of `eval_problems` (problem_text) is
    removed: exact copies, and the problem wrapped in other instructions. Forward passes take at
    most batch_size rows and max_tokens padded tokens."""
    check_same_tokenizer(teacher_tok, student_tok)
    if cfg.top_p < 1.0:
        raise DataError("behavior.top_p < 1 cannot score existing data: tokens outside the "
                        "nucleus have probability 0; score with top_p=1")
    if Path(source).exists():
        data = load_dataset("json", data_files=source, split="train")
    else:
        data = load_dataset(source, split="train")
    missing = [c for c in ("prompt", "response") if c not in data.column_names]
    if missing:
        raise DataError(f"{source}: missing column(s) {missing}; found {data.column_names}")
    held_out = {problem_text(p.prompt) for p in eval_problems} - {"  "}
    rows, removed = [], 0
    for i, ex in enumerate(data):
        if not isinstance(ex["prompt"], str) or not isinstance(ex["response"], str):
            raise DataError(f"{source}: row {i}: prompt and response must be strings")
        text = spaced_text(ex["prompt"])
        if any(h in text for h in held_out):
            removed += 1
            continue
        p = prompt_ids(student_tok, ex["prompt"], system_prompt)
        rows.append(make_row(str(ex.get("id", i)), ex["prompt"], ex["response"], p,
                             response_ids(student_tok, ex["response"]), []))
    teacher.eval()
    scorer = TokenLogProbs(teacher, chunk_size=SCORE_CHUNK)  # never (batch, seq, vocab) logits
    device = next(teacher.parameters()).device
    batches = list(micro_batches(rows, batch_size, max_tokens))
    for chunk in tqdm(batches, desc="behavior: teacher scoring", leave=False):
        batch = collate(chunk, student_tok.pad_token_id)
        logp, _, _ = scorer(batch["input_ids"].to(device), batch["attention_mask"].to(device),
                            temperature=cfg.temperature)
        logp = logp.cpu()
        for k, row in enumerate(chunk):
            n = len(row["input_ids"])
            row["behavior_logprobs"] = [
                float(v) if m else 0.0 for v, m in zip(logp[k, :n].tolist(), row["loss_mask"])
            ]
    return rows, {"samples": len(data), "kept": len(rows), "eval_removed": removed}


def validate_rows(data, tokenizer, system_prompt: str | None, max_seq_len: int, name: str) -> None:
    """Refuse bad behavior data with an error that names the row; changes nothing."""
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
            prompts[row["prompt"]] = prompt_ids(tokenizer, row["prompt"], system_prompt)
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


def save(rows: list[dict], meta: dict, out_dir: Path) -> Dataset:
    data = Dataset.from_list(rows) if rows else Dataset.from_dict({c: [] for c in COLUMNS})
    data.save_to_disk(str(out_dir / "data"))
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2))
    return data


def finish(rows: list[dict], stats: dict, cfg: BehaviorConfig, teacher_name: str,
           out_dir: Path) -> tuple[Dataset, dict]:
    """Save the kept rows and their provenance; an empty result is an error."""
    if not rows:
        raise DataError(f"the behavior stage kept no examples ({stats}); a stronger teacher, "
                        f"more samples_per_prompt or keep_only_correct=false would help")
    meta = {"teacher": teacher_name, "source": cfg.source.value, "dataset": cfg.dataset,
            "temperature": cfg.temperature, "top_p": cfg.top_p, **stats}
    return save(rows, meta, out_dir), meta
