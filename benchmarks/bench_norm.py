"""Forward+backward time and saved memory of SwitchNorm3d against nn.BatchNorm3d, in one run.

    python benchmarks/bench_norm.py            # the four issue shapes, fp32, contiguous
    python benchmarks/bench_norm.py --quick    # small shapes, a few repeats
    python benchmarks/bench_norm.py --device cuda --dtypes fp32,bf16 \
        --formats contiguous,channels_last_3d --sync --kernels eager,triton

Variants, timed interleaved (each repeat runs every variant once; medians are reported), each
at every --dtypes x --formats setting (bf16: bf16 input and output, fp32 parameters, as a layer
sees it under autocast):
  bn        nn.BatchNorm3d (eager; cuDNN on CUDA)
  sn        snvideo SwitchNorm3d (default construction); with SN's `kernel=` option, one
            column per --kernels entry: sn[eager], sn[triton]
  plain     the same SN math as plain ops with autograd (our exact fallback path)
  naive     SN written like the official implementation: separate eager ops on (N, C, -1) views
  syncbn, syncsn   (--sync) nn.SyncBatchNorm (CUDA only: it refuses CPU inputs) and
            SyncSwitchNorm in a single-process group (gloo on CPU, nccl on CUDA)
  bn_compiled, sn_compiled   (--compile) torch.compile'd BN and SN
On CUDA each timing covers --inner calls between two synchronizations.
"""
from __future__ import annotations

import argparse
import inspect
import os
import platform
import statistics
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from snvideo.norm import SwitchNorm3d, SyncSwitchNorm  # noqa: E402
from snvideo.norm.functional import switch_norm_reference  # noqa: E402

# the I3D-R50 stem's output (8 clips of 32 frames: 16 x 112 x 112 after the stride-2 stem),
# res2 at 8 and 2 clips, res3, res5
SHAPES = [(8, 64, 16, 112, 112), (8, 64, 16, 56, 56), (4, 256, 8, 28, 28), (2, 64, 32, 56, 56),
          (2, 2048, 4, 7, 7)]
QUICK_SHAPES = [(2, 32, 8, 28, 28), (2, 512, 4, 7, 7)]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FORMATS = {"contiguous": torch.contiguous_format, "channels_last_3d": torch.channels_last_3d}


class NaiveSwitchNorm3d(SwitchNorm3d):
    """The official code's style: every statistic a separate op, autograd through all of them."""

    def forward(self, x):
        n, c = x.shape[:2]
        flat = x.reshape(n, c, -1)  # a copy for channels_last inputs, as the official view fails
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


def has_kernel_option() -> bool:
    """Whether SwitchNorm3d takes `kernel=` ("auto" | "triton" | "eager")."""
    return "kernel" in inspect.signature(SwitchNorm3d.__init__).parameters


def sn_layer(channels: int, kernel: str | None = None, sync: bool = False) -> nn.Module:
    kwargs = {"kernel": kernel} if kernel is not None else {}
    return SyncSwitchNorm(channels, **kwargs) if sync else SwitchNorm3d(channels, **kwargs)


def init_single_process_group(device: torch.device) -> bool:
    """A world of one process (gloo on CPU, nccl on CUDA), for SyncSwitchNorm / SyncBatchNorm.
    Returns False if a group already exists (then it is left alone)."""
    if dist.is_initialized():
        return False
    init_file = tempfile.NamedTemporaryFile(prefix="snvideo_pg_", delete=False).name
    os.remove(init_file)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method=f"file://{init_file}", rank=0, world_size=1)
    return True


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
        torch.cuda.synchronize(device)


def batch_norm_backend(x: torch.Tensor, layer: nn.BatchNorm3d) -> str:
    """Which BatchNorm implementation torch picks for x in training ("cudnn", "native",
    "miopen"; "?" when this torch cannot say): bf16 may not go to cuDNN."""
    try:
        backend = torch._C._select_batch_norm_backend(x, layer.weight, layer.bias,
                                                      layer.running_mean, layer.running_var,
                                                      True, layer.eps)
    except (AttributeError, RuntimeError, TypeError):
        return "?"
    return str(backend).rsplit(".", 1)[-1].lower()


