"""Shared plumbing of the data tools: video discovery, the worker pool, atomic outputs,
argument errors and the end-of-run summary."""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

VIDEO_EXTS = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".flv",
              ".wmv", ".3gp", ".ogv", ".ts")

T = TypeVar("T")
R = TypeVar("R")


class UsageError(Exception):
    """A bad argument: reported as one line on stderr with exit status 2."""


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def add_workers_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=default_workers(), metavar="N",
                        help="worker processes (default: min(8, cpu count) = %(default)s; "
                             "0 or 1 = run in this process)")


def run_main(prog: str, body: Callable[[], int]) -> int:
    """Run a tool's body, turning UsageError into `prog: error: ...` and exit status 2."""
    try:
        return body()
    except UsageError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTS and not path.name.startswith(".")


def find_videos(root: Path) -> list[Path]:
    """Video files under ``root`` (recursive, sorted, hidden/temporary files skipped)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / f for f in filenames if is_video(Path(f)))
    return sorted(found)


def require_dir(path: str | os.PathLike, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{what} {str(p)!r} does not exist")
    if not p.is_dir():
        raise UsageError(f"{what} {str(p)!r} is not a directory")
    return p


def _init_worker() -> None:
    # One thread per worker: parallelism comes from processes.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch = sys.modules.get("torch")  # only if the parent already paid for importing it
    if torch is not None:
        torch.set_num_threads(1)


def pool_map(fn: Callable[[T], R], items: Sequence[T], workers: int) -> Iterator[R]:
    """Yield ``fn(item)`` for every item, in completion order, using ``workers`` processes.

    ``fn`` must be a module-level function and must not raise for an ordinary bad input
    (return a failure result instead).  ``workers`` <= 1 runs in this process.
    """
    if workers <= 1 or len(items) <= 1:
        for item in items:
            yield fn(item)
        return
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    ctx = mp.get_context(method)
    workers = min(workers, len(items))
    chunk = max(1, min(16, len(items) // (workers * 8)))
    with ctx.Pool(workers, initializer=_init_worker) as pool:
        yield from pool.imap_unordered(fn, items, chunksize=chunk)


def progress(iterable: Iterable[T], total: int, desc: str) -> Iterable[T]:
    """A tqdm bar on a terminal, else a plain line every 5% of the videos on stderr (stdout
    keeps the tools' results parseable); snvideo.progress."""
    from snvideo.progress import progress as lines_or_bar

    return lines_or_bar(iterable, total=total, desc=desc, unit="video",
                        every=max(1, total // 20), file=sys.stderr)


def tmp_name(path: Path) -> Path:
    """Temporary sibling of ``path`` for atomic writes: hidden, same suffix, and the same
    name on every run, so a re-run overwrites what a killed run left instead of piling up."""
    return path.with_name(f".{path.stem}.partial{path.suffix}")


def atomic_write_text(path: Path, text: str) -> None:
    from snvideo.atomic import atomic_write_text as write

    write(path, text, tmp=tmp_name(path))


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``final`` only if the block succeeds, so an
    existing ``final`` always is a finished output."""
    tmp = final.with_name(f".{final.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class Summary:
    done: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)

    def add(self, status: str, name: str = "", reason: str = "") -> None:
        if status == "done":
            self.done += 1
        elif status == "skipped":
            self.skipped += 1
        else:
            self.failed.append((name, reason))

    def print(self, prog: str, extra: str = "") -> None:
        for name, reason in self.failed[:20]:
            print(f"FAILED {name}: {reason}", file=sys.stderr)
        if len(self.failed) > 20:
            print(f"... and {len(self.failed) - 20} more failures", file=sys.stderr)
        line = f"{prog}: done {self.done}, skipped {self.skipped}, failed {len(self.failed)}"
        print(line + (f" {extra}" if extra else ""))


def one_line(exc: BaseException) -> str:
    """Exception as a single line (type and message)."""
    msg = " ".join(str(exc).split())
    name = type(exc).__name__
    return f"{name}: {msg}" if msg else name


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> Any:
    return parser.parse_args(None if argv is None else list(argv))
