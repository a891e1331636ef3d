"""`data.cache`: decoded videos kept in memory, for small datasets trained for many epochs.

The first time an item of a video is asked for, all its frames are decoded (one sequential
read) and kept as uint8 (T, H, W, 3); later items of that video are cut from memory with the
same frame indices, crops and transforms as from the file. Each process holds its own cache
(a DataLoader worker caches the videos it loads; train.py keeps workers alive across epochs),
bounded by `max_bytes`: past the bound, videos are decoded from the file as without a cache.
"""
from __future__ import annotations

import logging
from typing import Callable

import numpy as np
import torch

logger = logging.getLogger(__name__)


class CachedFrames:
    """All frames of one video in memory, behind the reader interface the datasets use
    (len, frame_size, get_frames(indices, crop, flip), a context manager)."""

    def __init__(self, path: str, frames: torch.Tensor):
        self.path, self.frames = path, frames

    def __len__(self) -> int:
        return self.frames.shape[0]

    @property
    def frame_size(self) -> tuple[int, int]:
        return self.frames.shape[1], self.frames.shape[2]

    def get_frames(self, indices, crop: tuple[int, int, int, int] | None = None,
                   flip: bool = False) -> torch.Tensor:
        index = torch.from_numpy(np.asarray(indices, dtype=np.int64).reshape(-1))
        frames = self.frames
        if crop is not None:
            top, left, height, width = crop
            frames = frames[:, top:top + height, left:left + width]
        return frames[index].flip(2) if flip else frames[index]

    def close(self) -> None:
        pass

    def __enter__(self) -> CachedFrames:
        return self

    def __exit__(self, *exc) -> None:
        pass


class FrameCache:
    """Decoded videos by dataset index, up to `max_bytes` of frames in this process."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        self._videos: dict[int, CachedFrames] = {}
        self.full = False  # a video did not fit: uncached videos are read from their files

    def __len__(self) -> int:
        return len(self._videos)

    def reader(self, index: int, open_file: Callable[[int], object]):
        """The cached video `index`, decoded with `open_file(index)` on first use. A video that
        fails to decode raises as from the file and is not cached."""
        cached = self._videos.get(index)
        if cached is not None:
            return cached
        if self.full:
            return open_file(index)
        with open_file(index) as reader:
            cached = CachedFrames(reader.path, reader.get_frames(np.arange(len(reader))))
        size = cached.frames.numel() * cached.frames.element_size()
        if self.bytes + size > self.max_bytes:
            self.full = True
            logger.warning("data.cache is full (%.2f GB in this process, data.cache_max_gb); "
                           "further videos are decoded from their files", self.bytes / 1e9)
            return cached
        self._videos[index] = cached
        self.bytes += size
        return cached
