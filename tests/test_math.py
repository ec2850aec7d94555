"""Math task: loading, answer extraction, equivalence, time bounds, split.

Expected outcomes were decided by hand (see pear_exp/tasks/math_grading.py for the documented
rules). Grading workers are warmed once per module; timing checks use a 1 s bound and assert
wall < timeout + 2 s.
"""

import hashlib
import json
import multiprocessing.spawn
import sys
import threading
import time
import types

import pytest

from pear_exp.config import MathTaskConfig
from pear_exp.tasks import make_task
from pear_exp.tasks import math as M
from pear_exp.tasks import math_grading as G
from pear_exp.tasks.base import Problem
from pear_exp.tasks.math import DATA_DIR, INSTRUCTION, SHIPPED_SETS, MathTask, load_problems
from pear_exp.tasks.math_grading import (
    MAX_ANSWER_CHARS,
    classify,
    classify_many,
    equivalent_many,
    extract_answer,
    grade,
    grade_many,
    warm_up,
)

T = 1.0  # per-check bound in the pathological tests


@pytest.fixture(scope="module", autouse=True)
def _workers():
    warm_up()
    yield


def _timed(fn, *args):
    warm_up()  # a replacement for a killed worker must be ready before the clock starts
    t0 = time.monotonic()
    out = fn(*args)
    return out, time.monotonic() - t0


# ====================================================================== shipped data
SHA256 = {
    "aime2024": "4042165bac1ec7ea6394584314de55f241748c9751df7769b931f2eb26898f13",
    "aime2025": "9cc0f6be85f6286bc666743695771cda1b317a609a0c9b6319839eb2b912adc7",
    "math500": "35dc41080a3680858b27fa7e0533d2d547825316fc5dafe5d316f4ccc5a06132",
}


@pytest.mark.parametrize("name,rows", [("aime2024", 30), ("aime2025", 30), ("math500", 500)])
def test_shipped_set_loads_unchanged(name, rows):
    path = DATA_DIR / SHIPPED_SETS[name]
    raw = path.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == SHA256[name]  # copies kept as shipped
    lines = [line for line in raw.decode().splitlines() if line.strip()]
    assert len(lines) == rows
    problems = load_problems(name)
    assert len(problems) == rows
    assert len({p.id for p in problems}) == rows
    for p, line in zip(problems, lines):
        row = json.loads(line)
        assert p.prompt == row["problem"].strip() + "\n" + INSTRUCTION
        assert p.answer == row["answer"] and p.answer.strip()
        assert ("source", name) in p.data
    assert (DATA_DIR / "PROVENANCE.md").read_text().count(SHA256[name]) == 1


def test_shipped_ids_and_examples():
    a24, a25, m500 = (load_problems(n) for n in ("aime2024", "aime2025", "math500"))
    ids = [p.id for p in a24 + a25 + m500]
    assert len(set(ids)) == 560
    by_id = {p.id: p for p in a24 + a25 + m500}
    assert by_id["aime2024/2024-II-4"].answer == "33"  # shipped without the leading zero of 033
    assert by_id["aime2025/2025-I-1"].answer == "70"
    assert a25[-1].id == "aime2025/2025-II-15"
    assert m500[0].id == "math500/test/precalculus/807.json"
    assert m500[0].answer == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert INSTRUCTION == "Please reason step by step, and put your final answer within \\boxed{}."


def test_every_gold_answer_grades_against_itself():
    problems = [p for n in SHIPPED_SETS for p in load_problems(n)]
    assert len(problems) == 560
    responses = [f"So the answer is \\boxed{{{p.answer}}}." for p in problems]
    golds = [p.answer for p in problems]
    assert grade_many(responses, golds, timeout=30) == [1.0] * 560
    # The same through math-verify itself (the string / integer fast paths bypassed).
    got = G._verify_many([(g, extract_answer(r)) for g, r in zip(golds, responses)], timeout=30)
    failed = [(p.id, p.answer, o) for p, o in zip(problems, got) if o != "correct"]
    assert failed == []


def test_math500_solution_boxes_equal_answers_and_no_false_positives():
    rows = [json.loads(line) for line in (DATA_DIR / "math500.jsonl").read_text().splitlines()]
    extracted = [extract_answer(r["solution"]) for r in rows]
    assert extracted == [r["answer"] for r in rows]  # last \boxed{} of every solution, nested braces
    # Each solution against the NEXT problem's gold: only genuinely equal values may match.
    golds = [r["answer"] for r in rows]
    shifted = golds[1:] + golds[:1]
    out = G._verify_many(list(zip(shifted, extracted)), timeout=30)
    matches = sorted({(g, e) for g, e, o in zip(shifted, extracted, out) if o == "correct"})
    assert {(g, e) for g, e in matches if g != e} <= {("x=5", "5")}  # "x=5" == "5" by design


