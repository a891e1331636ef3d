"""torch.distributed set-up from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK).

Without torchrun everything runs as a single process: rank 0 of a world of 1, and no process
group is created. With torchrun: nccl when CUDA is available, gloo otherwise.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from snvideo.config import ConfigError


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None) -> DistEnv:
    """Initialize the process group when launched by torchrun; pick this process's device.

    `device`: None (cuda when available), "cpu", "cuda" (GPU LOCAL_RANK) or "cuda:K" (GPU K,
    under torchrun K + LOCAL_RANK). A device that does not exist raises ConfigError.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, store=_round_store(rank, world_size), rank=rank,
                                world_size=world_size)
        global _control_group
        _control_group = dist.new_group(backend="gloo") if backend != "gloo" else None
    return DistEnv(rank, world_size, local_rank, dev)


def pick_device(device: str | None, local_rank: int = 0) -> torch.device:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"--device: not a device: {device!r} (cpu, cuda, cuda:K)") from None
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type != "cuda":
        raise ConfigError(f"--device: unsupported device {device!r} (cpu, cuda, cuda:K)")
    if not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine")
    index = (dev.index or 0) + local_rank
    if index >= torch.cuda.device_count():
        raise ConfigError(f"--device {device}: GPU {index} does not exist "
                          f"({torch.cuda.device_count()} visible)")
    return torch.device("cuda", index)


def _round_store(rank: int, world_size: int) -> dist.Store:
    """The env:// store, its keys prefixed by torchrun's restart count.

    torchrun's agent keeps one store for all restarts of a worker group; without a prefix a
    restarted worker reads the previous round's gloo/nccl addresses and connects to a dead
    (or still-closing) peer: "connectFullMesh: connection refused", or a hang. Older torch
    releases added this prefix themselves.
    """
    store, _, _ = next(dist.rendezvous("env://", rank=rank, world_size=world_size,
                                       timeout=timedelta(minutes=30)))
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    return dist.PrefixStore(f"snvideo/round_{restart}", store) if restart is not None else store


_control_group = None  # gloo group for host-side flags when the default group is nccl


def any_rank(flag: bool, env: DistEnv) -> bool:
    """True on every process when `flag` is true on any: host-side, no GPU sync."""
    if not env.distributed:
        return flag
    t = torch.tensor([int(flag)], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_control_group)
    return bool(t.item())


def set_cpu_threads(env: DistEnv, data_workers: int) -> int | None:
    """On CPU, give this process's compute threads the cores its DataLoader workers leave free.

    Spinning OpenMP threads that share cores with decoding workers stall each other: on the
    2-core demo, 2 threads + 1 worker took 10 s an epoch, 1 thread + 1 worker 8 s. Skipped
    on GPU and when OMP_NUM_THREADS is set; returns the thread count it set, or None.
    """
    if env.device.type != "cpu" or "OMP_NUM_THREADS" in os.environ:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    processes_here = int(os.environ.get("LOCAL_WORLD_SIZE", env.world_size))
    threads = max(1, (cores or 1) // processes_here - data_workers)
    torch.set_num_threads(threads)
    return threads


def enable_cudnn_benchmark(device: torch.device | str) -> bool:
    """On CUDA, let cuDNN time its convolution algorithms once per input shape and keep the
    fastest (`torch.backends.cudnn.benchmark`). Pays off because training clips, and test
    chunks but the last, all have one shape. Returns whether it was switched on."""
    if torch.device(device).type != "cuda":
        return False
    torch.backends.cudnn.benchmark = True
    return True


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def all_reduce_sum(values: list[float], env: DistEnv) -> list[float]:
    """Sum a few numbers over all processes (float64)."""
    if not env.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64,
                     device=env.device if env.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return t.tolist()


def all_gather_objects(obj, env: DistEnv) -> list:
    """Every process's `obj`, in rank order."""
    if not env.distributed:
        return [obj]
    gathered: list = [None] * env.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def cleanup(env: DistEnv) -> None:
    global _control_group
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()
    _control_group = None
