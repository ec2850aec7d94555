"""Tests for the Countdown tiny world: generator, solution enumeration, printer, scorer, splits."""

from __future__ import annotations

import itertools
import random
import re
import time
from collections import Counter
from fractions import Fraction

import pytest

from pear_exp.config import CountdownTaskConfig
from pear_exp.tasks import make_task
from pear_exp.tasks.base import Problem
from pear_exp.tasks.countdown import Countdown, check_expression, enumerate_expressions, extract_answer

CD = Countdown()
OPS = "+-*/"


def make(numbers, target) -> Problem:
    return Problem(
        id=f"countdown-{'-'.join(map(str, sorted(numbers)))}-{target}",
        prompt=f"Make {target} from {' '.join(map(str, numbers))}",
        answer="",
        data=(tuple(numbers), target),
    )


def frac_eval(expr: str) -> Fraction:
    """Independent exact evaluation: wrap every integer literal in Fraction and use Python's eval."""
    return eval(re.sub(r"\d+", lambda m: f"F({m.group()})", expr), {"F": Fraction, "__builtins__": {}})


def brute_force(numbers) -> Counter:
    """Independent enumeration for 3 numbers: fully parenthesised strings, Countdown rules.

    Returns a Counter {value: number of distinct valid fully-parenthesised expressions}.
    """
    exprs: dict[str, Fraction] = {}
    for a, b, c in itertools.permutations(numbers):
        for o1, o2 in itertools.product(OPS, repeat=2):
            for inner, outer in (
                (f"({a}{o1}{b})", f"(({a}{o1}{b}){o2}{c})"),
                (f"({b}{o2}{c})", f"({a}{o1}({b}{o2}{c}))"),
            ):
                try:
                    x = frac_eval(inner)
                    v = frac_eval(outer)
                except ZeroDivisionError:
                    continue
                if x > 0 and x.denominator == 1 and v > 0 and v.denominator == 1:
                    exprs[outer] = v
    return Counter(int(v) for v in exprs.values())


# ----------------------------------------------------------------------------- hand-checked cases


def test_hand_checked_3_7_12():
    p = make((3, 7, 12), 15)
    sols = CD.solutions(p)
    assert sols == [
        "12-7=5\n5*3=15\nanswer: (12-7)*3",
        "12-7=5\n3*5=15\nanswer: 3*(12-7)",
    ]
    two = CD.solutions(make((12, 3, 7), 2))  # drawn order does not matter for solutions
    assert set(two) == {
        "12-7=5\n5-3=2\nanswer: 12-7-3",
        "12-3=9\n9-7=2\nanswer: 12-3-7",
        "7+3=10\n12-10=2\nanswer: 12-(7+3)",
        "3+7=10\n12-10=2\nanswer: 12-(3+7)",
    }
    three = CD.solutions(make((3, 7, 12), 3))
    assert "7-3=4\n12/4=3\nanswer: 12/(7-3)" in three
    assert "7-3=4\n12*4=48\nanswer: 12*(7-3)" in CD.solutions(make((3, 7, 12), 48))
    assert "7*3=21\n21-12=9\nanswer: 7*3-12" in CD.solutions(make((3, 7, 12), 9))
    # a+(b-c) needs no parentheses; the inner step still comes first
    assert "7-3=4\n12+4=16\nanswer: 12+7-3" in CD.solutions(make((3, 7, 12), 16))
    assert CD.solutions(make((3, 7, 12), 14)) == []  # unreachable
    assert len(enumerate_expressions((3, 7, 12))) == 83


@pytest.mark.parametrize("numbers", [(3, 7, 12), (1, 2, 3), (2, 4, 8), (5, 13, 19), (6, 10, 15)])
def test_count_matches_brute_force_distinct_numbers(numbers):
    got = Counter(v for v, _e, _r in enumerate_expressions(tuple(sorted(numbers))))
    assert got == brute_force(numbers)


def test_values_match_brute_force_random_multisets():
    rng = random.Random(5)
    for _ in range(60):
        numbers = tuple(sorted(rng.randint(1, 20) for _ in range(3)))
        got = {v for v, _e, _r in enumerate_expressions(numbers)}
        assert got == set(brute_force(numbers)), numbers
        if len(set(numbers)) == 3:  # no coincidences possible: exact counts agree too
            assert Counter(v for v, _e, _r in enumerate_expressions(numbers)) == brute_force(numbers)


# ----------------------------------------------------------------------------- printer / format


def _paren_pairs(s: str):
    stack, pairs = [], []
    for i, ch in enumerate(s):
        if ch == "(":
            stack.append(i)
        elif ch == ")":
            pairs.append((stack.pop(), i))
    return pairs


def _generic(expr: str, vals) -> Fraction:
    it = iter(vals)
    return eval(re.sub(r"\d+", lambda m: f"F({next(it)})", expr), {"F": Fraction, "__builtins__": {}})


