"""Multi-view test throughput: our evaluator (each video decoded once) against a naive one that
decodes every view separately, on the same videos and the same small model, in one run.

    python benchmarks/bench_test.py            # 12 videos of 10 s, 30 fps, 320x240, 10x3 views
    python benchmarks/bench_test.py --quick    # 4 videos of 4 s, pyav only
    python benchmarks/bench_test.py --workers 2 --crop-size 32 --short-side 40
    python benchmarks/bench_test.py --device cuda --amp bf16 --channels-last

ours   snvideo.evaluation.evaluate on a test-mode VideoDataset: one get_frames call per video
       with the union of all clips' frames, each frame resized once, crops cut from memory,
       views through the model in chunks of views_per_forward.
naive  for each of the num_clips x num_crops views: open the video, read that clip's frames,
       resize, crop, normalize; then the same chunked forward and averaging.

Both produce the same views, so the benchmark also checks that their predictions agree.
Decode work is counted by the PyAV backend (every frame the decoder produced, seek overhead
included) and compared with the frames the clips span: "range" is first frame of the first
clip to last frame of the last clip (what a sequential decoder must pass over), "union" the
distinct frames inside the clips. decord does not report its decoding work, so its rows show
throughput only. Rounds alternate ours / naive; medians are reported. "views only" times
building the views without the model: the part of the work the two evaluators do differently.
With --device cuda the model runs on the GPU (our evaluator ships uint8 views and normalizes
them there; the naive one ships float views), optionally under --amp and --channels-last.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from snvideo.config import TestConfig  # noqa: E402
from snvideo.data import (VideoDataset, VideoReader, load_test_views, test_clip_indices,  # noqa: E402
                          test_transform)
from snvideo.data.synthetic import write_video  # noqa: E402
from snvideo.data.transforms import crop, to_normalized_clip  # noqa: E402
from snvideo.engine.distributed import enable_cudnn_benchmark  # noqa: E402
from snvideo.evaluation import evaluate, predict_views  # noqa: E402
from snvideo.machine import cpu_name  # noqa: E402
from snvideo.models import build_model  # noqa: E402


def make_videos(out_dir: str, count: int, seconds: float, fps: int, width: int, height: int) -> str:
    """`count` textured, moving videos (libx264 defaults: keyframe interval 250) and a list
    file `path label` naming them; existing videos are reused."""
    os.makedirs(out_dir, exist_ok=True)
    frames_per_video = int(seconds * fps)
    lines = []
    for i in range(count):
        name = f"video_{i:02d}_{frames_per_video}f_{width}x{height}.mp4"
        path = os.path.join(out_dir, name)
        if not os.path.exists(path):
            rng = np.random.default_rng(i)
            texture = rng.integers(0, 255, (height // 8 + 2, width // 8 + 2, 3), dtype=np.uint8)
            texture = texture.repeat(8, 0).repeat(8, 1)  # blocky but compressible background
            frames = np.empty((frames_per_video, height, width, 3), np.uint8)
            for t in range(frames_per_video):
                dy, dx = (t // 3) % 16, t % 16
                frames[t] = texture[dy:dy + height, dx:dx + width]
                x = int((t * 4 + 37 * i) % (width - 48))
                frames[t, height // 3:height // 3 + 48, x:x + 48] = (255 - 3 * t % 255, 40, 200)
            write_video(path, frames, fps=fps)
        lines.append(f"{name} {i % 5}\n")
    ann = os.path.join(out_dir, f"list_{count}_{frames_per_video}f_{width}x{height}.txt")
    with open(ann, "w") as f:
        f.writelines(lines)
    return ann


def naive_views(path: str, args, backend: str) -> tuple[torch.Tensor, int]:
    """Every view decoded on its own: (views, frames the decoder produced for them)."""
    transform = test_transform(args.short_side, args.crop_size, args.num_crops)
    with VideoReader(path, backend=backend) as reader:  # only to learn the frame count
        num_frames = len(reader)
    clips = test_clip_indices(num_frames, args.clip_len, args.frame_interval, args.num_clips)
    views, decoded = [], 0
    for clip in clips:
        for crop_index in range(args.num_crops):
            with VideoReader(path, backend=backend) as reader:
                frames = reader.get_frames(clip)
                decoded += reader.frames_decoded
            resized = transform.resize(frames.permute(0, 3, 1, 2))
            box = transform.boxes(resized.shape[-2], resized.shape[-1])[crop_index]
            views.append(to_normalized_clip(crop(resized, box)))
    return torch.stack(views), decoded


def run_naive(model, dataset, args, backend: str) -> tuple[float, list[torch.Tensor], list[int]]:
    start = time.perf_counter()
    all_probs, decoded = [], []
    for index in range(len(dataset)):
        views, frames = naive_views(dataset.video_path(index), args, backend)
        all_probs.append(predict_views(model, views, args.views_per_forward, "prob", args.device,
                                       amp=args.amp, channels_last=args.channels_last))
        decoded.append(frames)
    return time.perf_counter() - start, all_probs, decoded


def run_ours(model, dataset, test_cfg, args) -> tuple[float, dict]:
    start = time.perf_counter()
    results = evaluate(model, dataset, test_cfg, device=args.device, progress=False,
                       amp=args.amp, channels_last=args.channels_last)
    return time.perf_counter() - start, results


def time_views(load, count: int) -> float:
    """Seconds to build every video's views (decode, resize, crop, normalize), no model."""
    start = time.perf_counter()
    for index in range(count):
        load(index)
    return time.perf_counter() - start


