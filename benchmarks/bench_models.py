"""Train-step time and peak memory of the backbones with BN vs SN vs GN.

    python benchmarks/bench_models.py [--archs i3d_r50 r3d_18 slowfast_r50 x3d_m] [--norms bn sn gn]
        [--clips 2] [--frames 16] [--size 112] [--steps 7] [--compile] [--device cpu]

A step is forward + cross-entropy + backward + SGD (momentum) step. All variants live in one
process and are measured interleaved (step i of every variant, in rotating order, before step
i + 1), so drifting machine load hits them alike; the table reports medians and the ratio to the
BN model of the same arch in the same mode (eager vs eager, compiled vs compiled). Wall-clock
median and minimum and the median process CPU time are all printed: on a shared machine the
minimum and the CPU time are the better estimates of the unloaded cost.

--fold-eval [bn|random|CHECKPOINT]: instead, eval-mode forward time (no grad) of the BN model,
the same network with Sparse SN, and that SSN model after snvideo.norm.fold_for_inference, each
SSN layer's one-hot choice set to BN everywhere (`bn`), drawn at random per layer for means and
variances (`random`, seeded), or read from a trained SSN checkpoint of train.py (its arch and
arch kwargs; the BN twin is built alike).

Peak memory: on CUDA, torch.cuda.max_memory_allocated over a step minus the memory allocated
before it. On CPU, each variant runs in a fresh subprocess that reports its peak RSS
(ru_maxrss) minus its RSS just before the first step: activations, gradients and optimizer
state, plus allocator slack (RSS counts pages, not tensors).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from snvideo.models import build_model


@dataclass
class Variant:
    arch: str
    norm: str
    model: torch.nn.Module
    step_fn: object
    times: list[float]       # wall seconds per step
    cpu_times: list[float]   # process CPU seconds per step (all threads)


def make_step(model: torch.nn.Module, clips: torch.Tensor, labels: torch.Tensor, compile_: bool):
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    forward = torch.compile(model) if compile_ else model

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(forward(clips), labels).backward()
        optimizer.step()
    return step


def inputs(args, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    clips = torch.randn(args.clips, 3, args.frames, args.size, args.size, generator=gen)
    labels = torch.randint(0, args.num_classes, (args.clips,), generator=gen)
    return clips.to(device), labels.to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _current_rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def probe_memory(args, arch: str, norm: str) -> float:
    """Peak extra memory of train steps, in MiB (run in a fresh process on CPU)."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(arch, args.num_classes, norm=norm).to(device).train()
    clips, labels = inputs(args, device)
    step = make_step(model, clips, labels, args.compile)
    if device.type == "cuda":
        step()  # warm-up: allocator, kernels, optimizer state
        sync(device)
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        sync(device)
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    if args.compile:
        step()  # compile outside the measured window (its memory stays in the peak, though)
    before = _current_rss_kib()
    for _ in range(2):
        step()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024


