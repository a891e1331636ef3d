"""Forward+backward time and saved memory of SwitchNorm3d against nn.BatchNorm3d, in one run.

    python benchmarks/bench_norm.py            # the four issue shapes
    python benchmarks/bench_norm.py --quick    # small shapes, a few repeats
    python benchmarks/bench_norm.py --device cuda

Variants, timed interleaved (each repeat runs every variant once; medians are reported):
  bn     nn.BatchNorm3d (eager)
  sn     snvideo SwitchNorm3d (default construction: custom autograd.Function)
  plain  the same SN math as plain ops with autograd (our exact fallback path)
  naive  SN written like the official implementation: separate eager ops on (N, C, -1) views
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from snvideo.norm import SwitchNorm3d  # noqa: E402
from snvideo.norm.functional import switch_norm_reference  # noqa: E402

SHAPES = [(8, 64, 16, 56, 56), (4, 256, 8, 28, 28), (2, 64, 32, 56, 56), (2, 2048, 4, 7, 7)]
QUICK_SHAPES = [(2, 32, 8, 28, 28), (2, 512, 4, 7, 7)]


class NaiveSwitchNorm3d(SwitchNorm3d):
    """The official code's style: every statistic a separate op, autograd through all of them."""

    def forward(self, x):
        n, c = x.shape[:2]
        flat = x.view(n, c, -1)
        mean_in = flat.mean(-1, keepdim=True)
        var_in = flat.var(-1, unbiased=False, keepdim=True)
        mean_ln = mean_in.mean(1, keepdim=True)
        temp = var_in + mean_in ** 2
        var_ln = temp.mean(1, keepdim=True) - mean_ln ** 2
        mean_bn = mean_in.mean(0, keepdim=True)
        var_bn = temp.mean(0, keepdim=True) - mean_bn ** 2
        with torch.no_grad():
            self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean_bn.view(-1))
            self.running_var.mul_(1 - self.momentum).add_(self.momentum * var_bn.view(-1))
        mw = F.softmax(self.mean_weight, 0)
        vw = F.softmax(self.var_weight, 0)
        mean = mw[0] * mean_in + mw[1] * mean_ln + mw[2] * mean_bn
        var = vw[0] * var_in + vw[1] * var_ln + vw[2] * var_bn
        out = (flat - mean) / (var + self.eps).sqrt()
        return out.view_as(x) * self.weight.view(1, c, 1, 1, 1) + self.bias.view(1, c, 1, 1, 1)


class PlainSwitchNorm3d(SwitchNorm3d):
    """Our SN math with autograd through plain ops (the exact eager fallback)."""

    def forward(self, x):
        return switch_norm_reference(x, self.mean_weight, self.var_weight, self.weight, self.bias,
                                     self.running_mean, self.running_var, True, self.momentum,
                                     self.eps)


def saved_bytes(layer: nn.Module, x: torch.Tensor) -> int:
    """Bytes of tensors autograd saves for backward (distinct storages, input included)."""
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x)
    return sum(seen.values())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_shape(shape, device, repeats: int, compile_: bool) -> dict[str, float]:
    channels = shape[1]
    variants = {"bn": nn.BatchNorm3d(channels), "sn": SwitchNorm3d(channels),
                "plain": PlainSwitchNorm3d(channels), "naive": NaiveSwitchNorm3d(channels)}
    if compile_:
        variants["bn_compiled"] = torch.compile(nn.BatchNorm3d(channels))
        variants["sn_compiled"] = torch.compile(SwitchNorm3d(channels))
    for layer in variants.values():
        layer.to(device)
    x = torch.randn(shape, device=device, requires_grad=True)
    grad = torch.randn(shape, device=device)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for step in range(repeats + 2):  # two warm-up rounds
        for name, layer in variants.items():
            x.grad = None
            sync(device)
            start = time.perf_counter()
            layer(x).backward(grad)
            sync(device)
            if step >= 2:
                times[name].append(time.perf_counter() - start)
    result = {name: statistics.median(t) for name, t in times.items()}
    input_bytes = x.numel() * x.element_size()
    for name in ("bn", "sn", "naive"):
        result[f"saved_{name}"] = saved_bytes(variants[name], x) / input_bytes
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small shapes, few repeats")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd BN and SN")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    shapes = QUICK_SHAPES if args.quick else SHAPES
    repeats = args.repeats or (3 if args.quick else 9)
    machine = (torch.cuda.get_device_name(device) if device.type == "cuda"
               else f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                    f"{torch.get_num_threads()} threads")
    print(f"# SwitchNorm3d vs BatchNorm3d forward+backward — {machine}, torch {torch.__version__}, "
          f"median of {repeats}")
    cols = "| shape | bn ms | sn ms | sn/bn | plain ms | plain/bn | naive ms | naive/bn |"
    cols += " saved bn | saved sn | saved naive |"
    if args.compile:
        cols += " bn compiled ms | sn compiled ms | sn/bn compiled |"
    print(cols)
    print("|" + "---|" * (cols.count("|") - 1))
    for shape in shapes:
        r = bench_shape(shape, device, repeats, args.compile)
        row = (f"| {tuple(shape)} | {r['bn']*1e3:.2f} | {r['sn']*1e3:.2f} | {r['sn']/r['bn']:.2f}x "
               f"| {r['plain']*1e3:.2f} | {r['plain']/r['bn']:.2f}x | {r['naive']*1e3:.2f} "
               f"| {r['naive']/r['bn']:.2f}x | {r['saved_bn']:.2f} | {r['saved_sn']:.2f} "
               f"| {r['saved_naive']:.2f} |")
        if args.compile:
            row += (f" {r['bn_compiled']*1e3:.2f} | {r['sn_compiled']*1e3:.2f} "
                    f"| {r['sn_compiled']/r['bn_compiled']:.2f}x |")
        print(row, flush=True)
    print("saved = bytes autograd keeps for backward, in input-sized tensors (input included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
