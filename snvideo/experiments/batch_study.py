"""Small-batch study: how BN, GN and SN behave as the clips per process shrink.

    python -m snvideo.experiments.batch_study            # full grid, about 40 min on 2 CPU cores
    python -m snvideo.experiments.batch_study --quick    # smaller data and grid, a few minutes

Every cell trains the same small 3D-ResNet (configs/batch_study.yaml) with train.py on one
generated motion dataset, then runs train.py's multi-view test. Cells differ only in the norm,
the clips per process (what each normalization layer sees) and the seed. Gradient accumulation
keeps the update batch at 8 clips, so every cell makes the same number of updates of the same
size with the same learning rate. Clips per process = 1 is run for GN and for SN without its
BN branch (`using_bn: false`); BN over one clip is left out, as in the SN paper.

A finished cell (its test_results.json exists) is not run again, and an interrupted cell resumes
from its latest.pt, so re-running the same command continues a killed study. The report —
table, plots, commands, machine, wall time — goes to docs/batch_study.md (--out).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from snvideo.config import load_config

REPO = Path(__file__).resolve().parents[2]
UPDATE_BATCH = 8  # clips per optimizer update in every cell


@dataclass(frozen=True)
class Cell:
    """One training run of the grid."""

    norm: str   # bn | gn | sn
    clips: int  # clips per process: what one normalization layer sees per forward
    seed: int

    @property
    def name(self) -> str:
        return f"{self.norm}_{self.clips}clips_seed{self.seed}"

    @property
    def norm_kwargs(self) -> dict:
        if self.norm == "gn":
            return {"num_groups": 8}  # divides every width of the 0.25-wide resnet3d_10
        if self.norm == "sn" and self.clips == 1:
            return {"using_bn": False}  # batch statistics of one clip are not batch statistics
        return {}

    @property
    def label(self) -> str:
        return "sn (no BN branch)" if self.norm == "sn" and self.clips == 1 else self.norm


@dataclass(frozen=True)
class Setting:
    """Dataset and schedule of a study; the grid is norms x clips x seeds."""

    dataset: dict  # make_demo_dataset options
    epochs: int
    norms: tuple[str, ...] = ("bn", "gn", "sn")
    clips: tuple[int, ...] = (8, 2, 1)
    seeds: tuple[int, ...] = (0, 1)
    test_overrides: tuple[str, ...] = ()  # train.py overrides of the final test


# The study's classes are the embedded demo's (eight directions, swinging, staying still), made
# harder so that no normalizer saturates them: slower and subtler motion, pixel noise, a
# drifting background, a drifting distractor object, lower contrast and fewer training videos.
DEMO_MOTIONS = load_config(str(REPO / "configs" / "demo.yaml")).data.demo_kwargs["motions"]
_HARD_SCENES = dict(motions=DEMO_MOTIONS, size=32, frames=24, speed=[0.03, 0.05],
                    swing_amplitude=[0.12, 0.2], object_size=[0.3, 0.8], noise=0.02,
                    bg_drift=0.005, distractors=1, min_contrast=0.4)
FULL = Setting(dataset=dict(_HARD_SCENES, train_per_class=120, val_per_class=30), epochs=12)
QUICK = Setting(dataset=dict(_HARD_SCENES, motions=DEMO_MOTIONS[:4], train_per_class=16,
                             val_per_class=6),
                epochs=3, clips=(8, 2), seeds=(0,),
                test_overrides=("test.num_clips=2", "test.num_crops=1"))


def grid(setting: Setting) -> list[Cell]:
    """Cells in run order (seed-major, so a partial study already covers every norm)."""
    return [Cell(norm, clips, seed) for seed in setting.seeds for norm in setting.norms
            for clips in setting.clips if not (norm == "bn" and clips == 1)]


def cell_command(cell: Cell, setting: Setting, data_dir: Path, work_dir: Path) -> list[str]:
    """The train.py command line of one cell."""
    if UPDATE_BATCH % cell.clips:
        raise ValueError(f"clips per process must divide {UPDATE_BATCH}, got {cell.clips}")
    kwargs = json.dumps(cell.norm_kwargs, separators=(",", ":"))
    data_dir, work_dir = _from_repo(data_dir), _from_repo(work_dir)  # train.py runs in REPO
    return [sys.executable, "train.py", "--config", "configs/batch_study.yaml",
            f"work_dir={work_dir / cell.name}",
            f"data.root={data_dir / 'videos'}",
            f"data.train_ann={data_dir / 'annotations' / 'train.csv'}",
            f"data.val_ann={data_dir / 'annotations' / 'val.csv'}",
            f"model.norm={cell.norm}", f"model.norm_kwargs={kwargs}",
            f"data.batch_size={cell.clips}", f"train.accumulate={UPDATE_BATCH // cell.clips}",
            f"train.seed={cell.seed}", f"train.epochs={setting.epochs}",
            *setting.test_overrides]


def _from_repo(path: Path) -> Path:
    """`path` relative to the repository when it lies inside it (shorter, portable commands)."""
    try:
        return path.resolve().relative_to(REPO)
    except ValueError:
        return path


def run_cell(cell: Cell, command: list[str], cell_dir: Path, log=print) -> dict:
    """Train and test one cell (or read its finished result); returns its result record."""
    result_path = cell_dir / "test_results.json"
    reused = result_path.is_file()
    if not reused:
        log(f"[{cell.name}] training: {shlex.join(command[1:])}")
        start = time.time()
        cell_dir.mkdir(parents=True, exist_ok=True)
        with open(cell_dir / "train.log", "a") as out:
            proc = subprocess.run(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        if proc.returncode != 0 or not result_path.is_file():
            raise RuntimeError(f"cell {cell.name} failed (exit {proc.returncode}); "
                               f"see {cell_dir / 'train.log'}")
        (cell_dir / "wall_seconds.txt").write_text(f"{time.time() - start:.1f}\n")
    else:
        log(f"[{cell.name}] done earlier: {result_path}")
    results = json.loads(result_path.read_text())
    wall = cell_dir / "wall_seconds.txt"
    records = [json.loads(line) for line in (cell_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [e for e in records if e.get("kind") == "epoch"]
    record = {"norm": cell.norm, "label": cell.label, "clips": cell.clips, "seed": cell.seed,
              "top1": results["top1"], "top5": results["top5"],
              "mean_class_acc": results["mean_class_acc"],
              "final_train_loss": epochs[-1]["train_loss"] if epochs else None,
              "seconds": float(wall.read_text()) if wall.is_file() else None, "reused": reused}
    log(f"[{cell.name}] multi-view top-1 {record['top1']:.1f}%")
    return record


def summarize(records: list[dict]) -> list[dict]:
    """Mean and spread of top-1 over seeds, one row per (norm, clips)."""
    rows: dict[tuple[str, int], list[dict]] = {}
    for r in records:
        rows.setdefault((r["label"], r["clips"]), []).append(r)
    out = []
    for (label, clips), runs in rows.items():
        top1 = [r["top1"] for r in runs]
        out.append({"label": label, "norm": runs[0]["norm"], "clips": clips, "seeds": len(runs),
                    "top1_mean": statistics.fmean(top1),
                    "top1_std": statistics.stdev(top1) if len(top1) > 1 else 0.0,
                    "top1_runs": top1,
                    "train_loss_mean": statistics.fmean(r["final_train_loss"] for r in runs)
                    if all(r.get("final_train_loss") is not None for r in runs) else None})
    return out


def findings(rows: list[dict], chance: float) -> list[str]:
    """Plain statements computed from the table: each norm's change from 8 clips per process to
    fewer, and whether it exceeds the seed-to-seed spread (else it is called noise)."""
    lines = []
    by_cell = {(r["norm"], r["clips"]): r for r in rows}

    def learned(row: dict) -> bool:  # clearly above chance
        return row["top1_mean"] > 2 * chance
    for norm in ("bn", "gn", "sn"):
        base = by_cell.get((norm, 8))
        if base is None:
            continue
        for clips in (2, 1):
            small = by_cell.get((norm, clips))
            if small is None:
                continue
            delta = small["top1_mean"] - base["top1_mean"]
            noise = 2 * max(base["top1_std"], small["top1_std"])
            if not (learned(base) or learned(small)):
                verdict = (f"both near chance ({chance:.0f}%): neither left the initial plateau, "
                           "so this says nothing about the batch size")
            elif min(base["seeds"], small["seeds"]) < 2:
                verdict = "one seed only: no spread to judge it against"
            elif abs(delta) <= noise:
                verdict = f"within the seed spread (2 x std = {noise:.1f}): no measurable change"
            else:
                verdict = f"beyond the seed spread (2 x std = {noise:.1f})"
            lines.append(f"- {small['label']}: {base['top1_mean']:.1f}% at 8 clips per process -> "
                         f"{small['top1_mean']:.1f}% at {clips} ({delta:+.1f} points), {verdict}.")
    for clips in (8, 2, 1):
        cells = sorted((r for r in rows if r["clips"] == clips), key=lambda r: -r["top1_mean"])
        if len(cells) > 1:
            lines.append(f"- At {clips} clip{'s' if clips > 1 else ''} per process: " + " > ".join(
                f"{r['label']} {r['top1_mean']:.1f}" for r in cells) + ".")
    return lines


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return (f"{cpu}, {os.cpu_count()} CPU cores{gpu}; Python {platform.python_version()}, "
            f"torch {torch.__version__}, {platform.system()} {platform.release()}")


def plot_top1(rows: list[dict], path: Path) -> bool:
    """top-1 against clips per process, one line per normalizer (False without matplotlib)."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label in sorted({r["norm"] for r in rows}):
        line = sorted((r for r in rows if r["norm"] == label), key=lambda r: r["clips"])
        ax.errorbar([r["clips"] for r in line], [r["top1_mean"] for r in line],
                    yerr=[r["top1_std"] for r in line], marker="o", capsize=3, label=label)
    ax.set_xscale("log", base=2)
    ticks = sorted({r["clips"] for r in rows})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_xlabel(f"clips per process (update batch {UPDATE_BATCH} via accumulation)")
    ax.set_ylabel("multi-view top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(title="norm (sn at 1: no BN branch)", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def sn_importance_columns(work_dir: Path, cells: list[Cell]) -> list[tuple[str, list]]:
    """SN importance of the first seed's SN runs at 8 and 2 clips per process (when run), from
    the sn_importance.json that train.py writes at the end of each run."""
    seed = min(c.seed for c in cells)
    columns = []
    for clips in (8, 2):
        path = work_dir / Cell("sn", clips, seed).name / "sn_importance.json"
        if Cell("sn", clips, seed) in cells and path.is_file():
            rows = [(r["layer"], {"mean": r["mean"], "var": r["var"]})
                    for r in json.loads(path.read_text())]
            columns.append((f"sn, {clips} clips per process (seed {seed})", rows))
    return columns


def average_importance(rows: list) -> dict:
    return {kind: {s: statistics.fmean(imp[kind][s] for _, imp in rows) for s in ("IN", "LN", "BN")}
            for kind in ("mean", "var")}


def write_report(out: Path, setting: Setting, quick: bool, records: list[dict],
                 commands: dict[str, list[str]], importance: list, wall_seconds: float,
                 argv: list[str], figures: dict[str, bool]) -> None:
    rows = summarize(records)
    order = {"bn": 0, "gn": 1, "sn": 2}
    rows.sort(key=lambda r: (order.get(r["norm"], 9), -r["clips"]))
    cmd = "python -m snvideo.experiments.batch_study" + "".join(f" {shlex.quote(a)}" for a in argv)
    lines = [
        "# Small-batch study: BN vs GN vs SN as clips per process shrink",
        "",
        "Generated by `" + cmd + "`" + (" (**--quick**: a smoke run, not the study)" if quick else "")
        + f" on {time.strftime('%Y-%m-%d')}.",
        "",
        f"- Machine: {machine_description()}.",
        f"- Wall time: {wall_seconds / 60:.1f} min for this invocation"
        + (f"; {sum(r['reused'] for r in records)} of {len(records)} cells were finished by an "
           "earlier invocation and read back" if any(r["reused"] for r in records) else "")
        + f"; the cells' own train + test wall times add up to "
        f"{sum(r['seconds'] or 0 for r in records) / 60:.1f} min: "
        + ", ".join(f"{r['norm']}/{r['clips']}/seed{r['seed']} {r['seconds']:.0f} s"
                    for r in records if r["seconds"] is not None) + ".",
        f"- Model: resnet3d_10, width x0.25, 8x2 clips of 32x32 (configs/batch_study.yaml); "
        f"{setting.epochs} epochs; SGD lr 0.1, cosine; update batch {UPDATE_BATCH} clips in every "
        "cell (clips per process x accumulation steps), so every cell makes the same updates.",
        f"- Data: generated motion dataset, `make_demo_dataset(**{json.dumps(setting.dataset)})`.",
        "- Test: train.py's multi-view test (clips x crops, softmax averaged) on the validation "
        "videos, final weights.",
        "",
        "## Multi-view top-1 (%)",
        "",
        "| norm | clips per process | accumulation | seeds | top-1 mean | spread (std) | runs "
        "| final train loss |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        runs = ", ".join(f"{v:.1f}" for v in r["top1_runs"])
        loss = "n/a" if r["train_loss_mean"] is None else f"{r['train_loss_mean']:.2f}"
        lines.append(f"| {r['label']} | {r['clips']} | {UPDATE_BATCH // r['clips']} | "
                     f"{r['seeds']} | {r['top1_mean']:.1f} | {r['top1_std']:.1f} | {runs} "
                     f"| {loss} |")
    classes = len(setting.dataset["motions"]) if "motions" in setting.dataset else \
        setting.dataset.get("classes", 10)
    lines += ["", f"Chance is {100 / classes:.0f}%; a final train loss near ln({classes}) = "
              f"{math.log(classes):.2f} means the run never left the initial plateau."]
    lines += ["", "What the table says (computed; read it with the seed spread in mind):", ""]
    lines += findings(rows, 100 / classes)
    lines.append("")
    if figures.get("top1"):
        lines += ["![top-1 against clips per process](batch_study_top1.png)", ""]
    if importance:
        lines += ["## What SN learned at 8 vs 2 clips per process", "",
                  "Average over layers of the softmax importance (IN / LN / BN):", "",
                  "| run | mean: IN | LN | BN | variance: IN | LN | BN |",
                  "|---|---|---|---|---|---|---|"]
        for title, imp_rows in importance:
            avg = average_importance(imp_rows)
            lines.append(f"| {title} | " + " | ".join(f"{avg[k][s]:.3f}" for k in ("mean", "var")
                                                      for s in ("IN", "LN", "BN")) + " |")
        lines.append("")
        if figures.get("importance"):
            lines += ["![SN importance per layer](batch_study_sn_importance.png)", ""]
    lines += ["## Commands", "", "Each cell is one train.py run (from the repository root):", "",
              "```"]
    lines += [shlex.join(["python", *c[1:]]) for c in commands.values()]
    lines += ["```", ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("\n".join(lines))
    os.replace(tmp, out)
    with open(out.with_suffix(".json"), "w") as f:
        json.dump({"records": records, "summary": rows, "quick": quick,
                   "dataset": setting.dataset, "epochs": setting.epochs}, f, indent=1)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m snvideo.experiments.batch_study",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="small dataset, 3 epochs, 8 and 2 clips, one seed (a few minutes)")
    parser.add_argument("--norms", nargs="+", choices=("bn", "gn", "sn"), help="subset of norms")
    parser.add_argument("--clips", nargs="+", type=int, choices=(8, 4, 2, 1),
                        help="clips per process to run")
    parser.add_argument("--seeds", nargs="+", type=int, help="training seeds")
    parser.add_argument("--epochs", type=int, help="epochs per cell")
    parser.add_argument("--data-dir", type=Path, help="generated dataset (default data/batch_study"
                        "[_quick])")
    parser.add_argument("--work-dir", type=Path, help="one folder per cell (default "
                        "work_dirs/batch_study[_quick])")
    parser.add_argument("--out", type=Path, help="report (default docs/batch_study.md; with "
                        "--quick work_dirs/batch_study_quick/batch_study.md)")
    args = parser.parse_args(argv)

    setting = QUICK if args.quick else FULL
    suffix = "_quick" if args.quick else ""
    changes = {k: tuple(v) for k, v in (("norms", args.norms), ("clips", args.clips),
                                        ("seeds", args.seeds)) if v}
    if args.epochs:
        changes["epochs"] = args.epochs
    setting = Setting(**{**setting.__dict__, **changes})
    data_dir = (args.data_dir or REPO / "data" / f"batch_study{suffix}").resolve()
    work_dir = (args.work_dir or REPO / "work_dirs" / f"batch_study{suffix}").resolve()
    out = (args.out or (work_dir / "batch_study.md" if args.quick else
                        REPO / "docs" / "batch_study.md")).resolve()
    cells = grid(setting)
    if not cells:
        print("error: the grid is empty (bn needs clips per process >= 2)", file=sys.stderr)
        return 2

    start = time.time()
    from snvideo.data.synthetic import make_demo_dataset

    print(f"dataset: {data_dir}")
    make_demo_dataset(data_dir, seed=0, **setting.dataset)
    records, commands = [], {}
    for i, cell in enumerate(cells):
        commands[cell.name] = cell_command(cell, setting, data_dir, work_dir)
        print(f"({i + 1}/{len(cells)}) ", end="")
        records.append(run_cell(cell, commands[cell.name], work_dir / cell.name))

    rows = summarize(records)
    figures = {"top1": plot_top1(rows, out.with_name(out.stem + "_top1.png"))}
    importance = sn_importance_columns(work_dir, cells)
    if importance:
        try:
            from snvideo.analysis.sn_weights import plot_importance

            plot_importance(importance, str(out.with_name(out.stem + "_sn_importance.png")))
            figures["importance"] = True
        except ImportError:
            figures["importance"] = False
    write_report(out, setting, args.quick, records, commands, importance, time.time() - start,
                 argv, figures)
    print(f"wrote {out} ({(time.time() - start) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
