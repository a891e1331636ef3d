"""The small-batch study script: grid rules, and a --quick run on a tiny grid end to end."""
from __future__ import annotations

import json
import re

from snvideo.experiments import batch_study as study


def test_grid_keeps_the_update_batch_and_skips_bn_at_one_clip(tmp_path):
    cells = study.grid(study.FULL)
    assert {(c.norm, c.clips) for c in cells} == {
        ("bn", 8), ("bn", 2), ("gn", 8), ("gn", 2), ("gn", 1), ("sn", 8), ("sn", 2), ("sn", 1)}
    assert {c.seed for c in cells} == {0, 1}
    for cell in cells:
        command = study.cell_command(cell, study.FULL, tmp_path / "data", tmp_path / "work")
        options = dict(arg.split("=", 1) for arg in command if "=" in arg)
        assert int(options["data.batch_size"]) * int(options["train.accumulate"]) == 8
        assert options["model.norm"] == cell.norm
        assert options["train.seed"] == str(cell.seed)
        kwargs = json.loads(options["model.norm_kwargs"])
        assert kwargs.get("using_bn", True) is (not (cell.norm == "sn" and cell.clips == 1))


def test_summarize_gives_mean_and_spread_over_seeds():
    records = [{"norm": "sn", "label": "sn", "clips": 2, "seed": s, "top1": v}
               for s, v in ((0, 50.0), (1, 60.0))]
    (row,) = study.summarize(records)
    assert row["top1_mean"] == 55.0
    assert abs(row["top1_std"] - 7.0711) < 1e-3
    assert row["seeds"] == 2


def test_quick_study_runs_a_tiny_grid_and_resumes(tmp_path, capsys):
    args = ["--quick", "--norms", "bn", "sn", "--clips", "2", "--seeds", "0", "--epochs", "1",
            "--data-dir", str(tmp_path / "data"), "--work-dir", str(tmp_path / "work"),
            "--out", str(tmp_path / "report" / "batch_study.md")]
    assert study.main(args) == 0
    report = (tmp_path / "report" / "batch_study.md").read_text()
    assert "--quick" in report and "Machine:" in report and "Wall time" in report
    for norm in ("bn", "sn"):
        row = re.search(rf"^\| {norm} \| 2 \| 4 \| 1 \| ([\d.]+) \|", report, re.M)
        assert row, report
        assert 0.0 <= float(row.group(1)) <= 100.0
    assert "data.batch_size=2 train.accumulate=4" in report
    assert "sn, 2 clips per process" in report  # the SN importance of the SN cell
    data = json.loads((tmp_path / "report" / "batch_study.json").read_text())
    assert sorted((r["norm"], r["clips"]) for r in data["records"]) == [("bn", 2), ("sn", 2)]
    for name in ("bn_2clips_seed0", "sn_2clips_seed0"):
        assert (tmp_path / "work" / name / "test_results.json").is_file()

    capsys.readouterr()
    assert study.main(args) == 0  # finished cells are read back, not retrained
    assert capsys.readouterr().out.count("done earlier") == 2
