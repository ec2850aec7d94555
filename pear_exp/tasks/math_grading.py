"""Grading math answers: the final answer of a response, compared with the gold by math-verify in a
pool of worker processes, each check bounded in time.

Answer extraction (``extract_answer``)
    1. The content of the LAST complete ``\\boxed{...}`` or ``\\fbox{...}`` (the one that closes
       last, so an outer box wins over a box nested in it), braces matched with a stack; ``\\{`` and
       ``\\}`` are literal braces and do not count. The brace-less TeX form ``\\boxed 5`` takes the
       next token (a control word like ``\\pi`` or a run of characters up to whitespace, ``$``, a
       brace or a backslash). Empty boxes are ignored.
    2. Only when there is no box: the text after the last ``answer is`` / ``answer:`` phrase
       (``The final answer is $x$``, ``**Answer:** x``; case-insensitive), up to the end of that
       line (or of the next non-empty line when nothing follows on it); if it holds ``$...$`` (or ``\\(...\\)``) the first such math span is taken.
    3. Otherwise ``None`` ("no_answer"). There is deliberately NO last-number fallback: it turns
       unanswered responses into accidental matches and hides "no answer" in the statistics.

    A trailing ``.`` ``,`` ``;`` is dropped. Extraction is linear in the response length (a 1 MB
    response takes well under a second) and runs in the calling process.

Equivalence (``classify`` / ``grade``)
    Decided by math-verify (``parse`` then ``verify(gold, pred)``, gold first), with both answers
    wrapped as ``\\boxed{answer}``. Consequences (all covered by tests):

    * integers compare by value: ``"033"`` == ``33`` (AIME leading zeros), ``1,000`` == ``1000``;
    * ``\\frac{1}{2}`` == ``\\dfrac12`` == ``1/2`` == ``0.5`` (decimals equal fractions up to
      math-verify's rounding to 6 decimals; ``3.14`` is NOT ``\\pi``, ``3.14159265`` is);
    * units and text around a number are dropped: ``5\\text{ cm}`` == ``5``, ``90^\\circ`` == 90,
      ``\\$18.90`` == ``18.9``; percent signs are removed before comparing (``45\\%`` == ``45``,
      and so ``45\\%`` != ``0.45``);
    * ``x=5`` == ``5``; unordered lists/sets ``3, 5, 7`` == ``7,5,3``; intervals keep their
      brackets (``(3,4]`` != ``(3,4)``); multiple-choice ``\\text{(C)}`` == ``C``.

    ``equivalent_many(pairs)`` applies the same rules to two extracted answers (the first as
    gold), so that maj@k counts ``\\frac12``, ``\\dfrac{1}{2}`` and ``0.5`` as one answer.

    Two fast paths skip the workers: answers equal up to whitespace, and two plain integers
    (compared with ``int``). An extracted answer longer than :data:`MAX_ANSWER_CHARS` characters is
    "wrong" without parsing (no real answer is that long; it bounds the work a degenerate policy can
    cause), and so is one with unbalanced braces (possible only from the phrase fallback; it would
    break out of the ``\\boxed{}`` wrapper).

Time bound
    math-verify runs in a pebble ``ProcessPool`` of :data:`GRADING_WORKERS` persistent processes
    (min(4, CPU count)), started on first use or ahead with :func:`warm_up`; each imports
    math-verify once (the pool's initializer, about a second). Each check gets ``timeout`` seconds
    from the moment a worker takes it; past that pebble ends the worker, the check is "timeout"
    (0.0) and a replacement starts while the other workers carry on. The initializer restores
    SIGTERM's default action, so the worker ends at once even inside a C-level big-integer
    computation such as ``10^{10^{10^{10}}}`` (pebble's own handler is Python code, which cannot run
    until that computation returns; pebble would SIGKILL it only 3 s later). math-verify's own
    ``signal.alarm`` timeouts are disabled (they cannot interrupt C code and cancel each other when
    nested). Each worker limits its address space to :data:`WORKER_MEMORY_BYTES` and sets a
    CPU-time fuse per check (``RLIMIT_CPU``, 30 s or 4 x timeout beyond its usage so far), so a
    worker orphaned while stuck in C code (the caller was killed) still ends.

    Workers are spawned, fresh interpreters rather than forks: the caller may hold threads or CUDA
    state that a fork copies in a broken state. Like every spawned multiprocessing child they
    re-import the caller's main script, so a script that grades keeps its work under
    ``if __name__ == "__main__":`` (``python -m`` entry points are not re-imported). A fork of the
    caller (DataLoader workers) starts its own pool. The pool is shared by all threads; pebble ends
    its workers at exit.

    ``classify`` / ``grade`` never raise for any response or answer and return within ``timeout``
    plus about 0.1 s (pebble's polling) once the pool is warm. The exceptions are programming
    errors (``grade_many`` with lists of different lengths: ValueError) and a broken environment:
    if the workers cannot start (math-verify missing) ``RuntimeError`` is raised rather than
    scoring everything 0.

Known limits
    Inequality answers are not matched with interval golds (``-2 \\le x \\le 7`` is wrong for
    gold ``x \\in [-2,7]``; ``[-2,7]`` is right). Partial lists are wrong (``1`` for ``1,-2``).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.spawn
import os
import re
import resource
import signal
import threading
from concurrent.futures import Future, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Sequence

from pebble import ProcessPool

__all__ = [
    "DEFAULT_TIMEOUT",
    "GRADING_WORKERS",
    "MAX_ANSWER_CHARS",
    "OUTCOMES",
    "WORKER_MEMORY_BYTES",
    "classify",
    "classify_many",
    "equivalent_many",
    "extract_answer",
    "grade",
    "grade_many",
    "last_box",
    "warm_up",
]

OUTCOMES = ("correct", "wrong", "no_answer", "timeout")
MAX_ANSWER_CHARS = 1000
DEFAULT_TIMEOUT = 5.0
WORKER_MEMORY_BYTES = 4 << 30
GRADING_WORKERS = max(1, min(4, os.cpu_count() or 1))
_STARTUP_TIMEOUT = 120.0  # seconds warm_up waits for the workers (slow, loaded machines)


# ====================================================================== extraction
_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])[ \t]*")
_BRACE_TOKEN_RE = re.compile(r"\\.|[{}]", re.S)
_BARE_TOKEN_RE = re.compile(r"\\[A-Za-z]+|[^\s$\\{}]+")  # a control word or a plain run
_NONSPACE_RE = re.compile(r"\S")
_PHRASE_RE = re.compile(r"\banswer(?:\*\*)?\s*(?:is\b\s*:?|:)(?:\*\*)?[ \t]*", re.I)
_MATH_DELIMS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))
_TRAILING_PUNCT = ".,;"


def _clean(ans: str) -> str | None:
    ans = ans.strip()
    while ans and ans[-1] in _TRAILING_PUNCT and not ans.endswith(".."):
        ans = ans[:-1].rstrip()
    return ans or None


def last_box(text: str) -> str | None:
    """Content of the complete box that closes last (see the module doc), or None. Linear time."""
    starts = list(_BOX_RE.finditer(text))
    if not starts:
        return None
    closes: dict[int, int] = {}  # every "{" from the first box on -> its "}", in one pass
    brace_starts = [m.end() for m in starts if m.end() < len(text) and text[m.end()] == "{"]
    if brace_starts:
        stack: list[int] = []
        for tok in _BRACE_TOKEN_RE.finditer(text, brace_starts[0]):
            t = tok.group()
            if t == "{":
                stack.append(tok.start())
            elif t == "}" and stack:
                closes[stack.pop()] = tok.start()
    best_end, best = -1, None  # best: (start, end) of the content in text
    for m in starts:
        i = m.end()
        if i >= len(text) or text[i] == "}":
            continue
        if text[i] == "{":
            j = closes.get(i)
            if j is None:  # never closed (e.g. a truncated response)
                continue
            span, end = (i + 1, j), j
        else:  # \boxed 5: one token
            tok = _BARE_TOKEN_RE.match(text, i)
            if tok is None:
                continue
            span, end = (tok.start(), tok.end()), tok.end()
        if end > best_end and _NONSPACE_RE.search(text, span[0], span[1]):
            best_end, best = end, span
    if best is None:
        return None
    a, b = best
    while True:  # \boxed{\boxed{5}}: unwrap while the content is exactly one box
        while a < b and text[a].isspace():
            a += 1
        m = _BOX_RE.match(text, a, b)
        if m is None or m.end() >= b or text[m.end()] != "{":
            break
        j = closes.get(m.end())
        if j is None or _NONSPACE_RE.search(text, j + 1, b) or not _NONSPACE_RE.search(text, m.end() + 1, j):
            break
        a, b = m.end() + 1, j
    return text[a:b]


def _answer_phrase(text: str) -> str | None:
    last = None
    for last in _PHRASE_RE.finditer(text):
        pass
    if last is None:
        return None
    rest = text[last.end() :].lstrip()  # "Answer:\n\n42": the next non-empty line
    nl = rest.find("\n")
    line = rest if nl < 0 else rest[:nl]
    line = line[: 4 * MAX_ANSWER_CHARS]
    best = None  # the first complete math span of the line, found with str.find (linear)
    for left, right in _MATH_DELIMS:
        i = line.find(left)
        if i < 0 or (best is not None and i >= best[0]):
            continue
        j = line.find(right, i + len(left))
        if j > i + len(left):
            best = (i, line[i + len(left) : j])
    if best is not None:
        line = best[1]
    return line.strip().strip("*").strip()


def extract_answer(response: str) -> str | None:
    """The final answer of a response: last ``\\boxed{}`` / ``\\fbox{}``, else the last
    ``answer is`` / ``answer:`` phrase, else None. See the module doc for the exact rules."""
    if not isinstance(response, str) or not response:
        return None
    try:
        ans = last_box(response)
        if ans is None:
            ans = _answer_phrase(response)
        return None if ans is None else _clean(ans)
    except Exception:  # never raise on model output
        return None


# ====================================================================== in a worker
_math_verify: Any = None  # (parse, verify), imported by the initializer
_golds: dict[str, Any] = {}  # parsed gold answers: a batch repeats each gold n times
_ready: Any = None  # the pool's barrier (see warm_up)


def _parse(answer: str) -> Any:
    return _math_verify[0]("\\boxed{" + answer + "}", parsing_timeout=None)


def _start_worker(memory_bytes: int, ready: Any) -> None:
    """The pool's initializer: import math-verify once, then limit the worker."""
    global _math_verify, _ready
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a timed-out check ends at once (module doc)
    from math_verify import parse, verify

    logging.disable(logging.CRITICAL)  # after the import, so that its failure still shows
    _math_verify, _ready = (parse, verify), ready
    for a, b in (("1", "033"), ("\\frac{1}{2}", "0.5"), ("(1,2]", "x=1")):
        verify(_parse(a), _parse(b), timeout_seconds=None)  # pay lazy imports now, not in a timed check
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    if memory_bytes > 0 and (hard == resource.RLIM_INFINITY or hard > memory_bytes):
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, hard))
    resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))


