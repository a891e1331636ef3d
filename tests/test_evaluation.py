"""Multi-view evaluation: view order and crops, prob/score aggregation, results files, failed
videos, distributed == single process, single-video inference, --strict and CLI errors."""
from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from snvideo.config import TestConfig as EvalConfig  # not "Test*": pytest would collect it
from snvideo.config import build_config
from snvideo.data import IMAGENET_MEAN, IMAGENET_STD, VideoDataset, test_clip_indices, three_crop_boxes
from snvideo.data.synthetic import write_video
from snvideo.engine.checkpoint import save_checkpoint
from snvideo.evaluation import (aggregate_views, evaluate, format_summary, predict_views,
                                shard_indices, write_results)
from snvideo.norm import SwitchNorm3d

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["archery", "bowling", "juggling"]
NUM_FRAMES, HEIGHT, WIDTH = 24, 32, 48
VIEW_SETTINGS = {"clip_len": 4, "frame_interval": 2, "short_side": 32, "crop_size": 32}
CLI_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def marked_frames(seed: int) -> np.ndarray:
    """Gray frames whose top half encodes the frame index (10 * i) and bottom half the column
    (4 * x), so a decoded view tells which frames and which crop it holds."""
    frames = np.zeros((NUM_FRAMES, HEIGHT, WIDTH, 3), np.uint8)
    frames[:, : HEIGHT // 2] = (10 * np.arange(NUM_FRAMES) + seed % 3)[:, None, None, None]
    frames[:, HEIGHT // 2:] = (4 * np.arange(WIDTH))[None, None, :, None]
    return frames


@pytest.fixture(scope="module")
def video_set(tmp_path_factory):
    """7 readable videos, a zero-byte, a corrupt and a missing one, listed in two files."""
    root = tmp_path_factory.mktemp("videos")
    good = []
    for i in range(7):
        rng = np.random.default_rng(i)
        frames = marked_frames(i)
        frames[:, :4, :4] = rng.integers(0, 255, (NUM_FRAMES, 4, 4, 3))  # videos differ
        rel = f"{CLASSES[i % 3]}/clip_{i}.mp4"
        write_video(root / rel, frames, fps=12, crf=0)
        good.append((rel, i % 3))
    (root / "broken").mkdir()
    (root / "broken" / "zero.mp4").write_bytes(b"")
    (root / "broken" / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    entries = good[:3] + [("broken/zero.mp4", 1)] + good[3:5] + [("broken/corrupt.mp4", 2)] \
        + good[5:] + [("gone/missing.mp4", 0)]
    full = root / "test_list.txt"
    full.write_text("".join(f"{rel} {label}\n" for rel, label in entries))
    no_missing = root / "no_missing.txt"
    no_missing.write_text("".join(f"{rel} {label}\n" for rel, label in entries[:-1]))
    return {"root": root, "list": full, "no_missing": no_missing, "good": good,
            "failed": {"broken/zero.mp4": "zero-byte file", "broken/corrupt.mp4": "cannot decode",
                       "gone/missing.mp4": "file not found"}}


def dataset(video_set, num_clips=2, num_crops=3, ann="list"):
    return VideoDataset(video_set[ann], video_set["root"], num_clips=num_clips, test_mode=True,
                        num_crops=num_crops, classes=CLASSES, backend="pyav", **VIEW_SETTINGS)


class TinyNet(nn.Module):
    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv3d(3, 4, 3, padding=1)
        self.norm = SwitchNorm3d(4)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x):
        x = torch.relu(self.norm(self.conv(x)))
        return self.fc(x.mean(dim=(2, 3, 4)))


class RecordingNet(TinyNet):
    """Remembers every batch of views it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[torch.Tensor] = []

    def forward(self, x):
        self.batches.append(x.clone())
        return super().forward(x)


def to_uint8_scale(views: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)
    return (views * std + mean) * 255


# --------------------------------------------------------------------------------------------
# Views, aggregation, sharding
# --------------------------------------------------------------------------------------------

def test_clip_starts_are_evenly_spaced_and_three_crops_span_the_long_side():
    clips = test_clip_indices(num_frames=100, clip_len=8, frame_interval=2, num_clips=4)
    starts = clips[:, 0]
    gap = (100 - 16 + 1) / 4  # mmaction2 SampleFrames test mode: centre of each of 4 segments
    assert starts.tolist() == [int(gap / 2 + i * gap) for i in range(4)] == [10, 31, 53, 74]
    assert (np.diff(clips, axis=1) == 2).all()
    assert three_crop_boxes(32, 48, 32) == [(0, 0, 32, 32), (0, 8, 32, 32), (0, 16, 32, 32)]
    assert three_crop_boxes(48, 32, 32) == [(0, 0, 32, 32), (8, 0, 32, 32), (16, 0, 32, 32)]


def test_model_sees_views_clip_major_in_chunks(video_set):
    """V = 2 clips x 3 crops per video, fed as chunks of 4 then 2, in order view = clip*3+crop."""
    data = dataset(video_set)
    model = RecordingNet()
    test_cfg = EvalConfig(num_clips=2, num_crops=3, views_per_forward=4, num_workers=0)
    evaluate(model, torch.utils.data.Subset(data, [0]), test_cfg, progress=False)
    assert [b.shape[0] for b in model.batches] == [4, 2]
    views = to_uint8_scale(torch.cat(model.batches))
    assert views.shape == (6, 3, 4, 32, 32)
    clips = test_clip_indices(NUM_FRAMES, 4, 2, 2)
    lefts = [box[1] for box in three_crop_boxes(HEIGHT, WIDTH, 32)]
    for v in range(6):
        clip, crop = divmod(v, 3)
        frame_level = views[v, :, :, 4:HEIGHT // 2].mean(dim=(0, 2, 3))  # per time step
        assert torch.allclose(frame_level, torch.tensor(10.0 * clips[clip], dtype=torch.float32), atol=3)
        column_level = views[v, :, :, HEIGHT // 2:].mean()
        assert abs(float(column_level) - 4 * (lefts[crop] + 15.5)) < 3


def test_prob_and_score_averaging_hand_computed():
    logits = torch.tensor([[0.0, 0.0], [0.0, math.log(9.0)]])  # softmax: [.5,.5] and [.1,.9]
    assert torch.allclose(aggregate_views(logits, "prob"), torch.tensor([0.3, 0.7]))
    # mean logits [0, ln 3] -> softmax [1/4, 3/4]
    assert torch.allclose(aggregate_views(logits, "score"), torch.tensor([0.25, 0.75]))
    with pytest.raises(ValueError, match="average"):
        aggregate_views(logits, "max")


def test_chunked_forward_equals_one_forward():
    model = TinyNet().eval()
    views = torch.randn(7, 3, 4, 8, 8)
    with torch.no_grad():
        expected = model(views).softmax(1).mean(0)
    for views_per_forward in (1, 3, 7, 100):
        probs = predict_views(model, views, views_per_forward, "prob", "cpu")
        assert torch.allclose(probs, expected, atol=1e-6)


def test_shards_cover_every_video_once():
    for n, world in [(9, 2), (10, 3), (2, 4)]:
        shards = [list(shard_indices(n, r, world)) for r in range(world)]
        assert sorted(i for s in shards for i in s) == list(range(n))
        assert max(map(len, shards)) - min(map(len, shards)) <= 1


# --------------------------------------------------------------------------------------------
# Results and failed videos (library)
# --------------------------------------------------------------------------------------------

def test_results_consistent_and_failures_listed(video_set, tmp_path):
    data = dataset(video_set)
    test_cfg = EvalConfig(num_clips=2, num_crops=3, views_per_forward=4, num_workers=0)
    results = evaluate(TinyNet(), data, test_cfg, progress=False)
    write_results(results, str(tmp_path / "results.json"))
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))

    videos = saved["videos"]
    assert [v["video"] for v in videos] == [rel for rel, _ in video_set["good"]]
    assert saved["num_videos"] == 10 and saved["num_evaluated"] == 7 and saved["num_failed"] == 3
    failed = {f["video"]: f["reason"] for f in saved["failed"]}
    assert set(failed) == set(video_set["failed"])
    for video, reason in video_set["failed"].items():
        assert reason in failed[video]
    hits = [v["pred_index"] == v["label_index"] for v in videos]
    assert saved["top1"] == pytest.approx(100 * sum(hits) / 7)
    assert saved["top5"] == pytest.approx(100.0)  # 3 classes: top-3 always hits
    assert saved["topk"] == 3
    recalls = [np.mean([h for h, v in zip(hits, videos) if v["label_index"] == c])
               for c in range(3)]
    assert saved["mean_class_acc"] == pytest.approx(100 * np.mean(recalls))
    for v in videos:
        assert v["label"] == CLASSES[v["label_index"]] and v["pred"] == CLASSES[v["pred_index"]]
        assert v["top5"][0][0] == v["pred"] and v["correct"] == (v["pred"] == v["label"])
        probs = [p for _, p in v["top5"]]
        assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1, abs=1e-5)
    summary = format_summary(results, "results.json")
    assert "3 videos failed to decode (listed in results.json)" in summary
    assert "metrics are over the 7 readable videos" in summary
    assert all(f"{v}: " in format_summary(results) for v in video_set["failed"])

    write_results(results, str(tmp_path / "results.csv"))
    with open(tmp_path / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 10
    assert [r["video"] for r in rows if r["error"]] == [f["video"] for f in saved["failed"]]
    assert sum(int(r["correct"]) for r in rows if not r["error"]) == sum(hits)


def test_unreadable_videos_do_not_kill_loader_workers(video_set):
    test_cfg = EvalConfig(num_clips=1, num_crops=1, views_per_forward=4, num_workers=2)
    with_workers = evaluate(TinyNet(), dataset(video_set, 1, 1), test_cfg, progress=False)
    test_cfg.num_workers = 0
    in_process = evaluate(TinyNet(), dataset(video_set, 1, 1), test_cfg, progress=False)
    assert with_workers["failed"] == in_process["failed"] and len(in_process["failed"]) == 3
    assert with_workers["videos"] == in_process["videos"]


# --------------------------------------------------------------------------------------------
# test.py
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint(video_set, tmp_path_factory):
    """A real resnet3d_10 (SN) checkpoint in train.py's format, with its config."""
    from snvideo.models import build_model

    out = tmp_path_factory.mktemp("work")
    cfg = build_config({
        "model": {"arch": "resnet3d_10", "norm": "sn", "dropout": 0.0},
        "data": {"root": str(video_set["root"]), "train_ann": str(video_set["list"]),
                 "val_ann": str(video_set["list"]), "backend": "pyav", "num_workers": 0,
                 **VIEW_SETTINGS},
        "test": {"num_clips": 2, "num_crops": 3, "views_per_forward": 4, "num_workers": 0},
        "work_dir": str(out)})
    torch.manual_seed(0)
    model = build_model("resnet3d_10", len(CLASSES), norm="sn", dropout=0.0)
    with torch.no_grad():  # spread the logits so the classes are told apart
        model.fc.weight.normal_(0, 1.0)
    path = out / "best.pt"
    save_checkpoint({"model": model.state_dict(), "config": cfg.to_dict(), "classes": CLASSES,
                     "epoch": 1}, str(path))
    return path


def load_cli():
    spec = importlib.util.spec_from_file_location("snvideo_test_cli", REPO / "test.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CLI = load_cli()


def run_main(capsys, *args) -> tuple[int, str, str]:
    """test.py's main() in this process (no interpreter start-up): (status, stdout, stderr)."""
    capsys.readouterr()
    status = CLI.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


def run_test_py(*args, torchrun=False):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node=2"] if torchrun else [sys.executable]
    return subprocess.run([*launcher, str(REPO / "test.py"), *map(str, args)], cwd=REPO,
                          env=CLI_ENV, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def single_process_results(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "results.json"
    status = CLI.main(["--checkpoint", str(checkpoint), "--out", str(out)])
    assert status == 0
    return json.loads(out.read_text())


def test_dataset_run_summary_names_failures(checkpoint, tmp_path, capsys):
    status, out, _ = run_main(capsys, "--checkpoint", checkpoint, "--out", tmp_path / "r.csv",
                              "test.num_clips=1", "test.num_crops=1")
    assert status == 0
    assert "(1 clips x 1 crops, prob averaging): 7 of 10 videos evaluated" in out
    assert f"3 videos failed to decode (listed in {tmp_path / 'r.csv'})" in out
    with open(tmp_path / "r.csv") as f:
        assert len(list(csv.DictReader(f))) == 10


@pytest.mark.slow
def test_torchrun_two_processes_equal_single_process(checkpoint, single_process_results,
                                                     tmp_path):
    out = tmp_path / "results.json"
    proc = run_test_py("--checkpoint", checkpoint, "--out", out, torchrun=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("multi-view test") == 1  # rank 0 alone reports
    distributed = json.loads(out.read_text())
    single = single_process_results
    assert distributed["processes"] == 2 and single["processes"] == 1
    for key in ("num_videos", "num_evaluated", "num_failed", "failed", "top1", "top5",
                "mean_class_acc"):
        assert distributed[key] == single[key], key
    assert [(v["video"], v["pred"]) for v in distributed["videos"]] == \
        [(v["video"], v["pred"]) for v in single["videos"]]
    for a, b in zip(distributed["videos"], single["videos"]):
        assert [c for c, _ in a["top5"]] == [c for c, _ in b["top5"]]
        assert np.allclose([p for _, p in a["top5"]], [p for _, p in b["top5"]], atol=1e-5)


def test_single_video_prints_top_classes_like_the_dataset_run(checkpoint, single_process_results,
                                                              video_set, tmp_path, capsys):
    rel = video_set["good"][4][0]
    proc = run_test_py("--checkpoint", checkpoint, "--video", video_set["root"] / rel)
    assert proc.returncode == 0, proc.stderr
    lines = [line.split() for line in proc.stdout.splitlines()[1:]]
    printed = [(" ".join(parts[1:-1]), float(parts[-1])) for parts in lines]
    expected = next(v for v in single_process_results["videos"] if v["video"] == rel)["top5"]
    assert [name for name, _ in printed] == [name for name, _ in expected]
    assert np.allclose([p for _, p in printed], [p for _, p in expected], atol=1e-4)

    # class names from label_map.txt beside a checkpoint that has none
    bare = torch.load(checkpoint, weights_only=True)
    bare.pop("classes")
    save_checkpoint(bare, str(tmp_path / "bare.pt"))
    (tmp_path / "label_map.txt").write_text("\n".join(["x_ray", "yoyo", "zumba"]) + "\n")
    status, out, _ = run_main(capsys, "--checkpoint", tmp_path / "bare.pt", "--video",
                              video_set["root"] / rel)
    assert status == 0
    names = {"archery": "x_ray", "bowling": "yoyo", "juggling": "zumba"}
    assert out.splitlines()[1].split()[1] == names[expected[0][0]]

    for bad in ("broken/corrupt.mp4", "broken/zero.mp4"):
        status, out, err = run_main(capsys, "--checkpoint", checkpoint, "--video",
                                    video_set["root"] / bad)
        assert status == 1 and err.count("\n") == 1 and bad in err and not out


def test_strict_fails_on_first_bad_video(checkpoint, video_set, tmp_path, capsys):
    status, _, err = run_main(capsys, "--checkpoint", checkpoint, "--strict",
                              f"data.val_ann={video_set['no_missing']}", "--out", tmp_path / "r.json")
    assert status == 1
    assert "broken/zero.mp4" in err and "zero-byte file" in err
    assert "corrupt" not in err and not (tmp_path / "r.json").exists()
    status, _, err = run_main(capsys, "--checkpoint", checkpoint, "--strict", "--out",
                              tmp_path / "r.json")  # a listed video missing on disk
    assert status == 1 and "gone/missing.mp4" in err and "file not found" in err
    clean = tmp_path / "clean.txt"
    clean.write_text("".join(f"{rel} {label}\n" for rel, label in video_set["good"][:2]))
    status, _, _ = run_main(capsys, "--checkpoint", checkpoint, "--strict", f"data.val_ann={clean}",
                            "test.num_clips=1", "test.num_crops=1", "--out", tmp_path / "ok.json")
    assert status == 0
    saved = json.loads((tmp_path / "ok.json").read_text())
    assert saved["num_evaluated"] == 2 and saved["settings"]["num_clips"] == 1


def test_missing_inputs_exit_2_with_one_line(checkpoint, tmp_path, capsys):
    cases = [(["--checkpoint", tmp_path / "nope.pt"], "checkpoint not found"),
             (["--checkpoint", checkpoint, "--config", tmp_path / "nope.yaml"], "nope.yaml"),
             (["--checkpoint", checkpoint, f"data.val_ann={tmp_path / 'nope.txt'}"], "nope.txt"),
             (["--checkpoint", checkpoint, "test.average=max"], "test.average")]
    for args, message in cases:
        status, _, err = run_main(capsys, *args)
        assert status == 2, (args, err)
        assert err.startswith("error: ") and message in err and err.count("\n") == 1
