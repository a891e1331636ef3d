"""Checkpoints: written atomically, read with torch.load(weights_only=True).

A checkpoint is a dict of plain containers and tensors:
  model       state dict of the bare model (no DDP / torch.compile prefixes)
  optimizer, scheduler, scaler   their state dicts (training checkpoints)
  epoch       number of finished epochs
  config      the resolved Config as a dict
  classes     class names, index = label
  rng         RNG states (python, numpy as lists, torch CPU / CUDA) of rank 0
  best_top1   best validation top-1 so far
Training checkpoints also hold what snvideo.engine.resume needs to continue mid-epoch:
  batches_done      micro-batches of epoch `epoch` already trained (0: at an epoch end)
  epoch_totals      the unfinished epoch's loss sum / count, skips, failures, time so far
  rng_per_rank      every process's RNG states, in rank order
  amp               train.amp of the run that wrote it (the scaler state belongs to it)
  metrics_bytes     size of metrics.jsonl when it was written
"""
from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch
from torch import nn

from snvideo.atomic import atomic_output


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DDP and torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def save_checkpoint(state: dict[str, Any], path: str) -> None:
    """Write `state` to `path` atomically: a crash leaves either the old file or the new one."""
    with atomic_output(path) as tmp:
        torch.save(state, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())


def remove_stale_temporaries(work_dir: str) -> list[str]:
    """Delete half-written checkpoint files a killed run left behind (`NAME.tmp.PID`)."""
    if not os.path.isdir(work_dir):
        return []
    stale = [os.path.join(work_dir, f) for f in os.listdir(work_dir) if ".pt.tmp." in f]
    for path in stale:
        os.remove(path)
    return stale


def load_checkpoint(path: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return torch.load(path, map_location=map_location, weights_only=True)


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Restore `rng_state()`. Of the saved CUDA states only `device`'s is restored, and only
    when the saved list reaches that far: a checkpoint from a machine with more GPUs (or none)
    loads on this one."""
    python_state = state["python"]
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    cuda_states = state.get("cuda") or []
    if device is not None and device.type == "cuda" and torch.cuda.is_available():
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index < len(cuda_states):
            torch.cuda.set_rng_state(cuda_states[index], index)


def epoch_checkpoints(work_dir: str) -> list[tuple[int, str]]:
    """(epoch, path) of every `epoch_K.pt` in work_dir, newest first."""
    if not os.path.isdir(work_dir):
        return []
    found = []
    for name in os.listdir(work_dir):
        number = name.removeprefix("epoch_").removesuffix(".pt")
        if name == f"epoch_{number}.pt" and number.isdigit():
            found.append((int(number), os.path.join(work_dir, name)))
    return sorted(found, reverse=True)


def prune_epoch_checkpoints(work_dir: str, keep: int) -> list[str]:
    """Delete all but the newest `keep` epoch_K.pt files (keep=0: keep all); returns the deleted."""
    if keep <= 0:
        return []
    old = [path for _, path in epoch_checkpoints(work_dir)[keep:]]
    for path in old:
        os.remove(path)
    return old


def all_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in model.state_dict().values()
               if t.is_floating_point())
