"""Writing results so that a killed or concurrent job never leaves half of one.

Everything the framework writes to last (checkpoints, cached models and data, stage outputs) is
built under a temporary name beside its destination and renamed into place: a rename within one
file system is atomic, so a reader sees the whole thing or nothing. A stage directory counts as
finished when its DONE marker exists.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_dir(path: Path, replace: bool = False) -> Iterator[Path]:
    """A temporary directory beside `path` to fill; renamed to `path` when the block ends without
    an error (removed otherwise). When `path` exists already: `replace` removes it first (a
    newer checkpoint of the same step), else the copy found there is kept (another job built the
    same thing first) and ours is dropped."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".tmp-{path.name}-"))
    try:
        yield tmp
        if replace:
            shutil.rmtree(path, ignore_errors=True)
        try:
            os.rename(tmp, path)
        except OSError:  # a non-empty directory is there: another job's identical result
            if replace or not path.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write a file whole: a temporary file in the same directory, then os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def done(stage_dir: Path) -> bool:
    return (stage_dir / "DONE").exists()


def mark_done(stage_dir: Path) -> None:
    (stage_dir / "DONE").write_text(time.strftime("%Y-%m-%d %H:%M:%S\n"))