def test_printer_correct_and_minimal():
    rng = random.Random(11)
    seen = 0
    for _ in range(150):
        numbers = tuple(sorted(rng.randint(1, 20) for _ in range(3)))
        for value, expr, resp in enumerate_expressions(numbers):
            seen += 1
            lines = resp.split("\n")
            assert len(lines) == 3 and lines[2] == f"answer: {expr}"
            assert int(lines[1].split("=")[1]) == value  # last step is the value
            assert frac_eval(expr) == value  # printed string evaluates to the tree value
            assert abs(eval(expr) - value) < 1e-9
            assert sorted(map(int, re.findall(r"\d+", expr))) == list(numbers)
            # steps are true equations with positive integer results
            for step in lines[:2]:
                lhs, rhs = step.split("=")
                assert frac_eval(lhs) == int(rhs) > 0
            # minimal: removing any pair of parentheses changes the value for generic leaves
            gen = [rng.randint(10**6, 10**9) for _ in range(3)]
            for i, j in _paren_pairs(expr):
                stripped = expr[:i] + expr[i + 1 : j] + expr[j + 1 :]
                assert _generic(stripped, gen) != _generic(expr, gen), (expr, stripped)
    assert seen > 5000


def test_four_numbers_general():
    cd4 = Countdown(num_numbers=4, max_value=9)
    entries = enumerate_expressions((1, 2, 3, 4))
    assert len(entries) > 100
    for value, expr, resp in entries:
        assert resp.count("\n") == 3 and frac_eval(expr) == value
    probs = cd4.sample_problems(50, 0)
    for p in probs:
        assert len(p.data[0]) == 4
        for s in cd4.solutions(p):
            assert cd4.score(p, s) == 1.0


# ----------------------------------------------------------------------------- scorer


def test_every_solution_scores_one():
    for p in CD.sample_problems(200, 3):
        sols = CD.solutions(p)
        assert sols and p.answer in sols
        for s in sols:
            assert CD.score(p, s) == 1.0


def test_scorer_accepts_alternatives():
    p = make((3, 7, 12), 15)
    for resp in [
        "answer: (12-7)*3",  # no steps: only the final answer is graded
        "whatever\nanswer: 3 * (12 - 7)",
        "answer: ((12-7))*3",
        "answer: (12-(7))*3\n",
        "answer: 3*(12-7)\nmore text",
        "answer: 1\nanswer: (12-7)*3",  # the last answer counts
        "12-7=5\n5*3=15\nanswer:   (12-7)*3  ",
    ]:
        assert CD.score(p, resp) == 1.0, resp
    # non-integer intermediate: not a solution under Countdown rules, but the value is right
    q = make((3, 4, 6), 8)
    assert not any(s.endswith("answer: 4/3*6") for s in CD.solutions(q))
    assert CD.score(q, "answer: 4/3*6") == 1.0
    assert CD.score(q, "answer: 6*(4/3)") == 1.0
    # prompt-only problem (no data): numbers and target are parsed from the prompt
    r = Problem(id="x", prompt="Make 15 from 3 7 12", answer="")
    assert CD.score(r, "answer: 3*(12-7)") == 1.0
    assert CD.solutions(r) == CD.solutions(p)


def test_batched_grading_and_config():
    p = make((3, 7, 12), 15)
    responses = ["answer: (12-7)*3", "answer: 12+7-3", "no answer here:", "answer: 12-7"]
    assert CD.score_many([p] * 4, responses) == [CD.score(p, r) for r in responses] == [1.0, 0.0, 0.0, 0.0]
    assert CD.classify_many([p] * 4, responses) == ["correct", "wrong", "no_answer", "wrong"]
    with pytest.raises(ValueError):
        CD.classify_many([p], responses)
    cfg = CountdownTaskConfig(num_numbers=4, max_value=9, max_target=50)
    assert Countdown.from_config(cfg) == make_task(cfg, "unused") == Countdown(4, 1, 9, 50)


@pytest.mark.parametrize(
    "resp",
    [
        "answer: 12+7-3",  # 16, wrong target
        "answer: (12-12)*3",  # 12 reused, 7 missing
        "answer: (12-7)*3*3",  # 3 reused
        "answer: 12+3",  # 7 missing
        "answer: (12-7)*3*1",  # extra number
        "answer: (12-7)*3+0",  # extra number
        "answer: 15",  # no numbers
        "answer: 12/7*3",  # non-integer value
        "answer: -(7-12)*3",  # unary minus
        "answer: +(12-7)*3",  # unary plus
        "answer: (12-7)*3.0",  # float literal
        "answer: (12-7)*0x3",  # other literal syntax
        "answer: (12-7)*3=15",
        "answer: (12-7)**3",
        "answer: (12-7)//1*3",
        "answer: (12-7)%4*3",
        "answer: [12-7]*3",
        "answer: __import__('os')",
        "answer:",
        "answer:\n",
        "(12-7)*3",  # no answer marker
        "Answer: (12-7)*3",
        "",
        "answer: (12-7)*3 garbage",
        "answer: ((12-7)*3",
        "answer: \x00",
        "answer: １２-7",  # non-ASCII digits
    ],
)
def test_scorer_rejects(resp):
    assert CD.score(make((3, 7, 12), 15), resp) == 0.0


