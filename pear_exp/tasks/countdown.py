"""Countdown with a few small numbers: the "tiny world" a ~0.5M-parameter char-level model learns.

The game
    Given ``num_numbers`` numbers (default 3, drawn uniformly in [min_value, max_value], shown in
    the order drawn) and a target, write an arithmetic expression that uses every number exactly
    once (as a multiset), with ``+ - * /`` and parentheses only, whose exact value is the target.

Formats (short on purpose: the model reads characters)
    prompt:    ``"Make 15 from 3 7 12"``
    response:  one arithmetic step per line, inner operations first (post-order), then the answer
               expression with minimal parentheses::

                   12-7=5
                   5*3=15
                   answer: (12-7)*3

               For ``a op (b op c)`` the inner operation is the first step:
               ``"7-3=4\\n12*4=48\\nanswer: 12*(7-3)"``.
    domain corpus (pretraining text for the student base model, NOT the task itself):
               user ``"Compute 12*(7-3)"`` -> ``"7-3=4\\n12*4=48\\nanswer: 48"``.

Solutions (what SFT teaches, what importance weights count)
    Every binary expression tree over all the numbers (all orders, all operators, all shapes),
    Countdown style: every intermediate value is a positive integer (subtraction only when the
    result is > 0, division only when exact). Distinct response strings are the solutions; an
    instance has many (orders and shapes differ), which keeps answers diverse for RL.

Response styles (``restyle``; for pretraining the tiny models, never for grading)
    ``steps`` is the format above. ``terse`` keeps only the answer line (``"answer: (12-7)*3"``):
    no worked steps. ``reverse`` writes the steps outermost first, the goal before its parts
    (``"5*3=15\\n12-7=5\\nanswer: (12-7)*3"``). All three carry the same graded answer line, so a
    teacher and a student can solve the same instance in different styles and both be right.

Targets
    The target is the value of a uniformly random valid solution (a random distinct response
    string) whose value is an integer in [1, max_target], so every target is reachable.

Grading (``score``)
    Only the final answer is graded: the text after the LAST ``"answer:"`` up to the end of that
    line. It must parse (``ast``, whitelist: BinOp with Add/Sub/Mult/Div and int constants; no
    unary minus, no ``**``) into an expression using exactly the given numbers as a multiset, and
    its exact rational value (``fractions``) must equal the target. Intermediate values are NOT
    required to be integers when grading, so ``12*(7/7)`` is as good as ``12*7/7``; the steps are not
    checked. 1.0 or 0.0, never raises, length-capped so no string can hang it.

Why our own generator
    reasoning-gym's countdown generates and checks with sympy (milliseconds per instance) and its
    ``score_answer`` gives partial credit; here generation and grading are plain Python integer /
    Fraction arithmetic, solutions are enumerated once per multiset of numbers and cached, and
    scores are exactly 0 or 1.

Identity
    A problem is the multiset of numbers plus the target: id ``"countdown-3-7-12-15"`` (sorted
    numbers, then target). The instance space is small (tens of thousands), so ``split`` draws
    evaluation instances first and removes them from training explicitly by id.
"""

from __future__ import annotations

import ast
import random
import re
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

from pear_exp.config import CountdownTaskConfig, SolutionStyle
from pear_exp.tasks.base import PerResponseGrading, Problem

__all__ = ["Countdown", "Problem", "STYLES", "enumerate_expressions", "restyle"]

_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}
_ATOM = 3
_OPS = ("+", "-", "*", "/")
_MAX_ANSWER_CHARS = 200  # far longer than any real answer; keeps parsing bounded
_ANSWER_CHARS = frozenset("0123456789+-*/() ")
_PROMPT_RE = re.compile(r"^\s*Make (\d+) from ((?:\d+ )*\d+)\s*$")
_AST_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}

# (value, expression with minimal parentheses, response string)
_Entry = tuple[int, str, str]