# ====================================================================== extraction
@pytest.mark.parametrize("response,expected", [
    ("\\boxed{5}", "5"),
    ("first \\boxed{1}, then \\boxed{2}", "2"),  # last box wins
    ("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{\\sqrt{2}}{2}"),  # nested braces
    ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),  # escaped braces are not grouping
    ("$\\boxed 5$", "5"),  # brace-less TeX form
    ("\\boxed -3.", "-3"),
    ("\\boxed\\pi", "\\pi"),
    ("\\fbox{x+1}", "x+1"),
    ("\\boxed{\\boxed{7}}", "7"),
    ("\\boxed{12.}", "12"),
    ("\\boxed{3} and later \\boxed{4", "3"),  # an unclosed (truncated) box is ignored
    ("\\boxed{}", None),
    ("The answer is $\\frac{1}{2}$.", "\\frac{1}{2}"),  # phrase fallback, math span
    ("**Answer:** 42", "42"),
    ("Final Answer: The final answer is $3$. I hope it is correct.", "3"),
    ("answer: 1\nmore text\nthe answer is 2.", "2"),
    ("Final answer:\n\n$42$\n", "42"),
    ("I computed 7 in the end.", None),  # no last-number fallback
    ("", None),
])
def test_extract_answer(response, expected):
    assert extract_answer(response) == expected


def test_extraction_is_linear_on_huge_inputs():
    for text in ("\\boxed{" * 150_000, "{" * 1_000_000, "\\boxed{" * 100_000 + "1" + "}" * 100_000,
                 "answer: " * 130_000, "x" * 1_000_000, "\\boxed" * 170_000, "\\boxed " * 140_000,
                 "answer: " + "\\(" * 400_000, "answer: " + "$" * 1_000_000,
                 ("\\boxed{ " + " " * 100) * 10_000 + "}" * 10_000):
        t0 = time.monotonic()
        extract_answer(text)
        assert time.monotonic() - t0 < 2.0


# ====================================================================== equivalence
@pytest.mark.parametrize("gold,response,expected", [
    ("33", "\\boxed{033}", "correct"),  # AIME leading zeros
    ("033", "\\boxed{33}", "correct"),
    ("\\frac{1}{2}", "\\boxed{\\dfrac{1}{2}}", "correct"),
    ("\\frac{1}{2}", "\\boxed{1/2}", "correct"),
    ("\\frac{1}{2}", "\\boxed{0.5}", "correct"),  # decimal == fraction (math-verify, 6 decimals)
    ("0.5", "\\boxed{\\frac12}", "correct"),
    ("1.25", "\\boxed{\\frac{5}{4}}", "correct"),
    ("3.21", "\\boxed{3.210}", "correct"),
    ("\\pi", "\\boxed{3.14}", "wrong"),
    ("5", "\\boxed{5\\text{ cm}}", "correct"),  # units dropped
    ("5\\text{ cm}", "\\boxed{5}", "correct"),
    ("90^\\circ", "\\boxed{90}", "correct"),
    ("\\$18.90", "\\boxed{18.9}", "correct"),
    ("45", "\\boxed{45\\%}", "correct"),  # percent signs removed ...
    ("0.45", "\\boxed{45\\%}", "wrong"),  # ... so 45% is 45, not 0.45
    ("1000", "\\boxed{1,000}", "correct"),
    ("10,\\!080", "\\boxed{10080}", "correct"),
    ("\\frac{\\sqrt{2}}{2}", "\\boxed{\\frac{1}{\\sqrt{2}}}", "correct"),
    ("\\frac{\\sqrt{2}}{2}", "\\boxed{\\frac{\\sqrt{3}}{2}}", "wrong"),
    ("2", "first \\boxed{1}, then \\boxed{2}", "correct"),
    ("1", "first \\boxed{1}, then \\boxed{2}", "wrong"),
    ("3, 5, 7", "\\boxed{7, 5, 3}", "correct"),
    ("1 \\pm \\sqrt{19}", "\\boxed{1+\\sqrt{19}, 1-\\sqrt{19}}", "correct"),
    ("(3,4]", "\\boxed{(3,4)}", "wrong"),
    ("(-\\infty, 0]", "\\boxed{(-\\infty,0]}", "correct"),
    ("\\text{(C)}", "\\boxed{C}", "correct"),
    ("\\text{(C)}", "\\boxed{B}", "wrong"),
    ("\\text{east}", "\\boxed{\\text{west}}", "wrong"),
    ("x=5", "\\boxed{5}", "correct"),
    ("x^3+3x-6", "\\boxed{3x + x^3 - 6}", "correct"),
    ("x^3+3x-6", "\\boxed{x^3 + 3x + 6}", "wrong"),
    ("6 - 5i", "\\boxed{6+5i}", "wrong"),
    ("\\begin{pmatrix} -1 \\\\ 2 \\end{pmatrix}", "\\boxed{\\begin{pmatrix}-1\\\\2\\end{pmatrix}}", "correct"),
    ("\\begin{pmatrix} -1 \\\\ 2 \\end{pmatrix}", "\\boxed{\\begin{pmatrix} -1 \\\\ 3 \\end{pmatrix}}", "wrong"),
    ("5", "$\\boxed 5$", "correct"),
    ("5", "\\fbox{5}", "correct"),
    ("\\frac12", "The answer is $\\frac{1}{2}$.", "correct"),
    ("42", "**Answer:** 42", "correct"),
    ("2", "\\boxed{3}", "wrong"),
    ("2", "The answer is 1}\\boxed{2", "wrong"),  # unbalanced braces cannot escape the wrapper
    ("2", "\\boxed{1 \\text{ or } 2}", "wrong"),  # hedging is not rewarded
    ("1", "\\boxed{1 \\text{ or } 2}", "wrong"),
    ("7", "I think it is 7.", "no_answer"),
    ("7", "", "no_answer"),
    ("7", "\\boxed{}", "no_answer"),
    ("7", "\\boxed{7", "no_answer"),
])
def test_equivalence(gold, response, expected):
    assert classify(response, gold, timeout=10) == expected
    assert grade(response, gold, timeout=10) == (1.0 if expected == "correct" else 0.0)


