"""Generate the embedded motion demo dataset (Kinetics layout); see snvideo/data/synthetic.py.

    python data_tools/make_demo_dataset.py OUT [--classes 10] [--train-per-class 40]
        [--val-per-class 10] [--size 64] [--frames 32] [--fps 16] [--seed 0] [--workers N]
        [--speed LO HI] [--noise STD] [--object-size LO HI] [--distractors K] ...

Writes OUT/annotations/{train,val}.csv and OUT/videos/<class>/{id}_{start:06d}_{end:06d}.mp4.
A complete dataset with the same parameters is left as it is.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import UsageError, add_workers_arg, parse_args, run_main  # noqa: E402

PROG = "make_demo_dataset"
# snvideo.data (torch) is imported in _run only, so that --help answers at once.
DIFFICULTY = ("speed", "rot_speed", "zoom_rate", "object_size", "noise", "bg_drift",
              "distractors", "min_contrast", "orientation_mark")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="Generate the synthetic motion-only action dataset (10 classes "
        "defined by how a textured object moves: moving left/right/up/down, rotating "
        "(counter-)clockwise, growing, shrinking, swinging side to side, staying still) in "
        "the Kinetics layout. --motions picks another class set, e.g. the embedded demo's "
        "(configs/demo.yaml).")
    p.add_argument("out", metavar="OUT", help="output directory")
    p.add_argument("--classes", type=int, default=10,
                   help="number of classes, 1..10 (default 10)")
    p.add_argument("--motions", metavar="NAMES",
                   help="comma-separated motions as classes instead of the first --classes "
                   "default ones, e.g. 'moving left,moving up-left,staying still' "
                   "(all: snvideo.data.synthetic.ALL_MOTIONS)")
    p.add_argument("--train-per-class", type=int, default=40, help="default 40")
    p.add_argument("--val-per-class", type=int, default=10, help="default 10")
    p.add_argument("--size", type=int, default=64, help="frame height = width (default 64)")
    p.add_argument("--frames", type=int, default=32, help="frames per video (default 32)")
    p.add_argument("--fps", type=float, default=16.0, help="frame rate (default 16)")
    p.add_argument("--seed", type=int, default=0, help="default 0")
    p.add_argument("--codec", choices=["h264", "mpeg4", "vp9"], default="h264")
    add_workers_arg(p)
    g = p.add_argument_group("difficulty (defaults: snvideo.data.synthetic.SceneParams)")
    pair = dict(type=float, nargs=2, metavar=("LO", "HI"))
    g.add_argument("--speed", **pair, help="translation, frame short sides per frame "
                   "(default 0.012 0.024)")
    g.add_argument("--rot-speed", **pair, help="rotation, degrees per frame (default 4 8)")
    g.add_argument("--zoom-rate", **pair, help="growth, log-size per frame "
                   "(default 0.012 0.024)")
    g.add_argument("--object-size", **pair, help="object diameter / short side "
                   "(default 0.22 0.6)")
    g.add_argument("--noise", type=float, help="pixel noise std, 0..1 scale (default 0.02)")
    g.add_argument("--bg-drift", type=float, help="max background speed (default 0.006)")
    g.add_argument("--distractors", type=int, help="extra moving objects per video (default 0)")
    g.add_argument("--min-contrast", type=float,
                   help="object/background colour distance (default 0.25)")
    g.add_argument("--orientation-mark", type=float,
                   help="half-width of an orientation bar on every object, 0 = none (default 0)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)
    return run_main(PROG, lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"OUT {str(out)!r} exists and is not a directory")
    from snvideo.data.synthetic import make_demo_dataset

    difficulty = {k: (tuple(v) if isinstance(v, list) else v)
                  for k in DIFFICULTY if (v := getattr(args, k)) is not None}
    try:
        info = make_demo_dataset(
            out, classes=args.classes,
            motions=[m.strip() for m in args.motions.split(",")] if args.motions else None,
            train_per_class=args.train_per_class,
            val_per_class=args.val_per_class, size=args.size, frames=args.frames,
            fps=args.fps, seed=args.seed, workers=args.workers, codec=args.codec,
            **difficulty)
    except ValueError as e:
        raise UsageError(str(e)) from None
    total = info["num_train"] + info["num_val"]
    if info["skipped"]:
        print(f"{PROG}: done 0, skipped {total}, failed 0 (complete dataset with the same "
              f"parameters already in {out})")
    else:
        print(f"{PROG}: done {info['generated']}, skipped {total - info['generated']}, "
              f"failed 0 in {info['seconds']:.1f}s -> {info['train_csv']}, {info['val_csv']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
