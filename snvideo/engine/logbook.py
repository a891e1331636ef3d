"""Metrics as JSON lines in work_dir (and TensorBoard events when tensorboard is installed)."""
from __future__ import annotations

import json
import os
import time


class Logbook:
    """Rank 0 writes; other ranks get a Logbook with enabled=False that does nothing."""

    def __init__(self, work_dir: str, enabled: bool = True) -> None:
        self.enabled = enabled
        self.path = os.path.join(work_dir, "metrics.jsonl")
        self._tb = None
        if enabled:
            os.makedirs(work_dir, exist_ok=True)
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(os.path.join(work_dir, "tensorboard"))
            except ImportError:  # tensorboard is optional
                self._tb = None

    def log(self, kind: str, step: int, **values) -> None:
        if not self.enabled:
            return
        record = {"kind": kind, "step": step, "time": round(time.time(), 3), **values}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self._tb.add_scalar(f"{kind}/{key}", value, step)

    def size(self) -> int:
        """Bytes in metrics.jsonl so far (a checkpoint records it; see engine.resume)."""
        return os.path.getsize(self.path) if os.path.isfile(self.path) else 0

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
