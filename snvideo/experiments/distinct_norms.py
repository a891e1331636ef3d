"""Do normalization layers need to be distinct? The second SN paper's three questions on video.

    python -m snvideo.experiments.distinct_norms            # the study
    python -m snvideo.experiments.distinct_norms --quick    # a smoke run, a few minutes

Luo, Peng, Ren, Zhang ("Do Normalization Layers in a Deep ConvNet Really Need to Be
Distinct?") ask: (a) is it useful that each layer selects its own normalizer; (b) what drives
the choices: depth, batch size or initialization; (c) do tasks prefer different normalizers.

Built on the small-batch study's harness (snvideo.experiments.batch_study): the same generated
data, model, recipe (configs/batch_study.yaml), update batch of 8 clips through accumulation,
seeds, and the same honest-baseline rule (each variant's learning rate swept at 8 clips per
process on held-out videos, then fixed). The variants:

- (a) sn (each layer its own importance), sn-shared (one importance pair for the whole network,
  `norm_kwargs: {shared_importance: true}`: the layers cannot differ), ssn (Sparse SN: each
  layer ends with exactly one normalizer), and each normalizer alone: in, ln, bn, gn; at 8 and
  2 clips per process, every seed.
- (b) the per-layer importance vectors of the sn and ssn runs (6 numbers a layer: IN/LN/BN
  weights of the means and of the variances), compared by one distance — the total-variation
  distance averaged over the two distributions, 0 = the same mix, 1 = disjoint choices —
  across seeds at a fixed clip count (initialization and data order), across clip counts at a
  fixed seed (batch size), and between the layers of one run (depth).
- (c) a second task on the same scenes with another cue: the appearance task (class = the
  object's colour family, its motion drawn at random: make_demo_dataset(task="appearance")).
  sn and ssn are trained on it with their motion-task learning rates, and their choices are
  compared with the motion task's by the same distance.

A finished run is read back, an interrupted one resumes (as in the batch study). The report
goes to docs/distinct_norms.md (--out) with docs/distinct_norms.json and its figures; a
hand-written reading in docs/distinct_norms_reading.md is included when present.
"""
from __future__ import annotations

import argparse
import itertools
import json
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from snvideo.atomic import atomic_write_text
from snvideo.experiments.batch_study import (DEMO_DATA, REPO, UPDATE_BATCH, _compare, _from_repo,
                                             choose_lrs, machine_description, run_cell,
                                             split_heldout, summarize)

# variant -> (model.norm, model.norm_kwargs)
VARIANTS: dict[str, tuple[str, dict]] = {
    "sn": ("sn", {}), "sn-shared": ("sn", {"shared_importance": True}), "ssn": ("ssn", {}),
    "in": ("in", {}), "ln": ("ln", {}), "bn": ("bn", {}), "gn": ("gn", {}),
}
CHOOSERS = ("sn", "ssn")  # the variants whose layers choose: their importance is question (b)
STATS = ("IN", "LN", "BN")


@dataclass(frozen=True)
class Run:
    variant: str
    task: str   # motion | appearance
    clips: int  # clips per process
    seed: int
    lr: float

    @property
    def norm(self) -> str:
        return VARIANTS[self.variant][0]

    @property
    def norm_kwargs(self) -> dict:
        return VARIANTS[self.variant][1]

    @property
    def name(self) -> str:
        return f"{self.task}_{self.variant}_{self.clips}clips_lr{self.lr:g}_seed{self.seed}"

    @property
    def label(self) -> str:
        return self.variant if self.task == "motion" else f"{self.variant} (appearance)"


@dataclass(frozen=True)
class Setting:
    dataset: dict
    test_per_class: int
    epochs: int
    variants: tuple[str, ...] = tuple(VARIANTS)
    clips: tuple[int, ...] = (8, 2)
    seeds: tuple[int, ...] = (0, 1, 2)
    lrs: tuple[float, ...] = (0.05, 0.1, 0.2)
    appearance_variants: tuple[str, ...] = CHOOSERS
    test_overrides: tuple[str, ...] = ()


# The batch study's scenes and classes with a third of its training videos and 8 epochs instead
# of 12, so that 7 variants x 2 clip counts x 3 seeds, their sweep and the appearance task (68
# runs) fit in about an hour and a half on 2 CPU cores.
FULL = Setting(dataset=dict(DEMO_DATA, train_per_class=40, val_per_class=25), test_per_class=15,
               epochs=8)
