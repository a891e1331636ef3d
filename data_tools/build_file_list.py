"""Turn a Kinetics annotation CSV into a video list file, reporting missing videos.

    python data_tools/build_file_list.py --csv kinetics_train.csv --root VIDEOS
                                         --out train_list.txt [--missing missing.txt]

The CSV has the official columns ``label,youtube_id,time_start,time_end,split``.  Each row's
video is the file under --root (searched recursively, any video extension, flat or in class
folders) named
``{youtube_id}_{time_start:06d}_{time_end:06d}.<ext>`` (or ``{youtube_id}.<ext>``), resolved
by snvideo.data's own annotation loader, so the list holds exactly the videos VideoDataset
finds.  Output lines are ``relative/path.ext label_index`` with label indices from the sorted
class names of the CSV (-1 for a CSV without labels).  The ids
``{youtube_id}_{start:06d}_{end:06d}`` of rows whose video is not found go to --missing
(default ``<out>.missing.txt``).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import UsageError, atomic_write_text, parse_args, require_dir, run_main  # noqa: E402

PROG = "build_file_list"


def load_kinetics(csv_path: Path, root: Path):
    """The CSV resolved against ``root`` exactly as VideoDataset resolves it."""
    from snvideo.data.annotations import detect_format, load_annotations

    try:
        if detect_format(csv_path) != "kinetics_csv":
            with open(csv_path, encoding="utf-8", errors="replace") as f:
                first = f.readline().strip()
            raise UsageError(f"{str(csv_path)!r} is not a Kinetics CSV (expected the header "
                             f"label,youtube_id,time_start,time_end,split; found {first[:80]!r})")
        return load_annotations(csv_path, root)
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read --csv {str(csv_path)!r}: {e}") from None
    except ValueError as e:
        raise UsageError(" ".join(str(e).split())) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="Build a 'relative/path.ext label_index' list file from a "
        "Kinetics annotation CSV and the downloaded videos, reporting missing ones.")
    p.add_argument("--csv", required=True, help="Kinetics CSV (label,youtube_id,time_start,"
                   "time_end,split)")
    p.add_argument("--root", required=True, help="video directory (searched recursively)")
    p.add_argument("--out", required=True, help="output list file")
    p.add_argument("--missing", help="file for the ids of missing videos, "
                   "{youtube_id}_{start:06d}_{end:06d} (default <out>.missing.txt)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)
    return run_main(PROG, lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    csv_path = Path(args.csv)
    if not csv_path.is_file():
        raise UsageError(f"--csv {str(csv_path)!r} does not exist or is not a file")
    root = require_dir(args.root, "--root")
    out = Path(args.out)
    missing_path = Path(args.missing) if args.missing else Path(f"{out}.missing.txt")

    ann = load_kinetics(csv_path, root)
    lines = [f"{Path(os.path.relpath(r.path, root)).as_posix()} {r.label}" for r in ann.records]
    atomic_write_text(out, "".join(line + "\n" for line in lines))
    atomic_write_text(missing_path, "".join(m + "\n" for m in ann.missing))
    total = len(ann.records) + len(ann.missing)
    print(f"{PROG}: {total} rows, {len(ann.classes)} classes: found {len(lines)}, "
          f"missing {len(ann.missing)} -> {out} (missing ids: {missing_path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
