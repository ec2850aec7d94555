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
  training problems of the teacher path exclude them. With rollout=vllm at behavior.temperature
  1 the vLLM engine scores (its prompt log-probs, VLLMEngine.score; they are of temperature 1,
  so other temperatures go through transformers). The transformers pass runs in micro-batches
  of at most SCORE_TOKENS padded tokens, with log-probs taken from the hidden states SCORE_CHUNK
  positions at a time, so memory does not grow with the vocabulary times the batch.

Either way the stored token ids are the student's: the prompt goes through the student's chat
template and the teacher must share the student's tokenizer (a mismatch is an error, never
silently realigned). The artifact, <run_dir>/behavior/, is a datasets dataset with one row per
example (problem_id, prompt, response and pear_exp.data.Row's input_ids, loss_mask,
behavior_logprobs = b_t on loss tokens) and meta.json beside it (teacher, source, temperature,
top_p, top_k, counts). The teacher path also samples the evaluation problems the same way into
heldout/ (data, meta.json): never trained on, the held-out teacher data whose NLL the evaluate
stage reports for every checkpoint. With behavior.top_k = k > 0 each row also holds, for every
response token, the k most likely tokens of the same distribution b_t comes from (the processed
sampling distribution, or the teacher at behavior.temperature when scoring) and their log-probs:
behavior_topk_ids / behavior_topk_logprobs, what sft.base_loss=kl distils from. With
behavior.reuse a sweep's runs that would sample the same data share one copy under
<cache_dir>/behavior (`shared_dir`): a weighting sweep samples its teacher once per seed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
import unicodedata
from contextlib import closing
from pathlib import Path
from typing import Sequence

import torch
from datasets import Dataset, Features, List, Value, load_dataset
from rich.console import Console
from tqdm.auto import tqdm

from pear_exp import models, tiny
from pear_exp.config import BehaviorConfig, BehaviorSource, Config, Engine
from pear_exp.data import COLUMNS, TOPK_COLUMNS, Row, collate, make_row, token_budget_batches
from pear_exp.errors import DataError
from pear_exp.files import atomic_dir, done, mark_done
from pear_exp.policy import TokenLogProbs
from pear_exp.rollout import RolloutEngine, grade_finished, make_engine
from pear_exp.tasks.base import Problem
from pear_exp.tasks.math import INSTRUCTION

console = Console()
HELD_OUT = "heldout"  # <behavior dir>/heldout: teacher samples on the evaluation problems
# Teacher-forced scoring: padded tokens per forward pass, and LM-head positions at a time (one
# (SCORE_CHUNK, vocab) float32 block: 156 MB at a 152k vocabulary).
SCORE_TOKENS = 16_384
SCORE_CHUNK = 256
# vLLM scoring: prompt positions per engine step, each step holding a (positions, vocab) float32
# log-prob block (1.2 GB at a 152k vocabulary).
SCORE_TOKENS_VLLM = 2048


def check_same_tokenizer(teacher_tok, student_tok) -> None:
    if teacher_tok.get_vocab() != student_tok.get_vocab():
        raise DataError(
            "the teacher's tokenizer differs from the student's: behavior data must use the token "
            "ids the student trains on (docs/method.md, Behavior data); use a teacher of the same "
            "tokenizer family"
        )


def example(problem_id: str, prompt: str, response: str, row: Row) -> dict:
    """A stored example: the training row and where it came from."""
    return {"problem_id": problem_id, "prompt": prompt, "response": response, **row}


def sample_from_teacher(engine: RolloutEngine, teacher_tok, student_tok, problems: list[Problem],
                        task, cfg: BehaviorConfig, system_prompt: str | None,
                        seed: int) -> tuple[list[dict], dict]:
    check_same_tokenizer(teacher_tok, student_tok)
    prompts = [models.prompt_ids(student_tok, p.prompt, system_prompt) for p in problems]
    completions = engine.generate(
        prompts, n=cfg.samples_per_prompt, temperature=cfg.temperature, top_p=cfg.top_p,
        max_new_tokens=cfg.max_new_tokens, stop_token_ids=models.end_of_turn_ids(student_tok),
        seed=seed, desc="behavior: teacher sampling", top_k=cfg.top_k,
    )
    flat = [(problem, ids, c) for problem, ids, samples in zip(problems, prompts, completions)
            for c in samples]
    texts = [student_tok.decode(c.token_ids, skip_special_tokens=True) for _, _, c in flat]
    rewards = grade_finished(task.score_many, [p for p, _, _ in flat], [c for _, _, c in flat],
                             texts, cut_off=0.0)
    rows = [example(problem.id, problem.prompt, text,
                    make_row(ids, c.token_ids, c.logprobs,
                             (c.top_ids, c.top_logprobs) if cfg.top_k else None))
            for (problem, ids, c), text, reward in zip(flat, texts, rewards)
            if reward == 1.0 or not cfg.keep_only_correct]
    correct = sum(reward == 1.0 for reward in rewards)
    truncated = sum(c.finish_reason != "stop" for _, _, c in flat)
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


