"""Every GPU figure the README needs, from one command, into one report.

    python benchmarks/gpu_check.py [--device cuda] [--quick] [--out docs/gpu_report.md]
    python benchmarks/gpu_check.py --device cpu --quick     # the same script, small shapes

Sections (each one guarded: a failing section is recorded in the report and the next one runs;
norm, step, memory and decode run in their own process, so that even a crash or a broken CUDA
context stays in its section; each has a time cap, and stops between measurements once it is
reached, marked "partial", or is killed a minute after it):
  env      GPU name, driver, CUDA / cuDNN / torch / triton versions, decoders present
  tests    the suite's CUDA tests and the whole Triton kernel suite (pytest markers `cuda`
           and `triton`; on CPU the CUDA tests skip and the kernels run interpreted)
  norm     SN vs BatchNorm3d forward+backward at bench_norm.SHAPES (the I3D stem, res2 at 8 and
           2 clips, res3, res5): fp32 and bf16 x contiguous and channels_last_3d x SN kernel
           triton and eager, and the official-style naive SN, as ratios to BN from one run
           (benchmarks/bench_norm.py), wall time and, on CUDA, GPU time from CUDA events; the
           BN column names the backend torch picked for it (cuDNN or native)
  step     an i3d_r50 training step at 32x224x224 under bf16 autocast, channels_last_3d: SN, BN
           and GN at 8 and 2 clips; time per step, ratio to BN, torch.cuda.max_memory_allocated;
           on CUDA also BN and SN with the whole step captured in a CUDA graph (replays); then
           the other families (--step-archs; CUDA: slowfast_r50, x3d_m) at the first clip
           count, SN and GN against BN
  memory   the shipped i3d_r50 SN configs (1, 2, 4, 8 clips per GPU) x checkpoint_stages off/on
           x fp32/bf16: peak memory of a training step; an out-of-memory is recorded as OOM and
           the table goes on
  decode   training clips per second one DataLoader worker decodes (decord or PyAV) at the
           shipped clip settings, against the measured GPU step: decode workers per GPU
           (skipped without a decoder)
The full CUDA run is budgeted to about 8 minutes on one H100/H200 (caps in CAPS). On CPU ("--device cpu
--quick") steps run without a GPU, memory is what autograd saves for backward (the CPU has no
allocator peak to read), and the caps keep the run within 5 minutes on 2 cores. Besides the
markdown report, the numbers go to the same path with .json.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import glob
import importlib.util
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import bench_norm  # noqa: E402

from snvideo.config import load_config  # noqa: E402
from snvideo.machine import cpu_name  # noqa: E402
from snvideo.models import build_model  # noqa: E402

SECTIONS = ("env", "tests", "norm", "step", "memory", "decode")
TITLES = {"env": "Environment", "tests": "CUDA tests (pytest -m cuda)",
          "norm": "SN vs BatchNorm3d, forward + backward",
          "step": "Training step, SN vs BN vs GN (bf16 autocast, channels_last_3d)",
          "memory": "Training memory of the shipped configs",
          "decode": "Decode throughput per DataLoader worker vs the GPU step"}
# seconds per section: the full CUDA run, and --quick (CPU-sized)
CAPS = {"env": 20, "tests": 120, "norm": 80, "step": 110, "memory": 110, "decode": 30}
QUICK_CAPS = {"env": 20, "tests": 45, "norm": 30, "step": 50, "memory": 80, "decode": 25}
SHIPPED = "configs/i3d_r50_sn_k400_32x2_{}pergpu.yaml"
STEP_ARCHS = ("slowfast_r50", "x3d_m")  # the step section's other families (README's rows)


@dataclass
class Section:
    name: str
    lines: list[str] = field(default_factory=list)  # markdown body
    data: dict = field(default_factory=dict)         # the numbers, for the JSON copy
    status: str = "ok"                               # ok | partial | skipped | failed
    note: str = ""
    seconds: float = 0.0


@dataclass
class Settings:
    device: torch.device
    quick: bool
    norm_shapes: list[tuple[int, ...]]
    repeats: int
    frames: int
    size: int
    step_clips: list[int]
    memory_clips: list[int]
    steps: int
    arch: str
    step_archs: list[str]
    decode_items: int
    video_seconds: float
    caps: dict

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


class CapReached(Exception):
    """Raised between measurements once a section's time cap has passed."""