def peak_memory(args, arch: str, norm: str) -> float:
    if args.device != "cpu":
        return probe_memory(args, arch, norm)
    cmd = [sys.executable, __file__, "--memory-probe", arch, norm, "--clips", str(args.clips),
           "--frames", str(args.frames), "--size", str(args.size), "--device", args.device,
           "--num-classes", str(args.num_classes)] + (["--compile"] if args.compile else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mib"]


def time_variants(args) -> list[Variant]:
    device = torch.device(args.device)
    clips, labels = inputs(args, device)
    variants = []
    for arch in args.archs:
        for norm in args.norms:
            torch.manual_seed(0)
            model = build_model(arch, args.num_classes, norm=norm).to(device).train()
            variants.append(Variant(arch, norm, model,
                                    make_step(model, clips, labels, args.compile), [], []))
    return run_interleaved(args, variants)


def run_interleaved(args, variants: list[Variant]) -> list[Variant]:
    """Warm-up, then step i of every variant (in rotating order) before step i + 1."""
    device = torch.device(args.device)
    for v in variants:  # warm-up (and compilation) outside the measurements
        for _ in range(args.warmup):
            v.step_fn()
        sync(device)
    for i in range(args.steps):
        order = variants[i % len(variants):] + variants[: i % len(variants)]
        for v in order:
            sync(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            v.step_fn()
            sync(device)
            v.times.append(time.perf_counter() - start)
            v.cpu_times.append(time.process_time() - start_cpu)
    return variants


def fold_eval_variants(args) -> list[Variant]:
    """BN, SSN and folded SSN models of each arch, timed interleaved in eval mode."""
    import copy

    from snvideo.norm import fold_for_inference, is_switch_norm

    device = torch.device(args.device)
    clips, _ = inputs(args, device)
    builds = []
    if args.fold_eval in ("bn", "random"):
        for arch in args.archs:
            torch.manual_seed(0)
            ssn = build_model(arch, args.num_classes, norm="ssn").eval()
            gen = torch.Generator().manual_seed(0)
            with torch.no_grad():
                for layer in (m for m in ssn.modules() if is_switch_norm(m)):
                    for logits in (layer.mean_weight, layer.var_weight):
                        k = logits.numel() - 1 if args.fold_eval == "bn" else \
                            int(torch.randint(logits.numel(), (1,), generator=gen))
                        logits.copy_(10 * torch.nn.functional.one_hot(torch.tensor(k),
                                                                      logits.numel()))
            torch.manual_seed(0)
            builds.append((arch, {}, ssn))
    else:
        from snvideo.config import config_for_checkpoint
        from snvideo.engine.builders import model_from_checkpoint
        from snvideo.engine.checkpoint import load_checkpoint

        checkpoint = load_checkpoint(args.fold_eval)
        cfg = config_for_checkpoint(None, [], checkpoint, args.fold_eval)
        builds.append((cfg.model.arch, dict(cfg.model.arch_kwargs),
                       model_from_checkpoint(cfg, checkpoint).eval()))
    variants = []
    for arch, arch_kwargs, ssn in builds:
        num_classes = ssn.fc.out_features
        bn = build_model(arch, num_classes, norm="bn", **arch_kwargs).eval()
        folded, fold_report = fold_for_inference(copy.deepcopy(ssn), probe=clips[:1].cpu())
        print(f"{arch}: {fold_report}")
        for norm, model in (("bn", bn), ("ssn", ssn), ("ssn folded", folded)):
            model = model.to(device).eval()

            def forward(model=model) -> None:
                with torch.no_grad():
                    model(clips)
            variants.append(Variant(arch, norm, model, forward, [], []))
    return run_interleaved(args, variants)


def report(args, variants: list[Variant], memory: dict[tuple[str, str], float]) -> str:
    mode = "compiled" if args.compile else "eager"
    if args.fold_eval:
        mode += " eval forward (no grad), times per forward"
    lines = [
        f"machine: {platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, device {args.device}"
        + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else ""),
        f"input: {args.clips} clips x 3x{args.frames}x{args.size}x{args.size}, "
        f"{args.num_classes} classes, mode {mode}, {args.steps} interleaved steps "
        f"after {args.warmup} warm-up",
        "",
        "| arch | norm | wall median (s) | wall min (s) | CPU median (s) | median vs bn "
        "| min vs bn | CPU vs bn | peak mem (MiB) | mem vs bn |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    stats = {(v.arch, v.norm): (statistics.median(v.times), min(v.times),
                                statistics.median(v.cpu_times)) for v in variants}

    def ratio(value: float | None, base: float | None, digits: int) -> str:
        return f"{value / base:.{digits}f}x" if value is not None and base else "-"

    for v in variants:
        mine, base = stats[(v.arch, v.norm)], stats.get((v.arch, "bn"))
        mem, base_mem = memory.get((v.arch, v.norm)), memory.get((v.arch, "bn"))
        ratios = [ratio(m, b, 3) for m, b in zip(mine, base)] if base else ["-"] * 3
        lines.append(f"| {v.arch} | {v.norm} | " + " | ".join(f"{t:.3f}" for t in mine)
                     + " | " + " | ".join(ratios) + " | "
                     + (f"{mem:.0f}" if mem is not None else "-")
                     + f" | {ratio(mem, base_mem, 2)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archs", nargs="+",
                        default=["i3d_r50", "r3d_18", "slowfast_r50", "x3d_m"])
    parser.add_argument("--norms", nargs="+", default=["bn", "sn", "gn"])
    parser.add_argument("--clips", type=int, default=2)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--num-classes", type=int, default=400)
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--compile", action="store_true", help="torch.compile every model")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory probes")
    parser.add_argument("--memory-probe", nargs=2, metavar=("ARCH", "NORM"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--fold-eval", metavar="bn|random|CHECKPOINT",
                        help="eval forward of BN vs SSN vs folded SSN (see the docstring)")
    args = parser.parse_args(argv)
    if args.fold_eval:
        print(report(args, fold_eval_variants(args), {}))
        return
    if args.memory_probe:
        print(json.dumps({"peak_mib": probe_memory(args, *args.memory_probe)}))
        return
    memory = {} if args.no_memory else {(a, n): peak_memory(args, a, n)
                                        for a in args.archs for n in args.norms}
    print(report(args, time_variants(args), memory))


if __name__ == "__main__":
    main()