def variant_layers(channels: int, kernels: list[str] | None, sync_norms: bool,
                   compile_: bool, naive: bool = True, plain: bool = True,
                   device: torch.device | None = None) -> dict[str, nn.Module]:
    """The layers to time, by column name; kernels=None: SN's default construction only."""
    variants: dict[str, nn.Module] = {"bn": nn.BatchNorm3d(channels)}
    for kernel in kernels or [None]:
        variants["sn" if kernel is None else f"sn[{kernel}]"] = sn_layer(channels, kernel)
    if plain:
        variants["plain"] = PlainSwitchNorm3d(channels)
    if naive:
        variants["naive"] = NaiveSwitchNorm3d(channels)
    if sync_norms:
        if device is not None and device.type == "cuda":  # SyncBatchNorm refuses CPU inputs
            variants["syncbn"] = nn.SyncBatchNorm(channels)
        for kernel in kernels or [None]:
            name = "syncsn" if kernel is None else f"syncsn[{kernel}]"
            variants[name] = sn_layer(channels, kernel, sync=True)
    if compile_:
        variants["bn_compiled"] = torch.compile(nn.BatchNorm3d(channels))
        variants["sn_compiled"] = torch.compile(SwitchNorm3d(channels))
    return variants


def bench_shape(shape, device, repeats: int, compile_: bool = False,
                dtype: torch.dtype = torch.float32,
                memory_format: torch.memory_format = torch.contiguous_format,
                kernels: list[str] | None = None, sync_norms: bool = False, inner: int = 1,
                naive: bool = True, plain: bool = True, saved: bool = True) -> dict[str, float]:
    """Median seconds of one forward+backward per variant at `shape`, plus saved_* ratios."""
    channels = shape[1]
    variants = variant_layers(channels, kernels, sync_norms, compile_, naive, plain,
                              torch.device(device))
    for layer in variants.values():
        layer.to(device)
    x = torch.randn(shape, device=device).to(dtype=dtype, memory_format=memory_format)
    x.requires_grad_()
    grad = torch.randn(shape, device=device).to(dtype=dtype, memory_format=memory_format)
    times: dict[str, list[float]] = {name: [] for name in variants}
    gpu_times: dict[str, list[float]] = {name: [] for name in variants}
    cuda = torch.device(device).type == "cuda"
    for step in range(repeats + 2):  # two warm-up rounds
        for name, layer in variants.items():
            sync(device)
            start = time.perf_counter()
            if cuda:  # GPU time beside wall time: small shapes are mostly host time
                events = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
                events[0].record()
            for _ in range(inner):
                x.grad = None
                layer(x).backward(grad)
            if cuda:
                events[1].record()
            sync(device)
            if step >= 2:
                times[name].append((time.perf_counter() - start) / inner)
                if cuda:
                    gpu_times[name].append(events[0].elapsed_time(events[1]) / 1e3 / inner)
    result = {name: statistics.median(t) for name, t in times.items()}
    if cuda:
        result.update({f"gpu_{name}": statistics.median(t) for name, t in gpu_times.items()})
    result["bn_backend"] = batch_norm_backend(x, variants["bn"])
    if saved:
        input_bytes = x.numel() * x.element_size()
        for name in variants:
            if name in ("bn", "naive") or name.startswith("sn"):
                result[f"saved_{name}"] = saved_bytes(variants[name], x) / input_bytes
    return result


def format_rows(rows: list[dict]) -> list[str]:
    """Markdown table: one row per (shape, dtype, format); ms and ratio to bn per variant."""
    names = [k for k in rows[0]["times"]]
    saved = [k for k in rows[0].get("saved", {})]
    gpu = [k for k in rows[0].get("gpu", {}) if k != "bn"]
    head = "| shape | dtype | format | bn ms | bn backend |"
    for name in names[1:]:
        head += f" {name} ms | {name}/bn |"
    head += "".join(f" {name}/bn GPU time |" for name in gpu)
    head += "".join(f" saved {name} |" for name in saved)
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        t = r["times"]
        line = (f"| {tuple(r['shape'])} | {r['dtype']} | {r['format']} | {t['bn'] * 1e3:.3f} | "
                f"{r.get('bn_backend', '?')} |")
        for name in names[1:]:
            line += f" {t[name] * 1e3:.3f} | {t[name] / t['bn']:.2f}x |"
        line += "".join(f" {r['gpu'][name] / r['gpu']['bn']:.2f}x |" for name in gpu)
        line += "".join(f" {r['saved'][name]:.2f} |" for name in saved)
        lines.append(line)
    return lines