@torch.no_grad()
def score_dataset(teacher, teacher_tok, student_tok, source: str, cfg: BehaviorConfig,
                  batch_size: int, system_prompt: str | None, *,
                  eval_problems: Sequence[Problem],
                  max_tokens: int = SCORE_TOKENS) -> tuple[list[dict], dict]:
    """Teacher-forced behavior log-probs for an existing prompt/response dataset.

    `teacher`: a transformers model (a forward at behavior.temperature, at most batch_size rows
    and max_tokens padded tokens a pass) or a rollout engine with `score` (vLLM's prompt
    log-probs: temperature 1 only, which make_data checks).
    A row whose normalised prompt contains the text of one of `eval_problems` (problem_text) is
    removed: exact copies, and the problem wrapped in other instructions."""
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
        p = models.prompt_ids(student_tok, ex["prompt"], system_prompt)
        rows.append(example(str(ex.get("id", i)), ex["prompt"], ex["response"],
                            make_row(p, models.response_ids(student_tok, ex["response"]))))
    if hasattr(teacher, "score"):
        score_with_engine(teacher, rows, cfg.top_k)
    else:
        score_with_model(teacher, rows, cfg, batch_size, max_tokens, student_tok.pad_token_id)
    return rows, {"samples": len(data), "kept": len(rows), "eval_removed": removed}


def set_scores(row: dict, logprobs, top_ids=None, top_logprobs=None) -> None:
    """A row's behavior log-probs from one value per response token (and its top-k arrays)."""
    start = row["loss_mask"].index(1)
    row["behavior_logprobs"] = [0.0] * start + [float(v) for v in logprobs]
    if top_ids is not None:
        row["behavior_topk_ids"], row["behavior_topk_logprobs"] = top_ids, top_logprobs


def score_with_model(teacher, rows: list[dict], cfg: BehaviorConfig, batch_size: int,
                     max_tokens: int, pad_id: int, desc: str = "behavior: teacher scoring") -> None:
    """Each row's behavior_logprobs (and top-k) from `teacher`'s forward at cfg.temperature, at
    most batch_size rows and max_tokens padded tokens a pass."""
    teacher.eval()
    scorer = TokenLogProbs(teacher, chunk_size=SCORE_CHUNK)  # never (batch, seq, vocab) logits
    device = next(teacher.parameters()).device
    batches = list(token_budget_batches(rows, batch_size, max_tokens))
    for chunk in tqdm(batches, desc=desc, leave=False):
        batch = collate(chunk, pad_id)
        out = scorer(batch["input_ids"].to(device), batch["attention_mask"].to(device),
                     temperature=cfg.temperature, top_k=cfg.top_k)
        logp = out.logprobs.cpu()  # one transfer per batch
        top_ids, top_logp = ((out.topk_ids.cpu().to(torch.int32), out.topk_logprobs.cpu())
                             if cfg.top_k else (None, None))
        for k, row in enumerate(chunk):
            on = batch["loss_mask"][k].bool()  # the response tokens (padding: 0)
            set_scores(row, logp[k, on].tolist(),
                       *((top_ids[k, on].numpy(), top_logp[k, on].numpy()) if cfg.top_k else ()))


def score_with_engine(engine, rows: list[dict], top_k: int) -> None:
    starts = [row["loss_mask"].index(1) for row in rows]
    scores = engine.score([row["input_ids"] for row in rows], starts, top_k=top_k,
                          desc="behavior: teacher scoring (vLLM)")
    for row, (logprobs, top_ids, top_logprobs) in zip(rows, scores):
        set_scores(row, logprobs, top_ids, top_logprobs)  # top-k None unless top_k


def features(with_topk: bool) -> Features:
    """Stored types: token ids int32, the loss mask int8, log-probs float32 (what they were
    computed in, so nothing is rounded), half of what Python's int / float would take."""
    ids, logp = List(Value("int32")), List(Value("float32"))
    columns = {"problem_id": Value("string"), "prompt": Value("string"),
               "response": Value("string"), "input_ids": ids,
               "loss_mask": List(Value("int8")), "behavior_logprobs": logp}
    if with_topk:
        columns.update({TOPK_COLUMNS[0]: List(ids), TOPK_COLUMNS[1]: List(logp)})
    return Features(columns)


def save(rows: list[dict], meta: dict, out_dir: Path) -> Dataset:
    data = Dataset.from_list(rows, features=features(TOPK_COLUMNS[0] in rows[0])) if rows \
        else Dataset.from_dict({c: [] for c in COLUMNS})
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
            "temperature": cfg.temperature, "top_p": cfg.top_p, "top_k": cfg.top_k, **stats}
    return save(rows, meta, out_dir), meta