def run_section(name: str, fn: Callable[[Section, Settings, dict], None], settings: Settings,
                done: dict) -> Section:
    """Run one section; any exception becomes a "failed" section with its reason, never an abort."""
    section = Section(name)
    start = time.time()
    section.data["deadline"] = start + settings.caps.get(name, 60)
    try:
        fn(section, settings, done)
    except CapReached:
        section.status = "partial"
        section.note = f"time cap of {settings.caps.get(name)} s reached; rows so far are shown"
    except Exception as e:  # noqa: BLE001 — recorded in the report, the next section runs
        section.status = "failed"
        section.note = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        section.lines += ["", "<details><summary>traceback</summary>", "", "```",
                          *traceback.format_exc().splitlines()[-12:], "```", "</details>"]
    section.data.pop("deadline", None)
    section.seconds = time.time() - start
    if settings.cuda:
        gc.collect()
        torch.cuda.empty_cache()
    return section


_WORKER_OUT: str | None = None  # set in a section's child process: where its rows so far go


def check_cap(section: Section) -> None:
    """Called before each measurement: stop at the cap; in a child process, first save the
    rows so far, so a crash in the next measurement loses only that one."""
    if _WORKER_OUT:
        with open(_WORKER_OUT, "w") as f:
            json.dump(dataclasses.asdict(section), f, default=str)
    if time.time() > section.data["deadline"]:
        raise CapReached


# --- env ---------------------------------------------------------------------------------------
def section_env(section: Section, s: Settings, done: dict) -> None:
    info = {"python": platform.python_version(), "torch": torch.__version__,
            "torch cuda": torch.version.cuda or "none",
            "cudnn": str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available()
            else "none",
            "triton": package_version("triton"), "cpu": cpu_name(),
            "cpu cores": str(os.cpu_count()),
            "decoders": ", ".join(n for n in ("decord", "av") if has_module(n)) or "none"}
    if s.cuda:
        props = torch.cuda.get_device_properties(s.device)
        info.update({"gpu": props.name, "gpu memory": f"{props.total_memory / 2**30:.1f} GiB",
                     "compute capability": f"{props.major}.{props.minor}",
                     "multiprocessors": str(props.multi_processor_count),
                     "driver": nvidia_smi("driver_version")})
    else:
        info["gpu"] = "none (device cpu)"
    section.data.update(info)
    section.lines += ["| what | value |", "|---|---|"]
    section.lines += [f"| {k} | {v} |" for k, v in info.items()]


def package_version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # noqa: BLE001
        return "not installed"


def has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def nvidia_smi(query: str) -> str:
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=15)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown (no nvidia-smi)"


# --- tests -------------------------------------------------------------------------------------
def section_tests(section: Section, s: Settings, done: dict) -> None:
    files = sorted(f for f in glob.glob(os.path.join(REPO, "tests", "test_*.py"))
                   if "mark.cuda" in open(f).read() or "mark.triton" in open(f).read())
    if not files:
        raise RuntimeError("no test file uses the cuda or triton marker")
    timeout = max(10, section.data["deadline"] - time.time())
    # the CUDA tests and the whole Triton kernel suite (on the GPU there, not the interpreter)
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda or triton", "-p", "no:cacheprovider",
           "-o", "addopts=-ra", *files]
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        output, code = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        output = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) \
            else (e.stdout or "")
        code = None
    counts = {k: int(v) for v, k in re.findall(
        r"(\d+) (passed|failed|skipped|error|errors|deselected)", output.splitlines()[-1]
        if output.strip() else "")}
    section.data.update(counts=counts, returncode=code,
                        files=[os.path.relpath(f, REPO) for f in files])
    failed = [line for line in output.splitlines() if line.startswith(("FAILED", "ERROR"))]
    section.lines.append(f"`{' '.join(['pytest', '-m', repr('cuda or triton')] + section.data['files'])}`: "
                         + (", ".join(f"{n} {k}" for k, n in counts.items()) or "no summary"))
    section.lines += [f"- {line}" for line in failed]
    tail = output.strip().splitlines()[-15:]
    section.lines += ["", "<details><summary>pytest output (tail)</summary>", "", "```", *tail,
                      "```", "</details>"]
    if code is None:
        raise CapReached
    if code not in (0, 5):  # 5: nothing collected
        section.status = "failed"
        section.note = f"{counts.get('failed', 0)} failed, {counts.get('error', 0) + counts.get('errors', 0)} errors"


