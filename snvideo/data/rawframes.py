"""Extracted-frame folders (`img_00001.jpg`, 1-based) read like a video."""
from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import VideoReadError


class RawFrameReader:
    """VideoReader's interface (len, get_frames, fps, close) over a folder of image frames."""

    backend = "rawframes"
    fps = None

    def __init__(self, frame_dir: str, num_frames: int, filename_tmpl: str = "img_{:05d}.jpg", start_index: int = 1):
        if not os.path.isdir(frame_dir):
            raise VideoReadError(frame_dir, "frame folder not found")
        if num_frames < 1:
            raise VideoReadError(frame_dir, "no frames")
        self.path = str(frame_dir)
        self.num_frames = num_frames
        self.filename_tmpl = filename_tmpl
        self.start_index = start_index
        self.frames_decoded = 0
        self.get_frames_calls = 0

    def __len__(self) -> int:
        return self.num_frames

    def frame_path(self, index: int) -> str:
        return os.path.join(self.path, self.filename_tmpl.format(index + self.start_index))

    def get_frames(self, indices) -> torch.Tensor:
        """uint8 RGB frames (len(indices), H, W, 3); each distinct frame file is decoded once."""
        self.get_frames_calls += 1
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if indices.size == 0:
            raise ValueError("get_frames needs at least one frame index")
        if indices.min() < 0 or indices.max() >= self.num_frames:
            raise IndexError(f"frame index out of range for {self.path} ({self.num_frames} frames)")
        wanted, order = np.unique(indices, return_inverse=True)
        frames = None
        for position, index in enumerate(wanted):
            image = self._read_image(self.frame_path(int(index)))
            if frames is None:
                frames = torch.empty((len(wanted), *image.shape), dtype=torch.uint8)
            elif image.shape != frames.shape[1:]:
                raise VideoReadError(self.path, "frames differ in size")
            frames[position].numpy()[...] = image
        self.frames_decoded += len(wanted)
        if wanted.size == indices.size and np.array_equal(wanted, indices):
            return frames
        return frames[torch.from_numpy(order.reshape(-1))]

    @staticmethod
    def _read_image(path: str) -> np.ndarray:
        try:
            with Image.open(path) as image:
                return np.asarray(image.convert("RGB"))
        except FileNotFoundError:
            raise VideoReadError(path, "frame file not found") from None
        except (OSError, UnidentifiedImageError, ValueError) as err:
            raise VideoReadError(path, f"cannot decode frame: {err}") from None

    def close(self) -> None:
        pass

    def __enter__(self) -> RawFrameReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
