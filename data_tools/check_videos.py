"""Find unreadable or corrupt videos, decoding them the way training does (snvideo VideoReader).

    python data_tools/check_videos.py ROOT_OR_LIST [--root DIR] [--out bad.txt] [--full]
                                      [--deep] [--backend auto] [--rotation auto]
                                      [--fail-on-bad] [--workers N]
                                      [--classes-file classInd.txt]

ROOT_OR_LIST is a directory (scanned recursively), a list file with ``path label`` lines
(paths relative to --root, default the list's directory), a Kinetics CSV (needs --root), or a
UCF101 list / Something-Something v2 JSON with its --classes-file.
Each video is opened and its first, middle and last frames are decoded (every frame with
--full).  Bad videos are printed and, with --out, written as ``path<TAB>reason`` lines (paths
as found under ROOT, or as written in the list).  Listed files that do not exist are bad
("missing"); CSV rows without a video are only counted (build_file_list.py lists them).
With --out, results are appended to ``<out>.partial`` as they come, so a killed run resumes
where it stopped.  Exit status 0 even with bad videos, unless --fail-on-bad (then 1).
--backend and --rotation are VideoReader's, as data.backend and data.rotation in training.

--deep also checks that the reader reaches the right frames: after the check above, it decodes
the whole file sequentially with plain PyAV (frames turned by their display rotation unless
--rotation ignore) and compares with it the frame count and, exactly, the frames of 16 single
reads spread over the file (first and last included) and of 3 clips of 32 frames at interval 2
(random starts, fixed seed), each read by a fresh VideoReader so that its seeks really happen
(a reader that decodes from the first frame reads them all in one pass).  It prints one line a
file, ``path<TAB>addressing<TAB>verdict<TAB>detail``: the addressing the reader chose on open
("pts", "count", "sequential" or "decord"; "-" when it did not open) and the verdict

- ``ok``: every read matched (detail: why the reader chose this path);
- ``falls back``: every read matched, but a seek was contradicted by the decoder and the reader
  gave up seeking (or decord failed and PyAV took over): the file decodes from the first frame,
  right but slowly.  Such files are good (re-encode them, e.g. with resize_videos.py, for speed);
- ``MISMATCH``: a read differs from the sequential decode, a read failed, the frame counts
  differ, or the frames are not of the size the reader announced on open (`frame_size`, in
  which training draws its crops): training would get wrong frames or fail.  Such files are
  bad (``MISMATCH: ...`` in --out);
- ``BAD``: the ordinary check failed (the reason as without --deep).

and a summary line with the counts.  A --deep run resumes only results recorded by --deep (and
prints their lines again).
"""
from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (UsageError, add_workers_arg, atomic_write_text, find_videos,  # noqa: E402
                     one_line, parse_args, pool_map, progress, run_main)

PROG = "check_videos"
FULL_BATCH_BYTES = 256 << 20  # --full: decoded frames held at once per worker
# --deep: single frames read, spread over the file; clips of DEEP_CLIP_LEN frames at interval
# DEEP_INTERVAL from random starts (seed DEEP_SEED), as a training clip is read
DEEP_SINGLES, DEEP_CLIPS, DEEP_CLIP_LEN, DEEP_INTERVAL, DEEP_SEED = 16, 3, 32, 2, 0
VERDICTS = ("ok", "falls back", "MISMATCH", "BAD")


@dataclass(frozen=True)
class Task:
    name: str   # how the video is reported
    path: str   # where it is
    full: bool
    backend: str
    rotation: str = "auto"
    deep: bool = False


@dataclass(frozen=True)
class Result:
    name: str
    ok: bool
    reason: str = ""
    # --deep: the reader's addressing on open, the verdict (VERDICTS) and what it rests on
    addressing: str = ""
    verdict: str = ""
    detail: str = ""

    def deep_line(self) -> str:
        return f"{self.name}\t{self.addressing or '-'}\t{self.verdict}\t{self.detail}"


