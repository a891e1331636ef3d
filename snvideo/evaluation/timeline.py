"""Action timelines over long videos: the model on a sliding window, streamed.

A window is one test clip (data.clip_len frames every data.frame_interval frames, resized to
data.short_side and center-cropped to data.crop_size, as test.py's single-view clips); windows
start every `stride` seconds. The video is decoded once, in order, with PyAV (anything it opens:
files, and stream URLs or capture devices by their FFmpeg name), and only the frames some
pending window still needs are kept, already cut to the crop: memory is bounded by a window's
span, however long the video. Complete windows are run through the model `batch` at a time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from snvideo.data import IMAGENET_MEAN, IMAGENET_STD, VideoReadError, normalize_views
from snvideo.data.containers import Orientation
from snvideo.data.transforms import center_crop_box, resize_short_side


@dataclass
class Window:
    start: float  # seconds
    end: float
    probs: torch.Tensor  # (num_classes,) softmax of the window's logits


@dataclass
class TimelineStats:
    frames_decoded: int = 0
    windows: int = 0
    max_frames_held: int = 0  # the bound on memory: frames kept at once


def window_starts_frames(stride_seconds: float, fps: float) -> int:
    return max(1, int(round(stride_seconds * fps)))


def stream_windows(model: nn.Module, video: str, clip_len: int, frame_interval: int,
                   short_side: int, crop_size: int, stride_seconds: float | None = None,
                   batch: int = 8, device: torch.device | str = "cpu", rotation: str = "auto",
                   stats: TimelineStats | None = None) -> Iterator[Window]:
    """Windows of `video` in order, as soon as each batch of them is complete. The default
    stride is one window span (back-to-back windows)."""
    import av

    stats = stats if stats is not None else TimelineStats()
    span = (clip_len - 1) * frame_interval + 1
    try:
        container = av.open(video, metadata_errors="ignore")
    except av.FFmpegError as err:
        raise VideoReadError(video, f"cannot decode: {err}") from err
    with container:
        if not container.streams.video:
            raise VideoReadError(video, "no video stream")
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 25.0)
        stride = window_starts_frames(stride_seconds, fps) if stride_seconds else span
        held: dict[int, torch.Tensor] = {}  # frame index -> (3, crop, crop) uint8
        ready: list[tuple[int, torch.Tensor]] = []  # complete windows: (start frame, clip)
        next_start, index = 0, -1
        try:
            for frame in container.decode(stream):
                index += 1
                stats.frames_decoded += 1
                if _wanted(index, next_start, stride, span, frame_interval):
                    held[index] = _cut(frame, rotation, short_side, crop_size)
                    stats.max_frames_held = max(stats.max_frames_held, len(held))
                while index >= next_start + span - 1:  # the window at next_start is complete
                    ids = [next_start + i * frame_interval for i in range(clip_len)]
                    ready.append((next_start, torch.stack([held[i] for i in ids], 1)))
                    next_start += stride
                    for old in [i for i in held if i < next_start]:
                        del held[old]
                    if len(ready) == batch:
                        yield from _run(model, ready, fps, span, device, stats)
                        ready = []
        except av.FFmpegError as err:
            raise VideoReadError(video, f"cannot decode frame {index + 1}: {err}") from err
        if index >= 0 and next_start == 0 and not ready:  # shorter than one window: loop it
            ids = [(i * frame_interval) % (index + 1) for i in range(clip_len)]
            ready.append((0, torch.stack([held[i] for i in ids], 1)))
        if ready:
            yield from _run(model, ready, fps, min(span, index + 1), device, stats)


def _wanted(index: int, next_start: int, stride: int, span: int, interval: int) -> bool:
    """Whether a window starting at next_start or later samples frame `index`. Until the first
    window is complete every frame is kept: a video shorter than a window loops over all of
    its frames (as test sampling does)."""
    if next_start == 0 and index < span:
        return True
    lowest = max(next_start, index - span + 1)
    start = next_start + -(-(lowest - next_start) // stride) * stride  # first start >= lowest
    while start <= index:
        if (index - start) % interval == 0:
            return True
        start += stride
    return False


def _cut(frame, rotation: str, short_side: int, crop_size: int) -> torch.Tensor:
    """One decoded frame as a test clip's frame: upright, short side resized, center crop."""
    rgb = Orientation.of_frame(frame, rotation).to_display(frame.to_ndarray(format="rgb24"))
    image = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)  # (3, H, W)
    resized = resize_short_side(image.unsqueeze(0), short_side)[0]
    top, left, h, w = center_crop_box(resized.shape[-2], resized.shape[-1], crop_size)
    return resized[:, top:top + h, left:left + w].contiguous()


@torch.no_grad()
def _run(model: nn.Module, ready: list, fps: float, span: int, device, stats: TimelineStats
         ) -> Iterator[Window]:
    clips = torch.stack([clip for _, clip in ready]).to(device)  # (B, 3, T, crop, crop) uint8
    probs = torch.softmax(model(normalize_views(clips, IMAGENET_MEAN, IMAGENET_STD)).float(), 1).cpu()
    for (start, _), p in zip(ready, probs):
        stats.windows += 1
        yield Window(start / fps, (start + span) / fps, p)


def timeline_json(windows: Sequence[Window], names: Sequence[str], top: int = 5) -> dict:
    """{"windows": [{"start": s, "end": s, "top5": [[class, prob], ...]}]}."""
    out = []
    for w in windows:
        probs, idx = w.probs.topk(min(top, w.probs.numel()))
        out.append({"start": round(w.start, 3), "end": round(w.end, 3),
                    "top5": [[names[i] if i < len(names) else str(i), round(float(p), 6)]
                             for p, i in zip(probs.tolist(), idx.tolist())]})
    return {"windows": out}


def plot_timeline(windows: Sequence[Window], names: Sequence[str], path: str,
                  classes: int = 5) -> None:
    """Probability over time (window centers) of the classes that peak highest."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from snvideo.atomic import atomic_output

    probs = torch.stack([w.probs for w in windows])
    centers = [(w.start + w.end) / 2 for w in windows]
    picked = probs.max(0).values.topk(min(classes, probs.shape[1])).indices.tolist()
    fig, ax = plt.subplots(figsize=(max(6.0, min(20.0, len(windows) / 4)), 3.5))
    for c in picked:
        ax.plot(centers, probs[:, c].numpy(), label=names[c] if c < len(names) else str(c))
    ax.set_xlabel("time (s)")
    ax.set_ylabel("probability")
    ax.set_ylim(0, 1)
    ax.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    with atomic_output(path, path + ".tmp" + path[path.rfind("."):]) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
