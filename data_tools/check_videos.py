"""Find unreadable or corrupt videos, decoding them the way training does (snvideo VideoReader).

    python data_tools/check_videos.py ROOT_OR_LIST [--root DIR] [--out bad.txt] [--full]
                                      [--backend auto] [--fail-on-bad] [--workers N]
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
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (UsageError, add_workers_arg, atomic_write_text, find_videos,  # noqa: E402
                     one_line, parse_args, pool_map, progress, run_main)

PROG = "check_videos"
FULL_BATCH_BYTES = 256 << 20  # --full: decoded frames held at once per worker


@dataclass(frozen=True)
class Task:
    name: str   # how the video is reported
    path: str   # where it is
    full: bool
    backend: str


@dataclass(frozen=True)
class Result:
    name: str
    ok: bool
    reason: str = ""


def check_one(task: Task) -> Result:
    """Open the video with VideoReader and decode a few frames (all with ``full``)."""
    from snvideo.data import VideoReader, VideoReadError

    path = Path(task.path)
    if not path.exists():
        return Result(task.name, False, "missing")
    if path.stat().st_size == 0:
        return Result(task.name, False, "empty file (0 bytes)")
    try:
        with VideoReader(str(path), backend=task.backend) as reader:
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


def collect(target: Path, root: str | None, full: bool, backend: str,
            classes_file: str | None = None) -> tuple[list[Task], int]:
    """Tasks for ROOT_OR_LIST and the number of CSV rows without a video.

    Lists and CSVs are read with snvideo.data's annotation loader, as VideoDataset reads them.
    """
    if target.is_dir():
        return [Task(str(v), str(v), full, backend) for v in find_videos(target)], 0
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
    tasks = [Task(Path(os.path.relpath(r.path, root_dir)).as_posix(), r.path, full, backend)
             for r in ann.records]
    if fmt == "kinetics_csv":  # only an id is known: count, do not list
        return tasks, len(ann.missing)
    return tasks + [Task(m, str(root_dir / m), full, backend) for m in ann.missing], 0


def _read_partial(path: Path) -> dict[str, Result]:
    """Results recorded by an earlier, interrupted run."""
    done: dict[str, Result] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            status, _, rest = line.partition("\t")
            name, _, reason = rest.partition("\t")
            if status in ("ok", "bad") and name:
                done[name] = Result(name, status == "ok", reason)
    return done


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
    p.add_argument("--backend", default="auto",
                   help="VideoReader backend (default auto, as in training)")
    p.add_argument("--fail-on-bad", action="store_true",
                   help="exit with status 1 if any video is bad")
    add_workers_arg(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)
    return run_main(PROG, lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    target = Path(args.target)
    tasks, csv_missing = collect(target, args.root, args.full, args.backend, args.classes_file)
    out = Path(args.out) if args.out else None
    if out is not None and out.is_dir():
        raise UsageError(f"--out {str(out)!r} is a directory")

    import snvideo.data  # noqa: F401 - imported once here, inherited by forked workers

    partial = Path(f"{out}.partial") if out is not None else None
    results = _read_partial(partial) if partial is not None else {}
    resumed = sum(t.name in results for t in tasks)
    todo = [t for t in tasks if t.name not in results]
    log = open(partial, "a", encoding="utf-8") if partial is not None else None
    try:
        for res in progress(pool_map(check_one, todo, args.workers), len(todo), PROG):
            results[res.name] = res
            if not res.ok:
                print(f"BAD {res.name}\t{res.reason}")
            if log is not None:
                log.write(f"{'ok' if res.ok else 'bad'}\t{res.name}\t{res.reason}\n")
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
    print(f"{PROG}: checked {len(tasks)}{resumed_note}: good {len(tasks) - len(bad)}, "
          f"bad {len(bad)}{extra}" + (f" -> {out}" if out is not None else ""))
    return 1 if args.fail_on_bad and bad else 0


if __name__ == "__main__":
    sys.exit(main())