def check_one(task: Task) -> Result:
    """The check of one video: `check_reads`, then with ``deep`` `check_addressing`."""
    from snvideo.data import VideoReadError

    res = check_reads(task)
    if not task.deep:
        return res
    if not res.ok:
        return replace(res, verdict="BAD", detail=res.reason)
    try:
        return check_addressing(task)
    except VideoReadError as e:
        reason = " ".join(str(e.reason).split()) or one_line(e)
    except Exception as e:  # noqa: BLE001 - anything a decoder throws makes the video bad
        reason = one_line(e)
    return Result(task.name, False, reason, verdict="BAD", detail=reason)


def check_reads(task: Task) -> Result:
    """Open the video with VideoReader and decode a few frames (all with ``full``)."""
    from snvideo.data import VideoReader, VideoReadError

    path = Path(task.path)
    if not path.exists():
        return Result(task.name, False, "missing")
    if path.stat().st_size == 0:
        return Result(task.name, False, "empty file (0 bytes)")
    try:
        with VideoReader(str(path), backend=task.backend, rotation=task.rotation) as reader:
            n = len(reader)
            if n <= 0:
                return Result(task.name, False, "no frames")
            if task.full:
                # Big batches (a decoder seek per batch) within a memory budget per worker.
                frame_bytes = reader.get_frames([0])[0].numel()
                chunk = max(16, FULL_BATCH_BYTES // max(1, frame_bytes))
                batches = [list(range(i, min(n, i + chunk))) for i in range(0, n, chunk)]
            else:
                batches = [sorted({0, n // 2, n - 1})]
            for indices in batches:
                frames = reader.get_frames(indices)
                if frames.ndim != 4 or frames.shape[0] != len(indices):
                    return Result(task.name, False, f"decoded {tuple(frames.shape)} for "
                                  f"{len(indices)} frames at {indices[0]}..{indices[-1]} of {n}")
        return Result(task.name, True)
    except VideoReadError as e:
        return Result(task.name, False, " ".join(str(e.reason).split()) or one_line(e))
    except Exception as e:  # noqa: BLE001 - anything a decoder throws makes the video bad
        return Result(task.name, False, one_line(e))


def deep_reads(num_frames: int) -> list[tuple[str, np.ndarray]]:
    """The reads --deep compares, as (how it is read, frame indices): single frames spread over
    the file, the first and last included, then clips at random starts (fixed seed)."""
    n = num_frames
    singles = np.unique(np.linspace(0, n - 1, DEEP_SINGLES).round().astype(np.int64))
    reads = [("alone", np.array([i])) for i in singles]
    span = (DEEP_CLIP_LEN - 1) * DEEP_INTERVAL + 1
    rng = np.random.default_rng(DEEP_SEED)
    for start in rng.integers(0, max(1, n - span + 1), DEEP_CLIPS):
        indices = np.minimum(start + DEEP_INTERVAL * np.arange(DEEP_CLIP_LEN), n - 1)
        reads.append((f"in a clip from frame {start} at interval {DEEP_INTERVAL}", indices))
    return reads


def sequential_frames(path: str, wanted: set[int],
                      rotation: str) -> tuple[dict[int, np.ndarray], int]:
    """The frames at `wanted` of a plain sequential PyAV decode, turned as VideoReader turns
    them, and the number of frames it yields: what the reader's frame i is by definition."""
    import av

    from snvideo.data.containers import Orientation

    frames: dict[int, np.ndarray] = {}
    count = 0
    with av.open(path, metadata_errors="ignore") as container:
        for frame in container.decode(container.streams.video[0]):
            if count in wanted:
                frames[count] = Orientation.of_frame(frame, rotation).to_display(
                    frame.to_ndarray(format="rgb24"))
            count += 1
    return frames, count


def check_addressing(task: Task) -> Result:
    """--deep: the frame count and sample reads of VideoReader against a sequential decode."""
    from snvideo.data import VideoReader, VideoReadError

    def open_reader() -> VideoReader:
        return VideoReader(task.path, backend=task.backend, rotation=task.rotation)

    with open_reader() as reader:
        n, addressing = len(reader), reader.addressing
        choice = reader.choice_reason or f"backend {reader.backend}, as requested"

    def result(verdict: str, detail: str) -> Result:
        bad = verdict == "MISMATCH"
        return Result(task.name, not bad, f"MISMATCH: {detail}" if bad else "", addressing,
                      verdict, detail)

    reads = deep_reads(n)
    wanted = sorted({int(i) for _, indices in reads for i in indices})
    reference, count = sequential_frames(task.path, set(wanted), task.rotation)
    if count != n:
        return result("MISMATCH", f"the reader counts {n} frames, a sequential decode "
                      f"yields {count}")
    if addressing == "sequential":  # nothing is sought: one pass from the start reads them all
        reads = [("in one pass from the first frame", np.array(wanted))]
    fallback = None
    for how, indices in reads:
        with open_reader() as reader:
            announced = reader.frame_size  # what training draws its crop boxes in
            try:
                frames = reader.get_frames(indices).numpy()
            except VideoReadError as e:
                return result("MISMATCH", f"reading frames {indices[0]}..{indices[-1]} {how} "
                              f"failed: {e.reason}")
            if announced is not None and frames.shape[1:3] != tuple(announced):
                return result("MISMATCH", f"frames read {how} are {frames.shape[2]}x"
                              f"{frames.shape[1]}, the reader's frame_size on open says "
                              f"{announced[1]}x{announced[0]} (training crops would fail)")
            if fallback is None and reader.addressing != addressing:
                why = (getattr(reader._backend, "seek_failure", None) or reader.fallback_reason
                       or f"now {reader.addressing}")
                now = reader.addressing
                fallback = f"to {'sequential decoding' if now == 'sequential' else now}: {why}"
        for i, frame in zip(indices.tolist(), frames):
            if not np.array_equal(frame, reference[i]):
                return result("MISMATCH",
                              f"frame {i} read {how} {_difference(frame, i, reference)}")
    if fallback is not None:
        return result("falls back", fallback)
    return result("ok", choice)


def _difference(frame: np.ndarray, index: int, reference: dict[int, np.ndarray]) -> str:
    """How a frame read differs from the sequential decode's frame `index`, in words."""
    expected = reference[index]
    if frame.shape != expected.shape:
        return (f"is {frame.shape[1]}x{frame.shape[0]}, the sequential decode's "
                f"{expected.shape[1]}x{expected.shape[0]}")
    same = [j for j, ref in sorted(reference.items()) if j != index and np.array_equal(frame, ref)]
    if same:
        return f"is the sequential decode's frame {same[0]}"
    diff = np.abs(frame.astype(np.int16) - expected).mean()
    return f"differs from the sequential decode (mean abs difference {diff:.1f})"


def collect(target: Path, root: str | None, full: bool, backend: str,
            classes_file: str | None = None, rotation: str = "auto",
            deep: bool = False) -> tuple[list[Task], int]:
    """Tasks for ROOT_OR_LIST and the number of CSV rows without a video.

    Lists and CSVs are read with snvideo.data's annotation loader, as VideoDataset reads them.
    """
    def task(name: str, path: str) -> Task:
        return Task(name, path, full, backend, rotation, deep)

    if target.is_dir():
        return [task(str(v), str(v)) for v in find_videos(target)], 0
    if not target.is_file():
        raise UsageError(f"{str(target)!r} does not exist")
    from snvideo.data.annotations import detect_format, load_annotations

    try:
        fmt = detect_format(target, classes_file)
        if fmt == "kinetics_csv" and root is None:
            raise UsageError("a Kinetics CSV needs --root (the video directory)")
        root_dir = Path(root) if root is not None else target.parent
        if not root_dir.is_dir():
            raise UsageError(f"--root {str(root_dir)!r} is not a directory")
        ann = load_annotations(target, root_dir, classes_file=classes_file)
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read {str(target)!r}: {e}") from None
    except ValueError as e:
        raise UsageError(" ".join(str(e).split())) from None
    tasks = [task(Path(os.path.relpath(r.path, root_dir)).as_posix(), r.path)
             for r in ann.records]
    if fmt == "kinetics_csv":  # only an id is known: count, do not list
        return tasks, len(ann.missing)
    return tasks + [task(m, str(root_dir / m)) for m in ann.missing], 0


def _read_partial(path: Path, deep: bool) -> dict[str, Result]:
    """Results recorded by an earlier, interrupted run (``status<TAB>name<TAB>reason``, then
    with --deep ``<TAB>addressing<TAB>verdict<TAB>detail``); a --deep run takes only those."""
    done: dict[str, Result] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            fields = line.split("\t")
            fields += [""] * (6 - len(fields))
            status, name, reason, addressing, verdict, detail = fields[:6]
            if status in ("ok", "bad") and name and (verdict in VERDICTS or not deep):
                done[name] = Result(name, status == "ok", reason, addressing, verdict, detail)
    return done


def _partial_line(res: Result) -> str:
    fields = ["ok" if res.ok else "bad", res.name, res.reason]
    if res.verdict:
        fields += [res.addressing, res.verdict, res.detail]
    return "\t".join(fields) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="Find videos that cannot be opened or decoded by the training "
        "pipeline's VideoReader.")
    p.add_argument("target", metavar="ROOT_OR_LIST",
                   help="video directory, 'path label' list file, or Kinetics CSV")
    p.add_argument("--root", help="directory the list/CSV paths are relative to "
                   "(list default: the list's directory; required for a CSV)")
    p.add_argument("--classes-file", help="the dataset's class file, as data.classes_file "
                   "(classInd.txt for UCF101 lists, labels.json for Something-Something v2)")
    p.add_argument("--out", help="write 'path<TAB>reason' lines of bad videos here")
    p.add_argument("--full", action="store_true",
                   help="decode every frame (default: first, middle and last)")
    p.add_argument("--deep", action="store_true",
                   help="also compare sample reads with a sequential decode: is the reader's "
                   "frame addressing right for the file, and which path does it take")
    p.add_argument("--backend", default="auto",
                   help="VideoReader backend (default auto, as in training)")
    p.add_argument("--rotation", choices=("auto", "ignore"), default="auto",
                   help="VideoReader rotation, as data.rotation in training (default auto: "
                   "frames upright as displayed)")
    p.add_argument("--fail-on-bad", action="store_true",
                   help="exit with status 1 if any video is bad")
    add_workers_arg(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)
    return run_main(PROG, lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    target = Path(args.target)
    tasks, csv_missing = collect(target, args.root, args.full, args.backend, args.classes_file,
                                 args.rotation, args.deep)
    out = Path(args.out) if args.out else None
    if out is not None and out.is_dir():
        raise UsageError(f"--out {str(out)!r} is a directory")

    import snvideo.data  # noqa: F401 - imported once here, inherited by forked workers

    partial = Path(f"{out}.partial") if out is not None else None
    results = _read_partial(partial, args.deep) if partial is not None else {}
    resumed = sum(t.name in results for t in tasks)
    todo = [t for t in tasks if t.name not in results]
    if args.deep:  # one line for every video, those checked by the interrupted run included
        for t in tasks:
            if t.name in results:
                print(results[t.name].deep_line())
    log = open(partial, "a", encoding="utf-8") if partial is not None else None
    try:
        for res in progress(pool_map(check_one, todo, args.workers), len(todo), PROG):
            results[res.name] = res
            if args.deep:
                print(res.deep_line(), flush=True)
            elif not res.ok:
                print(f"BAD {res.name}\t{res.reason}")
            if log is not None:
                log.write(_partial_line(res))
                log.flush()
    finally:
        if log is not None:
            log.close()

    bad = [results[t.name] for t in tasks if not results[t.name].ok]
    if out is not None:
        atomic_write_text(out, "".join(f"{r.name}\t{r.reason}\n" for r in bad))
        os.remove(partial)
    extra = f", {csv_missing} CSV rows without a video" if csv_missing else ""
    resumed_note = f" ({resumed} from an interrupted run)" if resumed else ""
    deep = ""
    if args.deep:
        checked = [results[t.name] for t in tasks]
        verdicts = Counter(r.verdict for r in checked)
        ways = Counter(r.addressing for r in checked if r.addressing)
        deep = (f"; deep: {', '.join(f'{v} {verdicts[v]}' for v in VERDICTS)}; addressing: "
                + (", ".join(f"{a} {k}" for a, k in sorted(ways.items())) or "none"))
    print(f"{PROG}: checked {len(tasks)}{resumed_note}: good {len(tasks) - len(bad)}, "
          f"bad {len(bad)}{extra}{deep}" + (f" -> {out}" if out is not None else ""))
    return 1 if args.fail_on_bad and bad else 0


if __name__ == "__main__":
    sys.exit(main())
