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

    Two fast paths skip the worker: answers equal up to whitespace, and two plain integers
    (compared with ``int``). An extracted answer longer than :data:`MAX_ANSWER_CHARS` characters is
    "wrong" without parsing (no real answer is that long; it bounds the work a degenerate policy can
    cause), and so is one with unbalanced braces (possible only from the phrase fallback; it would
    break out of the ``\\boxed{}`` wrapper).

Time bound
    math-verify runs in persistent worker processes (``python -c`` children, started once and
    reused; start-up, about half a second, is paid on first use, or ahead with :func:`warm_up`).
    ``grade`` / ``classify`` use one worker, ``grade_many`` / ``classify_many`` up to ``workers``
    (default min(4, CPU count)) in parallel. Each check gets ``timeout`` seconds from the moment a
    ready worker receives it; past that the worker is killed (SIGKILL, so even a C-level big-integer
    computation such as ``10^{10^{10^{10}}}`` stops), the check is "timeout" (0.0) and a
    replacement starts in the background (other workers carry on meanwhile; with a single worker
    the next check waits for the replacement's start-up). math-verify's own ``signal.alarm``
    timeouts are disabled (they cannot interrupt C code and cancel each other when nested). Each
    worker limits its address space to :data:`WORKER_MEMORY_BYTES` and sets a CPU-time fuse per
    check (``RLIMIT_CPU``, 30 s or 4 x timeout beyond its usage so far), so a worker orphaned
    while stuck in C code (the caller was killed) still ends. Child processes rather than
    ``multiprocessing``: nothing depends on the start method or on the caller's ``__main__`` being
    import-safe, and a fork of the caller (DataLoader workers) starts its own pool. The pool is
    shared by all threads (calls are serialised by a lock) and closed at exit.

    ``classify`` / ``grade`` never raise for any response or answer and return within ``timeout``
    plus milliseconds once the pool is warm (measured: about 2 ms a single warm check, 3-5 ms a
    check in a batch of 500 on 2 loaded CPU cores, microseconds on the fast paths). The exceptions
    are programming errors (``grade_many`` with lists of different lengths: ValueError) and a
    broken environment: if a worker cannot start at all (math-verify missing) ``RuntimeError`` is
    raised rather than scoring everything 0.

Known limits
    Inequality answers are not matched with interval golds (``-2 \\le x \\le 7`` is wrong for
    gold ``x \\in [-2,7]``; ``[-2,7]`` is right). Partial lists are wrong (``1`` for ``1,-2``).
"""

from __future__ import annotations

import atexit
import json
import os
import random
import re
import selectors
import subprocess
import sys
import threading
import time
import unicodedata
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from pear_exp.tasks.base import Problem

__all__ = [
    "INSTRUCTION",
    "MAX_ANSWER_CHARS",
    "SHIPPED_SETS",
    "MathTask",
    "Problem",
    "classify",
    "classify_many",
    "equivalent_many",
    "extract_answer",
    "grade",
    "grade_many",
    "load_problems",
    "normalize_text",
    "OUTCOMES",
    "warm_up",
]

INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
DATA_DIR = Path(__file__).resolve().parent / "data"
SHIPPED_SETS = {"aime2024": "aime2024.jsonl", "aime2025": "aime2025.jsonl", "math500": "math500.jsonl"}
TEXT_FIELDS = ("problem", "question", "prompt")
ANSWER_FIELDS = ("answer",)
SOLUTION_FIELDS = ("solution",)
ID_FIELDS = ("id", "unique_id", "problem_idx")
OUTCOMES = ("correct", "wrong", "no_answer", "timeout")

MAX_ANSWER_CHARS = 1000
DEFAULT_TIMEOUT = 5.0
WORKER_MEMORY_BYTES = 4 << 30
_STARTUP_TIMEOUT = 120.0  # seconds for a fresh worker to import math-verify (slow, loaded machines)
_DEFAULT_WORKERS = max(1, min(4, os.cpu_count() or 1))


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


def _last_box(text: str) -> str | None:
    """Content of the complete box that closes last (see module doc), or None. Linear time."""
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
        ans = _last_box(response)
        if ans is None:
            ans = _answer_phrase(response)
        return None if ans is None else _clean(ans)
    except Exception:  # never raise on model output
        return None


# ====================================================================== worker pool
# The worker is a separate interpreter running this source: it imports only math-verify (not this
# package), reads JSON requests {"k": key, "g": gold, "p": extracted answer, "t": timeout} a line
# on stdin and answers {"k": key, "r": "correct" | "wrong"} on stdout (first {"ready": true}).
_WORKER_SRC = r'''
import json, os, sys

def main():
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # stray prints must not corrupt the protocol

    def send(obj):
        out.write((json.dumps(obj) + "\n").encode())

    try:
        import logging
        logging.disable(logging.CRITICAL)
        from math_verify import parse, verify

        def P(s):
            return parse("\\boxed{" + s + "}", parsing_timeout=None)

        for a, b in (("1", "033"), ("\\frac{1}{2}", "0.5"), ("(1,2]", "x=1")):
            verify(P(a), P(b), timeout_seconds=None)  # pay lazy imports now, not in a timed check
        import resource
        limit = int(sys.argv[1])
        if limit > 0:
            soft, hard = resource.getrlimit(resource.RLIMIT_AS)
            if hard == resource.RLIM_INFINITY or hard > limit:
                resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
        cpu_hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    except BaseException as e:
        send({"error": type(e).__name__ + ": " + str(e)})
        return
    send({"ready": True})
    cache = {}
    stdin = sys.stdin.buffer
    while True:
        line = stdin.readline()
        if not line:
            return
        req = json.loads(line)
        try:
            # CPU-time fuse: the parent kills a slow check after its timeout; should the parent be
            # gone, the kernel still ends a check stuck in C code (SIGXCPU) a little later.
            used = resource.getrusage(resource.RUSAGE_SELF)
            soft = int(used.ru_utime + used.ru_stime + max(30.0, 4 * req["t"])) + 1
            if cpu_hard != resource.RLIM_INFINITY:
                soft = min(soft, cpu_hard)
            resource.setrlimit(resource.RLIMIT_CPU, (soft, cpu_hard))
        except BaseException:
            pass
        try:
            g = cache.get(req["g"])
            if g is None:
                g = P(req["g"])
                if len(cache) >= 4096:
                    cache.clear()
                cache[req["g"]] = g
            r = "correct" if verify(g, P(req["p"]), timeout_seconds=None) else "wrong"
        except BaseException:
            r = "wrong"
        send({"k": req["k"], "r": r})

main()
'''


class _WorkerStartError(RuntimeError):
    pass


class _Worker:
    __slots__ = ("proc", "fd", "buf", "ready", "job", "deadline", "born")

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-P", "-c", _WORKER_SRC, str(WORKER_MEMORY_BYTES)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            bufsize=0, close_fds=True,
        )
        self.fd = self.proc.stdout.fileno()
        self.buf = b""
        self.ready = False
        self.job: tuple[int, int] | None = None  # (request key, index in the batch)
        self.deadline = 0.0
        self.born = time.monotonic()


class _Pool:
    def __init__(self) -> None:
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.workers: list[_Worker] = []
        self.sel = selectors.DefaultSelector()
        self.seq = 0

    # ---------------------------------------------------------------- processes
    def _spawn(self) -> None:
        try:
            w = _Worker()
        except OSError as e:
            raise _WorkerStartError(f"cannot start a math grading worker ({sys.executable}): {e}") from e
        self.sel.register(w.fd, selectors.EVENT_READ, w)
        self.workers.append(w)

    def _kill(self, w: _Worker) -> None:
        try:
            self.sel.unregister(w.fd)
        except (KeyError, ValueError):
            pass
        if w in self.workers:
            self.workers.remove(w)
        try:
            w.proc.kill()
        except OSError:
            pass
        try:
            w.proc.wait(timeout=2)
        except Exception:
            pass
        for f in (w.proc.stdin, w.proc.stdout):
            try:
                f.close()
            except Exception:
                pass

    def close(self) -> None:
        for w in list(self.workers):
            self._kill(w)

    def ensure(self, n: int) -> None:
        while len(self.workers) < n:
            self._spawn()

    def wait_ready(self) -> None:
        """Block until every worker is ready (start-up errors raise)."""
        try:
            while not all(w.ready for w in self.workers):
                now = time.monotonic()
                waits = [w.born + _STARTUP_TIMEOUT - now for w in self.workers if not w.ready]
                for key, _ in self.sel.select(max(0.0, min(waits))):
                    w = key.data
                    msgs = self._read(w)
                    if msgs is None:
                        raise _WorkerStartError(
                            f"math grading worker exited during start-up ({sys.executable}); "
                            "is math-verify installed?"
                        )
                    for msg in msgs:
                        if "error" in msg:
                            raise _WorkerStartError(f"math grading worker failed to start: {msg['error']}")
                        if msg.get("ready"):
                            w.ready = True
                if any(not w.ready and time.monotonic() >= w.born + _STARTUP_TIMEOUT for w in self.workers):
                    raise _WorkerStartError(f"math grading worker not ready after {_STARTUP_TIMEOUT:.0f} s")
        except BaseException:
            self.close()
            raise

    # ---------------------------------------------------------------- running
    def _read(self, w: _Worker) -> list[dict] | None:
        """Messages now available from ``w``; None at end of file (the worker died)."""
        try:
            data = os.read(w.fd, 1 << 16)
        except OSError:
            data = b""
        if not data:
            return None
        w.buf += data
        *lines, w.buf = w.buf.split(b"\n")
        msgs = []
        for line in lines:
            try:
                msgs.append(json.loads(line))
            except ValueError:
                pass
        return msgs

    def run(self, jobs: list[tuple[str, str]], timeout: float, n_workers: int) -> list[str]:
        """Outcome ("correct" / "wrong" / "timeout") of each (gold, pred) job."""
        results: list[str | None] = [None] * len(jobs)
        pending = deque(range(len(jobs)))
        outstanding = len(jobs)
        self.ensure(min(n_workers, len(jobs)))
        try:
            while outstanding:
                now = time.monotonic()
                for w in list(self.workers):
                    if pending and w.ready and w.job is None:
                        i = pending.popleft()
                        self.seq += 1
                        req = json.dumps({"k": self.seq, "g": jobs[i][0], "p": jobs[i][1], "t": timeout}) + "\n"
                        try:
                            data = memoryview(req.encode())
                            while data:  # a blocking pipe; the idle worker is reading
                                data = data[w.proc.stdin.write(data) :]
                        except OSError:  # died while idle: retry the job on a fresh worker
                            pending.appendleft(i)
                            self._kill(w)
                            self._spawn()
                            continue
                        w.job, w.deadline = (self.seq, i), now + timeout
                waits = [w.deadline - now for w in self.workers if w.job is not None]
                waits += [w.born + _STARTUP_TIMEOUT - now for w in self.workers if not w.ready]
                wait = max(0.0, min(waits)) if waits else 0.0
                for key, _ in self.sel.select(wait):
                    w = key.data
                    msgs = self._read(w)
                    if msgs is None:  # the worker died
                        if not w.ready:
                            raise _WorkerStartError(
                                f"math grading worker exited during start-up ({sys.executable}); "
                                "is math-verify installed?"
                            )
                        if w.job is not None:
                            results[w.job[1]] = "timeout"
                            outstanding -= 1
                        self._kill(w)
                        self._spawn()
                        continue
                    for msg in msgs:
                        if "error" in msg:
                            raise _WorkerStartError(f"math grading worker failed to start: {msg['error']}")
                        if msg.get("ready"):
                            w.ready = True
                        elif w.job is not None and msg.get("k") == w.job[0]:
                            results[w.job[1]] = msg.get("r", "wrong")
                            outstanding -= 1
                            w.job = None
                now = time.monotonic()
                for w in list(self.workers):
                    if w.job is not None and now >= w.deadline:
                        results[w.job[1]] = "timeout"
                        outstanding -= 1
                        self._kill(w)
                        self._spawn()
                    elif not w.ready and now >= w.born + _STARTUP_TIMEOUT:
                        raise _WorkerStartError(
                            f"math grading worker not ready after {_STARTUP_TIMEOUT:.0f} s"
                        )
        except BaseException:
            self.close()  # unknown state (error or KeyboardInterrupt): start clean next time
            raise
        return [r if r is not None else "timeout" for r in results]


_POOL: _Pool | None = None
_POOL_GUARD = threading.Lock()


def _pool() -> _Pool:
    global _POOL
    with _POOL_GUARD:
        if _POOL is None or _POOL.pid != os.getpid():  # new, or inherited through fork: not ours
            _POOL = _Pool()
        return _POOL


@atexit.register
def _close_pool() -> None:
    pool = _POOL
    if pool is not None and pool.pid == os.getpid():
        pool.close()


def warm_up(workers: int = 1) -> None:
    """Start ``workers`` grading workers now and wait until they are ready (optional)."""
    pool = _pool()
    with pool.lock:
        pool.ensure(max(1, workers))
        pool.wait_ready()


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


def _verify_many(jobs: list[tuple[str, str]], timeout: float, workers: int | None = None) -> list[str]:
    """math-verify outcome ("correct" / "wrong" / "timeout") of each (gold, extracted answer) pair,
    without the fast paths of :func:`classify_many` (tests use it to exercise math-verify itself)."""
    if not jobs:
        return []
    pool = _pool()
    with pool.lock:
        try:
            return pool.run(jobs, timeout, max(1, workers or _DEFAULT_WORKERS))
        except _WorkerStartError:
            raise
        except Exception:  # never expected; keeps "never raises" for the callers
            return ["timeout"] * len(jobs)


def classify_many(
    responses: Sequence[str], answers: Sequence[str], timeout: float = DEFAULT_TIMEOUT,
    workers: int | None = None,
) -> list[str]:
    """Outcome of each (response, gold answer) pair: "correct", "wrong", "no_answer" or "timeout".

    Checks run in parallel on up to ``workers`` worker processes (default: min(4, CPU count)),
    each bounded by ``timeout`` seconds. Raises only for mismatched lengths (ValueError) or when
    no worker can start (RuntimeError).
    """
    if len(responses) != len(answers):
        raise ValueError(f"{len(responses)} responses but {len(answers)} answers")
    try:
        timeout = float(timeout)
    except (TypeError, ValueError):
        timeout = DEFAULT_TIMEOUT
    timeout = min(max(timeout, 0.01), 86400.0) if timeout == timeout else DEFAULT_TIMEOUT
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
    if jobs:
        for i, r in zip(where, _verify_many(jobs, timeout, workers)):
            out[i] = r
    return [r if r is not None else "wrong" for r in out]


def equivalent_many(
    pairs: Sequence[tuple[str, str]], timeout: float = DEFAULT_TIMEOUT, workers: int | None = None,
) -> list[bool]:
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
    for i, r in zip(where, _verify_many(jobs, timeout, workers)):
        out[i] = r == "correct"
    return out


def classify(response: str, answer: str, timeout: float = DEFAULT_TIMEOUT) -> str:
    """"correct", "wrong", "no_answer" (nothing extracted) or "timeout" (check exceeded ``timeout``)."""
    return classify_many([response], [answer], timeout, workers=1)[0]


def grade(response: str, answer: str, timeout: float = DEFAULT_TIMEOUT) -> float:
    """1.0 iff the response's final answer equals the gold ``answer``, else 0.0; never raises."""
    return 1.0 if classify(response, answer, timeout) == "correct" else 0.0


def grade_many(
    responses: Sequence[str], answers: Sequence[str], timeout: float = DEFAULT_TIMEOUT,
    workers: int | None = None,
) -> list[float]:
    """:func:`grade` for a batch, on the worker pool (see :func:`classify_many`)."""
    return [1.0 if r == "correct" else 0.0 for r in classify_many(responses, answers, timeout, workers)]


# ====================================================================== loading
_HUB_RE = re.compile(r"[\w.-]+/[\w.-]+(?::[\w.-]+)?(?:@[\w.\-\[\]:%+]+)?")


def _looks_like_path(source: str) -> bool:
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
        box = _last_box(text)
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
    if _looks_like_path(source):
        path = Path(source).expanduser()
        name = path.name[: -len(".jsonl")] if path.name.endswith(".jsonl") else path.stem
        return _load_file(path, name)
    if _HUB_RE.fullmatch(source):
        return _load_hub(source)
    raise ValueError(
        f"unknown math problem source {source!r}: not a shipped set ({', '.join(SHIPPED_SETS)}), "
        "not an existing file, and not a datasets hub id owner/name[:config][@split]"
    )


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

    def score(self, problem: Problem, response: str) -> float:
        """1.0 iff the response's final answer equals ``problem.answer`` (see :func:`grade`)."""
        return grade(response, problem.answer, self.timeout)

    def score_many(self, problems: Sequence[Problem], responses: Sequence[str]) -> list[float]:
        return grade_many(responses, [p.answer for p in problems], self.timeout)

    def classify(self, problem: Problem, response: str) -> str:
        """"correct", "wrong", "no_answer" or "timeout" (see :func:`classify`)."""
        return classify(response, problem.answer, self.timeout)

    def classify_many(self, problems: Sequence[Problem], responses: Sequence[str]) -> list[str]:
        return classify_many(responses, [p.answer for p in problems], self.timeout)

    def equivalent_many(self, pairs: Sequence[tuple[str, str]]) -> list[bool]:
        """Which pairs of extracted answers are equal (see :func:`equivalent_many`); for maj@k."""
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