def test_equivalent_answers_for_majority_votes():
    # two extracted answers, both model output: the grader's notion of equal (for maj@k)
    pairs = [("\\frac12", "\\dfrac{1}{2}"), ("\\dfrac{1}{2}", "0.5"), ("0.5", "\\frac12"),
             ("033", "33"), ("33", "34"), ("\\frac12", "0.4"), ("45\\%", "45"),
             ("\\frac{1}{2", "\\frac{1}{2}"), ("1" * (MAX_ANSWER_CHARS + 1), "1")]
    assert equivalent_many(pairs, timeout=10) == [True, True, True, True, False, False, True,
                                                  False, False]
    assert MathTask(timeout=10).equivalent_many([("x=5", "5")]) == [True]
    assert equivalent_many([]) == []


def test_never_raises_on_odd_inputs():
    assert classify(None, "1") == "no_answer"
    assert classify(12, "1") == "no_answer"
    assert classify("\\boxed{33}", 33) == "correct"  # a numeric gold is used as its string
    assert classify("\\boxed{\ud800}", "1") == "wrong"  # a lone surrogate survives the pipe
    assert grade("\\boxed{1}", "1", timeout="soon") == 1.0  # a bad timeout falls back to the default
    assert grade("\\boxed{" + "9" * 5000 + "}", "9" * 5000) == 0.0  # over MAX_ANSWER_CHARS
    assert MAX_ANSWER_CHARS < 5000
    with pytest.raises(ValueError):
        grade_many(["a"], [])


# ====================================================================== time bound
PATHOLOGICAL = {
    "huge exponent": "\\boxed{10^{10^{10^{10}}}}",
    "tower of two": "The answer is $2^{2^{100}}$",
    "5000 nested fracs": "\\boxed{" + "\\frac{" * 5000 + "1" + "}{2}" * 5000 + "}",
    "80 nested fracs": "\\boxed{" + "\\frac{" * 80 + "1" + "}{2}" * 80 + "}",
    "5000 nested braces": "\\boxed{" + "{" * 5000 + "1" + "}" * 5000 + "}",
    "1 MB of text": "blah " * 200_000 + "\\boxed{2}",
    "1 MB box": "\\boxed{" + "1+" * 500_000 + "1}",
    "1 MB of braces": "{" * 1_000_000,
}


@pytest.mark.parametrize("name", list(PATHOLOGICAL))
def test_pathological_answers_finish_within_the_bound(name):
    score, wall = _timed(grade, PATHOLOGICAL[name], "1", T)
    assert score == 0.0
    assert wall < T + 2