def _combine(a: int, b: int, op: str) -> int | None:
    """Countdown rule: the result must be a positive integer."""
    if op == "+":
        return a + b
    if op == "-":
        return a - b if a > b else None
    if op == "*":
        return a * b
    return a // b if a % b == 0 else None


def _wrap(expr: str, prec: int, parent_op: str, right: bool) -> str:
    """Minimal parentheses for a child of ``parent_op`` (all four operators are left-associative).

    A left child needs them only when it binds weaker than the parent. A right child needs them
    also at equal precedence under ``-`` or ``/`` (a-(b+c), a/(b*c)); under ``+`` and ``*`` it does
    not (a+(b-c) == a+b-c and a*(b/c) == a*b/c in exact arithmetic).
    """
    p = _PREC[parent_op]
    if prec < p or (right and prec == p and parent_op in "-/"):
        return f"({expr})"
    return expr


@lru_cache(maxsize=None)
def enumerate_expressions(numbers: tuple[int, ...]) -> tuple[_Entry, ...]:
    """All distinct valid responses using every number once, in a deterministic order.

    Trees are built by splitting the set of positions into an ordered (left, right) pair and
    combining every sub-result of each side with every operator; steps are the post-order list of
    operations. Cached by the numbers tuple (callers pass it sorted).
    """
    k = len(numbers)
    if k == 0:
        raise ValueError("need at least one number")
    memo: dict[int, list[tuple[int, int, str, tuple[str, ...]]]] = {}

    def sub(mask: int) -> list[tuple[int, int, str, tuple[str, ...]]]:
        got = memo.get(mask)
        if got is not None:
            return got
        out: list[tuple[int, int, str, tuple[str, ...]]] = []
        if mask & (mask - 1) == 0:  # one number
            v = numbers[mask.bit_length() - 1]
            out.append((v, _ATOM, str(v), ()))
        else:
            seen: set[tuple[str, tuple[str, ...]]] = set()
            left = (mask - 1) & mask
            while left:  # every non-empty proper submask, as the left side
                right = mask ^ left
                if right:
                    for lv, lp, le, ls in sub(left):
                        for rv, rp, re_, rs in sub(right):
                            for op in _OPS:
                                v = _combine(lv, rv, op)
                                if v is None:
                                    continue
                                expr = _wrap(le, lp, op, False) + op + _wrap(re_, rp, op, True)
                                steps = ls + rs + (f"{lv}{op}{rv}={v}",)
                                key = (expr, steps)
                                if key not in seen:
                                    seen.add(key)
                                    out.append((v, _PREC[op], expr, steps))
                left = (left - 1) & mask
        memo[mask] = out
        return out

    entries: list[_Entry] = []
    seen_resp: set[str] = set()
    for v, _p, expr, steps in sub((1 << k) - 1):
        resp = "\n".join(steps + (f"answer: {expr}",))
        if resp not in seen_resp:
            seen_resp.add(resp)
            entries.append((v, expr, resp))
    return tuple(entries)


@lru_cache(maxsize=None)
def _by_target(numbers: tuple[int, ...]) -> dict[int, tuple[str, ...]]:
    out: dict[int, list[str]] = {}
    for v, _e, resp in enumerate_expressions(numbers):
        out.setdefault(v, []).append(resp)
    return {v: tuple(r) for v, r in out.items()}


@lru_cache(maxsize=None)
def _target_pool(numbers: tuple[int, ...], max_target: int) -> tuple[int, ...]:
    """Values of all valid responses (with multiplicity) that are allowed targets."""
    return tuple(v for v, _e, _r in enumerate_expressions(numbers) if 1 <= v <= max_target)


STYLES = tuple(style.value for style in SolutionStyle)  # the names restyle accepts


