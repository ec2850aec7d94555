"""Types shared by every task (game) of the experiments.

A task turns a seed into :class:`Problem` instances, knows every correct response of an instance
(``solutions``) and grades response strings. Problems are identified by ``id``: two problems with
the same id are the same instance, which is how evaluation instances are kept out of training.

Grading is batched, one call path for every stage: ``classify_many(problems, responses)`` gives
each pair's outcome, "correct", "wrong", "no_answer" (nothing extracted) or "timeout" (math: the
check overran its bound), and ``score_many`` the matching rewards, 1.0 for "correct" else 0.0.
Neither raises on any response; both raise ValueError for lists of different lengths. Math grades
a batch in parallel on its worker pool; countdown and games grade in-process one by one
(:class:`PerResponseGrading`). ``score(problem, response)`` grades a single response.

maj@k (stages/evaluate.py) counts two samples as the same answer when ``extract`` gives identical
strings, or, for a task that has ``equivalent_many(pairs of extracted answers) -> list[bool]``
(math), when its grader calls them equal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable


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

    def extract(self, response: str) -> str | None: ...

    def classify_many(self, problems: Sequence[Problem], responses: Sequence[str]) -> list[str]: ...

    def score_many(self, problems: Sequence[Problem], responses: Sequence[str]) -> list[float]: ...

    def score(self, problem: Problem, response: str) -> float: ...

    def alphabet(self) -> str: ...


class PerResponseGrading:
    """The batched grading of a task whose ``score`` grades one response in-process, quickly and
    without raising, 1.0 or 0.0 (countdown, games): it is mapped over the batch."""

    def score_many(self, problems: Sequence[Problem], responses: Sequence[str]) -> list[float]:
        return [self.score(p, r) for p, r in zip(problems, responses, strict=True)]

    def classify_many(self, problems: Sequence[Problem], responses: Sequence[str]) -> list[str]:
        return ["correct" if s == 1.0 else "no_answer" if self.extract(r) is None else "wrong"
                for r, s in zip(responses, self.score_many(problems, responses))]
