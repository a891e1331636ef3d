"""A video with its top classes drawn on every frame (test.py --video V --out-video OUT.mp4|.gif).

Frames are decoded in chunks (a long video never sits in memory whole), scaled up so that the
short side is at least `min_short_side` pixels (text on a 112-pixel frame would not be legible),
given a translucent box with one "rank. class  probability" line per class, and encoded as
H.264 MP4 (yuv420p, even frame size) or an animated GIF.
"""
from __future__ import annotations

import os
from fractions import Fraction
from typing import Callable, Iterator, Sequence

import numpy as np

from snvideo.atomic import atomic_output

OUT_VIDEO_EXTENSIONS = (".mp4", ".gif")
CHUNK_FRAMES = 64


def overlay_lines(names: Sequence[str], probs: Sequence[float]) -> list[str]:
    return [f"{rank}. {name}  {prob:.3f}" for rank, (name, prob) in enumerate(zip(names, probs), start=1)]


def draw_lines(frame: np.ndarray, lines: Sequence[str], min_short_side: int = 360) -> np.ndarray:
    """(H, W, 3) uint8 -> the frame (scaled up if small, even size) with the lines drawn top left."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.fromarray(frame)
    scale = max(1.0, min_short_side / min(image.size))
    width, height = (int(round(s * scale)) // 2 * 2 for s in image.size)
    if (width, height) != image.size:
        image = image.resize((width, height), Image.BILINEAR)
    font_size = max(10, height // 22)
    font = ImageFont.load_default(size=font_size)
    draw = ImageDraw.Draw(image, "RGBA")
    pad, line_height = font_size // 2, int(font_size * 1.3)
    text_width = max(draw.textlength(line, font=font) for line in lines) if lines else 0
    draw.rectangle([0, 0, int(text_width) + 2 * pad, len(lines) * line_height + 2 * pad],
                   fill=(0, 0, 0, 150))
    for i, line in enumerate(lines):
        draw.text((pad, pad + i * line_height), line, fill=(255, 255, 255, 255), font=font)
    return np.asarray(image)


def _frames(path: str, backend: str, rotation: str) -> Iterator[tuple[np.ndarray, float]]:
    from snvideo.data import VideoReader

    with VideoReader(path, backend=backend, rotation=rotation) as reader:
        fps = float(reader.fps or 25.0)
        for start in range(0, len(reader), CHUNK_FRAMES):
            chunk = reader.get_frames(np.arange(start, min(start + CHUNK_FRAMES, len(reader))))
            for frame in chunk.numpy():
                yield frame, fps


def write_overlay_video(video: str, out_path: str,
                        lines: Sequence[str] | Callable[[float], Sequence[str]],
                        backend: str = "auto", min_short_side: int = 360,
                        rotation: str = "auto") -> int:
    """Write `video` with `lines` drawn on each frame to out_path (.mp4 or .gif); `lines` may
    be a function of the frame's time in seconds (a timeline's current window). Returns the
    number of frames written (upright unless rotation="ignore", as VideoReader hands them
    out). Raises snvideo.data.VideoReadError for an unreadable video."""
    ext = os.path.splitext(out_path)[1].lower()
    if ext not in OUT_VIDEO_EXTENSIONS:
        raise ValueError(f"output video must end in {' or '.join(OUT_VIDEO_EXTENSIONS)}, got {out_path}")
    with atomic_output(out_path, f"{out_path}.tmp{os.getpid()}{ext}") as tmp:  # the writer reads ext
        lines_at = lines if callable(lines) else (lambda seconds: lines)
        frames = ((draw_lines(frame, lines_at(i / fps), min_short_side), fps)
                  for i, (frame, fps) in enumerate(_frames(video, backend, rotation)))
        return _write_gif(frames, tmp) if ext == ".gif" else _write_mp4(frames, tmp)


def _write_mp4(frames: Iterator[tuple[np.ndarray, float]], path: str) -> int:
    import av

    count = 0
    with av.open(path, "w") as container:
        stream = None
        for frame, fps in frames:
            if stream is None:
                stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
                stream.height, stream.width = frame.shape[:2]
                stream.pix_fmt = "yuv420p"
                stream.options = {"crf": "20"}
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
            count += 1
        if stream is not None:
            container.mux(stream.encode())
    return count


def _write_gif(frames: Iterator[tuple[np.ndarray, float]], path: str) -> int:
    from PIL import Image

    images, fps = [], 25.0
    for frame, fps in frames:
        images.append(Image.fromarray(frame).quantize(colors=128))
    if images:
        images[0].save(path, format="GIF", save_all=True, append_images=images[1:],
                       duration=int(round(1000 / fps)), loop=0)
    return len(images)
