"""Progress for people and for log files: a tqdm bar when stdout is a terminal, otherwise one
plain line per interval (no carriage returns: a cluster job's log stays readable and small).

`Progress` has the part of tqdm's interface the loops use: iterate over it, `update(n)`,
`set_postfix(**values)`, `close()`. As lines it prints `desc done/total (pct) key value ...
rate unit/s ETA h:mm:ss` every `every` steps, and whenever the loop sets new values (train.py
does that once per log_interval).
"""
from __future__ import annotations

import sys
import time
from typing import Any, Iterable, Iterator


def interactive() -> bool:
    """Whether bars can be drawn: stdout is a terminal."""
    return sys.stdout.isatty()


class Progress:
    """Plain-line progress (see the module docstring)."""

    def __init__(self, iterable: Iterable | None = None, total: int | None = None,
                 initial: int = 0, desc: str = "", unit: str = "it", every: int | None = None,
                 disable: bool = False, file=None):
        self.iterable, self.desc, self.unit, self.disable = iterable, desc, unit, disable
        self.file = file  # None: stdout at the time of printing
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.n = self.start_n = initial
        self.every = every
        self.postfix: dict[str, Any] = {}
        self.start = time.monotonic()
        self._printed_at = initial

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.update(1)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.every and (self.n - self._printed_at >= self.every or self.n == self.total):
            self.print_line()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = values
        self.print_line()

    def print_line(self) -> None:
        if self.disable:
            return
        self._printed_at = self.n
        elapsed = time.monotonic() - self.start
        rate = (self.n - self.start_n) / elapsed if elapsed > 0 else 0.0
        parts = [self.desc, f"{self.n}/{self.total}" if self.total else str(self.n)]
        if self.total:
            parts.append(f"({100.0 * self.n / self.total:.0f}%)")
        parts += [f"{key} {value}" for key, value in self.postfix.items()]
        parts.append(f"{rate:.2f} {self.unit}/s")
        if self.total and rate > 0:
            parts.append(f"ETA {_clock((self.total - self.n) / rate)}")
        print(" ".join(p for p in parts if p), file=self.file or sys.stdout, flush=True)

    def close(self) -> None:
        pass


def progress(iterable: Iterable | None = None, total: int | None = None, initial: int = 0,
             desc: str = "", unit: str = "it", every: int | None = None, disable: bool = False,
             leave: bool = False, file=None):
    """A tqdm bar on a terminal, else Progress lines to `file` (default stdout) every `every`
    steps and at each set_postfix. `disable` shows nothing either way."""
    if interactive():
        from tqdm import tqdm

        return tqdm(iterable, total=total, initial=initial, desc=desc, unit=unit,
                    disable=disable, dynamic_ncols=True, leave=leave)
    return Progress(iterable, total, initial, desc, unit, every, disable, file)


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
