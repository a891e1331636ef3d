"""Training curves of one or more runs from their metrics.jsonl, overlaid (e.g. bn vs sn).

    python -m snvideo.analysis.plot_metrics WORK_DIR [WORK_DIR ...] --out curves.png
                                            [--labels bn sn]

Three panels against epoch: train loss (the epoch records' `train_loss`), learning rate (the
`train` records' `lr`, placed at fractional epochs: a train record's step counts the
micro-batches so far, and the last step logged before the first epoch record ends that
epoch) and validation top-1 (`val_top1`, at the epochs where validation ran). A resumed
run appends to its metrics.jsonl; the last record of each epoch / step wins. Runs are
labelled by their work_dir's name unless --labels is given. Needs matplotlib.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Sequence


@dataclass
class Curves:
    label: str
    loss: dict[int, float] = field(default_factory=dict)      # epoch -> train loss
    val_top1: dict[int, float] = field(default_factory=dict)  # epoch -> val top-1
    lr: dict[float, float] = field(default_factory=dict)      # fractional epoch -> lr


def read_curves(work_dir: str, label: str | None = None) -> Curves:
    """The curves of one run; ValueError naming the file for a missing or unreadable log."""
    path = os.path.join(work_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise ValueError(f"{path}: not found (is {work_dir} a train.py work_dir?)")
    curves = Curves(label or os.path.basename(os.path.normpath(work_dir)))
    steps: dict[int, float] = {}
    steps_per_epoch = None
    with open(path) as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not a JSON line ({e.msg})") from None
            if record.get("kind") == "train" and isinstance(record.get("lr"), (int, float)):
                steps[int(record["step"])] = float(record["lr"])
            elif record.get("kind") == "epoch":
                epoch = int(record.get("epoch", record.get("step")))
                if steps_per_epoch is None and steps:
                    steps_per_epoch = max(steps) / epoch
                if isinstance(record.get("train_loss"), (int, float)):
                    curves.loss[epoch] = float(record["train_loss"])
                if isinstance(record.get("val_top1"), (int, float)):
                    curves.val_top1[epoch] = float(record["val_top1"])
    if steps_per_epoch:
        curves.lr = {step / steps_per_epoch: lr for step, lr in sorted(steps.items())}
    if not curves.loss and not curves.val_top1:
        raise ValueError(f"{path}: no epoch records yet")
    return curves


def plot_curves(runs: Sequence[Curves], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    panels = [("train loss", "loss", "o"), ("learning rate", "lr", None),
              ("validation top-1 (%)", "val_top1", "o")]
    for ax, (title, attr, marker) in zip(axes, panels):
        for run in runs:
            points = sorted(getattr(run, attr).items())
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker=marker, markersize=3, label=run.label)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if any(getattr(run, attr) for run in runs):
            ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m snvideo.analysis.plot_metrics",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("work_dirs", nargs="+", metavar="WORK_DIR")
    parser.add_argument("--out", required=True, help="image file (.png, .pdf, .svg)")
    parser.add_argument("--labels", nargs="+", help="one legend label per WORK_DIR")
    args = parser.parse_args(argv)
    if args.labels and len(args.labels) != len(args.work_dirs):
        print(f"error: --labels gives {len(args.labels)} labels for {len(args.work_dirs)} runs",
              file=sys.stderr)
        return 2
    labels = args.labels or [None] * len(args.work_dirs)
    try:
        runs = [read_curves(d, label) for d, label in zip(args.work_dirs, labels)]
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        plot_curves(runs, args.out)
    except ImportError:
        print("error: plotting needs matplotlib: pip install matplotlib", file=sys.stderr)
        return 2
    for run in runs:
        last = max(run.val_top1) if run.val_top1 else None
        top1 = f", val top-1 {run.val_top1[last]:.2f} at epoch {last}" if last else ""
        print(f"{run.label}: {len(run.loss)} epochs{top1}")
    print(f"curves written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
