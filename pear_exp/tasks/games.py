"""reasoning-gym games as tasks: any of reasoning-gym 0.1.25's generators behind the Task interface.

Usage
    ``GymGame("chain_sum", params=(("min_terms", 2), ("max_terms", 3)), cache_dir="cache/games")``;
    ``params`` are the generator's config fields (``reasoning_gym.create_dataset(name, **params)``)
    as a hashable tuple of pairs (give list-valued fields as tuples). ``size`` and ``seed`` are
    ours, not params. ``available_games()`` lists the accepted names, ``REFUSED`` the refused
    ones with the reason.

Prompt and answer convention
    prompt   = the generator's question, a blank line, then ``answer_format`` (default:
               "Give your final answer after 'answer:' at the end of your response."); the
               question's own format instructions (e.g. "Return the final state") stay.
    extraction (``extract_answer``): the text after the LAST ``"answer:"`` (case-insensitive) up to
               the END of the response, surrounding whitespace stripped; it may span several lines
               (grids, move lists). If the response has no marker: its last non-empty line,
               stripped. So the final answer must be the last thing in the response.
    gold     = ``Problem.answer`` = ``"answer: <gold>"`` (``"answer:\\n<gold>"`` when the gold
               spans several lines), which extracts back to the generator's gold answer.

Grading (``score``)
    The extracted answer is graded by the generator's own ``score_answer(answer, entry)`` (many give
    partial credit, e.g. countdown 0.05 for using the right numbers with the wrong value). The
    response counts as correct only if that score is >= ``pass_threshold`` (default 1.0), and
    ``score`` returns 1.0 or 0.0, so rewards and pass@k are binary. It never raises: any scorer
    exception, a non-finite score, an over-long answer (> max(1024, 4 * len(gold)) characters, so
    no scorer can be made to hang on a huge string) or a malformed problem gives 0.0. The
    generators' stdout chatter is swallowed during generation and scoring.

Scorer defects in 0.1.25, and what is done about them (found by probing every generator)
    game_of_life_halting: ``score_answer`` returns 1.0 for ANY non-empty answer (it compares
        ``bool(answer) == bool(gold)``). Replaced: exact match with the gold after normalisation
        (strip whitespace, quotes and a trailing period, casefold): "true"/"True." pass, "hello" 0.
    prime_factorization: ``score_answer`` raises ValueError on non-numeric answers ("hello");
        caught, 0.0 (every scorer exception is).
    puzzle24: ``score_answer`` checks only that the answer has 4 numbers within the config's range
        and ``int(value) == 24``: ANOTHER puzzle's solution scores 1.0 (numbers not compared) and
        non-integer values that truncate to 24 pass. Replaced: the expression must use exactly the
        puzzle's numbers (multiset) with + - * / ( ) and equal 24 exactly (``fractions``), via
        ``pear_exp.tasks.countdown.check_expression``.
    Note: countdown (reasoning-gym's, not ``pear_exp.tasks.countdown``) and a few others score
        with sympy's ``parse_expr``, which evaluates Python; the answer-length cap bounds the cost,
        but this is not a sandbox.

Games without gold answers (``entry["answer"] is None`` for every item in 0.1.25, checked)
    boxnet, graph_color, propositional_logic, rubiks_cube, rush_hour. Their scorers all work
    without the gold (they check the answer against the puzzle in ``metadata``). Allowed are those
    whose metadata also carries a reference solution that the scorer accepts (1.0 on every item
    probed), used as the gold answer (so SFT has a target and tests can check the verifier):
        graph_color: ``json.dumps(metadata["possible_answer"])`` (a JSON map vertex -> colour).
        propositional_logic: ``metadata["example_answer"]``. Beware: ANY entailed non-trivial
            formula scores 1.0, including a verbatim copy of a non-atomic premise, so the
            reward is easy to hack.
        rubiks_cube: ``metadata["example_correct_answer"]`` (a long move list, not a short one).
    Refused (see ``REFUSED``): boxnet and rush_hour (no gold and no reference solution: nothing
    to train on by SFT, the verifier cannot be checked; boxnet's scorer also gives partial
    credit for each box moved), composite (a mixture of other generators configured by dataset
    specs: make one GymGame per game instead).

Identity, splits, caching
    ``Problem.id = f"{name}-{sha256(normalised question)[:16]}"`` (normalised: whitespace runs
    collapsed to one space, ends stripped); problems are deduplicated by it. ``Problem.data =
    (pickled entry,)``: the whole generator entry (question, answer, metadata) pickled, so that it
    stays hashable and keeps its types (arc_agi's tuple grids, which its scorer needs as tuples;
    gsm_symbolic's Fractions); ``game_entry(problem)`` unpickles it. ``split`` draws eval first
    (reasoning-gym seed derived from ("eval", seed)), then train (seed from ("train", seed)) with
    the eval ids excluded explicitly. A draw asks the generator for ``n`` items, then for more in
    further chunks (new derived seeds) while duplicates/excluded items leave it short, and gives up
    (ValueError) after ~10n+100 items. With ``cache_dir`` each generated chunk is a pickle file
    keyed by (name, params, size, seed, reasoning-gym version), holding the key and the pickled
    entries, written to a temporary file and renamed into place (atomic); later calls read it
    instead of generating (slow generators: knight_swap, sokoban, futoshiki, puzzle24,
    zebra_puzzles take 0.1-0.4 s per item on one core). A cache file is trusted like code (it is
    unpickled): it lives in the run's own cache directory.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import io
import json
import math
import pickle
import re
import string
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import version
from pathlib import Path
from typing import Any

import reasoning_gym
from reasoning_gym.factory import DATASETS

from pear_exp.config import GameTaskConfig
from pear_exp.files import atomic_write
from pear_exp.tasks.base import PerResponseGrading, Problem
from pear_exp.tasks.countdown import check_expression

__all__ = [
    "ANSWER_MARKER",
    "DEFAULT_ANSWER_FORMAT",
    "REFUSED",
    "GymGame",
    "available_games",
    "game_entry",
    "extract_answer",
    "format_answer",
    "rg_version",
]

ANSWER_MARKER = "answer:"
DEFAULT_ANSWER_FORMAT = "Give your final answer after 'answer:' at the end of your response."

# name -> why it is refused (as found in reasoning-gym 0.1.25)
REFUSED: dict[str, str] = {
    "boxnet": (
        "no gold answers (entry['answer'] is None) and no reference solution in metadata; its "
        "scorer only gives partial credit per box moved, so there is nothing to train on by SFT "
        "and no way to check the verifier"
    ),
    "rush_hour": (
        "no gold answers (entry['answer'] is None) and no reference solution in metadata "
        "(only min_moves); its move-simulating verifier works but there is nothing to train on "
        "by SFT and no way to check it"
    ),
    "composite": (
        "a mixture of other generators configured by dataset specs; make one GymGame per game"
    ),
}

# games with no gold answer whose metadata carries a reference solution the scorer accepts
_REFERENCE_KEY: dict[str, str] = {
    "graph_color": "possible_answer",
    "propositional_logic": "example_answer",
    "rubiks_cube": "example_correct_answer",
}

_RESERVED_PARAMS = frozenset({"size", "seed"})
_MARKER_RE = re.compile(re.escape(ANSWER_MARKER), re.IGNORECASE)
_MIN_ANSWER_CAP = 1024


def available_games() -> list[str]:
    """Every reasoning-gym generator name GymGame accepts (sorted)."""
    return sorted(n for n in DATASETS if n not in REFUSED)


@lru_cache(maxsize=1)
def rg_version() -> str:
    """The installed reasoning-gym distribution version (its ``__version__`` lags: 0.1.19)."""
    try:
        return version("reasoning_gym")
    except Exception:
        return str(getattr(reasoning_gym, "__version__", "unknown"))


def game_entry(problem: Problem) -> dict[str, Any]:
    """The generator's entry (question, answer, metadata) a problem was made from."""
    return pickle.loads(problem.data[0])