def restyle(response: str, style: str) -> str:
    """A ``steps``-format response written in ``style`` (see the module docstring).

    The answer line, the only part that is graded, is unchanged.
    """
    if style not in STYLES:
        raise ValueError(f"unknown Countdown response style {style!r}; valid: {', '.join(STYLES)}")
    i = response.rfind("answer:")
    steps, answer = response[:i].splitlines(), response[i:]
    if style == "terse":
        return answer
    if style == "reverse":
        steps.reverse()
    return "\n".join(steps + [answer])


def _eval_node(node: ast.AST, consts: list[int]) -> Fraction | None:
    """Exact value of a whitelisted expression tree; collects int constants. None if not allowed."""
    if isinstance(node, ast.Constant):
        if type(node.value) is not int:
            return None
        consts.append(node.value)
        return Fraction(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _AST_OPS:
        a = _eval_node(node.left, consts)
        if a is None:
            return None
        b = _eval_node(node.right, consts)
        if b is None:
            return None
        op = _AST_OPS[type(node.op)]
        if op == "+":
            return a + b
        if op == "-":
            return a - b
        if op == "*":
            return a * b
        if b == 0:
            return None
        return a / b
    return None


def extract_answer(response: str) -> str | None:
    """Text after the last ``"answer:"``, leading whitespace skipped, up to the end of that line."""
    if not isinstance(response, str):
        return None
    i = response.rfind("answer:")
    if i < 0:
        return None
    rest = response[i + len("answer:") :].lstrip()
    j = rest.find("\n")
    return (rest if j < 0 else rest[:j]).strip()


def check_expression(expr: str, numbers: tuple[int, ...] | list[int], target: int) -> bool:
    """True iff ``expr`` uses exactly ``numbers`` (multiset) with + - * / ( ) and equals ``target``."""
    if not expr or len(expr) > _MAX_ANSWER_CHARS or not set(expr) <= _ANSWER_CHARS:
        return False
    try:
        tree = ast.parse(expr, mode="eval")
    except Exception:  # SyntaxError, nesting limits, anything else: not an expression
        return False
    consts: list[int] = []
    try:
        # Evaluation only involves a few small given numbers once the multiset check passes, but
        # the check needs the constants, so evaluate (bounded by the length cap) and then compare.
        value = _eval_node(tree.body, consts)
    except Exception:
        return False
    if value is None or Counter(consts) != Counter(numbers):
        return False
    return value == target


@dataclass(frozen=True)
class Countdown(PerResponseGrading):
    """Countdown with ``num_numbers`` numbers in [min_value, max_value], targets in [1, max_target]."""

    num_numbers: int = 3
    min_value: int = 1
    max_value: int = 20
    max_target: int = 999

    @classmethod
    def from_config(cls, cfg: CountdownTaskConfig) -> Countdown:
        return cls(num_numbers=cfg.num_numbers, min_value=cfg.min_value, max_value=cfg.max_value,
                   max_target=cfg.max_target)

    def __post_init__(self) -> None:
        if self.num_numbers < 1:
            raise ValueError("num_numbers must be >= 1")
        if not 1 <= self.min_value <= self.max_value:
            raise ValueError("need 1 <= min_value <= max_value")
        if self.max_target < 1:
            raise ValueError("max_target must be >= 1")

    # ------------------------------------------------------------------ instances
    def _problem(self, numbers: tuple[int, ...], target: int) -> Problem:
        key = tuple(sorted(numbers))
        return Problem(
            id=f"countdown-{'-'.join(map(str, key))}-{target}",
            prompt=f"Make {target} from {' '.join(map(str, numbers))}",
            answer=_by_target(key)[target][0],
            data=(tuple(numbers), target),
        )

    def _draw(self, rng: random.Random, n: int, exclude: frozenset[str] | set[str]) -> list[Problem]:
        out: list[Problem] = []
        seen: set[str] = set()
        lo, hi, k, mt = self.min_value, self.max_value, self.num_numbers, self.max_target
        attempts, max_attempts = 0, 200 * n + 100_000
        while len(out) < n:
            attempts += 1
            if attempts > max_attempts:
                raise ValueError(
                    f"could only draw {len(out)} of {n} distinct problems from {self}; the instance space is too small"
                )
            numbers = tuple(rng.randint(lo, hi) for _ in range(k))
            key = tuple(sorted(numbers))
            pool = _target_pool(key, mt)
            if not pool:
                continue
            target = pool[rng.randrange(len(pool))]
            pid = f"countdown-{'-'.join(map(str, key))}-{target}"
            if pid in seen or pid in exclude:
                continue
            seen.add(pid)
            out.append(self._problem(numbers, target))
        return out

    def sample_problems(self, n: int, seed: int, exclude: frozenset[str] | set[str] = frozenset()) -> list[Problem]:
        """``n`` distinct problems (by id), none in ``exclude``; deterministic for ``seed``."""
        return self._draw(random.Random(seed), n, exclude)

    def split(self, n_train: int, n_eval: int, seed: int) -> tuple[list[Problem], list[Problem]]:
        """(train, eval), disjoint by id: eval is drawn first and excluded from training."""
        eval_set = self._draw(random.Random(f"countdown-eval-{seed}"), n_eval, frozenset())
        eval_ids = {p.id for p in eval_set}
        train = self._draw(random.Random(f"countdown-train-{seed}"), n_train, eval_ids)
        return train, eval_set

    # ------------------------------------------------------------------ grading
    def _numbers_target(self, problem: Problem) -> tuple[tuple[int, ...], int] | None:
        data = problem.data
        if len(data) == 2 and isinstance(data[1], int) and isinstance(data[0], tuple):
            return tuple(data[0]), data[1]
        m = _PROMPT_RE.match(problem.prompt)
        if m is None:
            return None
        return tuple(int(x) for x in m.group(2).split()), int(m.group(1))

    def solutions(self, problem: Problem) -> list[str]:
        """Every distinct valid response string for ``problem`` (deterministic order)."""
        nt = self._numbers_target(problem)
        if nt is None:
            return []
        numbers, target = nt
        return list(_by_target(tuple(sorted(numbers))).get(target, ()))

    def extract(self, response: str) -> str | None:
        """The final answer the grader reads (None: no answer found); used for maj@k."""
        return extract_answer(response)

    def score(self, problem: Problem, response: str) -> float:
        """1.0 iff the final answer is a valid expression of the numbers equal to the target."""
        try:
            nt = self._numbers_target(problem)
            if nt is None:
                return 0.0
            expr = extract_answer(response)
            if expr is None:
                return 0.0
            return 1.0 if check_expression(expr, nt[0], nt[1]) else 0.0
        except Exception:
            return 0.0

    # ------------------------------------------------------------------ text
    def domain_corpus(self, n: int, seed: int) -> list[tuple[str, str]]:
        """``n`` (user, response) arithmetic exercises in the task's alphabet and step format.

        A random valid expression over ``num_numbers`` random numbers (uniform over the distinct
        responses of the drawn multiset): user ``"Compute 12*(7-3)"``, response
        ``"7-3=4\\n12*4=48\\nanswer: 48"`` (the value, not an expression). Deterministic for seed.
        """
        rng = random.Random(f"countdown-domain-{seed}")
        lo, hi, k = self.min_value, self.max_value, self.num_numbers
        out: list[tuple[str, str]] = []
        for _ in range(n):
            key = tuple(sorted(rng.randint(lo, hi) for _ in range(k)))
            entries = enumerate_expressions(key)
            v, expr, resp = entries[rng.randrange(len(entries))]
            steps = resp[: resp.rfind("answer:")]
            out.append((f"Compute {expr}", f"{steps}answer: {v}"))
        return out

    def alphabet(self) -> str:
        """Every character that can appear in prompts, responses and the domain corpus (sorted)."""
        chars = set("0123456789+-*/()=: \n")
        chars |= set("Make from ") | set("Compute ") | set("answer:")
        return "".join(sorted(chars))