QUICK = Setting(dataset=dict(DEMO_DATA, motions=DEMO_DATA["motions"][:4], train_per_class=16,
                             val_per_class=10),
                test_per_class=6, epochs=3, variants=("sn", "sn-shared", "ssn", "bn"),
                seeds=(0, 1), lrs=(0.2,), test_overrides=("test.num_clips=2", "test.num_crops=1"))


def run_command(run: Run, setting: Setting, data_dir: Path, work_dir: Path) -> list[str]:
    """train.py for one run: batch_study.yaml with the run's norm, clips, seed and lr."""
    ann = _from_repo(data_dir) / "annotations"
    kwargs = json.dumps(run.norm_kwargs, separators=(",", ":"))
    return [sys.executable, "train.py", "--config", "configs/batch_study.yaml",
            f"work_dir={_from_repo(work_dir) / run.name}",
            f"data.root={_from_repo(data_dir) / 'videos'}",
            f"data.train_ann={ann / 'train.csv'}", f"data.val_ann={ann / 'heldout.csv'}",
            f"data.test_ann={ann / 'test.csv'}",
            f"model.norm={run.norm}", f"model.norm_kwargs={kwargs}",
            f"data.batch_size={run.clips}", f"train.accumulate={UPDATE_BATCH // run.clips}",
            f"train.seed={run.seed}", f"train.epochs={setting.epochs}", f"train.lr={run.lr:g}",
            f"train.val_interval={setting.epochs}", *setting.test_overrides]


# --- (b): importance vectors and their distances --------------------------------------------------
def importance_vectors(run_dir: Path) -> list[tuple[str, list[float]]]:
    """[(layer, [mean IN, LN, BN, var IN, LN, BN])] from the run's sn_importance.json."""
    path = run_dir / "sn_importance.json"
    if not path.is_file():
        return []
    return [(e["layer"], [e[kind].get(s, 0.0) for kind in ("mean", "var") for s in STATS])
            for e in json.loads(path.read_text())]


def distance(a: list[float], b: list[float]) -> float:
    """Total-variation distance of the mean weights and of the variance weights, averaged."""
    return sum(abs(x - y) for x, y in zip(a, b)) / 4


def run_distance(a: list[tuple[str, list[float]]], b: list[tuple[str, list[float]]]) -> float:
    """Two runs' choices: the layer-by-layer distance averaged over layers."""
    return statistics.fmean(distance(va, vb) for (_, va), (_, vb) in zip(a, b))


def _stage(layer: str) -> str:
    return layer.split(".")[0] if layer.startswith("layer") else "stem"


def _spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values) if values else None,
            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}


def choice_factors(vectors: dict[Run, list], variant: str, task: str = "motion") -> dict:
    """Distances that separate the three factors of question (b) for one variant."""
    runs = [r for r in vectors if r.variant == variant and r.task == task and vectors[r]]
    by_key = {(r.clips, r.seed): vectors[r] for r in runs}
    clips = sorted({r.clips for r in runs}, reverse=True)
    seeds = sorted({r.seed for r in runs})
    seed_d = [run_distance(by_key[(c, s1)], by_key[(c, s2)]) for c in clips
              for s1, s2 in itertools.combinations(seeds, 2)
              if (c, s1) in by_key and (c, s2) in by_key]
    batch_d = [run_distance(by_key[(c1, s)], by_key[(c2, s)]) for s in seeds
               for c1, c2 in itertools.combinations(clips, 2)
               if (c1, s) in by_key and (c2, s) in by_key]
    same_stage, other_stage, bn_trend = [], [], []
    for layers in by_key.values():
        for (n1, v1), (n2, v2) in itertools.combinations(layers, 2):
            (same_stage if _stage(n1) == _stage(n2) else other_stage).append(distance(v1, v2))
        bn_trend.append(_rank_correlation(list(range(len(layers))),
                                          [v[2] + v[5] for _, v in layers]))
    return {"variant": variant, "task": task, "runs": len(runs),
            "across_seeds": _spread(seed_d), "across_clips": _spread(batch_d),
            "layers_same_stage": _spread(same_stage), "layers_other_stage": _spread(other_stage),
            "bn_weight_vs_depth_spearman": _spread([t for t in bn_trend if t is not None])}


def task_factor(vectors: dict[Run, list], variant: str) -> dict:
    """(c): the motion and appearance runs of the same seed and clips, and the seed baseline."""
    pairs = [run_distance(vectors[m], vectors[a]) for m in vectors for a in vectors
             if m.variant == a.variant == variant and m.task == "motion"
             and a.task == "appearance" and (m.clips, m.seed) == (a.clips, a.seed)
             and vectors[m] and vectors[a]]
    return {"variant": variant, "across_tasks": _spread(pairs),
            "appearance": choice_factors(vectors, variant, "appearance")}