def _check(gold: str, pred: str, timeout: float) -> str:
    """In a worker: "correct" or "wrong" (an overrun is the parent's "timeout")."""
    # CPU-time fuse: the parent ends a slow check after its timeout; should the parent be gone,
    # the kernel still ends a check stuck in C code (SIGXCPU) a little later.
    used = resource.getrusage(resource.RUSAGE_SELF)
    hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    soft = int(used.ru_utime + used.ru_stime + max(30.0, 4 * timeout)) + 1
    with contextlib.suppress(OSError, ValueError):  # a fuse the system refuses: check without it
        resource.setrlimit(resource.RLIMIT_CPU, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))
    try:
        g = _golds.get(gold)
        if g is None:
            if len(_golds) >= 4096:
                _golds.clear()
            g = _golds[gold] = _parse(gold)
        return "correct" if _math_verify[1](g, _parse(pred), timeout_seconds=None) else "wrong"
    except Exception:  # math-verify's errors on odd input, MemoryError at the address-space limit
        return "wrong"


def _wait_ready() -> None:
    _ready.wait(_STARTUP_TIMEOUT)  # returns once every worker runs one: all have started


# ====================================================================== the pool
_POOL: tuple[ProcessPool, int] | None = None  # (pool, the pid that made it)
_POOL_GUARD = threading.Lock()


