"""Deployment speed on CPU, in one run: single-clip latency of the exported ONNX model in ONNX
Runtime against PyTorch eager, and timeline throughput (windows per second) by window batch.

    python benchmarks/bench_export.py [--repeats 30] [--threads 2]

Models (SN everywhere, random weights: speed does not depend on them): the demo's
(configs/demo.yaml: resnet3d_10 at a quarter width, 8x32x32 clips) and r3d_18 (16x112x112),
batch 1, exported with `snvideo.export.export_model` (SN as standard ops). Eager runs the
model as train.py builds it (SN on its eager CPU kernels) under torch.no_grad(). Latency is
the median of --repeats calls after warm-up, the two interleaved; both use --threads threads.
The timeline rows stream a generated 20 s 320x240 video through
`snvideo.evaluation.timeline.stream_windows` with the demo model, a window every 0.5 s.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def latency(run, clip, repeats: int) -> float:
    run(clip)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(clip)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def export_rows(repeats: int, workdir: str) -> list[tuple[str, float, float]]:
    import onnxruntime

    from snvideo.export import export_model
    from snvideo.models import build_model

    models = {
        "demo (resnet3d_10 x0.25, 8x32x32)": (
            build_model("resnet3d_10", 10, norm="sn", dropout=0.0, widen_factor=0.25,
                        no_max_pool=True, conv1_t_size=3), (1, 3, 8, 32, 32)),
        "r3d_18 (16x112x112)": (build_model("r3d_18", 400, norm="sn"), (1, 3, 16, 112, 112)),
    }
    rows = []
    for name, (model, shape) in models.items():
        model.eval()
        clip = torch.randn(shape)
        path = os.path.join(workdir, name.split()[0] + ".onnx")
        export_model(model, clip, "onnx", path)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        feed = session.get_inputs()[0].name

        def eager(x):
            with torch.no_grad():
                return model(x)

        def ort(x):
            return session.run(None, {feed: x.numpy()})

        eager_times, ort_times = [], []
        for _ in range(3):  # interleaved rounds
            eager_times.append(latency(eager, clip, repeats // 3 or 1))
            ort_times.append(latency(ort, clip, repeats // 3 or 1))
        rows.append((name, statistics.median(eager_times), statistics.median(ort_times)))
    return rows


def timeline_rows(workdir: str, batches: list[int]) -> list[tuple[int, float, int]]:
    import numpy as np

    from snvideo.data.synthetic import write_video
    from snvideo.evaluation.timeline import TimelineStats, stream_windows
    from snvideo.models import build_model

    video = os.path.join(workdir, "long.mp4")
    rng = np.random.default_rng(0)
    frames = np.clip(rng.normal(128, 40, (600, 240, 320, 3)), 0, 255).astype(np.uint8)
    write_video(video, frames, fps=30, codec="h264")
    model = build_model("resnet3d_10", 10, norm="sn", dropout=0.0, widen_factor=0.25,
                        no_max_pool=True, conv1_t_size=3).eval()
    rows = []
    for batch in batches:
        stats = TimelineStats()
        start = time.perf_counter()
        count = sum(1 for _ in stream_windows(model, video, 8, 2, 36, 32, 0.5, batch, stats=stats))
        rows.append((batch, count / (time.perf_counter() - start), stats.max_frames_held))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from snvideo.machine import cpu_name

    print(f"# {cpu_name()}, {os.cpu_count()} CPUs, {args.threads} threads, torch {torch.__version__}, "
          f"Python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as workdir:
        print("\n| model, batch 1 | PyTorch eager ms | ONNX Runtime ms | ORT / eager |")
        print("|---|---:|---:|---:|")
        for name, eager, ort in export_rows(args.repeats, workdir):
            print(f"| {name} | {eager * 1e3:.2f} | {ort * 1e3:.2f} | {ort / eager:.2f}x |")
        print("\n| timeline, demo model, 20 s 320x240 video | windows/s | frames held at most |")
        print("|---|---:|---:|")
        for batch, rate, held in timeline_rows(workdir, [1, 8]):
            print(f"| window batch {batch} | {rate:.1f} | {held} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
