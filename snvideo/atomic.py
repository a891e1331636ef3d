"""Output files that appear whole or not at all.

Everything snvideo writes for later runs to read (checkpoints, configs, results, annotation
files, generated or re-encoded videos, features) is written to a temporary name beside its
target and moved over it with os.replace, which is atomic within one filesystem: a crash
leaves the old file or the new one, never half of one. A write that fails removes its
temporary.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def atomic_output(path: str | os.PathLike, tmp: str | os.PathLike | None = None) -> Iterator[str]:
    """Yield a temporary path to write `path`'s new content to; it replaces `path` when the
    block succeeds and is removed when it raises. The default name is `PATH.tmp.PID` (what
    engine.checkpoint.remove_stale_temporaries cleans up after a killed run); pass `tmp` where
    the name matters (a writer that picks its format from the extension, a hidden name in a
    folder that is scanned for data). The parent folder is created."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = os.fspath(tmp) if tmp is not None else f"{path}.tmp.{os.getpid()}"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


def atomic_write_text(path: str | os.PathLike, text: str, tmp: str | os.PathLike | None = None) -> None:
    """Write `text` to `path` through `atomic_output` (newlines written as given)."""
    with atomic_output(path, tmp) as name, open(name, "w", newline="") as f:
        f.write(text)