def _pool() -> ProcessPool:
    global _POOL
    with _POOL_GUARD:
        # Replace a pool that is missing, inherited through a fork (its threads did not come
        # along) or broken (a worker died while none was checking).
        if _POOL is None or _POOL[1] != os.getpid() or not _POOL[0].active:
            ctx = multiprocessing.get_context("spawn")
            _POOL = ProcessPool(GRADING_WORKERS, initializer=_start_worker, context=ctx,
                                initargs=(WORKER_MEMORY_BYTES, ctx.Barrier(GRADING_WORKERS))), os.getpid()
        return _POOL[0]


def _discard(pool: ProcessPool) -> None:
    global _POOL
    with _POOL_GUARD:
        if _POOL is not None and _POOL[0] is pool:
            _POOL = None
    pool.stop()
    pool.join()


def _run(fn: Callable[..., Any], argss: list[tuple], timeout: float | None) -> list[Future]:
    """The finished futures of ``fn(*args)`` for each args on the pool, each bounded by ``timeout``.

    A pool that breaks (its workers die outside any check) is replaced and the batch run again
    once; RuntimeError if that pool breaks too, or a worker cannot be started at all."""
    for _ in range(2):
        pool, futures = _pool(), []
        try:
            futures = [pool.schedule(fn, args, timeout=timeout) for args in argss]
            pending = set(futures)
            while pending:
                _, pending = wait(pending, timeout=1.0)
                if pending and not pool.active:  # broken before it took our tasks
                    raise BrokenProcessPool("the math grading pool stopped")
            broken = [f.exception() for f in futures if isinstance(f.exception(), BrokenProcessPool)]
            if not broken:
                return futures
            error = broken[0]
        except RuntimeError as e:  # BrokenProcessPool; pebble's own when it broke just before
            error = e
        except BaseException:  # KeyboardInterrupt: end what is still running
            for f in futures:
                f.cancel()
            raise
        _discard(pool)
        if isinstance(error.__cause__, OSError):  # fork failed (a bad executable fails in the child)
            break
    exe = os.fsdecode(multiprocessing.spawn.get_executable())
    if isinstance(error.__cause__, OSError):
        raise RuntimeError(f"cannot start a math grading worker ({exe}): {error.__cause__}") from error
    raise RuntimeError(f"cannot start the math grading workers ({exe}): they exited during start-up "
                       "(their error is printed above); is math-verify installed, and does the calling "
                       "script keep its work under if __name__ == '__main__'?") from error