def run(shapes, device: torch.device, repeats: int, dtypes: list[str], formats: list[str],
        kernels: list[str] | None, sync_norms: bool = False, compile_: bool = False,
        inner: int = 1, naive: bool = True, plain: bool = True, saved: bool = True,
        deadline: float | None = None, on_row=None) -> list[dict]:
    """Every shape x dtype x format; stops early (rows so far) once time.time() > deadline."""
    rows = []
    for shape in shapes:
        for dtype_name in dtypes:
            for format_name in formats:
                if deadline is not None and time.time() > deadline:
                    return rows
                r = bench_shape(shape, device, repeats, compile_, DTYPES[dtype_name],
                                FORMATS[format_name], kernels, sync_norms, inner, naive, plain,
                                saved)
                backend = r.pop("bn_backend")
                row = {"shape": tuple(shape), "dtype": dtype_name, "format": format_name,
                       "bn_backend": backend,
                       "times": {k: v for k, v in r.items() if not k.startswith(("saved_", "gpu_"))},
                       "gpu": {k[4:]: v for k, v in r.items() if k.startswith("gpu_")},
                       "saved": {k[6:]: v for k, v in r.items() if k.startswith("saved_")}}
                rows.append(row)
                if on_row is not None:
                    on_row(row)
    return rows


def default_kernels(device: torch.device) -> list[str] | None:
    """eager and triton on CUDA (triton when installed), eager on CPU; None without kernel=."""
    if not has_kernel_option():
        return None
    from snvideo.norm import triton_sn

    return ["eager", "triton"] if device.type == "cuda" and triton_sn.triton_available() \
        else ["eager"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small shapes, few repeats")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--inner", type=int, default=None,
                        help="calls per timing (default: 1 on CPU, 10 on CUDA)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtypes", default="fp32", help="comma-separated: fp32, bf16, fp16")
    parser.add_argument("--formats", default="contiguous",
                        help="comma-separated: contiguous, channels_last_3d")
    parser.add_argument("--kernels", default=None,
                        help="SN kernel= choices to time, comma-separated (eager, triton, auto); "
                             "default: eager,triton on CUDA, eager on CPU")
    parser.add_argument("--sync", action="store_true",
                        help="also SyncBatchNorm / SyncSwitchNorm in a single-process group")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd BN and SN")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    shapes = QUICK_SHAPES if args.quick else SHAPES
    repeats = args.repeats or (3 if args.quick else 9)
    inner = args.inner or (10 if device.type == "cuda" else 1)
    dtypes = [d.strip() for d in args.dtypes.split(",")]
    formats = [f.strip() for f in args.formats.split(",")]
    for name, given, valid in (("--dtypes", dtypes, DTYPES), ("--formats", formats, FORMATS)):
        bad = [v for v in given if v not in valid]
        if bad:
            print(f"error: {name}: unknown {', '.join(bad)} (valid: {', '.join(valid)})",
                  file=sys.stderr)
            return 2
    kernels = default_kernels(device)
    if args.kernels:
        if not has_kernel_option():
            print("error: --kernels: this SwitchNorm3d has no kernel= option", file=sys.stderr)
            return 2
        kernels = [k.strip() for k in args.kernels.split(",")]
    if args.sync:
        init_single_process_group(device)
    machine = (torch.cuda.get_device_name(device) if device.type == "cuda"
               else f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                    f"{torch.get_num_threads()} threads")
    print(f"# SwitchNorm3d vs BatchNorm3d forward+backward — {machine}, torch {torch.__version__}, "
          f"median of {repeats} x {inner} calls")
    header_printed = False

    def on_row(row):
        nonlocal header_printed
        lines = format_rows([row])
        if not header_printed:
            print("\n".join(lines[:2]))
            header_printed = True
        print(lines[2], flush=True)

    run(shapes, device, repeats, dtypes, formats, kernels, args.sync, args.compile, inner,
        on_row=on_row)
    print("saved = bytes autograd keeps for backward, in input-sized tensors (input included)")
    if args.sync and dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
