"""Evaluation tools: per-class accuracy and confusion matrix in results.json (--confusion),
feature extraction consistent with test.py, the annotated output video, training curves."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import train as train_script
from snvideo.analysis.confusion import plot_confusion
from snvideo.analysis.plot_metrics import main as plot_metrics_main
from snvideo.analysis.plot_metrics import read_curves
from snvideo.data import VideoReader
from snvideo.engine.checkpoint import load_checkpoint
from snvideo.evaluation import build_results

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = {"arch": "resnet3d_10", "norm": "sn", "dropout": 0.0,
              "arch_kwargs": {"widen_factor": 0.125, "no_max_pool": True}}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CLI_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def load_script(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TEST_CLI = load_script("snvideo_test_cli_tools", REPO / "test.py")
EXTRACT = load_script("snvideo_extract_features", REPO / "data_tools" / "extract_features.py")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from snvideo.data.synthetic import make_demo_dataset

    root = tmp_path_factory.mktemp("tools_demo")
    make_demo_dataset(root, classes=4, train_per_class=3, val_per_class=3, size=32, frames=16,
                      seed=1, workers=1)
    return root


def train_run(base: Path, demo: Path, norm: str = "sn", epochs: int = 2) -> Path:
    work = base / f"run_{norm}"
    cfg = {"work_dir": str(work), "model": {**TINY_MODEL, "norm": norm},
           "data": {"root": str(demo / "videos"), "train_ann": str(demo / "annotations" / "train.csv"),
                    "val_ann": str(demo / "annotations" / "val.csv"), "clip_len": 4,
                    "frame_interval": 2, "batch_size": 4, "num_workers": 0, "short_side": 32,
                    "crop_size": 28, "backend": "pyav"},
           "train": {"epochs": epochs, "lr": 0.05, "log_interval": 1, "clip_grad": None},
           "test": {"num_clips": 2, "num_crops": 3, "views_per_forward": 4, "num_workers": 0}}
    path = base / f"{norm}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert train_script.main(["--config", str(path), "--device", "cpu"]) == 0
    return work


@pytest.fixture(scope="module")
def trained(demo, tmp_path_factory):
    return train_run(tmp_path_factory.mktemp("tools_train"), demo)


def run_test_py(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    status = TEST_CLI.main([str(a) for a in args] + ["--device", "cpu"])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture(scope="module")
def score_results(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("score") / "results.json"
    assert TEST_CLI.main(["--checkpoint", str(trained / "latest.pt"), "--out", str(out),
                          "--device", "cpu", "test.average=score"]) == 0
    return json.loads(out.read_text())


# --------------------------------------------------------------------------------------------
# per_class and confusion
# --------------------------------------------------------------------------------------------
def test_confusion_counts_consistent_with_top1(trained, tmp_path, capsys):
    out, png = tmp_path / "results.json", tmp_path / "confusion.png"
    status, stdout, err = run_test_py(capsys, "--checkpoint", trained / "latest.pt", "--out", out,
                                      "--confusion", png)
    assert status == 0, err
    assert f"confusion matrix drawn to {png}" in stdout
    results = json.loads(out.read_text())
    classes = load_checkpoint(str(trained / "latest.pt"))["classes"]
    confusion = np.array(results["confusion"])
    assert confusion.shape == (len(classes), len(classes))
    assert [c["class"] for c in results["per_class"]] == classes
    expected = np.zeros_like(confusion)
    for video in results["videos"]:
        expected[video["label_index"], video["pred_index"]] += 1
    assert (confusion == expected).all() and confusion.sum() == results["num_evaluated"] == 12
    assert 100.0 * np.trace(confusion) / confusion.sum() == pytest.approx(results["top1"])
    for i, row in enumerate(results["per_class"]):
        assert row["num"] == confusion[i].sum() == 3
        assert row["accuracy"] == pytest.approx(100.0 * confusion[i, i] / 3)
    assert np.mean([r["accuracy"] for r in results["per_class"]]) == pytest.approx(results["mean_class_acc"])
    assert png.read_bytes().startswith(PNG_MAGIC)


def test_per_class_marks_classes_without_videos_and_unlabelled_videos_stay_out():
    results = build_results(
        evaluated=[("a.mp4", 0, [0, 1, 2], [0.5, 0.3, 0.2]), ("b.mp4", 0, [2, 0, 1], [0.6, 0.3, 0.1]),
                   ("c.mp4", 2, [2, 1, 0], [0.9, 0.05, 0.05]), ("d.mp4", -1, [1, 0, 2], [0.8, 0.1, 0.1])],
        failed=[], class_names=["x", "y", "z"], settings={})
    assert results["confusion"] == [[1, 0, 1], [0, 0, 0], [0, 0, 1]]
    assert results["per_class"] == [{"class": "x", "accuracy": 50.0, "num": 2},
                                    {"class": "y", "accuracy": None, "num": 0},
                                    {"class": "z", "accuracy": 100.0, "num": 1}]


def test_confusion_plot_for_400_classes(tmp_path):
    rng = np.random.default_rng(0)
    k = 400
    counts = (rng.random((k, k)) < 0.01).astype(np.int64) + np.eye(k, dtype=np.int64) * 20
    path = tmp_path / "c400.png"
    plot_confusion(counts.tolist(), [f"class_{i}" for i in range(k)], path)
    from PIL import Image

    with Image.open(path) as image:  # large enough for 400 rows of labels (>= 8 px per class)
        assert min(image.size) >= 8 * k


def test_confusion_argument_errors(trained, tmp_path, capsys):
    status, _, err = run_test_py(capsys, "--checkpoint", trained / "latest.pt", "--confusion",
                                 tmp_path / "c.txt")
    assert status == 2 and "--confusion" in err and len(err.strip().splitlines()) == 1


# --------------------------------------------------------------------------------------------
# extract_features
# --------------------------------------------------------------------------------------------
def extract(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    status = EXTRACT.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


def test_features_give_test_py_predictions_and_resume(trained, demo, score_results, tmp_path, capsys):
    ckpt = load_checkpoint(str(trained / "latest.pt"))
    weight, bias = ckpt["model"]["fc.weight"], ckpt["model"]["fc.bias"]
    out = tmp_path / "features"
    ann = demo / "annotations" / "val.csv"
    status, stdout, _ = extract(capsys, "--checkpoint", trained / "latest.pt", "--ann", ann,
                                "--out", out, "--device", "cpu")
    assert status == 0 and "done 12, skipped 0, failed 0" in stdout
    for video in score_results["videos"]:
        features = np.load(out / (os.path.splitext(video["video"])[0] + ".npy"))
        assert features.shape == (weight.shape[1],) and features.dtype == np.float32
        probs = (torch.from_numpy(features) @ weight.T + bias).softmax(0)
        assert int(probs.argmax()) == video["pred_index"], video["video"]
        assert float(probs.max()) == pytest.approx(video["top5"][0][1], abs=1e-4)
    # resumable: nothing to do, then only the removed file
    status, stdout, _ = extract(capsys, "--checkpoint", trained / "latest.pt", "--ann", ann,
                                "--out", out, "--device", "cpu")
    assert "done 0, skipped 12" in stdout
    first = out / (os.path.splitext(score_results["videos"][0]["video"])[0] + ".npy")
    kept = np.load(first)
    first.unlink()
    status, stdout, _ = extract(capsys, "--checkpoint", trained / "latest.pt", "--ann", ann,
                                "--out", out, "--device", "cpu")
    assert "done 1, skipped 11" in stdout and np.array_equal(np.load(first), kept)


def test_per_view_features_and_failed_videos_listed(trained, demo, tmp_path, capsys):
    import shutil

    root = tmp_path / "videos"
    root.mkdir()
    for name in ("a.mp4", "b.mp4"):
        shutil.copy(sorted((demo / "videos").rglob("*.mp4"))[len(name)], root / name)
    (root / "bad.mp4").write_bytes(b"\x00" * 100)
    listing = tmp_path / "list.txt"
    listing.write_text("a.mp4 0\nb.mp4 1\nbad.mp4 0\ngone/none.mp4 0\n")
    out = tmp_path / "per_view"
    status, stdout, err = extract(capsys, "--checkpoint", trained / "latest.pt", "--ann", listing,
                                  "--root", root, "--out", out, "--per-view", "--device", "cpu",
                                  "test.num_clips=3", "test.num_crops=1")
    assert status == 0 and "done 2, skipped 0, failed 2" in stdout
    weight = load_checkpoint(str(trained / "latest.pt"))["model"]["fc.weight"]
    assert np.load(out / "a.npy").shape == (3, weight.shape[1])
    failed = dict(line.split("\t") for line in (out / "failed.txt").read_text().splitlines())
    assert set(failed) == {"bad.mp4", "gone/none.mp4"}
    assert failed["gone/none.mp4"] == "file not found" and "FAILED gone/none.mp4" in err
    status, _, err = extract(capsys, "--checkpoint", tmp_path / "none.pt", "--ann", listing, "--out", out)
    assert status == 2 and "none.pt" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_features_torchrun_two_processes_equal_one(trained, demo, tmp_path, capsys):
    ann = demo / "annotations" / "val.csv"
    single, sharded = tmp_path / "one", tmp_path / "two"
    assert extract(capsys, "--checkpoint", trained / "latest.pt", "--ann", ann, "--out", single,
                   "--device", "cpu")[0] == 0
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", str(REPO / "data_tools" / "extract_features.py"),
                           "--checkpoint", str(trained / "latest.pt"), "--ann", str(ann),
                           "--out", str(sharded), "--device", "cpu"],
                          cwd=REPO, env=CLI_ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("done 12, skipped 0, failed 0") == 1  # rank 0 reports the total
    files = sorted(p.relative_to(single) for p in single.rglob("*.npy"))
    assert len(files) == 12 and files == sorted(p.relative_to(sharded) for p in sharded.rglob("*.npy"))
    for rel in files:
        np.testing.assert_allclose(np.load(single / rel), np.load(sharded / rel), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# --out-video
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ext", [".mp4", ".gif"])
def test_out_video_decodable_with_top5_drawn(trained, demo, tmp_path, capsys, ext):
    video = sorted((demo / "videos").rglob("*.mp4"))[0]
    out = tmp_path / f"annotated{ext}"
    status, stdout, _ = run_test_py(capsys, "--checkpoint", trained / "latest.pt", "--video", video,
                                    "--out-video", out)
    assert status == 0 and f"16 frames with the top-5 written to {out}" in stdout
    with VideoReader(str(video), backend="pyav") as source, VideoReader(str(out), backend="pyav") as drawn:
        assert len(drawn) == len(source) == 16
        original = source.get_frames([5]).numpy()[0].astype(float)
        annotated = drawn.get_frames([5]).numpy()[0].astype(float)
    height, width = annotated.shape[:2]
    assert min(height, width) >= 360
    from PIL import Image

    scaled = np.asarray(Image.fromarray(original.astype(np.uint8)).resize((width, height), Image.BILINEAR),
                        dtype=float)
    corner, expected_corner = annotated[: height // 6, : width // 2], scaled[: height // 6, : width // 2]
    # text box: darker than the frame there, with bright glyphs; the rest of the frame untouched
    assert corner.max() > 200 and corner.mean() < expected_corner.mean() - 10
    assert np.abs(annotated[-height // 3:] - scaled[-height // 3:]).mean() < 12


def test_out_video_needs_video(trained, tmp_path, capsys):
    status, _, err = run_test_py(capsys, "--checkpoint", trained / "latest.pt", "--out-video",
                                 tmp_path / "x.mp4")
    assert status == 2 and "--out-video" in err


# --------------------------------------------------------------------------------------------
# plot_metrics
# --------------------------------------------------------------------------------------------
def test_plot_metrics_overlays_runs(trained, demo, tmp_path, capsys):
    bn = train_run(tmp_path, demo, norm="bn", epochs=2)
    curves = read_curves(str(trained))
    assert sorted(curves.loss) == [1, 2] and sorted(curves.val_top1) == [1, 2]
    assert len(curves.lr) == 2 * 3 and max(curves.lr) == pytest.approx(2.0)  # 3 batches an epoch
    out = tmp_path / "curves.png"
    assert plot_metrics_main([str(trained), str(bn), "--out", str(out), "--labels", "sn", "bn"]) == 0
    assert out.read_bytes().startswith(PNG_MAGIC)
    stdout = capsys.readouterr().out
    assert "sn: 2 epochs" in stdout and "bn: 2 epochs" in stdout
    assert plot_metrics_main([str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert "metrics.jsonl" in capsys.readouterr().err
