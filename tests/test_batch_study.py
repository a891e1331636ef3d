"""The small-batch study script: grid rules, the lr sweep, side runs, the JSON schema, and a
--quick run on a tiny grid end to end."""
from __future__ import annotations

import csv
import json
import re

import pytest

from snvideo.experiments import batch_study as study

LRS = {"bn": 0.2, "gn": 0.1, "sn": 0.05}


def _options(command: list[str]) -> dict[str, str]:
    return dict(arg.split("=", 1) for arg in command if "=" in arg)


def test_grid_covers_every_norm_and_clip_count_with_the_update_batch_fixed(tmp_path):
    cells = study.grid(study.FULL, LRS)
    assert {(c.norm, c.clips) for c in cells} == {
        (n, k) for n in ("bn", "gn", "sn") for k in (8, 4, 2, 1)}  # BN at 1 clip included
    assert {c.seed for c in cells} == {0, 1, 2}
    for cell in cells:
        options = _options(study.cell_command(cell, study.FULL, tmp_path / "d", tmp_path / "w"))
        assert int(options["data.batch_size"]) == cell.clips
        assert int(options["data.batch_size"]) * int(options["train.accumulate"]) == 8
        assert options["model.norm"] == cell.norm and options["train.seed"] == str(cell.seed)
        assert float(options["train.lr"]) == LRS[cell.norm]  # one lr per norm at every clip count
        kwargs = json.loads(options["model.norm_kwargs"])
        # SN at one clip runs without its BN branch; every other cell keeps its norm's defaults
        assert kwargs == ({"using_bn": False} if (cell.norm, cell.clips) == ("sn", 1) else {})
        # the sweep's held-out videos validate, the test videos test
        assert options["data.val_ann"].endswith("heldout.csv")
        assert options["data.test_ann"].endswith("test.csv")


def test_sweep_runs_every_lr_at_8_clips_and_its_chosen_run_is_a_grid_cell():
    runs = study.sweep(study.FULL)
    assert {(c.norm, c.lr) for c in runs} == {(n, lr) for n in ("bn", "gn", "sn")
                                              for lr in study.FULL.lrs}
    assert {(c.clips, c.seed) for c in runs} == {(8, 0)}
    records = [{"norm": c.norm, "lr": c.lr, "heldout_top1": 50.0 + 10 * (c.lr == LRS[c.norm]),
                "final_train_loss": 1.0} for c in runs]
    chosen, table = study.choose_lrs(records)
    assert chosen == LRS
    assert sum(r["chosen"] for r in table) == 3
    grid_names = {c.name for c in study.grid(study.FULL, chosen)}
    assert {c.name for c in runs if c.lr == chosen[c.norm]} <= grid_names  # reused, not rerun


def test_side_runs_are_precise_bn_and_sn_batch_average_at_4_and_2_clips(tmp_path):
    cells = study.grid(study.FULL, LRS)
    runs = study.side_runs(study.FULL, cells)
    assert {(r.cell.norm, r.cell.clips) for r in runs} == {
        ("bn", 4), ("bn", 2), ("sn", 4), ("sn", 2)}
    assert len(runs) == 4 * 3  # every seed
    assert {r.label for r in runs} == {"bn + precise BN", "sn + batch average"}
    command = study.side_command(runs[0], tmp_path / "w")
    assert command[1] == "test.py" and "--recompute-norm-stats" in command
    assert command[command.index("--checkpoint") + 1].endswith(f"{runs[0].cell.name}/latest.pt")


