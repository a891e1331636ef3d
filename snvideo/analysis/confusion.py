"""Draw a confusion matrix (test.py --confusion out.png) with matplotlib (the `plot` extra).

Cells are coloured by the row-normalized count (each true class's share of predictions), so
rare and common classes read alike; counts are written in the cells when they fit (up to 30
classes). With more classes the colour scale is a square root, so that the small shares of
scattered confusions still show beside the diagonal. The figure grows with the number of classes and the tick labels shrink, so that 4
classes and 400 classes both stay legible (zoom in on the large one).
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

ANNOTATE_MAX_CLASSES = 30


def plot_confusion(confusion: Sequence[Sequence[int]], class_names: Sequence[str],
                   path: str | os.PathLike, title: str | None = None) -> None:
    """Write the matrix (rows = true class, columns = predicted) to an image file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(confusion, dtype=np.int64)
    k = counts.shape[0]
    if counts.shape != (k, k) or len(class_names) != k:
        raise ValueError(f"confusion must be {len(class_names)} x {len(class_names)}, got {counts.shape}")
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros(counts.shape, float), where=totals > 0)
    side = float(np.clip(0.11 * k + 3.5, 5.0, 48.0))  # inches; 400 classes -> 0.11 in per cell
    cell_points = 72.0 * (side - 2.5) / k
    label_size = float(np.clip(0.75 * cell_points, 3.0, 10.0))
    fig, ax = plt.subplots(figsize=(side + 1.5, side), dpi=100 if k > 100 else 120)
    from matplotlib.colors import Normalize, PowerNorm

    norm = Normalize(0.0, 1.0) if k <= ANNOTATE_MAX_CLASSES else PowerNorm(0.5, 0.0, 1.0)
    image = ax.imshow(shares, cmap="Blues", norm=norm, interpolation="nearest")
    ax.set_xticks(range(k), [str(n) for n in class_names], rotation=90, fontsize=label_size)
    ax.set_yticks(range(k), [str(n) for n in class_names], fontsize=label_size)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if k <= ANNOTATE_MAX_CLASSES:
        for i in range(k):
            for j in range(k):
                if counts[i, j]:
                    ax.text(j, i, str(counts[i, j]), ha="center", va="center",
                            fontsize=label_size, color="white" if shares[i, j] > 0.5 else "black")
    if 1 < k <= 100:
        ax.set_xticks(np.arange(k + 1) - 0.5, minor=True)
        ax.set_yticks(np.arange(k + 1) - 0.5, minor=True)
        ax.grid(which="minor", color="#dddddd", linewidth=0.6)
        ax.tick_params(which="minor", length=0)
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02, label="share of the true class")
    ax.set_title(title or f"confusion matrix ({int(counts.sum())} videos, {k} classes)")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
