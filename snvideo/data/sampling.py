"""Which frames make up a clip: mmaction2 SampleFrames semantics.

A clip is `clip_len` frames taken every `frame_interval` frames; a video gives `num_clips`
clips. Training draws random clip starts, testing spreads them evenly. Videos shorter than a
clip loop (indices wrap modulo the frame count). Both functions return int64 arrays of shape
(num_clips, clip_len) with every index in [0, num_frames).
"""
from __future__ import annotations

import numpy as np


def _check(num_frames: int, clip_len: int, frame_interval: int, num_clips: int) -> None:
    if num_frames < 1:
        raise ValueError(f"a video needs at least one frame, got num_frames={num_frames}")
    if clip_len < 1 or frame_interval < 1 or num_clips < 1:
        raise ValueError(
            f"clip_len, frame_interval and num_clips must be >= 1, got {clip_len}, {frame_interval}, {num_clips}"
        )


def _frames_of_clips(offsets: np.ndarray, num_frames: int, clip_len: int, frame_interval: int) -> np.ndarray:
    indices = offsets.astype(np.int64)[:, None] + np.arange(clip_len, dtype=np.int64)[None, :] * frame_interval
    return np.mod(indices, num_frames)  # loop short videos


def train_clip_offsets(
    num_frames: int, clip_len: int, frame_interval: int, num_clips: int, rng: np.random.Generator
) -> np.ndarray:
    """Random first-frame index of each clip (mmaction2 SampleFrames._get_train_clips)."""
    span = clip_len * frame_interval
    avg_interval = (num_frames - span + 1) // num_clips
    if avg_interval > 0:  # one random start inside each of num_clips equal segments
        return np.arange(num_clips) * avg_interval + rng.integers(avg_interval, size=num_clips)
    if num_frames > max(num_clips, span):  # more clips than room: sorted random starts
        return np.sort(rng.integers(num_frames - span + 1, size=num_clips))
    if avg_interval == 0:  # exactly no room: starts spread by ratio
        ratio = (num_frames - span + 1.0) / num_clips
        return np.around(np.arange(num_clips) * ratio).astype(np.int64)
    return np.zeros(num_clips, dtype=np.int64)  # video shorter than a clip: start at 0 and loop


def test_clip_offsets(num_frames: int, clip_len: int, frame_interval: int, num_clips: int) -> np.ndarray:
    """Evenly spaced first-frame index of each clip (mmaction2 SampleFrames._get_test_clips)."""
    span = clip_len * frame_interval
    avg_interval = (num_frames - span + 1) / float(num_clips)
    if num_frames > span - 1:
        return (np.arange(num_clips) * avg_interval + avg_interval / 2.0).astype(np.int64)
    return np.zeros(num_clips, dtype=np.int64)


def train_clip_indices(
    num_frames: int,
    clip_len: int,
    frame_interval: int = 1,
    num_clips: int = 1,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Frame indices (num_clips, clip_len) of randomly placed training clips."""
    _check(num_frames, clip_len, frame_interval, num_clips)
    rng = np.random.default_rng() if rng is None else rng
    offsets = train_clip_offsets(num_frames, clip_len, frame_interval, num_clips, rng)
    return _frames_of_clips(offsets, num_frames, clip_len, frame_interval)


def test_clip_indices(num_frames: int, clip_len: int, frame_interval: int = 1, num_clips: int = 1) -> np.ndarray:
    """Frame indices (num_clips, clip_len) of evenly spaced test clips (deterministic)."""
    _check(num_frames, clip_len, frame_interval, num_clips)
    offsets = test_clip_offsets(num_frames, clip_len, frame_interval, num_clips)
    return _frames_of_clips(offsets, num_frames, clip_len, frame_interval)


# Names start with "test_" because they are the test-time sampler; keep pytest from collecting
# them when a test module imports them.
test_clip_offsets.__test__ = False  # type: ignore[attr-defined]
test_clip_indices.__test__ = False  # type: ignore[attr-defined]
