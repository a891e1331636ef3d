"""The distinct-normalizers study: its variants' commands, the appearance task's labels, the
distances of question (b), and a tiny run end to end."""
from __future__ import annotations

import csv
import json

import pytest

from snvideo.experiments import distinct_norms as study


def _options(command: list[str]) -> dict[str, str]:
    return dict(arg.split("=", 1) for arg in command if "=" in arg)


def test_every_variant_is_one_config_word_or_key(tmp_path):
    expected = {"sn": ("sn", {}), "sn-shared": ("sn", {"shared_importance": True}),
                "ssn": ("ssn", {}), "in": ("in", {}), "ln": ("ln", {}), "bn": ("bn", {}),
                "gn": ("gn", {})}
    for variant, (norm, kwargs) in expected.items():
        run = study.Run(variant, "motion", 2, 1, 0.1)
        options = _options(study.run_command(run, study.FULL, tmp_path / "d", tmp_path / "w"))
        assert options["model.norm"] == norm and json.loads(options["model.norm_kwargs"]) == kwargs
        assert int(options["data.batch_size"]) * int(options["train.accumulate"]) == 8
        assert options["train.seed"] == "1" and float(options["train.lr"]) == 0.1


def test_distances_separate_the_factors():
    one_hot = {"IN": [1, 0, 0], "LN": [0, 1, 0], "BN": [0, 0, 1]}

    def layers(*choices):
        return [(f"layer{i // 2 + 1}.0.bn{i % 2 + 1}", one_hot[c] + one_hot[c])
                for i, c in enumerate(choices)]

    assert study.distance(one_hot["IN"] * 2, one_hot["IN"] * 2) == 0
    assert study.distance(one_hot["IN"] * 2, one_hot["BN"] * 2) == 1
    assert study.distance(one_hot["IN"] + one_hot["BN"], one_hot["IN"] * 2) == 0.5
    # choices that follow the clip count, not the seed: batch size explains them
    vectors = {study.Run("ssn", "motion", c, s, 0.1): layers(*(["BN"] * 4 if c == 8 else ["IN"] * 4))
               for c in (8, 2) for s in (0, 1, 2)}
    factors = study.choice_factors(vectors, "ssn")
    assert factors["across_seeds"]["mean"] == 0 and factors["across_clips"]["mean"] == 1
    assert factors["across_seeds"]["n"] == 6 and factors["across_clips"]["n"] == 3
    assert factors["layers_same_stage"]["mean"] == 0


def test_appearance_labels_do_not_follow_motion(tmp_path):
    from snvideo.data.synthetic import make_demo_dataset

    motions = ["moving left", "moving right"]
    summary = make_demo_dataset(tmp_path, classes=2, train_per_class=6, val_per_class=0,
                                size=16, frames=4, workers=1, task="appearance", motions=motions)
    assert summary["classes"] == ["red object", "green object"]
    params = json.loads((tmp_path / ".demo_params.json").read_text())
    assert params["task"] == "appearance" and params["motions"] == motions
    with open(summary["train_csv"]) as f:
        labels = [row["label"] for row in csv.DictReader(f)]
    assert labels.count("red object") == labels.count("green object") == 6
    with pytest.raises(ValueError, match="task"):
        make_demo_dataset(tmp_path / "x", task="texture")


def test_tiny_study_end_to_end(tmp_path):
    args = ["--quick", "--variants", "ssn", "--clips", "2", "--seeds", "0", "--epochs", "1",
            "--lrs", "0.1", "--data-dir", str(tmp_path / "data"),
            "--work-dir", str(tmp_path / "work"), "--out", str(tmp_path / "report" / "dn.md")]
    assert study.main(args) == 0
    report = (tmp_path / "report" / "dn.md").read_text()
    assert "## (a)" in report and "## (b)" in report and "## (c)" in report
    assert "| ssn | 2 | 0.1 | 1 |" in report and "| ssn (appearance) | 2 | 0.1 | 1 |" in report
    data = json.loads((tmp_path / "report" / "dn.json").read_text())
    vectors = data["importance"]
    assert set(vectors) == {"motion_ssn_2clips_lr0.1_seed0", "appearance_ssn_2clips_lr0.1_seed0"}
    for layers in vectors.values():
        assert layers and layers[0][0] == "bn1"
        for _, v in layers:
            assert abs(sum(v[:3]) - 1) < 1e-6 and abs(sum(v[3:]) - 1) < 1e-6
    (task,) = data["task_factors"]
    assert task["across_tasks"]["n"] == 1 and 0 <= task["across_tasks"]["mean"] <= 1
