"""Extract JPEG frames from every video under SRC, MMAction2 rawframes layout.

    python data_tools/extract_frames.py SRC OUT [--short-side 256] [--quality 95]
                                        [--rotation auto] [--workers N] [--list OUT_LIST]

SRC/a/b.mp4 -> OUT/a/b/img_00001.jpg, img_00002.jpg, ... and a list file with lines
``frame_dir total_frames label`` (frame_dir relative to OUT; label = index of the video's
folder name among the sorted folder names, or -1 for videos directly in SRC).  Each frame
directory is written under a temporary name and renamed when complete, so a re-run skips
finished videos and redoes interrupted ones.  Frames are written upright as players show them
(the display rotation of phone videos), as VideoReader hands them to training with
``data.rotation=auto``; ``--rotation ignore`` writes them as stored.  --short-side applies to
the frame as written.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (Summary, UsageError, add_workers_arg, atomic_dir,  # noqa: E402
                     atomic_write_text, find_videos, one_line, parse_args, pool_map, progress,
                     require_dir, run_main)

PROG = "extract_frames"


@dataclass(frozen=True)
class Task:
    src: str
    rel: str          # output frame dir relative to OUT (relative video path, no extension)
    out_root: str
    short_side: int
    quality: int
    threads: int
    rotation: str = "auto"


@dataclass(frozen=True)
class Result:
    rel: str
    status: str       # done | skipped | failed
    frames: int = 0
    reason: str = ""


def scaled_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the short side resized to ``short_side`` (0 = unchanged)."""
    if short_side <= 0 or min(width, height) == short_side:
        return width, height
    if width <= height:
        return short_side, max(1, round(height * short_side / width))
    return max(1, round(width * short_side / height)), short_side


def count_frames(frame_dir: Path) -> int:
    return sum(1 for p in frame_dir.glob("img_*.jpg"))


def extract_one(task: Task) -> Result:
    import av
    import numpy as np
    from PIL import Image

    from snvideo.data.containers import Orientation

    final = Path(task.out_root) / task.rel
    if final.is_dir():
        return Result(task.rel, "skipped", count_frames(final))
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_dir(final) as tmp, av.open(task.src) as container:
            if not container.streams.video:
                raise ValueError("no video stream")
            stream = container.streams.video[0]
            stream.codec_context.thread_count = task.threads
            n = 0
            for frame in container.decode(stream):
                # each decoded frame carries its display rotation (VideoReader's orientation)
                turn = Orientation.of_frame(frame, task.rotation)
                shown_h, shown_w = turn.display_size(frame.height, frame.width)
                w, h = scaled_size(shown_w, shown_h, task.short_side)
                if turn.quarter_turns % 2:
                    w, h = h, w  # scale the stored frame, then turn it
                if (w, h) != (frame.width, frame.height):
                    frame = frame.reformat(width=w, height=h, interpolation="AREA")
                rgb = turn.to_display(frame.to_ndarray(format="rgb24"))
                n += 1
                Image.fromarray(np.ascontiguousarray(rgb)).save(tmp / f"img_{n:05d}.jpg",
                                                                quality=task.quality)
            if n == 0:
                raise ValueError("no frames decoded")
        return Result(task.rel, "done", n)
    except Exception as e:  # noqa: BLE001 - a bad video is reported, not fatal
        return Result(task.rel, "failed", reason=one_line(e))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="Extract JPEG frames (img_00001.jpg, ...) from the videos "
        "under SRC into OUT/<relative path without extension>/ and write a rawframes list.")
    p.add_argument("src", metavar="SRC", help="directory of videos (searched recursively)")
    p.add_argument("out", metavar="OUT", help="output directory of frame folders")
    p.add_argument("--short-side", type=int, default=256,
                   help="resize so the short side is this many pixels (0 = keep; default 256)")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality 1-100 (default 95)")
    p.add_argument("--rotation", choices=("auto", "ignore"), default="auto",
                   help="auto: frames upright as players show them (phone videos); ignore: as "
                   "stored. Match the training's data.rotation (default auto)")
    p.add_argument("--list", dest="list_file", metavar="OUT_LIST",
                   help="rawframes list file (default OUT/rawframes_list.txt)")
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
    if not 1 <= args.quality <= 100:
        raise UsageError(f"--quality must be in 1..100, got {args.quality}")
    if out.exists() and not out.is_dir():
        raise UsageError(f"OUT {str(out)!r} exists and is not a directory")
    list_file = Path(args.list_file) if args.list_file else out / "rawframes_list.txt"

    videos = find_videos(src)
    rels = [str(v.relative_to(src).with_suffix("")) for v in videos]
    folders = sorted({Path(r).parent.name for r in rels if Path(r).parent != Path(".")})
    label_of = {name: i for i, name in enumerate(folders)}

    out.mkdir(parents=True, exist_ok=True)
    summary = Summary()
    tasks, seen = [], set()
    threads = 1 if args.workers > 1 else 0
    for video, rel in zip(videos, rels):
        if rel in seen:  # a.mp4 and a.avi would share one frame dir
            summary.add("failed", str(video), f"frame dir {rel!r} already used by another video")
            continue
        seen.add(rel)
        tasks.append(Task(str(video), rel, str(out), args.short_side, args.quality, threads,
                          args.rotation))

    frames: dict[str, int] = {}
    for res in progress(pool_map(extract_one, tasks, args.workers), len(tasks), PROG):
        summary.add(res.status, res.rel, res.reason)
        if res.status != "failed":
            frames[res.rel] = res.frames

    lines = []
    for rel in sorted(frames):
        parent = Path(rel).parent
        label = label_of[parent.name] if parent != Path(".") else -1
        lines.append(f"{Path(rel).as_posix()} {frames[rel]} {label}")
    atomic_write_text(list_file, "".join(line + "\n" for line in lines))
    summary.print(PROG, f"({len(videos)} videos; list: {list_file})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