def test_huge_exponent_times_out_and_the_worker_is_replaced():
    out, wall = _timed(classify, PATHOLOGICAL["huge exponent"], "1", T)
    assert out == "timeout" and wall < T + 2
    out, wall = _timed(classify, "\\boxed{\\frac{2}{4}}", "\\frac12", T)
    assert out == "correct" and wall < T + 2


def test_batch_with_pathological_items_never_hangs():
    responses = [PATHOLOGICAL["huge exponent"], "\\boxed{\\dfrac{3}{6}}", "\\boxed{4}", "no box",
                 PATHOLOGICAL["1 MB of text"], "\\boxed{\\sqrt{4}}"]
    golds = ["1", "\\frac12", "5", "1", "1", "2"]
    out, wall = _timed(classify_many, responses, golds, T)
    assert out == ["timeout", "correct", "wrong", "no_answer", "wrong", "correct"]
    assert wall < T + 2


def test_grading_from_threads():
    errors = []

    def work(k):
        for i in range(10):
            if grade(f"\\boxed{{\\frac{{{i + k}}}{{{2 * (i + k)}}}}}", "0.5") != 1.0:
                errors.append((k, i))

    threads = [threading.Thread(target=work, args=(k,)) for k in (1, 2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []


def test_broken_environment_raises_instead_of_scoring_zero(monkeypatch, tmp_path):
    (tmp_path / "math_verify.py").write_text("raise ImportError('a broken math-verify')\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # spawned workers start with the caller's sys.path
    monkeypatch.setattr(G, "_POOL", None)  # private pools; the shared one is left alone
    with pytest.raises(RuntimeError, match="start-up"):
        grade("\\boxed{\\frac{2}{4}}", "0.5")
    monkeypatch.setattr(multiprocessing.spawn, "_python_exe", multiprocessing.spawn.get_executable())
    multiprocessing.spawn.set_executable(str(tmp_path / "missing"))  # undone by monkeypatch
    with pytest.raises(RuntimeError, match="cannot start"):
        grade("\\boxed{\\frac{2}{4}}", "0.5")
    assert grade("\\boxed{1}", "1") == 1.0  # fast path: no worker needed


# ====================================================================== loading custom files
def _write(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_load_custom_fields(tmp_path):
    f = _write(tmp_path / "custom.jsonl", [
        {"question": "Q one", "solution": "So it is $\\boxed{\\frac{1}{2}}$."},
        "",
        {"prompt": "Q two", "answer": 17},
        {"question": "Q three", "answer": "She sold 48/2 = 24 clips.\n#### 72"},
        {"problem": "Q four", "answer": "The answer is \\boxed{5}", "id": "abc"},
    ])
    ps = load_problems(str(f))
    assert [p.answer for p in ps] == ["\\frac{1}{2}", "17", "72", "5"]
    assert [p.id for p in ps] == ["custom/0", "custom/1", "custom/2", "custom/abc"]
    assert ps[0].prompt == "Q one\n" + INSTRUCTION
    j = tmp_path / "list.json"
    j.write_text(json.dumps([{"problem": "A", "answer": "1"}, {"problem": "B", "answer": "2"}]))
    assert [p.id for p in load_problems(str(j))] == ["list/0", "list/1"]


@pytest.mark.parametrize("rows,message", [
    ([{"problem": "a", "answer": "1"}, {"problem": "b", "answer": "  "}], r"line 2: field 'answer' is empty"),
    ([{"problem": "a", "answer": "1"}, "", {"problem": "b"}], r"line 3: no answer field"),
    ([{"answer": "1"}], r"line 1: no problem text field"),
    ([{"problem": "", "answer": "1"}], r"line 1: field 'problem' must be a non-empty string"),
    ([{"problem": "a", "answer": None}], r"line 1: field 'answer' is empty"),
    ([{"problem": "a", "solution": "no box here"}], r"line 1: field 'solution' has no \\boxed"),
    (['{"problem": "a", "answer": "1"', {"problem": "b", "answer": "2"}], r"line 1: invalid JSON"),
    ([[1, 2]], r"line 1: expected a JSON object"),
    ([{"id": 1, "problem": "a", "answer": "1"}, {"id": 1, "problem": "b", "answer": "2"}], r"duplicate id"),
    ([""], r"no problems"),
])
def test_bad_rows_raise_naming_file_and_row(tmp_path, rows, message):
    f = _write(tmp_path / "bad.jsonl", rows)
    with pytest.raises(ValueError, match=message) as e:
        load_problems(str(f))
    assert str(f) in str(e.value)


def test_missing_paths_and_unknown_names(tmp_path):
    missing = tmp_path / "nowhere" / "probs.jsonl"
    with pytest.raises(FileNotFoundError, match="probs.jsonl"):
        load_problems(str(missing))
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_problems("missing.jsonl")
    with pytest.raises(ValueError, match="aime2024, aime2025, math500"):
        load_problems("math50")
    with pytest.raises(ValueError):
        load_problems("")


def test_hub_ids_go_through_datasets(monkeypatch):
    calls = []
    rows = [{"problem_idx": 1, "problem": "P1", "answer": 7}, {"problem_idx": 2, "problem": "P2", "answer": 8}]

    def load_dataset(repo, config=None, split=None):
        calls.append((repo, config, split))
        if repo == "owner/broken":
            raise ConnectionError("offline")
        return rows if split else {"train": rows, "test": rows}

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    ps = load_problems("owner/set:cfg@train")
    assert calls[-1] == ("owner/set", "cfg", "train")
    assert [(p.id, p.answer) for p in ps] == [("owner/set:cfg@train/1", "7"), ("owner/set:cfg@train/2", "8")]
    with pytest.raises(ValueError, match=r"splits \['train', 'test'\]"):
        load_problems("owner/set")
    with pytest.raises(ValueError, match="owner/broken"):
        load_problems("owner/broken@test")


# ====================================================================== task
def test_split_eval_first_n_and_no_train_without_train_set():
    m500 = load_problems("math500")
    train, ev = MathTask().split(100, 10, seed=0)
    assert train == [] and [p.id for p in ev] == [p.id for p in m500[:10]]
    assert len(MathTask().split(0, 0, 0)[1]) == 500
    assert len(MathTask(eval_set="aime2025").split(0, 999, 0)[1]) == 30


def test_split_removes_eval_problems_from_train(tmp_path):
    m500 = load_problems("math500")
    texts = [json.loads(line)["problem"] for line in (DATA_DIR / "math500.jsonl").read_text().splitlines()]
    rows = [{"problem": "  " + texts[i].replace(" ", "  ") + "\n", "answer": "0"} for i in (0, 3, 9)]  # in eval
    rows.append({"problem": texts[50], "answer": "0"})  # in MATH-500 but not in the first 10
    rows += [{"problem": f"Fresh problem {k}: compute {k}+{k}.", "answer": str(2 * k)} for k in range(20)]
    rows.append({"problem": "FRESH problem 0:  compute 0+0.", "answer": "0"})  # duplicate of a fresh one
    f = _write(tmp_path / "train.jsonl", rows)
    task = MathTask(eval_set="math500", train_set=str(f))
    train, ev = task.split(0, 10, seed=1)
    assert [p.id for p in ev] == [p.id for p in m500[:10]]
    assert len(train) == 21  # 3 eval problems and 1 duplicate removed
    train_texts = {M.normalize_text(p.prompt) for p in train}
    assert not train_texts & {M.normalize_text(p.prompt) for p in ev}
    assert M.normalize_text(m500[50].prompt) in train_texts
    assert len(task.split(0, 0, seed=1)[0]) == 20  # all of MATH-500 in eval: its row 50 goes too
    a, b, c = task.split(5, 10, seed=1)[0], task.split(5, 10, seed=1)[0], task.split(5, 10, seed=2)[0]
    assert len(a) == 5 and a == b and a != c
    # sample_problems: never any problem of the whole eval set, nor an excluded id
    fresh = {f"train/{k}" for k in range(4, 24)}
    assert {p.id for p in task.sample_problems(20, seed=0)} == fresh
    assert {p.id for p in task.sample_problems(19, seed=0, exclude={"train/4"})} == fresh - {"train/4"}
    with pytest.raises(ValueError, match="has 19 available"):
        task.sample_problems(20, seed=0, exclude={"train/4"})


def test_task_score_and_classify():
    task = MathTask(eval_set="aime2024")
    p = task.split(0, 30, 0)[1][0]
    assert isinstance(p, Problem) and p.answer == "204"
    assert task.score(p, "... so it takes \\boxed{204} minutes") == 1.0
    assert task.score(p, "\\boxed{205}") == 0.0
    assert task.classify_many([p], ["I give up"]) == ["no_answer"]
    assert task.score_many([p, p], ["\\boxed{0204}", "\\boxed{2}"]) == [1.0, 0.0]
    assert task.solutions(p) and task.score(p, task.solutions(p)[0]) == 1.0
    with pytest.raises(ValueError):
        task.score_many([p], [])
    cfg = MathTaskConfig(eval_set="aime2024", train_set="math500", grade_timeout=7.0)
    assert make_task(cfg, "unused") == MathTask(eval_set="aime2024", train_set="math500", timeout=7.0)
