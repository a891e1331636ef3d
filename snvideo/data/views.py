"""Multi-view testing: decode a video once, then cut every clip and crop from those frames."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import torch
from torchvision import tv_tensors

from .errors import VideoReadError
from .sampling import test_clip_indices
from .transforms import TestTransform, test_transform
from .video_reader import VideoReader


class FrameSource(Protocol):
    """What the view builders need: VideoReader and RawFrameReader both fit."""

    path: str

    def __len__(self) -> int: ...

    def get_frames(self, indices) -> torch.Tensor: ...


@dataclass
class TestViewsInfo:
    """How a video's test views were made, with the numbers that show it was decoded once."""

    path: str
    num_frames: int
    fps: float | None
    clip_indices: np.ndarray  # (num_clips, clip_len) frame indices of each clip
    frames_requested: int  # distinct frames asked for in the single get_frames call
    frames_decoded: int  # decoder work for it (PyAV: every frame decoded; decord: frames requested)
    frames_spanned: int  # distinct frames lying within the clips' first-to-last-frame spans
    get_frames_calls: int  # get_frames calls made for this video (1)

    __test__ = False


def views_from_frames(
    frames: torch.Tensor,
    frame_ids: np.ndarray,
    clip_indices: np.ndarray,
    transform: TestTransform | Callable[[torch.Tensor], torch.Tensor],
    normalize: bool = True,
) -> torch.Tensor:
    """Test views (num_clips * crops, C, T, H, W), clip-major, from already decoded frames.

    frames: uint8 (U, H, W, 3) holding the frames `frame_ids` (sorted, unique); clip_indices:
    (num_clips, clip_len) frame indices, all among frame_ids. A TestTransform resizes each
    decoded frame once, however many clips share it; with normalize=False it returns the uint8
    views (see TestTransform.views). Any other callable gets each clip as a tv_tensors.Video
    uint8 (T, C, H, W) and returns (C, T, H, W) or (crops, C, T, H, W), used as returned.
    """
    video = frames.permute(0, 3, 1, 2)  # (U, C, H, W) view, channels-last memory
    positions = torch.from_numpy(np.searchsorted(frame_ids, clip_indices))
    if isinstance(transform, TestTransform):
        return transform.views(transform.resize(video), list(positions), normalize)
    views = [transform(tv_tensors.Video(video[clip_positions])) for clip_positions in positions]
    views = [v if v.dim() == 5 else v.unsqueeze(0) for v in views]
    return torch.cat(views)


def load_test_views(
    reader_or_path: FrameSource | str | os.PathLike,
    num_clips: int = 1,
    clip_len: int = 16,
    frame_interval: int = 2,
    short_side: int = 256,
    crop_size: int = 224,
    num_crops: int = 1,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    backend: str = "auto",
    normalize: bool = True,
    num_threads: int = 1,
    rotation: str = "auto",
) -> tuple[torch.Tensor, TestViewsInfo]:
    """All test views of one video: (num_clips * num_crops, C, T, H, W) float, clip-major
    (view = clip * num_crops + crop), plus a TestViewsInfo.

    The frames of all clips are read with one get_frames call on their sorted union; clips and
    crops are then cut from memory. `transform` replaces the standard test preset
    (short_side / crop_size / num_crops are then unused). A path is opened with `backend`,
    `num_threads` decoder threads and `rotation` (VideoReader's) and closed again; a reader passed in is left open. normalize=False keeps a TestTransform's
    views uint8 (normalize them with transforms.normalize_views); a custom transform's output
    is returned as it is either way.
    """
    if isinstance(reader_or_path, (str, os.PathLike)):
        with VideoReader(reader_or_path, backend=backend, num_threads=num_threads, rotation=rotation) as reader:
            return load_test_views(reader, num_clips, clip_len, frame_interval, short_side,
                                   crop_size, num_crops, transform, normalize=normalize)
    reader = reader_or_path
    num_frames = len(reader)
    if num_frames < 1:
        raise VideoReadError(reader.path, "no frames")
    clip_indices = test_clip_indices(num_frames, clip_len, frame_interval, num_clips)
    frame_ids = np.unique(clip_indices)
    decoded_before = getattr(reader, "frames_decoded", 0)
    frames = reader.get_frames(frame_ids)
    views = views_from_frames(frames, frame_ids, clip_indices,
                              transform or test_transform(short_side, crop_size, num_crops),
                              normalize)
    info = TestViewsInfo(
        path=reader.path,
        num_frames=num_frames,
        fps=getattr(reader, "fps", None),
        clip_indices=clip_indices,
        frames_requested=int(frame_ids.size),
        frames_decoded=int(getattr(reader, "frames_decoded", frame_ids.size) - decoded_before),
        frames_spanned=frames_spanned(clip_indices, num_frames, frame_interval),
        get_frames_calls=1,
    )
    return views, info


def frames_spanned(clip_indices: np.ndarray, num_frames: int, frame_interval: int) -> int:
    """Distinct frames within the clips' spans (a decoder must pass over all of them)."""
    span = (clip_indices.shape[1] - 1) * frame_interval + 1
    covered = (clip_indices[:, :1] + np.arange(span)[None, :]) % num_frames
    return int(np.unique(covered).size)