def test_split_heldout_keeps_test_and_heldout_videos_apart(tmp_path):
    ann = tmp_path / "annotations"
    ann.mkdir()
    rows = [["label", "youtube_id", "time_start", "time_end", "split"]] + [
        [label, f"{label}{i}", "0", "10", "val"] for label in ("a", "b") for i in range(5)]
    with open(ann / "val.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    study.split_heldout(tmp_path, test_per_class=3)
    test = list(csv.reader(open(ann / "test.csv")))[1:]
    heldout = list(csv.reader(open(ann / "heldout.csv")))[1:]
    assert [r[1] for r in test] == ["a0", "a1", "a2", "b0", "b1", "b2"]
    assert [r[1] for r in heldout] == ["a3", "a4", "b3", "b4"]
    with pytest.raises(ValueError, match="test_per_class"):
        study.split_heldout(tmp_path, test_per_class=5)


def test_summarize_gives_mean_and_spread_over_seeds():
    records = [{"norm": "sn", "label": "sn", "clips": 2, "seed": s, "top1": v, "lr": 0.1}
               for s, v in ((0, 50.0), (1, 60.0))]
    (row,) = study.summarize(records)
    assert row["top1_mean"] == 55.0 and row["seeds"] == 2 and row["top1_runs"] == [50.0, 60.0]
    assert abs(row["top1_std"] - 7.0711) < 1e-3


def test_findings_call_a_drop_within_the_seed_spread_noise():
    def row(norm, clips, values, side=False):
        return study.summarize([{"norm": norm, "label": study.SIDE_LABELS[norm] if side else norm,
                                 "clips": clips, "seed": i, "top1": v, "side_run": side}
                                for i, v in enumerate(values)])[0]
    rows = [row("bn", 8, [80, 82, 81]), row("bn", 2, [60, 62, 61]), row("sn", 8, [80, 90, 70]),
            row("sn", 2, [78, 88, 68]), row("bn", 2, [70, 72, 71], side=True)]
    text = "\n".join(study.findings(rows, chance=10.0))
    assert re.search(r"bn: 81\.0% .* 61\.0% at 2 \(-20\.0 points, beyond the seed spread", text)
    assert re.search(r"sn: 80\.0% .* 78\.0% at 2 \(-2\.0 points, within the seed spread", text)
    assert "bn + precise BN at 2 clips per process: 61.0% -> 71.0% (+10.0 points" in text


def test_quick_study_runs_a_tiny_grid_end_to_end_and_resumes(tmp_path, capsys):
    args = ["--quick", "--norms", "bn", "sn", "--clips", "2", "--seeds", "0", "--epochs", "1",
            "--lrs", "0.1", "--data-dir", str(tmp_path / "data"),
            "--work-dir", str(tmp_path / "work"), "--out", str(tmp_path / "report" / "bs.md")]
    assert study.main(args) == 0
    report = (tmp_path / "report" / "bs.md").read_text()
    assert "--quick" in report and "Machine:" in report and "Wall time" in report
    for label in ("bn", "sn", "bn \\+ precise BN", "sn \\+ batch average"):
        row = re.search(rf"^\| {label} \| 2 \| 4 \| 0.1 \| 1 \| ([\d.]+) \+- ", report, re.M)
        assert row, (label, report)
        assert 0.0 <= float(row.group(1)) <= 100.0
    assert "data.batch_size=2 train.accumulate=4" in report
    assert "--recompute-norm-stats 200" in report

    data = json.loads((tmp_path / "report" / "bs.json").read_text())
    summary = {(r["label"], r["clips"]): r for r in data["summary"]}
    assert set(summary) == {("bn", 2), ("sn", 2), ("bn + precise BN", 2),
                            ("sn + batch average", 2)}
    for row in data["summary"]:
        assert row["norm"] in ("bn", "gn", "sn") and isinstance(row["clips"], int)
        assert row["seeds"] == 1 and len(row["top1_runs"]) == 1
        assert row["top1_mean"] == row["top1_runs"][0] and row["top1_std"] == 0.0
    (importance,) = data["sn_importance"]
    assert importance["clips"] == 2
    for kind in ("mean", "var"):
        assert set(importance[kind]) == {"IN", "LN", "BN"}
        assert abs(sum(importance[kind].values()) - 1.0) < 1e-6
    assert importance["layers"] and importance["layers"][0]["layer"] == "bn1"
    for name in ("bn_2clips_lr0.1_seed0", "sn_2clips_lr0.1_seed0",
                 "bn_2clips_lr0.1_seed0_recomputed"):
        assert (tmp_path / "work" / name / "test_results.json").is_file()

    capsys.readouterr()
    assert study.main(args) == 0  # finished runs are read back, not rerun
    assert capsys.readouterr().out.count("done earlier") == 4
