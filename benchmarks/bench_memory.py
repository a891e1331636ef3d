"""Peak memory and step time per clip of i3d_r50 at 1/2/4/8 clips per GPU, with and without
activation checkpointing (checkpoint_stages) and AMP — the tight-memory settings of train.py.

    python benchmarks/bench_memory.py                    # CPU: small input, peak RSS
    python benchmarks/bench_memory.py --device cuda      # GPU: 32x224x224, max_memory_allocated
    python benchmarks/bench_memory.py --quick

Each setting runs in its own subprocess (peak RSS only grows), takes `--steps` training steps
(forward, backward, SGD update) and reports the peak memory above the model's resting state
(weights, gradients and optimizer state excluded) — i.e. the activation memory the clips cost.
On CPU the subprocesses run with glibc's mmap threshold fixed at 128 KiB
(MALLOC_MMAP_THRESHOLD_), so every activation-sized buffer is returned to the system when freed
and peak RSS follows the peak of live tensors instead of the allocator's cached heap.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_one(args) -> dict:
    """One setting, in this process: returns peak activation memory (MB) and s/clip."""
    from snvideo.models import build_model

    torch.manual_seed(0)
    device = torch.device(args.device)
    model = build_model("i3d_r50", 400, norm=args.norm, checkpoint_stages=args.checkpoint).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    shape = (args.clips, 3, args.frames, args.size, args.size)
    clips = torch.randn(shape, device=device)
    labels = torch.randint(0, 400, (args.clips,), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp)

    def step():
        with autocast:
            loss = torch.nn.functional.cross_entropy(model(clips).float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # creates gradients and optimizer state: the resting state after this
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        base = None
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20 - base
    else:
        peak = rss_mb() - args.rest_rss
    return {"peak_mb": peak, "s_per_clip": sorted(times)[len(times) // 2] / args.clips}


def resting_rss(args) -> float:
    """Peak RSS of a process that builds the model and optimizer state but runs no clips."""
    from snvideo.models import build_model

    model = build_model("i3d_r50", 400, norm=args.norm)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    return rss_mb()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--norm", default="sn")
    parser.add_argument("--frames", type=int, default=None)
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--clips-list", default=None, help="comma-separated clips per GPU")
    # internal: run a single setting and print JSON
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--clips", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--amp", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rest-rss", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--rest", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    gpu = args.device.startswith("cuda")
    args.frames = args.frames or (32 if gpu else 8)
    args.size = args.size or (224 if gpu else 64)
    args.steps = args.steps or (2 if args.quick else 3)
    if args.rest:
        print(json.dumps({"rest_rss": resting_rss(args)}))
        return 0
    if args.one:
        print(json.dumps(run_one(args)))
        return 0

    clips_list = [int(c) for c in (args.clips_list or ("1,2" if args.quick else "1,2,4,8")).split(",")]
    common = [sys.executable, os.path.abspath(__file__), "--device", args.device, "--norm", args.norm,
              "--frames", str(args.frames), "--size", str(args.size), "--steps", str(args.steps)]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    rest = 0.0
    if not gpu:
        rest = json.loads(subprocess.check_output(common + ["--rest"], env=env))["rest_rss"]
    machine = (torch.cuda.get_device_name() if gpu else
               f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads")
    print(f"# i3d_r50 ({args.norm}) training-step memory — {machine}, torch {torch.__version__}, "
          f"input 3x{args.frames}x{args.size}x{args.size}")
    print("peak = " + ("torch.cuda.max_memory_allocated above the resting state" if gpu else
                       f"peak RSS above a process holding model + grads + optimizer state ({rest:.0f} MB)"))
    print("| clips/GPU | amp | checkpoint_stages | peak MB | s/clip | peak vs no checkpointing |")
    print("|---|---|---|---|---|---|")
    for clips in clips_list:
        for amp in (False, True):
            baseline = None
            for ckpt in (False, True):
                cmd = common + ["--one", "--clips", str(clips), "--rest-rss", str(rest)]
                cmd += ["--amp"] if amp else []
                cmd += ["--checkpoint"] if ckpt else []
                r = json.loads(subprocess.check_output(cmd, env=env).decode().strip().splitlines()[-1])
                baseline = baseline or r["peak_mb"]
                ratio = r["peak_mb"] / baseline if baseline > 0 else float("nan")
                print(f"| {clips} | {'bf16' if amp else 'off'} | {'on' if ckpt else 'off'} "
                      f"| {r['peak_mb']:.0f} | {r['s_per_clip']:.3f} | {ratio:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