# --- norm --------------------------------------------------------------------------------------
def section_norm(section: Section, s: Settings, done: dict) -> None:
    kernels = bench_norm.default_kernels(s.device)
    inner = 10 if s.cuda else 1
    section.lines.append(
        f"median of {s.repeats} rounds x {inner} calls, variants interleaved; bf16 = bf16 input "
        f"and output with fp32 parameters; SN kernels: {', '.join(kernels or ['default'])}; "
        "naive = the official implementation's style")
    rows: list[dict] = []
    try:
        bench_norm.run(s.norm_shapes, s.device, s.repeats, ["fp32", "bf16"],
                       ["contiguous", "channels_last_3d"], kernels, inner=inner, plain=False,
                       saved=False, deadline=section.data["deadline"], on_row=rows.append)
    finally:
        if rows:
            section.lines += [""] + bench_norm.format_rows(rows)
            section.data["rows"] = [{**r, "shape": list(r["shape"])} for r in rows]
            summary = norm_summary(rows)
            if summary:
                section.lines += ["", summary]
    if len(rows) < len(s.norm_shapes) * 4:
        raise CapReached


def norm_summary(rows: list[dict]) -> str:
    """The target line: SN / BN at bf16 channels_last_3d, worst shape, per SN variant."""
    picked = [r for r in rows if r["dtype"] == "bf16" and r["format"] == "channels_last_3d"]
    if not picked:
        return ""
    parts = []
    for name in picked[0]["times"]:
        if name.startswith("sn"):
            worst = max(r["times"][name] / r["times"]["bn"] for r in picked)
            parts.append(f"{name} {worst:.2f}x")
    return "worst SN/BN ratio at bf16 channels_last_3d (target <= 1.0x): " + ", ".join(parts)


# --- training steps (step and memory sections) ------------------------------------------------
def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def train_step_run(device: torch.device, arch: str, norm: str, clips: int, frames: int,
                   size: int, amp: bool, channels_last: bool, checkpoint: bool, steps: int,
                   norm_kwargs: dict | None = None, arch_kwargs: dict | None = None,
                   graph: bool = False) -> dict:
    """Build the model, run 1 + `steps` training steps (forward, cross-entropy, backward, SGD):
    median s/step and, on CUDA, the peak allocated memory of the timed steps (model, gradients
    and optimizer state included) and the part above them. On CPU, "saved_mb" is what
    autograd keeps for backward in one step, parameters excluded (activation memory without
    the recompute peak).
    graph=True (CUDA): the whole step (forward, backward, SGD) is captured once in a CUDA
    graph after three warm-up steps on a side stream, and the timed steps are replays: what
    is left of the step time when no host work is in it.
    Raises on out-of-memory; the caller records it."""
    if device.type == "cuda":  # what an earlier cell's out-of-memory left behind
        gc.collect()
        torch.cuda.empty_cache()
    torch.manual_seed(0)
    model = build_model(arch, 400, norm=norm, norm_kwargs=norm_kwargs, dropout=0.5,
                        checkpoint_stages=checkpoint, **(arch_kwargs or {})).to(device)
    memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(clips, 3, frames, size, size, device=device).contiguous(
        memory_format=memory_format)
    labels = torch.randint(0, 400, (clips,), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp, cache_enabled=not graph):
            loss = F.cross_entropy(model(x).float(), labels)
        loss.backward()
        optimizer.step()
        if not graph:  # a captured step keeps its gradient tensors (replays write into them)
            optimizer.zero_grad(set_to_none=True)

    try:
        if graph:
            if device.type != "cuda":
                raise RuntimeError("CUDA graphs need a CUDA device")
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):  # warm-up: autotuning, cuDNN search, buffers
                for _ in range(3):
                    optimizer.zero_grad(set_to_none=True)
                    step()
            torch.cuda.current_stream(device).wait_stream(side)
            optimizer.zero_grad(set_to_none=True)
            captured = torch.cuda.CUDAGraph()
            with torch.cuda.graph(captured):
                step()
            step = captured.replay  # the timed steps replay it
        step()  # gradients and optimizer state exist after this: the resting state
        sync(device)
        result: dict = {}
        if device.type == "cuda":
            rest = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            step()
            sync(device)
            times.append(time.perf_counter() - start)
        result["s_per_step"] = statistics.median(times)
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device)
            result.update(peak_gb=peak / 2**30, activations_gb=(peak - rest) / 2**30)
        else:
            result["saved_mb"] = saved_for_backward(model, x, amp) / 2**20
        return result
    finally:
        del model, optimizer, x
        if device.type == "cuda":
            gc.collect()
            torch.cuda.empty_cache()


