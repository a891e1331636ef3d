"""DataLoader workers keep the memory they free (glibc malloc), so each item reuses warm pages.

A decoding worker allocates the same buffers for every item: 32 or 64 RGB frames of a few
hundred KB each, the clip they are cut into, its resized copy (5 MB for 32x224x224x3). glibc
serves large blocks with fresh mmap()s (above a threshold it moves as blocks are freed) and
hands the top of its heap back to the system when more than a trim threshold is free, so those
buffers keep coming back as new pages that fault in, zeroed, on first touch. Raising both
thresholds in the worker keeps the pages: a training item on GOP-16 CAVLC videos made 1.13x
the clips per CPU-second (benchmarks/bench_data.py, which runs with this setting, against the
same with --malloc-defaults; docs/data_loading.md). The worker's resident memory stays at its
peak, which its next item needs anyway.

Only DataLoader workers get it (`init_worker`, the loaders' worker_init_fn): the main process,
where the model runs, keeps glibc's defaults (see the README on MALLOC_MMAP_THRESHOLD_).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import platform

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit; bigger blocks stay mmap()ed
TRIM_THRESHOLD = 128 << 20


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; False (nothing changed) where
    the C library is not glibc."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def init_worker(worker_id: int) -> None:
    """worker_init_fn for the DataLoaders that decode video (train.py, test.py, the evaluator)."""
    keep_freed_memory()