def warm_up() -> None:
    """Start the grading workers now and wait until every one is ready (optional)."""
    if any(f.exception() is not None for f in _run(_wait_ready, [()] * GRADING_WORKERS, None)):
        _discard(_pool())  # its barrier timed out and stays broken
        raise RuntimeError(f"math grading workers not ready after {_STARTUP_TIMEOUT:.0f} s")


def _verify_many(jobs: list[tuple[str, str]], timeout: float) -> list[str]:
    """math-verify outcome ("correct" / "wrong" / "timeout") of each (gold, extracted answer) pair,
    without the fast paths of :func:`classify_many` (tests use it to exercise math-verify itself)."""
    if not jobs:
        return []
    # A check with no result overran its time (pebble ended its worker) or died in it (the fuse).
    return [f.result() if f.exception() is None else "timeout"
            for f in _run(_check, [(g, p, timeout) for g, p in jobs], timeout)]


# ====================================================================== grading
_WS_RE = re.compile(r"\s+")
_INT_RE = re.compile(r"[+-]?\d+")
_PERCENT_RE = re.compile(r"\\?%")


def _balanced(text: str) -> bool:
    depth = 0
    for tok in _BRACE_TOKEN_RE.finditer(text):
        t = tok.group()
        if t == "{":
            depth += 1
        elif t == "}":
            depth -= 1
            if depth < 0:
                return False
    return depth == 0


