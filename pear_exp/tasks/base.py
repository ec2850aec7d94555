"""Types shared by every task (game) of the experiments.

A task turns a seed into :class:`Problem` instances, knows every correct response of an instance
(``solutions``) and grades any response string (``score``, 1.0 or 0.0, never raises). Problems are
identified by ``id``: two problems with the same id are the same instance, which is how evaluation
instances are kept out of training.

maj@k (stages/evaluate.py) counts two samples as the same answer when ``extract`` gives identical
strings, or, for a task that has ``equivalent_many(pairs of extracted answers) -> list[bool]``
(math), when its grader calls them equal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class Problem:
    """One instance of a task.

    id: stable identity, used for deduplication and to keep evaluation instances out of training
        (e.g. ``"countdown-3-7-12-33"``).
    prompt: the user message shown to the model.
    answer: one gold answer (a full response string), for display and reports.
    data: task-specific hashable payload (e.g. the numbers and target), so graders need not
        parse the prompt.
    """

    id: str
    prompt: str
    answer: str
    data: tuple = ()


@runtime_checkable
class Task(Protocol):
    """The interface the stages use; tasks are plain frozen dataclasses of their parameters."""

    def sample_problems(self, n: int, seed: int, exclude: frozenset[str] | set[str] = frozenset()) -> list[Problem]: ...

    def split(self, n_train: int, n_eval: int, seed: int) -> tuple[list[Problem], list[Problem]]: ...

    def solutions(self, problem: Problem) -> list[str]: ...

    def score(self, problem: Problem, response: str) -> float: ...

    def extract(self, response: str) -> str | None: ...

    def alphabet(self) -> str: ...
