"""Math word problems with a final answer in ``\\boxed{}``: AIME 2024 / 2025 and MATH-500 shipped.

Problems
    ``load_problems(source)`` reads

    * a shipped set by name: ``"aime2024"`` (30), ``"aime2025"`` (30), ``"math500"`` (500), JSONL
      files in ``pear_exp/tasks/data/`` copied unchanged from their sources (see PROVENANCE.md there);
    * any local JSONL file (one JSON object a line; a ``.json`` file holding a list also works);
    * otherwise a datasets hub id ``owner/name[:config][@split]`` through ``datasets.load_dataset``
      (the online alternative, e.g. ``"HuggingFaceH4/MATH-500@test"``; needs network or a cache).

    Fields of a row (the first one present is used):

    * problem text: ``problem``, ``question``, ``prompt`` (a non-empty string);
    * gold answer: ``answer`` (a string or a number; if it contains ``\\boxed{}`` the last box is
      taken, else if it contains ``####`` the text after the last ``####``, GSM8K style); when
      there is no ``answer`` field, ``solution``'s last ``\\boxed{}``;
    * id: ``id``, ``unique_id``, ``problem_idx``; else the 0-based row index.

    ``Problem.id`` is ``"<name>/<row id>"`` where name is the shipped name, the file's stem or the
    hub id: ``"aime2025/2025-I-1"``, ``"math500/test/precalculus/807.json"``, ``"mydata/17"``.
    ``Problem.prompt`` is the problem text (stripped), a newline and :data:`INSTRUCTION` (the
    Qwen-math convention). ``Problem.answer`` is the gold answer string; ``Problem.data`` holds the
    row's other scalar fields as sorted ``(key, value)`` pairs plus ``("source", name)``.
    Missing or empty fields, bad JSON, duplicate ids raise ``ValueError`` naming the file (or hub
    id) and the line (row) number; a path that does not exist raises ``FileNotFoundError``.

Grading
    Responses are graded on their final answer by :mod:`pear_exp.tasks.math_grading` (extraction
    rules, math-verify equivalence, the worker pool and its time bound are documented there).
"""

from __future__ import annotations

import json
import os
import random
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from pear_exp.config import MathTaskConfig
from pear_exp.tasks.base import Problem
from pear_exp.tasks.math_grading import DEFAULT_TIMEOUT, classify_many, equivalent_many, extract_answer, last_box

__all__ = ["INSTRUCTION", "SHIPPED_SETS", "MathTask", "load_problems", "looks_like_path", "normalize_text"]

INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
DATA_DIR = Path(__file__).resolve().parent / "data"
SHIPPED_SETS = {"aime2024": "aime2024.jsonl", "aime2025": "aime2025.jsonl", "math500": "math500.jsonl"}
TEXT_FIELDS = ("problem", "question", "prompt")
ANSWER_FIELDS = ("answer",)
SOLUTION_FIELDS = ("solution",)
ID_FIELDS = ("id", "unique_id", "problem_idx")


# ====================================================================== loading
_HUB_RE = re.compile(r"[\w.-]+/[\w.-]+(?::[\w.-]+)?(?:@[\w.\-\[\]:%+]+)?")


def looks_like_path(source: str) -> bool:
    """Is ``source`` read as a local file (rather than as a hub id)? The loader's own rule."""
    return (
        source.startswith(("/", "./", "../", "~", "."))
        or source.endswith((".jsonl", ".json", ".jsonl.gz"))
        or "\\" in source
        or os.path.exists(source)
    )


def _gold_from(value: Any, where: str, field: str, require_box: bool) -> str:
    if value is None or isinstance(value, bool):
        raise ValueError(f"{where}: field {field!r} is empty or not a string/number")
    if isinstance(value, (int, float)):
        return str(value)
    if not isinstance(value, str):
        raise ValueError(f"{where}: field {field!r} must be a string or a number, got {type(value).__name__}")
    text = value.strip()
    if not text:
        raise ValueError(f"{where}: field {field!r} is empty")
    if "\\boxed" in text or "\\fbox" in text:
        box = last_box(text)
        if box is None or not box.strip():
            raise ValueError(f"{where}: field {field!r} has an unbalanced or empty \\boxed{{}}")
        return box.strip()
    if require_box:
        raise ValueError(f"{where}: field {field!r} has no \\boxed{{}} answer")
    if "####" in text:
        tail = text.rsplit("####", 1)[1].strip()
        if not tail:
            raise ValueError(f"{where}: field {field!r} is empty after '####'")
        return tail
    return text


