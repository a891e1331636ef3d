"""Small-batch study: how BN, GN and SN behave as the clips per process shrink.

    python -m snvideo.experiments.batch_study            # the study, about an hour on 2 CPU cores
    python -m snvideo.experiments.batch_study --quick    # smaller data and grid, a few minutes

Every cell trains the same small 3D-ResNet (configs/batch_study.yaml) with train.py on one
generated motion dataset, then runs train.py's multi-view test. Cells differ only in the norm,
the clips per process (what each normalization layer sees) and the seed. Gradient accumulation
keeps the update batch at 8 clips, so every cell makes the same number of updates of the same
size. Each norm's learning rate is chosen first, by a sweep at 8 clips per process scored on
held-out videos that are not the test videos; it then stays fixed across clip counts. BN at one
clip per process is in the grid (the case users need to see); SN at one clip runs without its
BN branch (`using_bn: false`), as the SN paper does.

Beside the grid, at 4 and 2 clips: BN with its statistics recomputed over training batches
before the test ("precise BN"), and SN with the paper's batch average. Both take the grid
cell's final weights and run `test.py --recompute-norm-stats`: recomputing statistics is what
`train.sn_batch_average` does after every epoch, and it does not change the training (running
statistics never enter a training forward), so the side run is that training's result.

A finished cell (its test_results.json exists) is not run again, and an interrupted cell resumes
from its latest.pt, so re-running the same command continues a killed study. The report —
sweep, table, plots, commands, machine, wall time — goes to docs/batch_study.md (--out), its
data to docs/batch_study.json; a hand-written reading in docs/batch_study_reading.md (beside
--out) is included in the report when present.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from snvideo.atomic import atomic_write_text
from snvideo.config import load_config
from snvideo.machine import cpu_name

REPO = Path(__file__).resolve().parents[2]
UPDATE_BATCH = 8  # clips per optimizer update in every cell
RECOMPUTE_BATCHES = 200  # training batches of the side runs' recomputed statistics
SIDE_LABELS = {"bn": "bn + precise BN", "sn": "sn + batch average"}


@dataclass(frozen=True)
class Cell:
    """One training run of the grid (or of the learning-rate sweep)."""

    norm: str   # bn | gn | sn
    clips: int  # clips per process: what one normalization layer sees per forward
    seed: int
    lr: float   # for the update batch of UPDATE_BATCH clips

    @property
    def name(self) -> str:
        return f"{self.norm}_{self.clips}clips_lr{self.lr:g}_seed{self.seed}"

    @property
    def norm_kwargs(self) -> dict:
        if self.norm == "sn" and self.clips == 1:
            return {"using_bn": False}  # batch statistics of one clip are not batch statistics
        return {}  # GN: the factory's default groups (32, or the largest divisor below it)

    @property
    def label(self) -> str:
        return "sn (no BN branch)" if self.norm == "sn" and self.clips == 1 else self.norm


@dataclass(frozen=True)
class SideRun:
    """A grid cell's final weights tested after recomputing their norm statistics."""

    cell: Cell

    @property
    def name(self) -> str:
        return f"{self.cell.name}_recomputed"

    @property
    def label(self) -> str:
        return SIDE_LABELS[self.cell.norm]


@dataclass(frozen=True)
class Setting:
    """Dataset and schedule of a study; the grid is norms x clips x seeds."""

    dataset: dict  # make_demo_dataset options (train_per_class; val_per_class = test + held-out)
    test_per_class: int  # of val_per_class: the test videos; the rest score the lr sweep
    epochs: int
    norms: tuple[str, ...] = ("bn", "gn", "sn")
    clips: tuple[int, ...] = (8, 4, 2, 1)
    seeds: tuple[int, ...] = (0, 1, 2)
    lrs: tuple[float, ...] = (0.05, 0.1, 0.2)  # the sweep at 8 clips per process
    side_clips: tuple[int, ...] = (4, 2)
    test_overrides: tuple[str, ...] = ()  # train.py overrides of the final test


