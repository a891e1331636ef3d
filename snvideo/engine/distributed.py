"""torch.distributed set-up from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK).

Without torchrun everything runs as a single process: rank 0 of a world of 1, and no process
group is created. With torchrun: nccl when CUDA is available, gloo otherwise.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


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
    """Initialize the process group when launched by torchrun; pick this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return DistEnv(rank, world_size, local_rank, dev)


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
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()