def _row_to_problem(row: Any, name: str, index: int, where: str) -> Problem:
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
    tf = next((f for f in TEXT_FIELDS if f in row), None)
    if tf is None:
        raise ValueError(f"{where}: no problem text field (one of {', '.join(TEXT_FIELDS)})")
    text = row[tf]
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{where}: field {tf!r} must be a non-empty string")
    af = next((f for f in ANSWER_FIELDS if f in row), None)
    if af is not None:
        gold = _gold_from(row[af], where, af, require_box=False)
    else:
        sf = next((f for f in SOLUTION_FIELDS if f in row), None)
        if sf is None:
            raise ValueError(
                f"{where}: no answer field (one of {', '.join(ANSWER_FIELDS + SOLUTION_FIELDS)})"
            )
        gold = _gold_from(row[sf], where, sf, require_box=True)
    idf = next((f for f in ID_FIELDS if row.get(f) not in (None, "")), None)
    own = str(row[idf]) if idf is not None else str(index)
    data = [("source", name)]
    data += sorted(
        (k, v) for k, v in row.items()
        if k != tf and isinstance(k, str) and isinstance(v, (str, int, float, bool))
    )
    return Problem(id=f"{name}/{own}", prompt=f"{text.strip()}\n{INSTRUCTION}", answer=gold, data=tuple(data))


def _finish(problems: list[Problem], label: str) -> list[Problem]:
    if not problems:
        raise ValueError(f"{label}: no problems")
    seen: dict[str, int] = {}
    for i, p in enumerate(problems):
        if p.id in seen:
            raise ValueError(f"{label}: duplicate id {p.id!r} (rows {seen[p.id]} and {i})")
        seen[p.id] = i
    return problems


def _load_file(path: Path, name: str) -> list[Problem]:
    if not path.is_file():
        raise FileNotFoundError(f"math problems file not found: {path}")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    problems: list[Problem] = []
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except ValueError as e:
            raise ValueError(f"{path}: invalid JSON: {e}") from None
        for i, row in enumerate(rows):
            problems.append(_row_to_problem(row, name, i, f"{path}: row {i}"))
        return _finish(problems, str(path))
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise ValueError(f"{path}: line {lineno}: invalid JSON: {e}") from None
        problems.append(_row_to_problem(row, name, len(problems), f"{path}: line {lineno}"))
    return _finish(problems, str(path))


def _load_hub(source: str) -> list[Problem]:
    repo, _, split = source.partition("@")
    repo, _, config = repo.partition(":")
    import datasets  # the online alternative; imported only here

    try:
        ds = datasets.load_dataset(repo, config or None, split=split or None)
    except Exception as e:
        raise ValueError(f"could not load datasets hub id {source!r}: {type(e).__name__}: {e}") from e
    if isinstance(ds, dict):  # DatasetDict: no split named
        splits = list(ds.keys())
        if len(splits) != 1:
            raise ValueError(f"{source!r} has splits {splits}: name one, e.g. {repo}@{splits[0]}")
        ds = ds[splits[0]]
    return _finish(
        [_row_to_problem(dict(row), source, i, f"{source}: row {i}") for i, row in enumerate(ds)], source
    )


def load_problems(source: str) -> list[Problem]:
    """Problems of a shipped set name, a local JSONL/JSON path or a hub id (see the module doc)."""
    if not isinstance(source, str) or not source.strip():
        raise ValueError(f"math problem source must be a non-empty string, got {source!r}")
    source = source.strip()
    if source in SHIPPED_SETS:
        return _load_file(DATA_DIR / SHIPPED_SETS[source], source)
    if looks_like_path(source):
        path = Path(source).expanduser()
        name = path.name[: -len(".jsonl")] if path.name.endswith(".jsonl") else path.stem
        return _load_file(path, name)
    if _HUB_RE.fullmatch(source):
        return _load_hub(source)
    raise ValueError(
        f"unknown math problem source {source!r}: not a shipped set ({', '.join(SHIPPED_SETS)}), "
        "not an existing file, and not a datasets hub id owner/name[:config][@split]"
    )