# The demo's classes and scenes (eight directions, swinging, staying still) with fewer training
# videos (120 a class instead of 250) and 12 epochs: every normalizer learns them but none
# saturates (chosen by trying it: the harder variant with noise, drift and distractors left BN at
# chance after 12 epochs at every learning rate tried, so it could not show a drop).
DEMO_DATA = load_config(str(REPO / "configs" / "demo.yaml")).data.demo_kwargs
FULL = Setting(dataset=dict(DEMO_DATA, train_per_class=120, val_per_class=50), test_per_class=30,
               epochs=12)
QUICK = Setting(dataset=dict(DEMO_DATA, motions=DEMO_DATA["motions"][:4], train_per_class=16,
                             val_per_class=10),
                test_per_class=6, epochs=3, clips=(8, 2), seeds=(0,), lrs=(0.1, 0.2),
                side_clips=(2,), test_overrides=("test.num_clips=2", "test.num_crops=1"))


def sweep(setting: Setting) -> list[Cell]:
    """The learning-rate sweep: every norm at 8 clips per process, the first seed."""
    return [Cell(norm, UPDATE_BATCH, setting.seeds[0], lr) for norm in setting.norms
            for lr in setting.lrs]


def grid(setting: Setting, lrs: dict[str, float]) -> list[Cell]:
    """Cells in run order (seed-major, so a partial study already covers every norm); `lrs`
    is each norm's learning rate from the sweep."""
    return [Cell(norm, clips, seed, lrs[norm]) for seed in setting.seeds
            for norm in setting.norms for clips in setting.clips]


def side_runs(setting: Setting, cells: list[Cell]) -> list[SideRun]:
    """Precise BN and SN's batch average on the grid's BN and SN cells at side_clips."""
    return [SideRun(c) for c in cells if c.norm in SIDE_LABELS and c.clips in setting.side_clips]


def cell_command(cell: Cell, setting: Setting, data_dir: Path, work_dir: Path) -> list[str]:
    """The train.py command line of one cell: validation (scoring the sweep) on the held-out
    videos after the last epoch, then the multi-view test on the test videos."""
    if UPDATE_BATCH % cell.clips:
        raise ValueError(f"clips per process must divide {UPDATE_BATCH}, got {cell.clips}")
    kwargs = json.dumps(cell.norm_kwargs, separators=(",", ":"))
    data_dir, work_dir = _from_repo(data_dir), _from_repo(work_dir)  # train.py runs in REPO
    ann = data_dir / "annotations"
    return [sys.executable, "train.py", "--config", "configs/batch_study.yaml",
            f"work_dir={work_dir / cell.name}",
            f"data.root={data_dir / 'videos'}",
            f"data.train_ann={ann / 'train.csv'}",
            f"data.val_ann={ann / 'heldout.csv'}",
            f"data.test_ann={ann / 'test.csv'}",
            f"model.norm={cell.norm}", f"model.norm_kwargs={kwargs}",
            f"data.batch_size={cell.clips}", f"train.accumulate={UPDATE_BATCH // cell.clips}",
            f"train.seed={cell.seed}", f"train.epochs={setting.epochs}", f"train.lr={cell.lr:g}",
            f"train.val_interval={setting.epochs}", *setting.test_overrides]


def side_command(run: SideRun, work_dir: Path) -> list[str]:
    """test.py on the cell's final weights, statistics recomputed over training batches."""
    cell_dir, work_dir = _from_repo(work_dir / run.cell.name), _from_repo(work_dir)
    return [sys.executable, "test.py", "--checkpoint", str(cell_dir / "latest.pt"),
            "--recompute-norm-stats", str(RECOMPUTE_BATCHES),
            "--out", str(work_dir / run.name / "test_results.json")]


