"""VideoReader: frame-accurate random access to a video file with PyAV or decord.

Frame i is the i-th frame a sequential PyAV decode yields, turned upright as players show it
(the display matrix of phone videos; `rotation="ignore"` keeps frames as stored).
backend="auto" opens the file once, with PyAV, whose packet index (snvideo.data.packet_index)
says how frames can be reached:

- by a seek (presentation timestamps in MP4/MOV/MKV/WebM/MPEG-TS/FLV; counted from a clean
  chunk in AVI without B-frames or with packed B-frames): PyAV's keyframe seek + decode
  forward, every seek checked against what the decoder hands out. It was as fast as decord or
  faster for every request measured (docs/data_loading.md), and the file is not opened twice.
- only from the start (B-frames in AVI without packing, repeated or missing timestamps):
  decord is used if its own addressing can be trusted for this file; it cannot be for
  - MPEG-4 Part 2 with B-frames (Xvid/DivX style): decord returns neighbouring frames;
  - timestamps missing or not increasing (e.g. AVI with B-frames): decord seeks blindly;
  - a decord frame count that differs from the count the container declares (truncated file);
  - a file decord cannot open or decode.
  Then PyAV decodes by count from the start: slow, but right by definition.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import torch

from .containers import UPRIGHT
from .decord_backend import DecordBackend, decord
from .errors import VideoReadError
from .pyav_backend import ROTATIONS, PyAVBackend, header_frames

logger = logging.getLogger("snvideo.data")

BACKENDS = ("auto", "decord", "pyav")


@dataclass(frozen=True)
class ContainerProbe:
    """What the container header says about the first video stream (PyAVBackend reads it
    while opening, before decoding anything)."""

    codec: str
    has_b_frames: bool
    declared_frames: int  # 0 when the container does not store a count (Matroska/WebM)


def decord_untrusted_reason(probe: ContainerProbe, backend: DecordBackend) -> str | None:
    """Why decord's frame addressing would be wrong for this file, or None if it looks right."""
    if probe.codec == "mpeg4" and probe.has_b_frames:
        return "MPEG-4 Part 2 with B-frames (decord seeks to neighbouring frames)"
    if probe.declared_frames and probe.declared_frames != backend.num_frames:
        return f"decord counts {backend.num_frames} frames, the container declares {probe.declared_frames}"
    return backend.untrusted_reason()