# ---------------------------------------------------------------------------- answers
def extract_answer(response: str) -> str | None:
    """Text after the last ``answer:`` (any case) to the end, stripped; else the last non-empty line.

    None for a non-string or a response with no non-empty line.
    """
    if not isinstance(response, str):
        return None
    last = None
    for m in _MARKER_RE.finditer(response):
        last = m
    if last is not None:
        return response[last.end() :].strip()
    for line in reversed(response.splitlines()):
        if line.strip():
            return line.strip()
    return None


def format_answer(gold: str) -> str:
    """The response that states ``gold`` in our convention (multi-line golds start on a new line)."""
    return f"{ANSWER_MARKER}\n{gold}" if "\n" in gold else f"{ANSWER_MARKER} {gold}"


def _norm_question(q: str) -> str:
    return " ".join(q.split())


def _question_hash(q: str) -> str:
    return hashlib.sha256(_norm_question(q).encode("utf-8")).hexdigest()[:16]


def _derive_seed(*parts: object) -> int:
    h = hashlib.sha256("|".join(map(str, parts)).encode("utf-8")).hexdigest()
    return int(h[:8], 16)


def _norm_bool_text(s: str) -> str:
    return s.strip().strip("'\"`").strip().rstrip(".").strip().casefold()


@lru_cache(maxsize=None)
def _scorer_dataset(name: str, params: tuple[tuple[str, object], ...]) -> Any:
    """One generator instance per (name, params): its ``score_answer`` may read its config."""
    with contextlib.redirect_stdout(io.StringIO()):
        return reasoning_gym.create_dataset(name, size=1, seed=0, **dict(params))


