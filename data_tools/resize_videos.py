"""Re-encode every video under SRC to H.264 mp4 with a smaller short side and dense keyframes.

    python data_tools/resize_videos.py SRC OUT --short-side 256 [--gop 16] [--crf 23]
                                       [--cabac] [--rotation auto] [--workers N]

SRC/a/b.webm -> OUT/a/b.mp4: short side resized to --short-side (both dimensions even, as
yuv420p needs), a keyframe every --gop frames and no scene-cut keyframes (so reading a clip
seeks to a keyframe at most gop-1 frames before it), audio dropped, same frames and frame
rate.  Entropy coding is CAVLC unless --cabac: on the 340x256 benchmark videos of
benchmarks/bench_data.py, CABAC made GOP-16 files 11% smaller and a training clip 1.3-1.7x
slower to decode. The deblocking filter stays on: x264's `tune=fastdecode` also turns it off,
which was about 5% faster again on the same files, at a cost in picture quality that was not
measured.  Frames are encoded upright as players show them (the display rotation of phone
videos; the output carries none, and its size is that of the displayed frame), as VideoReader
hands them to training with ``data.rotation=auto``; ``--rotation ignore`` keeps them as stored,
also without rotation metadata.  Outputs are written under a temporary name and renamed when
complete; existing outputs are skipped on a re-run.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (Summary, UsageError, add_workers_arg, find_videos, one_line,  # noqa: E402
                     parse_args, pool_map, progress, require_dir, run_main, tmp_name)

PROG = "resize_videos"


@dataclass(frozen=True)
class Task:
    src: str
    dst: str
    short_side: int
    gop: int
    crf: int
    preset: str
    threads: int
    cabac: bool = False
    rotation: str = "auto"


@dataclass(frozen=True)
class Result:
    name: str
    status: str
    reason: str = ""


def even_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the short side at ``short_side`` (0 = keep), rounded to even."""
    def even(x: float) -> int:
        return max(2, 2 * round(x / 2))

    if short_side <= 0:
        return max(2, width - width % 2), max(2, height - height % 2)
    if width <= height:
        return even(short_side), even(height * short_side / width)
    return even(width * short_side / height), even(short_side)