# ----------------------------------------------------------------------------- the stage
def key(cfg: Config) -> str:
    """A hash of what determines the behavior data: teacher, student (its tokenizer and chat
    template build the ids), task, behavior settings, rollout settings and seed."""
    parts = [cfg.teacher, cfg.model, cfg.task, cfg.behavior, cfg.rollout, cfg.seed]
    text = json.dumps([dataclasses.asdict(p) if dataclasses.is_dataclass(p) else p
                       for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def shared_dir(cfg: Config) -> Path:
    """Where behavior.reuse keeps the data that any run with the same `key` would sample."""
    return Path(cfg.cache_dir).expanduser() / "behavior" / f"{cfg.teacher.name}-{key(cfg)}"


def run(cfg: Config, out: Path, train_problems, eval_problems, task) -> None:
    """The behavior stage into `out`, or a copy of the same data sampled earlier by another run
    (behavior.reuse), written whole and renamed into place so that a killed or concurrent job
    never leaves half."""
    if not cfg.behavior.reuse:
        return make_data(cfg, out, train_problems, eval_problems, task)
    shared = shared_dir(cfg)
    if done(shared):
        console.print(f"behavior: reusing the data sampled earlier in {shared}")
    else:
        with atomic_dir(shared) as tmp:  # another job finishing the same data first: theirs stays
            make_data(cfg, tmp, train_problems, eval_problems, task)
            mark_done(tmp)
    shutil.copytree(shared, out, dirs_exist_ok=True)


def scorer_for(cfg: Config, teacher_path: str, teacher_tok):
    """What scores a dataset: the vLLM engine (rollout=vllm) when behavior.temperature is 1, the
    teacher's transformers forward otherwise (vLLM's prompt log-probs ignore the temperature)."""
    if cfg.rollout.engine == Engine.vllm and cfg.behavior.temperature == 1.0:
        return make_engine(cfg.rollout, teacher_path, teacher_tok, policy=False, seed=cfg.seed,
                           max_logprobs=cfg.behavior.top_k, prefill_chunk=SCORE_TOKENS_VLLM)
    if cfg.rollout.engine == Engine.vllm:
        console.print(f"behavior: scoring at behavior.temperature={cfg.behavior.temperature} "
                      "with the teacher's transformers forward: vLLM's prompt log-probs are "
                      "of temperature 1")
    return models.load_model(teacher_path, cfg.teacher.dtype, cfg.teacher.trust_remote_code)


def make_data(cfg: Config, out: Path, train_problems, eval_problems, task) -> None:
    teacher_path = tiny.resolve_path(cfg.teacher, cfg.task, cfg.cache_dir)
    teacher_tok = models.load_tokenizer(teacher_path, cfg.teacher)
    student_tok = models.load_tokenizer(tiny.resolve_path(cfg.model, cfg.task, cfg.cache_dir),
                                        cfg.model)
    out.mkdir(parents=True, exist_ok=True)
    b, system = cfg.behavior, cfg.task.system_prompt
    if b.source == BehaviorSource.teacher:
        teacher = None
        if cfg.rollout.engine == Engine.hf:
            teacher = models.load_model(teacher_path, cfg.teacher.dtype, cfg.teacher.trust_remote_code)
        with closing(make_engine(cfg.rollout, teacher_path, teacher_tok, model=teacher,
                                 policy=False, seed=cfg.seed, max_logprobs=b.top_k)) as engine:
            rows, stats = sample_from_teacher(engine, teacher_tok, student_tok, train_problems,
                                              task, b, system, cfg.seed)
            # the same sampling on the evaluation problems, never trained on: each checkpoint's
            # NLL of these is the held-out teacher-data NLL (evaluate.teacher_nll); sampled
            # after the training data, which stays what it was without them
            held, held_stats = sample_from_teacher(engine, teacher_tok, student_tok,
                                                   eval_problems, task, b, system, cfg.seed)
            save(held, {"teacher": cfg.teacher.name, **held_stats}, out / HELD_OUT)
    else:
        if not b.dataset:
            raise DataError("behavior.source=dataset needs behavior.dataset=<JSONL or id>")
        teacher = scorer_for(cfg, teacher_path, teacher_tok)
        try:
            rows, stats = score_dataset(teacher, teacher_tok, student_tok, b.dataset, b,
                                        cfg.rollout.batch_size, system,
                                        eval_problems=eval_problems)
        finally:
            getattr(teacher, "close", lambda: None)()  # the vLLM engine's memory
    _, meta = finish(rows, stats, b, cfg.teacher.name, out)
    console.print(f"behavior: kept {meta['kept']} of {meta['samples']} examples"
                  + (f" (teacher accuracy {meta['teacher_accuracy']:.3f})"
                     if "teacher_accuracy" in meta else "")
                  + (f" (removed {meta['eval_removed']} rows that hold evaluation problems)"
                     if "eval_removed" in meta else ""))