@dataclass(frozen=True)
class GymGame(PerResponseGrading):
    """One reasoning-gym generator with fixed params; see the module docstring for conventions."""

    name: str
    params: tuple[tuple[str, object], ...] = ()
    cache_dir: str | None = None
    answer_format: str = DEFAULT_ANSWER_FORMAT
    pass_threshold: float = 1.0

    @classmethod
    def from_config(cls, cfg: GameTaskConfig, cache_dir: str | Path) -> GymGame:
        """The configured game; generated problems are cached under ``<cache_dir>/games``."""
        if not cfg.game:
            raise ValueError("task.kind=game needs task.game=<reasoning-gym generator name>")
        return cls(name=cfg.game, params=tuple(sorted(cfg.game_params.items())),
                   cache_dir=str(Path(cache_dir).expanduser() / "games"))

    def __post_init__(self) -> None:
        name = self.name
        if name in REFUSED:
            raise ValueError(f"reasoning-gym game {name!r} is refused: {REFUSED[name]}")
        if name not in DATASETS:
            close = difflib.get_close_matches(str(name), list(DATASETS), n=3)
            hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
            raise ValueError(
                f"unknown reasoning-gym game {name!r}{hint}; valid names include 'basic_arithmetic', "
                "'chain_sum', 'spell_backward', 'mini_sudoku', 'countdown', 'maze'; list them all with "
                "pear_exp.tasks.games.available_games()"
            )
        try:
            pairs = tuple(self.params)
            keys = [k for k, _v in pairs]
            hash(pairs)
        except Exception as e:
            raise ValueError(
                f"reasoning-gym game {name!r}: params must be a hashable tuple of (name, value) pairs, got {self.params!r}"
            ) from e
        if len(set(keys)) != len(keys) or not all(isinstance(k, str) for k in keys):
            raise ValueError(f"reasoning-gym game {name!r}: params must have distinct string names, got {keys}")
        bad = _RESERVED_PARAMS.intersection(keys)
        if bad:
            raise ValueError(f"reasoning-gym game {name!r}: params may not set {sorted(bad)} (GymGame picks size and seed)")
        object.__setattr__(self, "params", pairs)
        if ANSWER_MARKER not in self.answer_format.lower():
            raise ValueError(
                f"reasoning-gym game {name!r}: answer_format must tell the model to use {ANSWER_MARKER!r}, "
                f"which is what extraction looks for; got {self.answer_format!r}"
            )
        if not (0.0 < float(self.pass_threshold) <= 1.0):
            raise ValueError(f"reasoning-gym game {name!r}: pass_threshold must be in (0, 1], got {self.pass_threshold}")
        try:
            _scorer_dataset(name, pairs)
        except Exception as e:  # bad param names (TypeError) or values (AssertionError from validate)
            raise ValueError(f"reasoning-gym game {name!r}: params {dict(pairs)!r} rejected by the generator: {type(e).__name__}: {e}") from e

    # ------------------------------------------------------------------ generation
    def _cache_path(self, size: int, rg_seed: int) -> tuple[Path, dict[str, Any]]:
        key = {"name": self.name, "params": repr(self.params), "size": size, "seed": rg_seed, "reasoning_gym": rg_version()}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()[:20]
        assert self.cache_dir is not None
        return Path(self.cache_dir) / f"{self.name}-{digest}.pkl", key

    def _generate(self, size: int, rg_seed: int) -> list[bytes]:
        """``size`` pickled entries of the generator for ``rg_seed`` (from the cache when possible)."""
        path = key = None
        if self.cache_dir is not None:
            path, key = self._cache_path(size, rg_seed)
            try:
                with open(path, "rb") as f:
                    cached = pickle.load(f)
                if cached["key"] == key and len(cached["entries"]) == size:
                    return cached["entries"]
            except Exception:  # missing, or not a file we wrote: generate again
                pass
        with contextlib.redirect_stdout(io.StringIO()):
            ds = reasoning_gym.create_dataset(self.name, size=size, seed=rg_seed, **dict(self.params))
            entries = [pickle.dumps(ds[i]) for i in range(size)]
        if path is not None:
            atomic_write(path, pickle.dumps({"key": key, "entries": entries}))
        return entries

    def _reference(self, entry: dict[str, Any]) -> str | None:
        gold = entry.get("answer")
        if gold is None and self.name in _REFERENCE_KEY:
            gold = entry.get("metadata", {}).get(_REFERENCE_KEY[self.name])
            if gold is not None and not isinstance(gold, str):
                gold = json.dumps(gold)
        if gold is None:
            return None
        return gold if isinstance(gold, str) else str(gold)

    def _problem(self, blob: bytes, entry: dict[str, Any]) -> Problem:
        question = str(entry["question"])
        gold = self._reference(entry)
        return Problem(
            id=f"{self.name}-{_question_hash(question)}",
            prompt=f"{question.rstrip()}\n\n{self.answer_format}",
            answer=format_answer(gold) if gold is not None else "",
            data=(blob,),
        )

    def _draw(self, n: int, tag: str, seed: int, exclude: frozenset[str] | set[str]) -> list[Problem]:
        if n < 0:
            raise ValueError(f"reasoning-gym game {self.name!r}: cannot draw {n} problems")
        out: list[Problem] = []
        seen: set[str] = set()
        generated, budget, chunk = 0, 10 * n + 100, 0
        while len(out) < n:
            if generated >= budget:
                raise ValueError(
                    f"reasoning-gym game {self.name!r}: could only draw {len(out)} of {n} distinct problems "
                    f"from {generated} generated; the instance space of params {dict(self.params)!r} is too small"
                )
            short = n - len(out)
            size = short if chunk == 0 else min(max(2 * short, 16), budget - generated)
            rg_seed = _derive_seed(tag, seed, chunk)
            for blob in self._generate(size, rg_seed):
                entry = pickle.loads(blob)
                pid = f"{self.name}-{_question_hash(str(entry['question']))}"
                if pid in seen or pid in exclude:
                    continue
                seen.add(pid)
                out.append(self._problem(blob, entry))
                if len(out) == n:
                    break
            generated += size
            chunk += 1
        return out

    def sample_problems(self, n: int, seed: int, exclude: frozenset[str] | set[str] = frozenset()) -> list[Problem]:
        """``n`` distinct problems (by id), none in ``exclude``; deterministic for ``seed``."""
        return self._draw(n, "sample", seed, exclude)

    def split(self, n_train: int, n_eval: int, seed: int) -> tuple[list[Problem], list[Problem]]:
        """(train, eval), disjoint by id (normalised question): eval drawn first, excluded from train."""
        eval_set = self._draw(n_eval, "eval", seed, frozenset())
        eval_ids = {p.id for p in eval_set}
        train = self._draw(n_train, "train", seed, eval_ids)
        return train, eval_set

    # ------------------------------------------------------------------ grading
    def raw_score(self, problem: Problem, answer: str) -> float:
        """The (possibly partial-credit) score of an already-extracted answer; may raise."""
        entry = game_entry(problem)
        if self.name == "game_of_life_halting":
            gold = entry.get("answer")
            return 1.0 if isinstance(gold, str) and _norm_bool_text(answer) == _norm_bool_text(gold) else 0.0
        if self.name == "puzzle24":
            numbers = tuple(int(x) for x in entry["metadata"]["numbers"])
            return 1.0 if check_expression(answer.strip(), numbers, 24) else 0.0
        ds = _scorer_dataset(self.name, self.params)
        with contextlib.redirect_stdout(io.StringIO()):
            return float(ds.score_answer(answer, entry))

    def extract(self, response: str) -> str | None:
        """The final answer the grader reads (None: no answer found); used for maj@k."""
        return extract_answer(response)

    def score(self, problem: Problem, response: str) -> float:
        """1.0 iff the extracted answer scores >= ``pass_threshold``; else 0.0. Never raises."""
        try:
            answer = extract_answer(response)
            if answer is None:
                return 0.0
            gold = extract_answer(problem.answer) if problem.answer else None
            cap = max(_MIN_ANSWER_CAP, 4 * len(gold or ""))
            if len(answer) > cap:
                return 0.0
            s = self.raw_score(problem, answer)
            return 1.0 if math.isfinite(s) and s >= self.pass_threshold else 0.0
        except Exception:
            return 0.0

    def solutions(self, problem: Problem) -> list[str]:
        """The one known correct response (the gold answer in our convention); [] if none."""
        return [problem.answer] if problem.answer else []

    def alphabet(self) -> str:
        """Printable ASCII plus the characters of ``answer_format`` (sorted).

        Not closed: reasoning-gym questions and answers can hold other characters (e.g. ×, ∨, →,
        emoji); a character-level model must build its vocabulary from the problems themselves.
        """
        return "".join(sorted(set(string.printable) | set(self.answer_format)))
