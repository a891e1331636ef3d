"""Where a run continues: the newest readable checkpoint, and the state it continues with.

train.py writes `latest.pt` at every epoch end and every `train.checkpoint_every_iters`
updates, `epoch_K.pt` at epoch ends (the newest `train.keep_checkpoints` kept) and `best.pt`.
A run re-started with the same command picks the newest one it can read: latest.pt, then the
epoch files newest first, then best.pt. An unreadable file is named in one line and passed
over; when files exist but none is readable the run stops (ConfigError) rather than silently
starting over.
"""
from __future__ import annotations

import os
import pickle
import signal
import sys
import zipfile
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch

from snvideo.config import ConfigError

from .checkpoint import epoch_checkpoints, load_checkpoint
from .distributed import DistEnv, all_gather_objects

READ_ERRORS = (RuntimeError, EOFError, OSError, ValueError, KeyError, TypeError,
               pickle.UnpicklingError, zipfile.BadZipFile)


@dataclass
class EpochTotals:
    """Sums over the trained batches of the running epoch, all processes together."""
    loss_sum: float = 0.0
    loss_count: int = 0
    nonfinite_skipped: int = 0
    consecutive_skips: int = 0
    failed: int = 0
    time_s: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ResumePoint:
    """Where training starts: `batches_done` micro-batches into epoch `epoch` (0-based)."""
    epoch: int = 0
    batches_done: int = 0
    best_top1: float = 0.0
    totals: EpochTotals = field(default_factory=EpochTotals)
    rng: dict | None = None  # this process's RNG states at that point


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def read_training_checkpoint(path: str) -> dict[str, Any]:
    """load_checkpoint that also checks the keys a resume needs; raises READ_ERRORS."""
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "epoch" not in ckpt:
        raise ValueError("not a training checkpoint (no model / epoch)")
    return ckpt


def resume_candidates(work_dir: str) -> list[str]:
    """Existing checkpoints in the order a resume tries them."""
    paths = [os.path.join(work_dir, "latest.pt")] + [p for _, p in epoch_checkpoints(work_dir)]
    paths.append(os.path.join(work_dir, "best.pt"))
    return [p for p in paths if os.path.isfile(p)]


def _warn(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def find_checkpoint(work_dir: str, warn: Callable[[str], None] = _warn
                    ) -> tuple[str, dict] | None:
    """(path, checkpoint) of the newest readable checkpoint in work_dir, each unreadable newer
    one named in one `warn` line; None when there is none; ConfigError (one line) when some
    exist and none can be read."""
    candidates = resume_candidates(work_dir)
    problems = []
    for path in candidates:
        try:
            ckpt = read_training_checkpoint(path)
        except READ_ERRORS as err:
            problems.append((path, _first_line(err)))
            continue
        for bad, reason in problems:
            warn(f"warning: cannot read checkpoint {bad} ({reason}); "
                 f"resuming from {os.path.basename(path)} instead")
        return path, ckpt
    if candidates:
        tried = "; ".join(f"{os.path.basename(p)}: {reason}" for p, reason in problems)
        raise ConfigError(f"no readable checkpoint in {work_dir} ({tried}); "
                          f"--no-resume starts over")
    return None


def choose_checkpoint(resume: str | None, no_resume: bool, work_dir: str, env: DistEnv
                      ) -> tuple[str, dict] | None:
    """The checkpoint every process resumes from (rank 0 decides), or None to start fresh.

    `resume`: an explicit --resume PATH, which must be readable."""
    choice: str | None = None
    error = None
    ckpt = None
    if env.is_main:
        try:
            if resume:
                try:
                    ckpt = read_training_checkpoint(resume)
                except READ_ERRORS as err:
                    raise ConfigError(f"--resume: cannot read checkpoint {resume} "
                                      f"({_first_line(err)})") from None
                choice = resume
            elif not no_resume:
                found = find_checkpoint(work_dir)
                if found:
                    choice, ckpt = found
        except ConfigError as err:
            error = str(err)
    choice, error = all_gather_objects((choice, error), env)[0]
    if error:
        raise ConfigError(error)
    if choice is None:
        return None
    return choice, ckpt if ckpt is not None else read_training_checkpoint(choice)


def resume_point(ckpt: dict, env: DistEnv, layout: list[int]) -> ResumePoint:
    """This process's starting point from a checkpoint (old epoch-end ones included).

    `layout`: [processes, data.batch_size, train.accumulate] of this run. A mid-epoch
    checkpoint of another layout cannot say which samples are left: that epoch restarts."""
    point = ResumePoint(epoch=int(ckpt["epoch"]), batches_done=int(ckpt.get("batches_done", 0)),
                        best_top1=float(ckpt.get("best_top1", 0.0)))
    if point.batches_done and list(ckpt.get("layout", [])) != list(layout):
        if env.is_main:
            _warn(f"warning: the checkpoint stopped mid-epoch with [processes, batch_size, "
                  f"accumulate] = {ckpt.get('layout')}, this run has {layout}: epoch "
                  f"{point.epoch + 1} starts again from its first batch")
        point.batches_done = 0
    if point.batches_done:
        point.totals = EpochTotals(**ckpt["epoch_totals"])  # summed over all processes
    per_rank = ckpt.get("rng_per_rank") or []
    point.rng = per_rank[env.rank] if env.rank < len(per_rank) else ckpt.get("rng")
    return point


def load_scaler_state(scaler: torch.amp.GradScaler, ckpt: dict, amp: str) -> str | None:
    """Restore the fp16 loss scale when the checkpoint has one; a message when it is dropped.

    A checkpoint from an off/bf16 run has no scale ({}), which GradScaler.load_state_dict
    refuses: an fp16 run then starts with a fresh scale. Non-fp16 runs ignore a saved one."""
    state = ckpt.get("scaler") or {}
    if not scaler.is_enabled():
        return None
    if state:
        scaler.load_state_dict(state)
        return None
    return (f"train.amp={amp}: the checkpoint was written with train.amp="
            f"{ckpt.get('amp', 'off')}; starting with a fresh loss scale")


def truncate_metrics(work_dir: str, ckpt: dict, ckpt_path: str) -> None:
    """Drop metrics.jsonl records written after the checkpoint (they will be written again)."""
    size = ckpt.get("metrics_bytes")
    path = os.path.join(work_dir, "metrics.jsonl")
    if size is None or not os.path.isfile(path):
        return
    if os.path.realpath(os.path.dirname(ckpt_path)) != os.path.realpath(work_dir):
        return  # a checkpoint from another run: its offsets are not ours
    if os.path.getsize(path) > size:
        with open(path, "r+b") as f:
            f.truncate(size)


class StopRequest:
    """SIGTERM (a scheduler's preemption notice) asks training to stop after the current update.

    The handler only sets a flag; train.py checks it after every update (all processes
    agree, see distributed.any_rank), writes latest.pt and exits with 128 + SIGTERM so that
    the job counts as interrupted and is requeued. Processes forked later (DataLoader workers)
    keep the default action: they terminate.
    """

    EXIT_CODE = 128 + signal.SIGTERM

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)) -> None:
        self.requested = False
        self._pid = os.getpid()
        self._previous: dict[int, Any] = {}
        try:
            for sig in signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: no signal handling
            self._previous = {}

    def _handle(self, signum, frame) -> None:
        if os.getpid() != self._pid:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.requested = True

    def close(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
