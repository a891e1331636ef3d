"""Learned importance of IN / LN / BN statistics in every Switchable Normalization layer.

    python -m snvideo.analysis.sn_weights CKPT --out sn_weights.png [--compare CKPT2 ...]
                                               [--json sn_weights.json]

Works from a checkpoint's state dict alone: each SN layer stores importance logits
`<layer>.mean_weight` and `<layer>.var_weight` in the order [IN, LN, BN] ([IN, LN] when the
layer was built with using_bn=False); the importance is their softmax, or for a Sparse SN
layer (it also stores `<layer>.radius`) their sparsestmax at that radius. Layers are listed by
depth, i.e. in state-dict order (module registration order). The table is always printed;
--out draws a stacked bar chart (two panels: means, variances; one column of panels per
checkpoint with --compare) and needs matplotlib (`pip install matplotlib`), imported lazily
with the Agg backend. Without --out only the table (and --json) are written.

For the trainer: `format_table(sn_importance(model.state_dict()))`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Mapping, Sequence

import torch

from snvideo.models.pretrained import strip_wrappers
from snvideo.norm.sparsestmax import sparsestmax

STAT_NAMES = ("IN", "LN", "BN")  # the logit order of snvideo.norm.SwitchNorm*d
COLORS = {"IN": "#4c72b0", "LN": "#dd8452", "BN": "#55a868"}

Importance = dict[str, dict[str, float]]  # {"mean": {"IN": p, ...}, "var": {...}}


def sn_importance(state_dict: Mapping[str, torch.Tensor]) -> list[tuple[str, Importance]]:
    """[(layer_name, {"mean": {"IN": p, "LN": p, "BN": p}, "var": {...}}), ...] by depth.

    A layer is any `X.mean_weight` with a matching `X.var_weight`, both 1-D with 2 or 3
    entries; "BN" is absent for 2-entry (using_bn=False) layers.
    """
    rows: list[tuple[str, Importance]] = []
    for key, mean_logits in state_dict.items():
        if not (key == "mean_weight" or key.endswith(".mean_weight")):
            continue
        prefix = key[: -len("mean_weight")]
        var_logits = state_dict.get(prefix + "var_weight")
        if var_logits is None or not torch.is_tensor(mean_logits) or mean_logits.dim() != 1:
            continue
        if mean_logits.numel() not in (2, 3) or var_logits.shape != mean_logits.shape:
            continue
        names = STAT_NAMES[: mean_logits.numel()]
        radius = state_dict.get(prefix + "radius")
        if radius is not None:  # Sparse SN
            weigh = lambda logits: sparsestmax(logits.double(), float(radius))  # noqa: E731
        else:
            weigh = lambda logits: torch.softmax(logits.double(), 0)  # noqa: E731
        importance = {"mean": dict(zip(names, weigh(mean_logits).tolist())),
                      "var": dict(zip(names, weigh(var_logits).tolist()))}
        rows.append((strip_wrappers(prefix.rstrip(".")) or "<root>", importance))
    return rows


def format_table(rows: Sequence[tuple[str, Importance]]) -> str:
    """The importance table: one line per layer, then the average over layers."""
    if not rows:
        return "(no Switchable Normalization layers)"
    width = max(len("layer"), len("average"), *(len(name) for name, _ in rows))
    stats = "".join(f"{s:>7}" for s in STAT_NAMES)
    lines = [f"{'':<{width}}  {'mean importance':^21}  {'var importance':^21}",
             f"{'layer':<{width}}  {stats}  {stats}"]

    def cells(weights: Mapping[str, float]) -> str:
        return "".join(f"{weights[s]:7.3f}" if s in weights else f"{'-':>7}" for s in STAT_NAMES)

    for name, imp in rows:
        lines.append(f"{name:<{width}}  {cells(imp['mean'])}  {cells(imp['var'])}")
    average = {}
    for kind in ("mean", "var"):
        average[kind] = {s: sum(imp[kind][s] for _, imp in rows) / len(rows)
                         for s in STAT_NAMES if all(s in imp[kind] for _, imp in rows)}
    lines.append("-" * len(lines[-1]))
    lines.append(f"{'average':<{width}}  {cells(average['mean'])}  {cells(average['var'])}")
    return "\n".join(lines)


def load_state_dict(path: str) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict, title) from a snvideo checkpoint, an {"state_dict": ...} file or a bare
    state dict. The title is `<work_dir name>/<file name>` when the checkpoint has a config."""
    from snvideo.engine.checkpoint import load_checkpoint

    data = load_checkpoint(path)
    state = data
    for key in ("model", "state_dict"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            state = data[key]
            break
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a checkpoint or state dict")
    work_dir = (data.get("config") or {}).get("work_dir") if isinstance(data, dict) else None
    parent = os.path.basename(os.path.normpath(work_dir)) if work_dir else \
        os.path.basename(os.path.dirname(os.path.abspath(path)))
    title = f"{parent}/{os.path.basename(path)}" if parent else os.path.basename(path)
    return state, title


def plot_importance(columns: Sequence[tuple[str, Sequence[tuple[str, Importance]]]],
                    out_path: str) -> None:
    """Stacked bars of IN/LN/BN importance per layer: rows = (means, variances), one column per
    (title, rows) entry. Raises ImportError with an install hint when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    most_layers = max(len(rows) for _, rows in columns)
    col_width = max(5.0, 0.22 * most_layers + 1.5)
    fig, axes = plt.subplots(2, len(columns), figsize=(col_width * len(columns), 8.5),
                             squeeze=False)
    for col, (title, rows) in enumerate(columns):
        names = [name for name, _ in rows]
        positions = list(range(len(rows)))
        for row, (kind, label) in enumerate((("mean", "means"), ("var", "variances"))):
            ax = axes[row][col]
            bottom = [0.0] * len(rows)
            for stat in STAT_NAMES:
                heights = [imp[kind].get(stat, 0.0) for _, imp in rows]
                ax.bar(positions, heights, bottom=bottom, width=0.85, color=COLORS[stat],
                       label=stat)
                bottom = [b + h for b, h in zip(bottom, heights)]
            ax.set_ylim(0, 1)
            ax.set_xlim(-0.6, max(len(rows), 1) - 0.4)
            ax.set_ylabel(f"importance ({label})")
            ax.set_title(f"{title}: {label}" if row == 0 else label, fontsize=10)
            ax.set_xticks(positions)
            ax.set_xticklabels(names if row == 1 else [""] * len(names), rotation=90,
                               fontsize=6 if len(names) > 30 else 8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(STAT_NAMES), fontsize=9,
               frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    fig.savefig(out_path, dpi=120)
    plt.close(fig)


def _rows_to_json(rows: Sequence[tuple[str, Importance]]) -> list[dict]:
    return [{"layer": name, "mean": imp["mean"], "var": imp["var"]} for name, imp in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m snvideo.analysis.sn_weights",
        description="Print and plot the learned IN/LN/BN importance of every SN layer.")
    parser.add_argument("checkpoint", help="checkpoint (.pth) or state dict file")
    parser.add_argument("--compare", nargs="+", default=[], metavar="CKPT",
                        help="more checkpoints, drawn side by side")
    parser.add_argument("--out", help="image file for the stacked bar chart (e.g. sn_weights.png)")
    parser.add_argument("--json", dest="json_path", help="also write the numbers as JSON")
    args = parser.parse_args(argv)

    columns = []
    for path in [args.checkpoint, *args.compare]:
        try:
            state, title = load_state_dict(path)
        except FileNotFoundError:
            print(f"error: checkpoint not found: {path}", file=sys.stderr)
            return 2
        except Exception as e:  # unreadable file: one line, not a traceback
            print(f"error: cannot read {path}: {str(e).splitlines()[0] if str(e) else e!r}",
                  file=sys.stderr)
            return 1
        rows = sn_importance(state)
        if not rows:
            print(f"error: {path} has no Switchable Normalization layers "
                  "(no *.mean_weight / *.var_weight tensors)", file=sys.stderr)
            return 1
        columns.append((title, rows))
        print(f"== {title} ({path}): {len(rows)} SN layers")
        print(format_table(rows))
        print()

    titles = [title for title, _ in columns]
    if len(set(titles)) < len(titles):  # e.g. two latest.pth from unnamed dirs: use the paths
        columns = [(path, rows) for path, (_, rows) in zip([args.checkpoint, *args.compare],
                                                           columns)]
    if args.json_path:
        payload = {"checkpoints": [{"path": path, "title": title, "layers": _rows_to_json(rows)}
                                   for path, (title, rows) in
                                   zip([args.checkpoint, *args.compare], columns)]}
        os.makedirs(os.path.dirname(os.path.abspath(args.json_path)), exist_ok=True)
        with open(args.json_path, "w") as f:
            json.dump(payload, f, indent=1)
        print(f"wrote {args.json_path}")
    if args.out:
        try:
            plot_importance(columns, args.out)
        except ImportError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