def test_scorer_rejects_special_cases():
    # unary minus reaching a valid value: -7-3+12 == 2 uses each number once
    assert CD.score(make((3, 7, 12), 2), "answer: -7-3+12") == 0.0
    assert CD.score(make((3, 7, 12), 2), "answer: 12-7-3") == 1.0
    # exponent with the right numbers and value
    assert CD.score(make((1, 2, 3), 9), "answer: 3**2*1") == 0.0
    # division by zero never raises
    assert CD.score(make((3, 3, 7), 21), "answer: 7/(3-3)") == 0.0
    assert CD.score(make((3, 3, 7), 21), "answer: 7*3/(3-3)") == 0.0
    assert CD.score(make((3, 3, 7), 21), "answer: 7*3*3/3") == 0.0  # 3 reused
    # non-string responses and broken problems give 0.0
    assert CD.score(make((3, 7, 12), 15), None) == 0.0  # type: ignore[arg-type]
    assert CD.score(Problem(id="x", prompt="nonsense", answer=""), "answer: 1") == 0.0
    assert CD.solutions(Problem(id="x", prompt="nonsense", answer="")) == []


def test_scorer_fast_on_huge_and_nested_strings():
    p = make((3, 7, 12), 15)
    t0 = time.perf_counter()
    for resp in [
        "answer: " + "(" * 1_000_000,
        "answer: " + "1+" * 500_000 + "1",
        "x" * 2_000_000 + "answer: 3*(12-7)" + "y" * 1_000_000,
        "answer: " + "(" * 99 + "3*(12-7)" + ")" * 99,
        "answer: " + "(" * 150 + "3" + ")" * 150,
        "answer: 3" + "*1" * 90,
        "answer: 99999999999999999999*99999999999999999999*(12-7)",
        "answer:" * 200_000,
    ]:
        assert CD.score(p, resp) == 0.0
    assert time.perf_counter() - t0 < 1.0
    assert CD.score(p, "answer: " + "(" * 50 + "3*(12-7)" + ")" * 50) == 1.0


def test_extract_answer_and_check_expression():
    assert extract_answer("a\nanswer: 1+2\nanswer:  3*4 \nrest") == "3*4"
    assert extract_answer("no marker") is None
    assert check_expression("3*(12-7)", (12, 7, 3), 15)
    assert not check_expression("3*(12-7)", (12, 7, 3), 16)


# ----------------------------------------------------------------------------- sampling / splits


def test_sample_problems_properties_and_determinism():
    a = CD.sample_problems(500, 7)
    assert a == CD.sample_problems(500, 7)
    assert a != CD.sample_problems(500, 8)
    assert len({p.id for p in a}) == 500
    unsorted = 0
    for p in a:
        numbers, target = p.data
        assert len(numbers) == 3 and all(1 <= x <= 20 for x in numbers)
        assert 1 <= target <= 999
        assert p.prompt == f"Make {target} from {' '.join(map(str, numbers))}"
        assert p.id == f"countdown-{'-'.join(map(str, sorted(numbers)))}-{target}"
        unsorted += list(numbers) != sorted(numbers)
        hash(p)
    assert unsorted > 100  # numbers are shown in drawn order, not sorted


def test_sample_problems_exclude():
    first = CD.sample_problems(300, 1)
    ex = {p.id for p in first[:150]}
    again = CD.sample_problems(300, 1, exclude=ex)
    assert not ex & {p.id for p in again}
    assert len({p.id for p in again}) == 300


def test_split_disjoint_and_deterministic():
    train, ev = CD.split(3000, 300, seed=0)
    assert len(train) == 3000 and len(ev) == 300
    assert not {p.id for p in train} & {p.id for p in ev}
    assert (train, ev) == CD.split(3000, 300, seed=0)
    assert CD.split(3000, 300, seed=1)[1] != ev


def test_too_many_problems_raises():
    tiny = Countdown(num_numbers=2, min_value=1, max_value=2)
    with pytest.raises(ValueError):
        tiny.sample_problems(100, 0)


def test_sampling_is_fast():
    t0 = time.perf_counter()
    CD.sample_problems(20000, 123)
    assert time.perf_counter() - t0 < 10.0


# ----------------------------------------------------------------------------- text


def test_domain_corpus():
    corpus = CD.domain_corpus(300, 0)
    assert corpus == CD.domain_corpus(300, 0)
    assert corpus != CD.domain_corpus(300, 1)
    for user, resp in corpus:
        assert user.startswith("Compute ")
        expr = user[len("Compute ") :]
        lines = resp.split("\n")
        assert len(lines) == 3 and lines[2].startswith("answer: ")
        assert frac_eval(expr) == int(lines[2][len("answer: ") :])
        assert len(re.findall(r"\d+", expr)) == 3


def test_alphabet_covers_everything():
    alpha = set(CD.alphabet())
    assert len(CD.alphabet()) == len(alpha)
    train, ev = CD.split(500, 100, seed=2)
    for p in train + ev:
        assert set(p.prompt) <= alpha
        for s in CD.solutions(p):
            assert set(s) <= alpha
    for user, resp in CD.domain_corpus(500, 2):
        assert set(user) <= alpha and set(resp) <= alpha