def _turned_yuv420p(frame, turn):
    """A yuv420p frame (both sides even) turned by `turn` (containers.Orientation) plane by
    plane, without a round trip through RGB."""
    import av
    import numpy as np

    h, w = frame.height, frame.width
    planes = frame.to_ndarray()  # (h * 3 / 2, w): the Y plane, then the U and V planes
    y = turn.to_display(planes[:h])
    uv = turn.to_display(planes[h:].reshape(2, h // 2, w // 2), axes=(1, 2))
    turned = np.concatenate([y.ravel(), uv.ravel()]).reshape(-1, y.shape[1])
    return av.VideoFrame.from_ndarray(turned, format="yuv420p")


def resize_one(task: Task) -> Result:
    import av
    from av.video.frame import PictureType

    from snvideo.atomic import atomic_output
    from snvideo.data.containers import Orientation

    dst = Path(task.dst)
    if dst.exists():
        return Result(task.src, "skipped")
    try:
        with atomic_output(dst, tmp_name(dst)) as tmp, av.open(task.src) as src:
            if not src.streams.video:
                raise ValueError("no video stream")
            istream = src.streams.video[0]
            istream.codec_context.thread_count = task.threads
            rate = istream.average_rate or istream.guessed_rate or Fraction(30)
            rate = Fraction(rate).limit_denominator(1001)
            n = 0
            with av.open(tmp, mode="w", format="mp4") as out:
                ostream = None
                for frame in src.decode(istream):
                    # each decoded frame carries its display rotation (VideoReader's orientation)
                    turn = Orientation.of_frame(frame, task.rotation)
                    if ostream is None:  # size known from the first decoded frame
                        shown_h, shown_w = turn.display_size(frame.height, frame.width)
                        w, h = even_size(shown_w, shown_h, task.short_side)
                        ostream = out.add_stream("libx264", rate=rate)
                        ostream.width, ostream.height, ostream.pix_fmt = w, h, "yuv420p"
                        ostream.codec_context.thread_count = task.threads
                        ostream.codec_context.gop_size = task.gop
                        ostream.options = {"crf": str(task.crf), "preset": task.preset,
                                           "g": str(task.gop), "keyint_min": str(task.gop),
                                           "sc_threshold": "0",
                                           "x264-params": f"cabac={int(task.cabac)}"}
                    w, h = ostream.width, ostream.height
                    if turn.quarter_turns % 2:
                        w, h = h, w  # scale the stored frame, then turn it
                    frame = frame.reformat(width=w, height=h, format="yuv420p",
                                           interpolation="AREA")
                    if turn.quarter_turns:
                        frame = _turned_yuv420p(frame, turn)
                    frame.pts, frame.time_base = n, 1 / rate
                    frame.pict_type = PictureType.NONE  # else source I-frames force keyframes
                    n += 1
                    for packet in ostream.encode(frame):
                        out.mux(packet)
                if ostream is None:
                    raise ValueError("no frames decoded")
                for packet in ostream.encode():
                    out.mux(packet)
        return Result(task.src, "done")
    except Exception as e:  # noqa: BLE001 - a bad video is reported, not fatal
        return Result(task.src, "failed", one_line(e))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="Re-encode the videos under SRC to H.264 mp4 under OUT (same "
        "relative tree) with the short side resized and a fixed keyframe interval.")
    p.add_argument("src", metavar="SRC", help="directory of videos (searched recursively)")
    p.add_argument("out", metavar="OUT", help="output directory")
    p.add_argument("--short-side", type=int, default=256,
                   help="short side in pixels after resizing (0 = keep; default 256)")
    p.add_argument("--gop", type=int, default=16,
                   help="keyframe interval in frames (default 16)")
    p.add_argument("--crf", type=int, default=23, help="x264 constant rate factor (default 23)")
    p.add_argument("--preset", default="medium",
                   help="x264 preset, e.g. veryfast / medium / slow (default medium)")
    p.add_argument("--cabac", action="store_true",
                   help="CABAC entropy coding: smaller files, slower decoding (default CAVLC)")
    p.add_argument("--rotation", choices=("auto", "ignore"), default="auto",
                   help="auto: encode frames upright as players show them (phone videos); "
                   "ignore: as stored. Match the training's data.rotation (default auto)")
    add_workers_arg(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)
    return run_main(PROG, lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    src = require_dir(args.src, "SRC")
    out = Path(args.out)
    if args.short_side < 0:
        raise UsageError(f"--short-side must be >= 0, got {args.short_side}")
    if args.gop < 1:
        raise UsageError(f"--gop must be >= 1, got {args.gop}")
    if not 0 <= args.crf <= 51:
        raise UsageError(f"--crf must be in 0..51, got {args.crf}")
    if out.exists() and not out.is_dir():
        raise UsageError(f"OUT {str(out)!r} exists and is not a directory")
    if out.resolve() == src.resolve():
        raise UsageError("OUT must differ from SRC")
    out.mkdir(parents=True, exist_ok=True)

    summary = Summary()
    tasks, seen = [], set()
    threads = 1 if args.workers > 1 else 0
    for video in find_videos(src):
        if out.resolve() in video.resolve().parents:
            continue  # OUT inside SRC: do not re-encode our own outputs
        dst = out / video.relative_to(src).with_suffix(".mp4")
        if dst in seen:
            summary.add("failed", str(video), f"output {str(dst)!r} already used by another video")
            continue
        seen.add(dst)
        tasks.append(Task(str(video), str(dst), args.short_side, args.gop, args.crf,
                          args.preset, threads, args.cabac, args.rotation))
    for res in progress(pool_map(resize_one, tasks, args.workers), len(tasks), PROG):
        summary.add(res.status, res.name, res.reason)
    summary.print(PROG)
    return 0


if __name__ == "__main__":
    sys.exit(main())
