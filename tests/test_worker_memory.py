"""DataLoader workers keep the memory they free (glibc malloc): a clip-sized block comes from the
heap instead of a fresh mmap. Each case runs in a new interpreter that first pins glibc's mmap
threshold at 1 MB, so the outcome does not depend on what the process freed before."""
from __future__ import annotations

import ctypes
import platform
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _has_mallinfo2() -> bool:
    try:
        ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return False
    return True


pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or not _has_mallinfo2(),
                                reason="glibc with mallinfo2 (2.33+) only")

PROBE = r'''
import ctypes, sys
from types import SimpleNamespace

import numpy as np
import torch

libc = ctypes.CDLL("libc.so.6")

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc.mallinfo2.restype = MallInfo2
BLOCK = 16 << 20  # a few clips' worth; below glibc's largest mmap threshold (32 MB)


def mmapped_by_a_block() -> int:
    before = libc.mallinfo2().hblkhd
    block = np.ones(BLOCK, dtype=np.uint8)
    return libc.mallinfo2().hblkhd - before


class Probe(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, key):
        return torch.tensor([mmapped_by_a_block()], dtype=torch.int64), 0


assert libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD: a fixed 1 MB, as glibc starts out
mode = sys.argv[1]
if mode == "default":
    print(mmapped_by_a_block())
elif mode == "keep":
    from snvideo.data.worker_memory import keep_freed_memory
    assert keep_freed_memory()
    print(mmapped_by_a_block())
else:  # the training loader's worker
    import train
    cfg = SimpleNamespace(data=SimpleNamespace(batch_size=2, num_workers=1), train=SimpleNamespace(seed=0))
    env = SimpleNamespace(world_size=1, rank=0, device=torch.device("cpu"))
    batch, _ = next(iter(train.make_train_loader(Probe(), cfg, env)))
    print(int(batch.max()))
'''


def mmapped(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1])


def test_without_the_setting_a_large_block_is_a_fresh_mmap():
    assert mmapped("default") >= 16 << 20


def test_keep_freed_memory_serves_large_blocks_from_the_heap():
    assert mmapped("keep") == 0


def test_training_loader_workers_keep_freed_memory():
    assert mmapped("loader") == 0