def decode_work(dataset, args, backend: str) -> list[tuple[int, int, int]]:
    """(frames decoded, frames in the clips' first-to-last range, union of clip spans) per
    video, as our evaluator's dataset item decodes them."""
    rows = []
    for index in range(len(dataset)):
        _, info = load_test_views(dataset.video_path(index), args.num_clips, args.clip_len,
                                  args.frame_interval, args.short_side, args.crop_size,
                                  args.num_crops, backend=backend)
        clip_range = int(info.clip_indices.max() - info.clip_indices.min() + 1)
        rows.append((info.frames_decoded, clip_range, info.frames_spanned))
    return rows


def bench_backend(backend: str, model, ann: str, root: str, args) -> dict:
    dataset = VideoDataset(ann, root, clip_len=args.clip_len, frame_interval=args.frame_interval,
                           num_clips=args.num_clips, test_mode=True, short_side=args.short_side,
                           crop_size=args.crop_size, num_crops=args.num_crops, backend=backend)
    test_cfg = TestConfig(num_clips=args.num_clips, num_crops=args.num_crops,
                          views_per_forward=args.views_per_forward, average="prob",
                          num_workers=args.workers)
    ours_times, naive_times, ours_views, naive_views_s = [], [], [], []
    for _ in range(args.rounds):
        seconds, results = run_ours(model, dataset, test_cfg, args)
        ours_times.append(seconds)
        seconds, naive_probs, naive_decoded = run_naive(model, dataset, args, backend)
        naive_times.append(seconds)
        ours_views.append(time_views(lambda i: dataset[i], len(dataset)))
        naive_views_s.append(time_views(
            lambda i: naive_views(dataset.video_path(i), args, backend), len(dataset)))
    ours_pred = [v["pred_index"] for v in results["videos"]]
    naive_pred = [int(p.argmax()) for p in naive_probs]
    ours_top = [v["top5"][0][1] for v in results["videos"]]
    tolerance = 1e-4 if args.amp == "off" else 2e-2
    agree = ours_pred == naive_pred and np.allclose(ours_top, [float(p.max()) for p in naive_probs],
                                                    atol=tolerance)
    work = decode_work(dataset, args, backend) if backend == "pyav" else None
    return {"backend": backend, "videos": len(dataset), "ours_s": statistics.median(ours_times),
            "naive_s": statistics.median(naive_times), "agree": agree, "work": work,
            "ours_views_s": statistics.median(ours_views),
            "naive_views_s": statistics.median(naive_views_s),
            "naive_decoded": naive_decoded if backend == "pyav" else None}