def split_heldout(data_dir: Path, test_per_class: int) -> None:
    """Split the generated val.csv per class into test.csv (the first test_per_class videos of
    each class) and heldout.csv (the rest: what the learning-rate sweep is scored on)."""
    ann = data_dir / "annotations"
    with open(ann / "val.csv", newline="") as f:
        rows = list(csv.reader(f))
    header, rows = rows[0], rows[1:]
    seen: dict[str, int] = {}
    test, heldout = [], []
    for row in rows:
        seen[row[0]] = seen.get(row[0], 0) + 1
        (test if seen[row[0]] <= test_per_class else heldout).append(row)
    if not heldout:
        raise ValueError(f"val_per_class must exceed test_per_class={test_per_class}")
    for name, part in (("test.csv", test), ("heldout.csv", heldout)):
        with open(ann / name, "w", newline="") as f:
            csv.writer(f).writerows([header, *part])


def _from_repo(path: Path) -> Path:
    """`path` relative to the repository when it lies inside it (shorter, portable commands)."""
    try:
        return path.resolve().relative_to(REPO)
    except ValueError:
        return path


def run_cell(run: Cell | SideRun, command: list[str], cell_dir: Path, log=print) -> dict:
    """Run one cell or side run (or read its finished result); returns its result record."""
    result_path = cell_dir / "test_results.json"
    reused = result_path.is_file()
    if not reused:
        log(f"[{run.name}] {shlex.join(command[1:])}")
        start = time.time()
        cell_dir.mkdir(parents=True, exist_ok=True)
        with open(cell_dir / "run.log", "a") as out:
            proc = subprocess.run(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        if proc.returncode != 0 or not result_path.is_file():
            raise RuntimeError(f"{run.name} failed (exit {proc.returncode}); "
                               f"see {cell_dir / 'run.log'}")
        (cell_dir / "wall_seconds.txt").write_text(f"{time.time() - start:.1f}\n")
    else:
        log(f"[{run.name}] done earlier: {result_path}")
    results = json.loads(result_path.read_text())
    cell = run.cell if isinstance(run, SideRun) else run
    metrics = cell_dir.parent / cell.name / "metrics.jsonl"
    epochs = [e for e in map(json.loads, metrics.read_text().splitlines())
              if e.get("kind") == "epoch"]
    wall = cell_dir / "wall_seconds.txt"
    record = {"name": run.name, "norm": cell.norm, "label": run.label, "clips": cell.clips,
              "seed": cell.seed, "lr": cell.lr, "side_run": isinstance(run, SideRun),
              "top1": results["top1"], "top5": results["top5"],
              "mean_class_acc": results["mean_class_acc"],
              "heldout_top1": epochs[-1].get("val_top1") if epochs else None,
              "final_train_loss": epochs[-1]["train_loss"] if epochs else None,
              "seconds": float(wall.read_text()) if wall.is_file() else None, "reused": reused}
    log(f"[{run.name}] multi-view top-1 {record['top1']:.1f}%")
    return record


def choose_lrs(records: list[dict]) -> tuple[dict[str, float], list[dict]]:
    """Each norm's learning rate: the best held-out top-1 of its sweep runs (ties: the lower
    final train loss). Returns the choice and the sweep table."""
    table, chosen = [], {}
    for norm in dict.fromkeys(r["norm"] for r in records):
        runs = [r for r in records if r["norm"] == norm]
        best = max(runs, key=lambda r: (r["heldout_top1"] or 0.0, -(r["final_train_loss"] or 0.0)))
        chosen[norm] = best["lr"]
        table += [{"norm": norm, "lr": r["lr"], "heldout_top1": r["heldout_top1"],
                   "final_train_loss": r["final_train_loss"], "chosen": r is best} for r in runs]
    return chosen, table


def summarize(records: list[dict]) -> list[dict]:
    """Mean and spread of top-1 over seeds, one row per (label, clips)."""
    rows: dict[tuple[str, int], list[dict]] = {}
    for r in records:
        rows.setdefault((r["label"], r["clips"]), []).append(r)
    out = []
    for (label, clips), runs in rows.items():
        top1 = [r["top1"] for r in runs]
        losses = [r.get("final_train_loss") for r in runs]
        out.append({"label": label, "norm": runs[0]["norm"], "clips": clips, "seeds": len(runs),
                    "lr": runs[0].get("lr"), "side_run": bool(runs[0].get("side_run")),
                    "top1_mean": statistics.fmean(top1),
                    "top1_std": statistics.stdev(top1) if len(top1) > 1 else 0.0,
                    "top1_runs": top1,
                    "train_loss_mean": statistics.fmean(losses)
                    if all(v is not None for v in losses) else None})
    return out


def _compare(base: dict, other: dict, chance: float, subject: str = "the batch size") -> str:
    delta = other["top1_mean"] - base["top1_mean"]
    noise = 2 * max(base["top1_std"], other["top1_std"])
    if max(base["top1_mean"], other["top1_mean"]) <= 2 * chance:
        verdict = (f"both near chance ({chance:.0f}%): neither left the initial plateau, "
                   f"so this says nothing about {subject}")
    elif min(base["seeds"], other["seeds"]) < 2:
        verdict = "one seed only: no spread to judge it against"
    elif abs(delta) <= noise:
        verdict = f"within the seed spread (2 x std = {noise:.1f}): no measurable change"
    else:
        verdict = f"beyond the seed spread (2 x std = {noise:.1f})"
    return f"{delta:+.1f} points, {verdict}"


def findings(rows: list[dict], chance: float) -> list[str]:
    """Plain statements computed from the table: each norm's change from 8 clips per process to
    fewer, each side run against its plain cell, and the order of the norms at each clip count;
    a change within twice the seed-to-seed spread is called noise."""
    lines = []
    grid_rows = {(r["norm"], r["clips"]): r for r in rows if not r["side_run"]}
    for norm in ("bn", "gn", "sn"):
        base = grid_rows.get((norm, UPDATE_BATCH))
        for clips in (4, 2, 1):
            small = grid_rows.get((norm, clips))
            if base is None or small is None:
                continue
            lines.append(f"- {small['label']}: {base['top1_mean']:.1f}% at {UPDATE_BATCH} clips "
                         f"per process -> {small['top1_mean']:.1f}% at {clips} "
                         f"({_compare(base, small, chance)}).")
    for side in (r for r in rows if r["side_run"]):
        plain = grid_rows.get((side["norm"], side["clips"]))
        if plain is not None:
            lines.append(f"- {side['label']} at {side['clips']} clips per process: "
                         f"{plain['top1_mean']:.1f}% -> {side['top1_mean']:.1f}% "
                         f"({_compare(plain, side, chance)}).")
    for clips in sorted({r["clips"] for r in rows}, reverse=True):
        cells = sorted((r for r in rows if r["clips"] == clips), key=lambda r: -r["top1_mean"])
        if len(cells) > 1:
            lines.append(f"- At {clips} clip{'s' if clips > 1 else ''} per process: " + " > ".join(
                f"{r['label']} {r['top1_mean']:.1f}" for r in cells) + ".")
    return lines


def machine_description() -> str:
    cpu = cpu_name()
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return (f"{cpu}, {os.cpu_count()} CPU cores{gpu}; Python {platform.python_version()}, "
            f"torch {torch.__version__}, {platform.system()} {platform.release()}")


def plot_top1(rows: list[dict], path: Path) -> bool:
    """top-1 (mean +- std over seeds) against clips per process, one line per normalizer and
    one per side run (False without matplotlib)."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    lines = [(n, [r for r in rows if r["norm"] == n and not r["side_run"]]) for n in
             ("bn", "gn", "sn")] + [(label, [r for r in rows if r["label"] == label])
                                    for label in SIDE_LABELS.values()]
    for label, line in lines:
        line = sorted(line, key=lambda r: r["clips"])
        if line:
            ax.errorbar([r["clips"] for r in line], [r["top1_mean"] for r in line],
                        yerr=[r["top1_std"] for r in line], marker="o", capsize=3, label=label,
                        linestyle="--" if line[0]["side_run"] else "-")
    ax.set_xscale("log", base=2)
    ticks = sorted({r["clips"] for r in rows})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_xlabel(f"clips per process (update batch {UPDATE_BATCH} via accumulation)")
    ax.set_ylabel("multi-view top-1 (%), mean +- std over seeds")
    ax.grid(alpha=0.3)
    ax.legend(title="norm (sn at 1: no BN branch)", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def sn_importance(work_dir: Path, cells: list[Cell]) -> list[dict]:
    """What SN chose at each clip count: the softmax importance of IN / LN / BN for means and
    variances, averaged over seeds per layer ("layers"), and over layers and seeds ("mean",
    "var"), from the sn_importance.json train.py writes at the end of each SN run. A layer
    without a BN branch (sn at 1 clip) counts BN as 0."""
    out = []
    for clips in sorted({c.clips for c in cells if c.norm == "sn"}, reverse=True):
        runs = [json.loads(p.read_text()) for c in cells if c.norm == "sn" and c.clips == clips
                for p in [work_dir / c.name / "sn_importance.json"] if p.is_file()]
        if not runs:
            continue
        layers = []
        for i, first in enumerate(runs[0]):
            layers.append({"layer": first["layer"], **{kind: {
                stat: statistics.fmean(run[i][kind].get(stat, 0.0) for run in runs)
                for stat in ("IN", "LN", "BN")} for kind in ("mean", "var")}})
        out.append({"clips": clips, "seeds": len(runs), **{kind: {
            stat: statistics.fmean(layer[kind][stat] for layer in layers)
            for stat in ("IN", "LN", "BN")} for kind in ("mean", "var")}, "layers": layers})
    return out


def write_report(out: Path, setting: Setting, quick: bool, records: list[dict],
                 sweep_records: list[dict], sweep_table: list[dict], lrs: dict[str, float],
                 commands: dict[str, list[str]],
                 importance: list[dict], wall_seconds: float, argv: list[str],
                 figures: dict[str, bool]) -> None:
    rows = summarize(records)
    runs = list({r["name"]: r for r in sweep_records + records}.values())  # each run once
    order = {"bn": 0, "gn": 1, "sn": 2}
    rows.sort(key=lambda r: (r["side_run"], order.get(r["norm"], 9), -r["clips"]))
    classes = len(setting.dataset["motions"])
    chance = 100 / classes
    cmd = "python -m snvideo.experiments.batch_study" + "".join(f" {shlex.quote(a)}" for a in argv)
    timed = [r for r in runs if r["seconds"] is not None]  # sweep runs included
    lines = [
        "# Small-batch study: BN vs GN vs SN as clips per process shrink",
        "",
        "Generated by `" + cmd + "`" + (" (**--quick**: a smoke run, not the study)" if quick else "")
        + f" on {time.strftime('%Y-%m-%d')}.",
        "",
        f"- Machine: {machine_description()}.",
        f"- Wall time: {wall_seconds / 60:.1f} min for this invocation"
        + (f"; {sum(r['reused'] for r in runs)} of {len(runs)} runs were finished by an "
           "earlier invocation and read back" if any(r["reused"] for r in runs) else "")
        + f"; the runs' own wall times add up to {sum(r['seconds'] for r in timed) / 60:.1f} min.",
        f"- Model: resnet3d_10, width x0.25, 8x2 clips of 32x32 (configs/batch_study.yaml); "
        f"{setting.epochs} epochs; SGD with each norm's swept learning rate, 1 warmup epoch, "
        f"cosine; update batch {UPDATE_BATCH} clips in every cell (clips per process x "
        "accumulation steps), so every cell makes the same updates.",
        f"- Data: generated motion dataset, `make_demo_dataset(**{json.dumps(setting.dataset)})`"
        f": {setting.dataset['train_per_class']} training videos a class; of the "
        f"{setting.dataset['val_per_class']} other videos a class, {setting.test_per_class} are "
        "the test set and the rest the held-out set that scores the learning-rate sweep.",
        "- Test: train.py's multi-view test (clips x crops, softmax averaged) on the test "
        "videos, final weights. Side runs: the same weights after `test.py "
        f"--recompute-norm-stats {RECOMPUTE_BATCHES}` (statistics averaged over "
        f"{RECOMPUTE_BATCHES} training batches of the cell's clips per process).",
        "",
        f"## Learning rates (sweep at {UPDATE_BATCH} clips per process, seed "
        f"{setting.seeds[0]}, scored on the held-out videos)",
        "",
        "| norm | lr | held-out top-1 (single view) | final train loss | chosen |",
        "|---|---|---|---|---|",
    ]
    for r in sweep_table:
        top1 = "n/a" if r["heldout_top1"] is None else f"{r['heldout_top1']:.1f}"
        loss = "n/a" if r["final_train_loss"] is None else f"{r['final_train_loss']:.2f}"
        lines.append(f"| {r['norm']} | {r['lr']:g} | {top1} | {loss} | "
                     f"{'yes' if r['chosen'] else ''} |")
    lines += ["", "## Multi-view top-1 (%) on the test videos", "",
              "| norm | clips per process | accumulation | lr | seeds | top-1 mean +- std | runs "
              "| final train loss |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        runs = ", ".join(f"{v:.1f}" for v in r["top1_runs"])
        loss = "n/a" if r["train_loss_mean"] is None else f"{r['train_loss_mean']:.2f}"
        lines.append(f"| {r['label']} | {r['clips']} | {UPDATE_BATCH // r['clips']} | "
                     f"{r['lr']:g} | {r['seeds']} | {r['top1_mean']:.1f} +- {r['top1_std']:.1f} "
                     f"| {runs} | {loss} |")
    lines += ["", f"Chance is {chance:.0f}%; a final train loss near ln({classes}) = "
              f"{math.log(classes):.2f} means the run never left the initial plateau.",
              "", "What the table says (computed; read it with the seed spread in mind):", ""]
    lines += findings(rows, chance)
    lines.append("")
    if figures.get("top1"):
        lines += [f"![top-1 against clips per process]({out.stem}_top1.png)", ""]
    reading = out.with_name(out.stem + "_reading.md")
    if not quick and reading.is_file():
        lines += ["## Reading (written by hand from this run's numbers)", "",
                  reading.read_text().strip(), ""]
    if importance:
        lines += ["## What SN chose as the batch shrinks", "",
                  "Softmax importance of IN / LN / BN, averaged over layers and seeds:", "",
                  "| clips per process | seeds | mean: IN | LN | BN | variance: IN | LN | BN |",
                  "|---|---|---|---|---|---|---|---|"]
        for entry in importance:
            lines.append(f"| {entry['clips']} | {entry['seeds']} | " + " | ".join(
                f"{entry[k][s]:.3f}" for k in ("mean", "var") for s in ("IN", "LN", "BN")) + " |")
        lines.append("")
        if figures.get("importance"):
            lines += [f"![SN importance per layer]({out.stem}_sn_importance.png)", ""]
    lines += ["## Commands", "", "Each run is one train.py or test.py command (from the "
              "repository root):", "", "```"]
    lines += [shlex.join(["python", *c[1:]]) for c in commands.values()]
    lines += ["```", ""]
    atomic_write_text(out, "\n".join(lines))
    data = {"summary": rows, "sn_importance": importance, "lr_sweep": sweep_table, "lrs": lrs,
            "records": records, "sweep_records": sweep_records,
            "quick": quick, "dataset": setting.dataset,
            "test_per_class": setting.test_per_class, "epochs": setting.epochs,
            "update_batch": UPDATE_BATCH, "wall_seconds": round(wall_seconds, 1),
            "machine": machine_description()}
    atomic_write_text(out.with_suffix(".json"), json.dumps(data, indent=1))


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
    parser.add_argument("--lrs", nargs="+", type=float, help="learning rates of the sweep")
    parser.add_argument("--epochs", type=int, help="epochs per cell")
    parser.add_argument("--data-dir", type=Path, help="generated dataset (default data/batch_study"
                        "[_quick])")
    parser.add_argument("--work-dir", type=Path, help="one folder per run (default "
                        "work_dirs/batch_study[_quick])")
    parser.add_argument("--out", type=Path, help="report (default docs/batch_study.md; with "
                        "--quick work_dirs/batch_study_quick/batch_study.md)")
    args = parser.parse_args(argv)

    setting = QUICK if args.quick else FULL
    suffix = "_quick" if args.quick else ""
    changes = {k: tuple(v) for k, v in (("norms", args.norms), ("clips", args.clips),
                                        ("seeds", args.seeds), ("lrs", args.lrs)) if v}
    if args.epochs:
        changes["epochs"] = args.epochs
    setting = replace(setting, **changes)
    data_dir = (args.data_dir or REPO / "data" / f"batch_study{suffix}").resolve()
    work_dir = (args.work_dir or REPO / "work_dirs" / f"batch_study{suffix}").resolve()
    out = (args.out or (work_dir / "batch_study.md" if args.quick else
                        REPO / "docs" / "batch_study.md")).resolve()

    start = time.time()
    from snvideo.data.synthetic import make_demo_dataset

    print(f"dataset: {data_dir}")
    make_demo_dataset(data_dir, seed=0, **setting.dataset)
    split_heldout(data_dir, setting.test_per_class)
    commands: dict[str, list[str]] = {}
    finished: dict[str, dict] = {}  # the runs of this invocation, by name

    def run_all(runs: list, what: str) -> list[dict]:
        records = []
        for i, run in enumerate(runs):
            if run.name in finished:  # a sweep run that is also a grid cell
                print(f"{what} ({i + 1}/{len(runs)}) [{run.name}] from the sweep")
                records.append(finished[run.name])
                continue
            if isinstance(run, SideRun):
                commands[run.name] = side_command(run, work_dir)
            else:
                commands[run.name] = cell_command(run, setting, data_dir, work_dir)
            print(f"{what} ({i + 1}/{len(runs)}) ", end="")
            finished[run.name] = run_cell(run, commands[run.name], work_dir / run.name)
            records.append(finished[run.name])
        return records

    sweep_records = run_all(sweep(setting), "lr sweep") if len(setting.lrs) > 1 else []
    if sweep_records:
        lrs, sweep_table = choose_lrs(sweep_records)
    else:  # nothing to choose
        lrs = {norm: setting.lrs[0] for norm in setting.norms}
        sweep_table = [{"norm": n, "lr": lr, "heldout_top1": None, "final_train_loss": None,
                        "chosen": True} for n, lr in lrs.items()]
    print("learning rates: " + ", ".join(f"{n} {lr:g}" for n, lr in lrs.items()))
    cells = grid(setting, lrs)
    records = run_all(cells, "grid")
    records += run_all(side_runs(setting, cells), "side run")

    rows = summarize(records)
    figures = {"top1": plot_top1(rows, out.with_name(out.stem + "_top1.png"))}
    importance = sn_importance(work_dir, cells)
    if importance:
        try:
            from snvideo.analysis.sn_weights import plot_importance

            columns = [(f"sn, {e['clips']} clip{'s' if e['clips'] > 1 else ''} per process "
                        f"({e['seeds']} seeds)",
                        [(layer["layer"], layer) for layer in e["layers"]]) for e in importance]
            plot_importance(columns, str(out.with_name(out.stem + "_sn_importance.png")))
            figures["importance"] = True
        except ImportError:
            figures["importance"] = False
    write_report(out, setting, args.quick, records, sweep_records, sweep_table, lrs,
                 commands, importance, time.time() - start, argv, figures)
    print(f"wrote {out} ({(time.time() - start) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