def _prepare(response: Any, answer: Any) -> tuple[str | None, str, str]:
    """(outcome decided here or None, gold, pred) for one check."""
    pred = extract_answer(response) if isinstance(response, str) else None
    if pred is None:
        return "no_answer", "", ""
    gold = answer if isinstance(answer, str) else str(answer)
    gold, pred = _PERCENT_RE.sub("", gold).strip(), _PERCENT_RE.sub("", pred).strip()
    if not pred:
        return "no_answer", "", ""
    if len(pred) > MAX_ANSWER_CHARS or not _balanced(pred):
        return "wrong", gold, pred  # too long to be an answer / would break the \boxed{} wrapper
    if _WS_RE.sub("", pred) == _WS_RE.sub("", gold):
        return "correct", gold, pred
    if len(gold) <= MAX_ANSWER_CHARS and _INT_RE.fullmatch(gold) and _INT_RE.fullmatch(pred):
        return ("correct" if int(gold) == int(pred) else "wrong"), gold, pred
    return None, gold, pred


def _timeout(value: Any) -> float:
    try:
        t = float(value)
    except (TypeError, ValueError):
        return DEFAULT_TIMEOUT
    return min(max(t, 0.01), 86400.0) if t == t else DEFAULT_TIMEOUT


def classify_many(responses: Sequence[str], answers: Sequence[str],
                  timeout: float = DEFAULT_TIMEOUT) -> list[str]:
    """Outcome of each (response, gold answer) pair: "correct", "wrong", "no_answer" or "timeout".

    Checks run in parallel on the worker pool, each bounded by ``timeout`` seconds. Raises only
    for mismatched lengths (ValueError) or when the workers cannot start (RuntimeError).
    """
    if len(responses) != len(answers):
        raise ValueError(f"{len(responses)} responses but {len(answers)} answers")
    out: list[str | None] = [None] * len(responses)
    jobs: list[tuple[str, str]] = []
    where: list[int] = []
    for i, (r, a) in enumerate(zip(responses, answers)):
        try:
            decided, gold, pred = _prepare(r, a)
        except Exception:
            decided, gold, pred = "wrong", "", ""
        if decided is None:
            jobs.append((gold, pred))
            where.append(i)
        else:
            out[i] = decided
    for i, r in zip(where, _verify_many(jobs, _timeout(timeout))):
        out[i] = r
    return [r if r is not None else "wrong" for r in out]


def equivalent_many(pairs: Sequence[tuple[str, str]], timeout: float = DEFAULT_TIMEOUT) -> list[bool]:
    """Does the grader call each pair of extracted answers equal? (maj@k groups answers with it.)

    The grading rules with the first answer as the gold: percent signs removed, equal up to
    whitespace or as plain integers without a worker, otherwise math-verify on the worker pool,
    each check bounded by ``timeout`` (a check that times out is "not equal"). Both answers are
    model output here, so the length and brace bounds apply to both.
    """
    out = [False] * len(pairs)
    jobs: list[tuple[str, str]] = []
    where: list[int] = []
    for i, (a, b) in enumerate(pairs):
        a, b = _PERCENT_RE.sub("", str(a)).strip(), _PERCENT_RE.sub("", str(b)).strip()
        if _WS_RE.sub("", a) == _WS_RE.sub("", b):
            out[i] = True
        elif any(len(x) > MAX_ANSWER_CHARS or not x or not _balanced(x) for x in (a, b)):
            pass
        elif _INT_RE.fullmatch(a) and _INT_RE.fullmatch(b):
            out[i] = int(a) == int(b)
        else:
            jobs.append((a, b))
            where.append(i)
    for i, r in zip(where, _verify_many(jobs, _timeout(timeout))):
        out[i] = r == "correct"
    return out


def grade_many(responses: Sequence[str], answers: Sequence[str],
               timeout: float = DEFAULT_TIMEOUT) -> list[float]:
    """1.0 where :func:`classify_many` says "correct", else 0.0."""
    return [1.0 if r == "correct" else 0.0 for r in classify_many(responses, answers, timeout)]


def classify(response: str, answer: str, timeout: float = DEFAULT_TIMEOUT) -> str:
    """"correct", "wrong", "no_answer" (nothing extracted) or "timeout" (check exceeded ``timeout``)."""
    return classify_many([response], [answer], timeout)[0]


def grade(response: str, answer: str, timeout: float = DEFAULT_TIMEOUT) -> float:
    """1.0 iff the response's final answer equals the gold ``answer``, else 0.0; never raises."""
    return 1.0 if classify(response, answer, timeout) == "correct" else 0.0
