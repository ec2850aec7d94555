"""Errors that stop a run with a short message (no traceback).

- `NonFiniteError`: a nan / inf in SFT or RL (raised by pear_exp.train.loop.FiniteGuard).
- `SourceUnavailable`: a hub id that can be neither found in the local cache nor fetched, named
  by its config key with the override to a local copy (checked before a run writes anything by
  pear_exp.preflight, and around every from_pretrained by `fetching`).
- `DataError`: bad offline data, naming the row.

`python -m pear_exp` prints a `RunStopped` as `error: <message>` and exits with status 1.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path


class RunStopped(RuntimeError):
    """A run that cannot go on; the message says why and what to do."""


class NonFiniteError(RunStopped):
    """A nan or inf in a loss, gradient norm or weight (pear_exp.train.loop.FiniteGuard)."""


class DataError(ValueError):
    """Bad offline data: raised before any training step, naming the row and the problem."""


# ----------------------------------------------------------------------------- hub sources
@dataclass(frozen=True)
class Missing:
    key: str | None  # the config key that names the source (None: not found in the config)
    source: str  # hub id
    reason: str


# Where a local copy goes, per key: the override's value and what it must hold.
CHECKPOINT = "checkpoint directories with config.json, tokenizer, weights"
PROBLEMS = "JSONL files with problem and answer fields"
LOCAL_COPY = {
    "model.path": ("/path/to/{name}", CHECKPOINT),
    "teacher.path": ("/path/to/{name}", CHECKPOINT),
    "task.train_set": ("/path/to/train.jsonl", PROBLEMS),
    "task.eval_set": ("/path/to/eval.jsonl", PROBLEMS),
    "behavior.dataset": ("/path/to/data.jsonl", "a JSONL file with prompt and response fields"),
}


class SourceUnavailable(RunStopped):
    def __init__(self, missing: list[Missing]):
        self.missing = missing
        lines = ["could not fetch from the Hugging Face hub:"]
        lines += [f"  {m.key}={m.source}: {m.reason}" if m.key else f"  {m.source}: {m.reason}"
                  for m in missing]
        keyed = [m for m in missing if m.key in LOCAL_COPY]
        if keyed:
            kinds = dict.fromkeys(LOCAL_COPY[m.key][1] for m in keyed)
            lines.append(f"Point them at local copies ({'; '.join(kinds)}) by adding:")
            lines.append("  " + " ".join(
                f"{m.key}=" + LOCAL_COPY[m.key][0].format(name=m.source.rsplit("/", 1)[-1])
                for m in keyed))
        super().__init__("\n".join(lines))

    def __reduce__(self):  # pickled whole (a sweep job in another process, a broadcast)
        return SourceUnavailable, (self.missing,)

    def naming_keys(self, cfg) -> "SourceUnavailable":
        """The same error with each source's config key(s) found in `cfg` (a load deep in a stage
        knows the hub id, not which key named it)."""
        values = hub_keys(cfg)
        named = []
        for m in self.missing:
            keys = [k for k, v in values.items() if v == m.source] if m.key is None else [m.key]
            named += [Missing(k, m.source, m.reason) for k in keys] or [m]
        return SourceUnavailable(named)


def hub_keys(cfg) -> dict[str, str | None]:
    """The config keys that can name a hub id, and their values (the task's sets: math tasks)."""
    return {"model.path": cfg.model.path, "teacher.path": cfg.teacher.path,
            "task.train_set": getattr(cfg.task, "train_set", None),
            "task.eval_set": getattr(cfg.task, "eval_set", None),
            "behavior.dataset": cfg.behavior.dataset}


@contextlib.contextmanager
def fetching(source: str):
    """Around a from_pretrained of `source`: when it is not a local path, an OSError (not in the
    cache and no connection, no such repository, gated, a file missing) becomes
    SourceUnavailable."""
    try:
        yield
    except OSError as err:
        if Path(source).expanduser().exists():
            raise
        raise SourceUnavailable([Missing(None, source, first_line(err))]) from err


def first_line(err: BaseException, limit: int = 200) -> str:
    text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."