def table(rows: list[dict]) -> str:
    def ratio(a, b):
        return f"{a / b:.2f}x"

    out = ["| backend | evaluator | videos/s | s/video | views only s/video | "
           "frames decoded/video | decoded / clip range | decoded / clip union | "
           "speedup (end-to-end) | speedup (views only) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        n = r["videos"]
        for kind in ("ours", "naive"):
            seconds, views_s = r[f"{kind}_s"], r[f"{kind}_views_s"]
            decoded, range_ratio, union_ratio = "n/a", "n/a", "n/a"
            if r["work"] is not None:
                frames = [w[0] for w in r["work"]] if kind == "ours" else r["naive_decoded"]
                decoded = f"{statistics.mean(frames):.0f}"
                range_ratio = ratio(sum(frames), sum(w[1] for w in r["work"]))
                union_ratio = ratio(sum(frames), sum(w[2] for w in r["work"]))
            if kind == "ours":
                name = "ours (decode once)"
                speed = (ratio(r["naive_s"], seconds), ratio(r["naive_views_s"], views_s))
            else:
                name, speed = "naive (per view)", ("1.00x", "1.00x")
            out.append(f"| {r['backend']} | {name} | {n / seconds:.2f} | {seconds / n:.3f} | "
                       f"{views_s / n:.3f} | {decoded} | {range_ratio} | {union_ratio} | "
                       f"{speed[0]} | {speed[1]} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="4 videos of 4 s, one round, pyav only")
    p.add_argument("--videos", type=int, default=12)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--size", default="320x240", help="WIDTHxHEIGHT of the generated videos")
    p.add_argument("--arch", default="resnet3d_10")
    p.add_argument("--num-clips", type=int, default=10)
    p.add_argument("--num-crops", type=int, default=3)
    p.add_argument("--clip-len", type=int, default=8)
    p.add_argument("--frame-interval", type=int, default=2)
    p.add_argument("--short-side", type=int, default=64)
    p.add_argument("--crop-size", type=int, default=56)
    p.add_argument("--views-per-forward", type=int, default=10)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--workers", type=int, default=0,
                   help="DataLoader workers of our evaluator (test.num_workers; naive has none)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier timings)")
    p.add_argument("--backends", default="pyav,auto", help="comma-separated VideoReader backends")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="where the model runs (default: cuda when available)")
    p.add_argument("--amp", default="off", choices=("off", "bf16", "fp16"),
                   help="autocast dtype of the model's forward, as train.amp")
    p.add_argument("--channels-last", action="store_true",
                   help="channels_last_3d model and inputs, as train.channels_last")
    p.add_argument("--video-dir", default=os.path.join(tempfile.gettempdir(), "snvideo_bench_test"))
    args = p.parse_args(argv)
    if args.quick:
        args.videos, args.seconds, args.rounds, args.backends = 4, 4.0, 1, "pyav"
    width, height = (int(v) for v in args.size.lower().split("x"))
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    ann = make_videos(args.video_dir, args.videos, args.seconds, args.fps, width, height)
    print(f"{args.videos} videos of {args.seconds:g} s at {args.fps} fps, {width}x{height} "
          f"(made/reused in {time.perf_counter() - start:.1f}s, {args.video_dir})", flush=True)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = build_model(args.arch, 5, norm="sn", dropout=0.0).eval().to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last_3d)
    enable_cudnn_benchmark(device)
    warm = torch.randn(args.views_per_forward, 3, args.clip_len, args.crop_size, args.crop_size)
    predict_views(model, warm, args.views_per_forward, "prob", device, amp=args.amp,
                  channels_last=args.channels_last)  # first-call allocations out of the timings

    rows = []
    for backend in args.backends.split(","):
        rows.append(bench_backend(backend.strip(), model, ann, args.video_dir, args))
        r = rows[-1]
        print(f"  {backend}: ours {r['ours_s']:.1f}s, naive {r['naive_s']:.1f}s, "
              f"predictions agree: {r['agree']}", flush=True)

    print()
    gpu = f", model on {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    print(f"Machine: {cpu_name()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
          f"({args.threads} thread(s)), Python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.1f}{gpu}")
    print(f"Model: {args.arch} (SN), {args.num_clips} clips x {args.num_crops} crops, clip "
          f"{args.clip_len}x{args.frame_interval}, short side {args.short_side}, crop "
          f"{args.crop_size}, {args.views_per_forward} views per forward; our DataLoader workers "
          f"{args.workers}; amp {args.amp}, channels_last {args.channels_last}")
    print()
    print(table(rows))
    ok = all(r["agree"] for r in rows)
    print(f"\npredictions of ours and naive agree on every video: {'yes' if ok else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