def _rank_correlation(x: list[float], y: list[float]) -> float | None:
    if len(x) < 3 or len(set(y)) < 2:
        return None
    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        out = [0.0] * len(v)
        for rank, i in enumerate(order):
            out[i] = float(rank)
        return out
    rx, ry = ranks(x), ranks(y)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    return cov / (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5


def mean_importance(vectors: dict[Run, list], variant: str, task: str, clips: int
                    ) -> list[tuple[str, dict]]:
    """Per layer, the importance averaged over seeds (rows for sn_weights.plot_importance)."""
    runs = [v for r, v in vectors.items() if (r.variant, r.task, r.clips) == (variant, task, clips)
            and v]
    if not runs:
        return []
    rows = []
    for i, (layer, _) in enumerate(runs[0]):
        avg = [statistics.fmean(run[i][1][j] for run in runs) for j in range(6)]
        rows.append((layer, {"mean": dict(zip(STATS, avg[:3])), "var": dict(zip(STATS, avg[3:]))}))
    return rows


# --- report -----------------------------------------------------------------------------------------
def _fmt(s: dict) -> str:
    return "n/a" if s["mean"] is None else f"{s['mean']:.3f} +- {s['std']:.3f} (n={s['n']})"


def plot_distance_matrices(vectors: dict[Run, list], path: Path) -> bool:
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = [v for v in CHOOSERS if any(r.variant == v and vectors[r] for r in vectors)]
    if not variants:
        return False
    fig, axes = plt.subplots(1, len(variants), figsize=(6.5 * len(variants), 6), squeeze=False)
    for ax, variant in zip(axes[0], variants):
        runs = sorted((r for r in vectors if r.variant == variant and vectors[r]),
                      key=lambda r: (r.task != "motion", -r.clips, r.seed))
        matrix = [[run_distance(vectors[a], vectors[b]) for b in runs] for a in runs]
        image = ax.imshow(matrix, vmin=0, vmax=max(0.05, max(map(max, matrix))), cmap="viridis")
        labels = [f"{'app' if r.task == 'appearance' else 'mot'} {r.clips}c s{r.seed}" for r in runs]
        ax.set_xticks(range(len(runs)), labels, rotation=90, fontsize=7)
        ax.set_yticks(range(len(runs)), labels, fontsize=7)
        ax.set_title(f"{variant}: distance between runs' choices\n(mean over layers)", fontsize=10)
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_report(out: Path, setting: Setting, quick: bool, records: list[dict],
                 sweep_table: list[dict], vectors: dict[Run, list], commands: dict[str, list[str]],
                 wall_seconds: float, argv: list[str], figures: dict[str, bool]) -> None:
    rows = summarize(records)
    order = {v: i for i, v in enumerate(VARIANTS)}
    rows.sort(key=lambda r: ("appearance" in r["label"], order.get(r["norm"], 9), -r["clips"]))
    classes = len(setting.dataset["motions"])
    chance = 100 / classes
    factors = [choice_factors(vectors, v) for v in CHOOSERS if v in setting.variants]
    tasks = [task_factor(vectors, v) for v in setting.appearance_variants
             if v in setting.variants]
    cmd = "python -m snvideo.experiments.distinct_norms" + "".join(f" {shlex.quote(a)}" for a in argv)
    timed = [r for r in records if r["seconds"] is not None]
    lines = [
        "# Do normalization layers need to be distinct? SN, shared SN, SSN and single normalizers",
        "", "Generated by `" + cmd + "`" + (" (**--quick**: a smoke run, not the study)" if quick
                                           else "") + f" on {time.strftime('%Y-%m-%d')}.", "",
        f"- Machine: {machine_description()}.",
        f"- Wall time: {wall_seconds / 60:.1f} min for this invocation; the runs' own wall times "
        f"add up to {sum(r['seconds'] for r in timed) / 60:.1f} min"
        f" ({sum(r['reused'] for r in records)} of {len(records)} runs read back).",
        f"- Model and recipe: configs/batch_study.yaml (resnet3d_10 x0.25, 8x2 clips of 32x32), "
        f"{setting.epochs} epochs, update batch {UPDATE_BATCH} clips in every run.",
        f"- Data: `make_demo_dataset(**{json.dumps(setting.dataset)})`, {setting.test_per_class} "
        "test videos a class, the rest of the validation videos held out for the sweep. The "
        "appearance task: the same call with `task=\"appearance\"`.",
        "", "## Learning rates (sweep at 8 clips per process, seed "
        f"{setting.seeds[0]}, motion task, held-out videos)", "",
        "| variant | lr | held-out top-1 | final train loss | chosen |", "|---|---|---|---|---|"]
    for r in sweep_table:
        top1 = "n/a" if r["heldout_top1"] is None else f"{r['heldout_top1']:.1f}"
        loss = "n/a" if r["final_train_loss"] is None else f"{r['final_train_loss']:.2f}"
        lines.append(f"| {r['norm']} | {r['lr']:g} | {top1} | {loss} | "
                     f"{'yes' if r['chosen'] else ''} |")
    lines += ["", "## (a) Multi-view top-1 (%) on the test videos", "",
              "| variant | clips per process | lr | seeds | top-1 mean +- std | runs | "
              "final train loss |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        runs = ", ".join(f"{v:.1f}" for v in r["top1_runs"])
        loss = "n/a" if r["train_loss_mean"] is None else f"{r['train_loss_mean']:.2f}"
        lines.append(f"| {r['label']} | {r['clips']} | {r['lr']:g} | {r['seeds']} | "
                     f"{r['top1_mean']:.1f} +- {r['top1_std']:.1f} | {runs} | {loss} |")
    lines += ["", f"Chance is {chance:.0f}%.", "", "Computed comparisons (a change within twice "
              "the seed spread is called noise):", ""]
    by = {(r["label"], r["clips"]): r for r in rows}
    for clips in setting.clips:
        sn = by.get(("sn", clips))
        for other in ("sn-shared", "ssn", "in", "ln", "bn", "gn"):
            o = by.get((other, clips))
            if sn and o:
                lines.append(f"- {clips} clips per process, sn {sn['top1_mean']:.1f} vs {other} "
                             f"{o['top1_mean']:.1f}: {_compare(sn, o, chance, 'the norms')}.")
    lines += ["", "## (b) What drives the choices", "",
              "Distance between importance vectors (0 = the same mix, 1 = disjoint choices), "
              "mean +- std over the pairs compared:", "",
              "| variant | across seeds (same clips) | across clip counts (same seed) | layers of "
              "one run, same stage | layers of one run, other stages | BN weight vs depth "
              "(Spearman, per run) |", "|---|---|---|---|---|---|"]
    for f in factors:
        lines.append(f"| {f['variant']} | {_fmt(f['across_seeds'])} | {_fmt(f['across_clips'])} | "
                     f"{_fmt(f['layers_same_stage'])} | {_fmt(f['layers_other_stage'])} | "
                     f"{_fmt(f['bn_weight_vs_depth_spearman'])} |")
    lines += ["", "## (c) Two tasks, the same scenes", "",
              "| variant | motion vs appearance (same seed, clips) | appearance: across seeds | "
              "appearance: across clip counts |", "|---|---|---|---|"]
    for t in tasks:
        lines.append(f"| {t['variant']} | {_fmt(t['across_tasks'])} | "
                     f"{_fmt(t['appearance']['across_seeds'])} | "
                     f"{_fmt(t['appearance']['across_clips'])} |")
    lines.append("")
    for key, caption in (("importance", "importance per layer, averaged over seeds"),
                         ("distances", "distance matrices between runs")):
        if figures.get(key):
            lines += [f"![{caption}]({out.stem}_{key}.png)", ""]
    reading = out.with_name(out.stem + "_reading.md")
    if not quick and reading.is_file():
        lines += ["## Reading (written by hand from this run's numbers)", "",
                  reading.read_text().strip(), ""]
    lines += ["## Commands", "", "```"]
    lines += [shlex.join(["python", *c[1:]]) for c in commands.values()]
    lines += ["```", ""]
    atomic_write_text(out, "\n".join(lines))
    data = {"summary": rows, "lr_sweep": sweep_table, "records": records,
            "choice_factors": factors, "task_factors": tasks,
            "importance": {r.name: v for r, v in vectors.items()}, "quick": quick,
            "dataset": setting.dataset, "epochs": setting.epochs,
            "wall_seconds": round(wall_seconds, 1), "machine": machine_description()}
    atomic_write_text(out.with_suffix(".json"), json.dumps(data, indent=1))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m snvideo.experiments.distinct_norms",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run (a few minutes)")
    parser.add_argument("--variants", nargs="+", choices=tuple(VARIANTS))
    parser.add_argument("--clips", nargs="+", type=int, choices=(8, 4, 2, 1),
                        help="clips per process")
    parser.add_argument("--seeds", nargs="+", type=int)
    parser.add_argument("--lrs", nargs="+", type=float, help="learning rates of the sweep")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--data-dir", type=Path, help="datasets (default data/distinct_norms"
                        "[_quick])")
    parser.add_argument("--work-dir", type=Path, help="default work_dirs/distinct_norms[_quick]")
    parser.add_argument("--out", type=Path, help="report (default docs/distinct_norms.md; with "
                        "--quick <work-dir>/distinct_norms.md)")
    args = parser.parse_args(argv)
    setting = QUICK if args.quick else FULL
    changes = {k: tuple(v) for k, v in (("variants", args.variants), ("clips", args.clips),
                                        ("seeds", args.seeds), ("lrs", args.lrs)) if v}
    if args.epochs:
        changes["epochs"] = args.epochs
    setting = replace(setting, **changes)
    suffix = "_quick" if args.quick else ""
    data_root = (args.data_dir or REPO / "data" / f"distinct_norms{suffix}").resolve()
    work_dir = (args.work_dir or REPO / "work_dirs" / f"distinct_norms{suffix}").resolve()
    out = (args.out or (work_dir / "distinct_norms.md" if args.quick
                        else REPO / "docs" / "distinct_norms.md")).resolve()

    start = time.time()
    from snvideo.data.synthetic import make_demo_dataset

    data_dirs = {task: data_root / task for task in ("motion", "appearance")}
    for task, path in data_dirs.items():
        print(f"dataset ({task}): {path}")
        # the appearance task: as many colour families as the motion task has classes
        make_demo_dataset(path, seed=0, task=task, classes=len(setting.dataset["motions"]),
                          **setting.dataset)
        split_heldout(path, setting.test_per_class)
    commands: dict[str, list[str]] = {}
    finished: dict[str, dict] = {}

    def run_all(runs: list[Run], what: str) -> list[dict]:
        records = []
        for i, run in enumerate(runs):
            if run.name not in finished:
                commands[run.name] = run_command(run, setting, data_dirs[run.task], work_dir)
                print(f"{what} ({i + 1}/{len(runs)}) ", end="")
                record = run_cell(run, commands[run.name], work_dir / run.name)
                record.update(norm=run.variant, variant=run.variant, task=run.task)
                finished[run.name] = record
            records.append(finished[run.name])
        return records

    seed0 = setting.seeds[0]
    sweep = [Run(v, "motion", UPDATE_BATCH, seed0, lr) for v in setting.variants
             for lr in setting.lrs]
    sweep_records = run_all(sweep, "lr sweep") if len(setting.lrs) > 1 else []
    if sweep_records:
        lrs, sweep_table = choose_lrs(sweep_records)
    else:
        lrs = {v: setting.lrs[0] for v in setting.variants}
        sweep_table = [{"norm": v, "lr": lr, "heldout_top1": None, "final_train_loss": None,
                        "chosen": True} for v, lr in lrs.items()]
    print("learning rates: " + ", ".join(f"{v} {lr:g}" for v, lr in lrs.items()))
    grid = [Run(v, "motion", c, s, lrs[v]) for s in setting.seeds for v in setting.variants
            for c in setting.clips]
    grid += [Run(v, "appearance", c, s, lrs[v]) for s in setting.seeds
             for v in setting.appearance_variants if v in lrs for c in setting.clips]
    if any(UPDATE_BATCH % c for c in setting.clips):
        raise SystemExit(f"clips per process must divide {UPDATE_BATCH}")
    records = run_all(grid, "run")
    vectors = {run: importance_vectors(work_dir / run.name) for run in grid
               if run.variant in CHOOSERS}

    figures = {"distances": plot_distance_matrices(vectors, out.with_name(out.stem + "_distances.png"))}
    columns = [(f"{v}, {task}, {c} clips", rows) for v in CHOOSERS
               for task in ("motion", "appearance") for c in setting.clips
               for rows in [mean_importance(vectors, v, task, c)] if rows]
    if columns:
        try:
            from snvideo.analysis.sn_weights import plot_importance

            plot_importance(columns, str(out.with_name(out.stem + "_importance.png")))
            figures["importance"] = True
        except ImportError:
            figures["importance"] = False
    write_report(out, setting, args.quick, records, sweep_table, vectors, commands,
                 time.time() - start, argv, figures)
    print(f"wrote {out} ({(time.time() - start) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