def saved_for_backward(model, x, amp: bool) -> int:
    """Bytes autograd saves in one forward, distinct storages, the parameters themselves left
    out (they are model state; autocast's half-precision copies of them are counted)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            model(x)
    return sum(seen.values())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def guarded_run(**kwargs) -> dict:
    """train_step_run with an out-of-memory (or any other error) recorded, not raised."""
    try:
        return {"status": "ok", **train_step_run(**kwargs)}
    except Exception as e:  # noqa: BLE001
        if is_oom(e):
            return {"status": "OOM"}
        return {"status": f"error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}


def memory_cell(r: dict) -> str:
    if r["status"] != "ok":
        return r["status"]
    if "peak_gb" in r:
        return f"{r['peak_gb']:.2f}"
    return f"{r['saved_mb']:.0f}"


def section_step(section: Section, s: Settings, done: dict) -> None:
    torch.backends.cudnn.benchmark = s.cuda
    what = ("peak GB = torch.cuda.max_memory_allocated over the timed steps (model, gradients, "
            "optimizer state included)" if s.cuda else
            "saved MB = what autograd keeps for backward (CPU: no allocator peak to read)")
    section.lines += [f"{s.arch}, input 3x{s.frames}x{s.size}x{s.size}, bf16 autocast, "
                      f"channels_last_3d, SGD; median of {s.steps} steps after one warm-up; "
                      f"{what}", "",
                      "| clips | norm | s/step | vs bn | " + ("peak GB |" if s.cuda else "saved MB |")
                      + " clips/s |", "|---|---|---|---|---|---|"]
    results = section.data.setdefault("rows", [])
    done["step"] = results
    # on CUDA also the whole step captured in a CUDA graph: host overhead taken out
    variants = [("bn", False), ("sn", False), ("gn", False)] + \
        ([("bn", True), ("sn", True)] if s.cuda else [])
    for clips in s.step_clips:
        base = None
        for norm, graph in variants:
            check_cap(section)
            r = guarded_run(device=s.device, arch=s.arch, norm=norm, clips=clips,
                            frames=s.frames, size=s.size, amp=True, channels_last=True,
                            checkpoint=False, steps=s.steps, graph=graph)
            if graph:
                norm = f"{norm} (CUDA graph)"
                base = r["s_per_step"] if norm.startswith("bn") and r["status"] == "ok" else base
            results.append({"clips": clips, "norm": norm, **r})
            if r["status"] != "ok":
                section.lines.append(f"| {clips} | {norm} | {r['status']} | | | |")
                continue
            base = r["s_per_step"] if norm == "bn" else base
            ratio = f"{r['s_per_step'] / base:.3f}x" if base else "n/a"
            section.lines.append(f"| {clips} | {norm} | {r['s_per_step']:.4f} | {ratio} | "
                                 f"{memory_cell(r)} | {clips / r['s_per_step']:.1f} |")
    step_other_archs(section, s)


def step_other_archs(section: Section, s: Settings) -> None:
    """SN and GN against BN for the other families, at the first clip count, same settings."""
    if not s.step_archs:
        return
    clips = s.step_clips[0]
    section.lines += ["", f"Other backbones, {clips} clips, the same input and settings:", "",
                      "| arch | norm | s/step | vs bn | " + ("peak GB" if s.cuda else "saved MB")
                      + " | mem vs bn |", "|---|---|---|---|---|---|"]
    rows = section.data.setdefault("arch_rows", [])
    for arch in s.step_archs:
        base = None
        for norm in ("bn", "sn", "gn"):
            check_cap(section)
            r = guarded_run(device=s.device, arch=arch, norm=norm, clips=clips, frames=s.frames,
                            size=s.size, amp=True, channels_last=True, checkpoint=False,
                            steps=s.steps)
            rows.append({"arch": arch, "clips": clips, "norm": norm, **r})
            if r["status"] != "ok":
                section.lines.append(f"| {arch} | {norm} | {r['status']} | | | |")
                continue
            memory = r.get("peak_gb", r.get("saved_mb"))
            base = (r["s_per_step"], memory) if norm == "bn" else base
            ratios = [f"{mine / ref:.{digits}f}x" if base and ref else "n/a" for mine, ref, digits
                      in zip((r["s_per_step"], memory), base or (None, None), (3, 2))]
            section.lines.append(f"| {arch} | {norm} | {r['s_per_step']:.4f} | {ratios[0]} | "
                                 f"{memory_cell(r)} | {ratios[1]} |")


def section_memory(section: Section, s: Settings, done: dict) -> None:
    torch.backends.cudnn.benchmark = s.cuda
    what = ("peak GB = torch.cuda.max_memory_allocated of a training step (model, gradients, "
            "SGD momentum and activations; the CUDA context, about 0.5-1 GB, comes on top)"
            if s.cuda else "saved MB = what autograd keeps for backward in one step (CPU; with "
            "checkpoint_stages the block inputs, without the recompute peak)")
    steps = min(s.steps, 2)
    section.lines += [f"{s.arch}, input 3x{s.frames}x{s.size}x{s.size} per clip; {what}; one "
                      f"warm-up and {steps} timed step(s) per cell", "",
                      "| config | clips/GPU | amp | checkpoint_stages | "
                      + ("peak GB | activations GB |" if s.cuda else "saved MB | |")
                      + " s/step |", "|---|---|---|---|---|---|---|"]
    rows = section.data.setdefault("rows", [])
    for clips in sorted(s.memory_clips, reverse=True):  # the largest first: most to learn
        path = os.path.join(REPO, SHIPPED.format(clips))
        cfg = load_config(path) if os.path.isfile(path) else None
        model_cfg = cfg.model if cfg else None
        for amp in (False, True):
            for ckpt in (False, True):
                check_cap(section)
                r = guarded_run(device=s.device, arch=s.arch if s.arch else model_cfg.arch,
                                norm=model_cfg.norm if model_cfg else "sn", clips=clips,
                                frames=s.frames, size=s.size, amp=amp,
                                channels_last=bool(cfg and cfg.train.channels_last),
                                checkpoint=ckpt, steps=steps,
                                norm_kwargs=model_cfg.norm_kwargs if model_cfg else None,
                                arch_kwargs=model_cfg.arch_kwargs
                                if model_cfg and s.arch == model_cfg.arch else None)
                name = os.path.relpath(path, REPO) if cfg else f"(no config for {clips})"
                rows.append({"config": name, "clips": clips, "amp": "bf16" if amp else "fp32",
                             "checkpoint_stages": ckpt, **r})
                extra = f"{r['activations_gb']:.2f}" if r.get("activations_gb") is not None else ""
                seconds = f"{r['s_per_step']:.3f}" if r["status"] == "ok" else ""
                section.lines.append(f"| {name} | {clips} | {'bf16' if amp else 'fp32'} | "
                                     f"{'on' if ckpt else 'off'} | {memory_cell(r)} | {extra} | "
                                     f"{seconds} |")


# --- decode ------------------------------------------------------------------------------------
def section_decode(section: Section, s: Settings, done: dict) -> None:
    if not has_module("av"):
        section.status = "skipped"
        section.note = ("PyAV is not installed (it writes the test video and is the fallback "
                        "decoder): decode throughput not measured")
        section.lines.append(f"decoders present: {', '.join(n for n in ('decord', 'av') if has_module(n)) or 'none'}")
        return
    from snvideo.data import VideoDataset
    from snvideo.data.synthetic import write_video

    cfg = load_config(os.path.join(REPO, SHIPPED.format(8)))
    d = cfg.data
    width, height, fps = 340, 256, 30  # Kinetics after the usual 340x256 resize
    frames_count = max(int(s.video_seconds * fps), d.clip_len * d.frame_interval + 1)
    with tempfile.TemporaryDirectory(prefix="snvideo_gpu_check_") as root:
        rng = torch.Generator().manual_seed(0)
        texture = torch.randint(0, 255, (height // 8 + 3, width // 8 + 3, 3), generator=rng,
                                dtype=torch.uint8).repeat_interleave(8, 0).repeat_interleave(8, 1)
        video = torch.empty((frames_count, height, width, 3), dtype=torch.uint8)
        for t in range(frames_count):  # a texture drifting by up to 16 pixels
            dy, dx = (t // 3) % 16, t % 16
            video[t] = texture[dy:dy + height, dx:dx + width]
        write_video(os.path.join(root, "v.mp4"), video.numpy(), fps=fps)
        with open(os.path.join(root, "list.txt"), "w") as f:
            f.write("v.mp4 0\n")
        dataset = VideoDataset(os.path.join(root, "list.txt"), root, clip_len=d.clip_len,
                               frame_interval=d.frame_interval, short_side=d.short_side,
                               crop_size=d.crop_size, backend=d.backend, normalize=False,
                               decode_threads=d.decode_threads)  # as train.py's workers
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # what one DataLoader worker has
        try:
            dataset[0]  # opening / first-decode costs out of the timing
            times = []
            for _ in range(s.decode_items):
                check_cap(section)
                start = time.perf_counter()
                dataset[0]
                times.append(time.perf_counter() - start)
        finally:
            torch.set_num_threads(threads)
    per_worker = 1.0 / statistics.median(times)
    section.data.update(clips_per_s_per_worker=per_worker, video=f"{width}x{height}, {fps} fps, "
                        f"{frames_count} frames", clip=f"{d.clip_len}x{d.frame_interval}",
                        backend=d.backend, shipped_num_workers=d.num_workers)
    section.lines += [f"one process, one thread (a DataLoader worker), VideoDataset training "
                      f"items (decode + sample + train_transform {d.short_side}/{d.crop_size}, uint8) of "
                      f"{d.clip_len}x{d.frame_interval} clips from a {width}x{height} {fps} fps "
                      f"H.264 video (default GOP), backend {d.backend}: "
                      f"**{per_worker:.2f} clips/s per worker** (median of {len(times)})", ""]
    steps = [r for r in done.get("step", []) if r.get("status") == "ok" and r["norm"] == "sn"]
    if not steps:
        section.lines.append("no measured SN training step to compare with (step section "
                             "failed or did not run)")
        return
    section.lines += ["| clips/GPU | SN step s | clips/s the GPU takes | decode workers needed |"
                      " shipped data.num_workers |", "|---|---|---|---|---|"]
    for r in steps:
        needed = r["clips"] / r["s_per_step"]
        workers = math.ceil(needed / per_worker)
        section.data.setdefault("workers_needed", {})[str(r["clips"])] = workers
        section.lines.append(f"| {r['clips']} | {r['s_per_step']:.4f} | {needed:.1f} | "
                             f"{workers} | {d.num_workers} |")


FUNCTIONS = {"env": section_env, "tests": section_tests, "norm": section_norm,
             "step": section_step, "memory": section_memory, "decode": section_decode}
IN_PROCESS = ("env", "tests")  # cheap and safe, or a subprocess already


def run_isolated(name: str, settings: Settings, done: dict, argv: list[str]) -> Section:
    """Run a section in a child process (this script with --section-worker); a crash, a hang
    past the cap or a dead CUDA context there becomes a failed section here."""
    cap = settings.caps.get(name, 60)
    with tempfile.TemporaryDirectory(prefix="snvideo_gpu_check_") as tmp:
        done_path, out_path = os.path.join(tmp, "done.json"), os.path.join(tmp, "section.json")
        with open(done_path, "w") as f:
            json.dump(done, f)
        cmd = [sys.executable, os.path.abspath(__file__), *argv, "--section-worker", name,
               "--worker-done", done_path, "--worker-out", out_path]
        start = time.time()
        try:
            proc = subprocess.run(cmd, stderr=subprocess.PIPE, text=True,
                                  timeout=cap + max(60.0, cap / 2))
            code, err = proc.returncode, proc.stderr
        except subprocess.TimeoutExpired as e:
            code = None
            err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        saved = None
        if os.path.isfile(out_path):
            with open(out_path) as f:
                saved = Section(**json.load(f))
        if code == 0 and saved is not None:
            return saved
        why = "killed: ran a minute past its time cap" if code is None else (
            f"its process died (signal {-code})" if code < 0 else f"its process exited with {code}")
        tail = [line for line in err.strip().splitlines() if line.strip()][-12:]
        section = saved or Section(name)
        section.data.pop("deadline", None)
        section.status, section.seconds = "failed", time.time() - start
        section.note = why + ("; the rows measured before are shown" if saved else "")
        section.lines += ["", "stderr (tail):", "```", *tail, "```"]
        return section


def section_worker(args, settings: Settings) -> int:
    global _WORKER_OUT
    _WORKER_OUT = args.worker_out
    with open(args.worker_done) as f:
        done = json.load(f)
    section = run_section(args.section_worker, FUNCTIONS[args.section_worker], settings, done)
    _WORKER_OUT = None
    with open(args.worker_out, "w") as f:
        json.dump(dataclasses.asdict(section), f, default=str)
    return 0


# --- report ------------------------------------------------------------------------------------
def render(sections: list[Section], s: Settings, argv: list[str], total: float) -> str:
    lines = [f"# GPU check — {sections[0].data.get('gpu', s.device) if sections else s.device}",
             "", f"`python benchmarks/gpu_check.py {' '.join(argv)}`, "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {total:.0f} s in all", ""]
    lines += ["| section | status | seconds |", "|---|---|---|"]
    lines += [f"| {TITLES[x.name]} | {x.status}{': ' + x.note if x.note else ''} | "
              f"{x.seconds:.1f} |" for x in sections]
    for x in sections:
        lines += ["", f"## {TITLES[x.name]}", "",
                  f"_status: {x.status}{' — ' + x.note if x.note else ''} ({x.seconds:.1f} s)_", ""]
        lines += x.lines
    return "\n".join(lines) + "\n"


def parse_shapes(text: str) -> list[tuple[int, ...]]:
    shapes = [tuple(int(v) for v in part.split(",")) for part in text.split(";") if part.strip()]
    if any(len(shape) != 5 for shape in shapes):
        raise ValueError("--norm-shapes: each shape is N,C,T,H,W; shapes separated by ';'")
    return shapes


def step_archs(text: str | None, arch: str, cuda: bool) -> list[str]:
    """--step-archs (comma-separated; default: STEP_ARCHS on CUDA, none on CPU), less --arch."""
    names = [a.strip() for a in text.split(",")] if text is not None else \
        list(STEP_ARCHS) if cuda else []
    return [a for a in names if a and a != arch]


def settings_from(args) -> Settings:
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    ints = lambda text: [int(v) for v in text.split(",") if v.strip()]  # noqa: E731
    return Settings(
        device=device, quick=args.quick,
        norm_shapes=parse_shapes(args.norm_shapes) if args.norm_shapes else
        (bench_norm.QUICK_SHAPES if args.quick and not cuda else bench_norm.SHAPES),
        repeats=args.repeats or (3 if args.quick else 5),
        frames=args.frames or (32 if cuda else 8), size=args.size or (224 if cuda else 64),
        step_clips=ints(args.step_clips) if args.step_clips else ([8, 2] if cuda else [2, 1]),
        memory_clips=ints(args.memory_clips) if args.memory_clips else [1, 2, 4, 8],
        steps=args.steps or (3 if cuda and not args.quick else 2 if cuda else 1),
        arch=args.arch, step_archs=step_archs(getattr(args, "step_archs", None), args.arch, cuda),
        decode_items=args.decode_items or (8 if cuda else 3),
        video_seconds=args.video_seconds or (10.0 if not args.quick else 4.0),
        caps={k: v * args.cap_scale for k, v in (QUICK_CAPS if args.quick else CAPS).items()})


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="small shapes and tighter time caps")
    p.add_argument("--out", default=os.path.join(REPO, "docs", "gpu_report.md"))
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help=f"comma-separated, from {', '.join(SECTIONS)}")
    p.add_argument("--norm-shapes", help="norm section shapes 'N,C,T,H,W;...'")
    p.add_argument("--repeats", type=int, help="norm section rounds")
    p.add_argument("--frames", type=int, help="clip length of step/memory (CUDA 32, CPU 8)")
    p.add_argument("--size", type=int, help="crop size of step/memory (CUDA 224, CPU 64)")
    p.add_argument("--step-clips", help="clips per step in the step section (CUDA 8,2)")
    p.add_argument("--memory-clips", help="shipped configs' clips per GPU (1,2,4,8)")
    p.add_argument("--steps", type=int, help="timed training steps per cell")
    p.add_argument("--arch", default="i3d_r50", help="backbone of step/memory (i3d_r50)")
    p.add_argument("--step-archs", help="other backbones of the step section, comma-separated "
                   f"(CUDA: {','.join(STEP_ARCHS)}; CPU: none)")
    p.add_argument("--decode-items", type=int, help="training items timed in decode")
    p.add_argument("--video-seconds", type=float, help="length of the decode test video")
    p.add_argument("--cap-scale", type=float, default=1.0, help="multiply every time cap")
    p.add_argument("--section-worker", choices=SECTIONS, help=argparse.SUPPRESS)
    p.add_argument("--worker-done", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    names = [n.strip() for n in args.sections.split(",") if n.strip()]
    bad = [n for n in names if n not in SECTIONS]
    if bad:
        print(f"error: --sections: unknown {', '.join(bad)} (valid: {', '.join(SECTIONS)})",
              file=sys.stderr)
        return 2
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda: no CUDA device is available", file=sys.stderr)
        return 2
    try:
        settings = settings_from(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if settings.cuda:
        torch.cuda.set_device(settings.device)
    if args.section_worker:
        return section_worker(args, settings)
    start = time.time()
    sections, done = [], {}
    for name in names:
        print(f"[gpu_check] {name} ...", flush=True)
        if name in IN_PROCESS:
            section = run_section(name, FUNCTIONS[name], settings, done)
        else:
            section = run_isolated(name, settings, done, argv)
            if name == "step":
                done["step"] = section.data.get("rows", [])
        sections.append(section)
        print(f"[gpu_check] {name}: {section.status} {section.note} ({section.seconds:.1f} s)",
              flush=True)
    report = render(sections, settings, argv, time.time() - start)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        f.write(report)
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump({x.name: {"status": x.status, "note": x.note, "seconds": round(x.seconds, 1),
                            **x.data} for x in sections}, f, indent=1, default=str)
    print(report)
    print(f"report written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