_WS_RE = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Problem text for duplicate detection: NFKC, all whitespace removed, lower case."""
    return _WS_RE.sub("", unicodedata.normalize("NFKC", text)).lower()


# ====================================================================== task
@dataclass(frozen=True)
class MathTask:
    """Math problems graded on the final boxed answer.

    eval_set / train_set: a shipped name, a JSONL path or a hub id (see :func:`load_problems`);
    train_set None means no training problems. timeout: seconds per grading check.
    """

    eval_set: str = "math500"
    train_set: str | None = None
    timeout: float = DEFAULT_TIMEOUT

    @classmethod
    def from_config(cls, cfg: MathTaskConfig) -> MathTask:
        return cls(eval_set=cfg.eval_set, train_set=cfg.train_set, timeout=cfg.grade_timeout)

    def eval_problems(self, n_eval: int = 0) -> list[Problem]:
        """The first ``n_eval`` problems of ``eval_set`` in file order (0 or >= size: all)."""
        if n_eval < 0:
            raise ValueError("n_eval must be >= 0")
        problems = load_problems(self.eval_set)
        return problems[:n_eval] if 0 < n_eval < len(problems) else problems

    def _train_pool(self, exclude_texts: set[str], exclude_ids: Iterable[str] = ()) -> list[Problem]:
        if self.train_set is None:
            return []
        exclude_ids = set(exclude_ids)
        seen: set[str] = set()
        pool: list[Problem] = []
        for p in load_problems(self.train_set):
            key = normalize_text(p.prompt)
            if key in exclude_texts or key in seen or p.id in exclude_ids:
                seen.add(key)  # an excluded id excludes its text (and so its duplicates) too
                continue  # an evaluation problem (by text), a duplicate, or excluded by id
            seen.add(key)
            pool.append(p)
        return pool

    def split(self, n_train: int, n_eval: int, seed: int) -> tuple[list[Problem], list[Problem]]:
        """(train, eval). eval: first ``n_eval`` of eval_set (0 or >= size: all). train: ``n_train``
        problems drawn with ``seed`` from train_set (0 or >= what is left: all, shuffled), after
        removing every problem whose normalised text (:func:`normalize_text`) is in eval, and
        duplicates; empty when train_set is None."""
        if n_train < 0:
            raise ValueError("n_train must be >= 0")
        eval_problems = self.eval_problems(n_eval)
        pool = self._train_pool({normalize_text(p.prompt) for p in eval_problems})
        random.Random(f"math-train-{seed}").shuffle(pool)
        train = pool[:n_train] if 0 < n_train < len(pool) else pool
        return train, eval_problems

    def sample_problems(self, n: int, seed: int, exclude: frozenset[str] | set[str] = frozenset()) -> list[Problem]:
        """``n`` distinct training problems drawn with ``seed``: none whose id is in ``exclude`` and
        none whose normalised text is anywhere in ``eval_set`` (all of it, not only a first n)."""
        if self.train_set is None:
            raise ValueError("MathTask.sample_problems needs a train_set")
        pool = self._train_pool({normalize_text(p.prompt) for p in self.eval_problems()}, exclude)
        if n > len(pool):
            raise ValueError(f"asked for {n} problems but {self.train_set!r} has {len(pool)} available")
        return random.Random(f"math-sample-{seed}").sample(pool, n)

    def solutions(self, problem: Problem) -> list[str]:
        """One canonical correct response: the gold answer boxed."""
        return [f"The final answer is $\\boxed{{{problem.answer}}}$."]

    def extract(self, response: str) -> str | None:
        """The final answer the grader reads (None: no answer found); used for maj@k."""
        return extract_answer(response)

    def classify_many(self, problems: Sequence[Problem], responses: Sequence[str]) -> list[str]:
        """"correct", "wrong", "no_answer" or "timeout" for each pair, graded in one batch on the
        worker pool (see :func:`pear_exp.tasks.math_grading.classify_many`)."""
        return classify_many(responses, [p.answer for p in problems], self.timeout)

    def score_many(self, problems: Sequence[Problem], responses: Sequence[str]) -> list[float]:
        """1.0 where the final answer equals ``problem.answer``, else 0.0; one batch."""
        return [1.0 if o == "correct" else 0.0 for o in self.classify_many(problems, responses)]

    def score(self, problem: Problem, response: str) -> float:
        return self.score_many([problem], [response])[0]

    def equivalent_many(self, pairs: Sequence[tuple[str, str]]) -> list[bool]:
        """Which pairs of extracted answers are equal (see
        :func:`pear_exp.tasks.math_grading.equivalent_many`); for maj@k."""
        return equivalent_many(pairs, self.timeout)

    def alphabet(self) -> str:
        """Every character of the prompts and solutions of both sets (for char-level tokenizers)."""
        chars: set[str] = set()
        for source in (self.eval_set, self.train_set):
            if source is None:
                continue
            for p in load_problems(source):
                chars.update(p.prompt)
                chars.update(self.solutions(p)[0])
        return "".join(sorted(chars))