class VideoReader:
    """Random access to the frames of one video.

    `len(reader)` is the frame count, `reader.fps` the average frame rate and
    `reader.get_frames(indices)` returns uint8 RGB frames (T, H, W, 3) in the requested order
    (repeats allowed). Every failure surfaces as VideoReadError. `backend` is "decord",
    "pyav" or "auto" (see the module docstring); `reader.backend` tells which one is in use,
    `reader.choice_reason` why auto chose it and `reader.fallback_reason` why decord was ruled
    out where PyAV has to decode from the first frame (None otherwise).
    `num_threads`: decoder threads (0: the decoder's choice). One by default, as in mmaction2:
    DataLoader workers are the parallelism, and frame threads add latency to every seek.
    `rotation`: "auto" hands out frames as displayed (`reader.orientation`), "ignore" as stored;
    `frame_size` and crop boxes are in the frames handed out. `reader.addressing` says how
    frames are reached ("pts", "count", "sequential", or "decord").
    """

    def __init__(self, path: str | os.PathLike, backend: str = "auto", num_threads: int = 1,
                 rotation: str = "auto"):
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
        if rotation not in ROTATIONS:
            raise ValueError(f"unknown rotation {rotation!r}; choose from {', '.join(ROTATIONS)}")
        self.rotation = rotation
        self.path = str(os.fspath(path))  # plain str (not np.str_) so messages show a clean path
        self.requested_backend = backend
        self.fallback_reason: str | None = None
        self.choice_reason: str | None = None
        self._header_size: tuple[int, int] | None = None
        self._orientation = UPRIGHT  # decord: how its frames are turned (PyAV's backend knows its own)
        self.get_frames_calls = 0
        self.num_threads = num_threads
        _check_file(self.path)
        if backend == "decord":
            orientation, stored_size = header_frames(self.path)
            self._orientation = orientation if rotation == "auto" else UPRIGHT
            self._backend: DecordBackend | PyAVBackend = DecordBackend(
                self.path, self.num_threads, UPRIGHT if rotation == "auto" else orientation.inverse())
            self._header_size = self._orientation.display_size(*stored_size) if stored_size else None
        elif backend == "pyav":
            self._backend = PyAVBackend(self.path, self.num_threads, rotation)
        else:
            self._backend = self._open_auto()

    def _open_auto(self) -> DecordBackend | PyAVBackend:
        pyav = PyAVBackend(self.path, self.num_threads, self.rotation)
        if pyav.seeks_exactly:
            self.choice_reason = f"PyAV keyframe seek ({pyav.addressing_reason})"
            return pyav
        probe = ContainerProbe(pyav.codec, pyav.has_b_frames, pyav.declared_frames)
        if decord is None:
            self.fallback_reason = "decord is not installed"
        else:
            try:
                backend = DecordBackend(self.path, self.num_threads,
                                        UPRIGHT if self.rotation == "auto" else pyav.header_orientation.inverse())
            except VideoReadError as err:
                self.fallback_reason = f"decord cannot open it: {err.reason}"
            else:
                self.fallback_reason = decord_untrusted_reason(probe, backend)
                if self.fallback_reason is None:
                    self._header_size, self._orientation = pyav.frame_size, pyav.orientation
                    pyav.close()
                    self.choice_reason = "decord (PyAV's timestamps are unusable, decord's index is sound)"
                    return backend
                backend.close()
        self.choice_reason = f"PyAV decoding from the first frame ({pyav.addressing_reason}; decord not trusted)"
        logger.debug("%s: PyAV decodes from the first frame (%s)", self.path, self.fallback_reason)
        return pyav

    @property
    def backend(self) -> str:
        return self._backend.name

    @property
    def fps(self) -> float:
        return self._backend.fps

    @property
    def addressing(self) -> str:
        """How frames are reached: "pts", "count" (PyAV seeks), "sequential" (PyAV from the
        start) or "decord"; see snvideo.data.packet_index."""
        return self._backend.addressing if isinstance(self._backend, PyAVBackend) else "decord"

    @property
    def orientation(self):
        """How stored frames are turned to be handed out (containers.Orientation)."""
        return self._backend.orientation if isinstance(self._backend, PyAVBackend) else self._orientation

    @property
    def frames_decoded(self) -> int:
        """Decode work so far: frames PyAV decoded (seek overhead included) or frames asked of decord."""
        return self._backend.frames_decoded

    def __len__(self) -> int:
        return self._backend.num_frames

    @property
    def frame_size(self) -> tuple[int, int] | None:
        """(height, width) of the frames from the container header, before decoding anything;
        None when unknown (a file PyAV cannot open, read with decord)."""
        return getattr(self._backend, "frame_size", None) or self._header_size

    def get_frames(self, indices, crop: tuple[int, int, int, int] | None = None,
                   flip: bool = False) -> torch.Tensor:
        """uint8 RGB frames (len(indices), H, W, 3); each distinct frame is decoded once.

        crop = (top, left, height, width) inside `frame_size` returns only that box of every
        frame, cut as each frame is converted (a training crop chosen before decoding);
        flip=True mirrors every (cut) frame left-right, in the same copy with PyAV."""
        self.get_frames_calls += 1
        if crop is not None:
            _check_box(self.path, crop, self.frame_size)
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if indices.size == 0:
            raise ValueError("get_frames needs at least one frame index")
        if indices.min() < 0 or indices.max() >= len(self):
            bad = int(indices[(indices < 0) | (indices >= len(self))][0])
            raise IndexError(f"frame index {bad} out of range for {self.path} ({len(self)} frames)")
        wanted, order = np.unique(indices, return_inverse=True)
        frames = self._read(wanted, crop, flip)
        if frames.shape[0] != wanted.size:  # never hand back fewer frames than asked for
            raise VideoReadError(self.path, f"cannot decode: got {frames.shape[0]} of {wanted.size} frames")
        if wanted.size == indices.size and np.array_equal(wanted, indices):
            return frames
        return frames[torch.from_numpy(order.reshape(-1))]

    def _read(self, wanted: np.ndarray, crop=None, flip: bool = False) -> torch.Tensor:
        try:
            return self._backend.read(wanted, crop, flip)
        except VideoReadError as err:
            if self.requested_backend != "auto" or self._backend.name != "decord":
                raise
            # auto mode: decord opened the file but cannot decode it; PyAV gets one chance
            self.fallback_reason = f"decord cannot decode it: {err.reason}"
            self.choice_reason = "PyAV decoding from the first frame (decord failed)"
            self._backend.close()
            self._backend = PyAVBackend(self.path, self.num_threads, self.rotation)
            if self._backend.num_frames < wanted[-1] + 1:
                raise VideoReadError(self.path, err.reason) from err
            return self._backend.read(wanted, crop, flip)

    def close(self) -> None:
        self._backend.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"VideoReader({self.path!r}, backend={self.backend!r}, frames={len(self)}, fps={self.fps:.3f})"


def _check_box(path: str, box: tuple[int, int, int, int], size: tuple[int, int] | None) -> None:
    if size is None:
        raise ValueError(f"{path}: crop needs the frame size, unknown before decoding with this backend")
    top, left, height, width = box
    if height < 1 or width < 1 or top < 0 or left < 0 or top + height > size[0] or left + width > size[1]:
        raise ValueError(f"{path}: crop {box} outside the {size[1]}x{size[0]} frames")


def _check_file(path: str) -> None:
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        raise VideoReadError(path, "file not found") from None
    except OSError as err:
        raise VideoReadError(path, f"cannot open: {err.strerror or err}") from None
    if os.path.isdir(path):
        raise VideoReadError(path, "is a directory")
    if size == 0:
        raise VideoReadError(path, "zero-byte file")
