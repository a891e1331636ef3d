"""The motion demo dataset: write_video, single-frame class independence, motion separability,
the Kinetics layout, resume/skip, determinism, and reading it back through VideoDataset."""
from __future__ import annotations

import csv
import importlib
import re
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from snvideo.data.synthetic import (ALL_MOTIONS, CLASS_NAMES, MORE_MOTIONS, SceneParams,
                                   label_folder, make_demo_dataset, object_states, render_video,
                                   write_video)

REPO = Path(__file__).resolve().parents[1]


def decode_all(path: Path) -> tuple[np.ndarray, float, str, list[int]]:
    """(frames, fps, codec name, keyframe indices) of a video, decoded with PyAV."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        keys = [i for i, p in enumerate(q for q in c.demux(s) if q.size) if p.is_keyframe]
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(s)])
        return frames, float(s.average_rate), s.codec_context.name, keys


# --------------------------------------------------------------------------------------------
# write_video
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("codec,ext,decoder", [("h264", ".mp4", "h264"), ("mpeg4", ".avi", "mpeg4"),
                                               ("vp9", ".webm", "vp9"), ("h264", ".mkv", "h264")])
def test_write_video_roundtrip(tmp_path, codec, ext, decoder):
    frames = render_video(0, 3, 32, 48, 10)
    path = write_video(tmp_path / f"v{ext}", frames, fps=12.5, codec=codec)
    got, fps, name, _ = decode_all(path)
    assert name == decoder
    assert got.shape == frames.shape
    assert fps == pytest.approx(12.5)
    assert np.abs(got.astype(float) - frames).mean() < 12  # lossy, but the same picture
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # temp file gone


def test_write_video_fixed_gop_and_tensor_input(tmp_path):
    frames = torch.from_numpy(render_video(1, 4, 32, 32, 20))
    _, _, _, keys = decode_all(write_video(tmp_path / "g.mp4", frames, fps=10, gop=4))
    assert keys == [0, 4, 8, 12, 16]
    _, _, _, keys = decode_all(write_video(tmp_path / "d.mp4", frames, fps=10))
    assert keys == [0]  # libx264 default GOP (250) > 20 frames


def test_write_video_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path / "odd.mp4", np.zeros((2, 31, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "f.mp4", np.zeros((2, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="codec"):
        write_video(tmp_path / "c.mp4", np.zeros((2, 32, 32, 3), np.uint8), codec="h265")
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------------------------
# A single frame carries no label; motion does
# --------------------------------------------------------------------------------------------

N_PER_CLASS, SIZE, FRAMES = 30, 32, 16


def _gray(video: np.ndarray) -> np.ndarray:
    return video.astype(np.float64).mean(-1) / 255.0


def single_frame_stats(frame: np.ndarray) -> np.ndarray:
    """Simple statistics of one gray frame: brightness, contrast, brightness centroid (x, y),
    edge energy, and the edge-weighted circular centroid (cos, sin for x and y), which follows
    the sharp-edged object on the smooth background."""
    h, w = frame.shape
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    gy, gx = np.gradient(frame)
    edges = np.hypot(gx, gy)
    total = frame.sum()
    zx = (edges * np.exp(2j * np.pi * xs / w)).sum() / edges.sum()
    zy = (edges * np.exp(2j * np.pi * ys / h)).sum() / edges.sum()
    return np.array([frame.mean(), frame.std(), (frame * xs).sum() / total / w,
                     (frame * ys).sum() / total / h, edges.mean(), zx.real, zx.imag, zy.real,
                     zy.imag])


def motion_stats(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Least-squares affine optical flow a -> b around the centre of the changed pixels:
    (translation x, translation y, divergence, curl, mean |frame difference|).  y points down,
    so a positive curl is a clockwise rotation on screen."""
    h, w = a.shape
    diff = b - a
    gy, gx = np.gradient(0.5 * (a + b))
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    weight = np.abs(diff)
    # circular mean: objects wrap around the frame edges
    cx = np.angle((weight * np.exp(2j * np.pi * xs / w)).sum()) % (2 * np.pi) * w / (2 * np.pi)
    cy = np.angle((weight * np.exp(2j * np.pi * ys / h)).sum()) % (2 * np.pi) * h / (2 * np.pi)
    dx = (xs - cx + w / 2) % w - w / 2
    dy = (ys - cy + h / 2) % h - h / 2
    design = np.stack([gx, gx * dx, gx * dy, gy, gy * dx, gy * dy], -1).reshape(-1, 6)
    u0, ux, uy, v0, vx, vy = np.linalg.lstsq(design, -diff.reshape(-1), rcond=None)[0]
    return np.array([u0, v0, ux + vy, vx - uy, np.abs(diff).mean()])


@pytest.fixture(scope="module")
def class_stats():
    """Per class and video: single-frame stats of the first and last frame, the mean first
    frame (4x4 pooled), and the mean motion stats over consecutive frame pairs."""
    single = np.zeros((len(CLASS_NAMES), N_PER_CLASS, 2, 9))
    pooled = np.zeros((len(CLASS_NAMES), N_PER_CLASS, 16))
    motion = np.zeros((len(CLASS_NAMES), N_PER_CLASS, 5))
    for c in range(len(CLASS_NAMES)):
        for i in range(N_PER_CLASS):
            v = _gray(render_video(c, np.random.default_rng([11, c, i]), SIZE, SIZE, FRAMES))
            single[c, i, 0], single[c, i, 1] = single_frame_stats(v[0]), single_frame_stats(v[-1])
            pooled[c, i] = v[0].reshape(4, SIZE // 4, 4, SIZE // 4).mean((1, 3)).ravel()
            motion[c, i] = np.mean([motion_stats(v[t], v[t + 1]) for t in range(FRAMES - 1)], 0)
    return single, pooled, motion


def z_scores(x: np.ndarray) -> np.ndarray:
    """Per-class mean minus the grand mean, in units of the standard error of a class mean."""
    means = x.mean(1)
    stderr = x.std(1, ddof=1).mean(0) / np.sqrt(x.shape[1])
    return (means - means.mean(0)) / stderr


def test_single_frames_are_class_independent(class_stats):
    single, pooled, _ = class_stats
    # 10 classes x (10 stats + 16 pooled pixels): |z| stays well within sampling noise.
    assert np.abs(z_scores(single.reshape(len(CLASS_NAMES), N_PER_CLASS, -1))).max() < 4.0
    assert np.abs(z_scores(pooled)).max() < 4.0


def test_object_state_marginals_are_class_independent():
    """At any frame, position, angle and (log) size are uniform in every class: the design
    property that makes single frames uninformative (pixel statistics are a weaker check)."""
    n, frames, h, w = 400, 32, 48, 64
    lo, hi = SceneParams().object_size
    ks_limit = 1.95 / np.sqrt(n)  # Kolmogorov-Smirnov, ~0.1% level per test
    grid = (np.arange(n) + 0.5) / n
    for c, motion in enumerate(ALL_MOTIONS):
        rng = np.random.default_rng([5, c])
        states = [object_states(motion, rng, h, w, frames) for _ in range(n)]
        for t in (0, frames // 2, frames - 1):
            cols = {
                "x": [s["cx"][t] / w for s in states],
                "y": [s["cy"][t] / h for s in states],
                "angle": [s["angle"][t] % (2 * np.pi) / (2 * np.pi) for s in states],
                "log size": [np.log(2 * s["radius"][t] / (lo * h)) / np.log(hi / lo)
                             for s in states],
            }
            for name, values in cols.items():
                ks = np.abs(np.sort(values) - grid).max()
                assert ks < ks_limit, (motion, t, name, ks)


def test_motion_separates_classes(class_stats):
    _, _, motion = class_stats
    z = dict(zip(CLASS_NAMES, z_scores(motion)))
    tx, ty, div, curl, energy = range(5)
    assert z["moving left"][tx] < -8 and z["moving right"][tx] > 8
    assert z["moving up"][ty] < -8 and z["moving down"][ty] > 8
    assert z["growing"][div] > 5 and z["shrinking"][div] < -5
    assert z["rotating clockwise"][curl] > 8 and z["rotating counter-clockwise"][curl] < -8
    assert z["staying still"][energy] < -4 and z["swinging side to side"][energy] > 4
    # each class is extreme on its own feature, not on the others' (e.g. rotation is not drift)
    for name in ("rotating clockwise", "growing", "staying still"):
        assert abs(z[name][tx]) < 4 and abs(z[name][ty]) < 4


def test_more_motions_move_as_named():
    """The extra motions, from the object states: circling turns the centre's path clockwise or
    counter-clockwise, vertical swinging moves only y, shaking stays within its amplitude."""
    h = w = 64
    p = SceneParams()
    for i in range(20):
        turns = {}
        for motion in ("circling clockwise", "circling counter-clockwise"):
            s = object_states(motion, np.random.default_rng([7, i]), h, w, 16)
            vx, vy = np.diff(s["cx"]), np.diff(s["cy"])
            vx, vy = (vx + w / 2) % w - w / 2, (vy + h / 2) % h - h / 2  # unwrap the torus
            turns[motion] = np.mean(vx[:-1] * vy[1:] - vy[:-1] * vx[1:])  # > 0: clockwise (y down)
        assert turns["circling clockwise"] > 0 > turns["circling counter-clockwise"]
        s = object_states("swinging up and down", np.random.default_rng([8, i]), h, w, 16)
        assert np.ptp(s["cx"]) == 0 and np.ptp(s["cy"]) > 0
        s = object_states("shaking", np.random.default_rng([9, i]), h, w, 16)
        for axis, size in (("cx", w), ("cy", h)):
            path = (s[axis] - s[axis][0] + size / 2) % size - size / 2
            assert 0 < np.abs(path).max() <= 2 * p.shake_amplitude[1] * min(h, w) + 1e-9
    assert set(MORE_MOTIONS) <= set(ALL_MOTIONS)


def test_motions_option_renders_the_named_motions(tmp_path):
    """Regression: with `motions`, each class's videos show that motion (they once showed
    CLASS_NAMES[class index] instead)."""
    motions = ["staying still", "moving right", "moving down"]  # indices 0-2 are other classes
    make_demo_dataset(tmp_path, motions=motions, train_per_class=2, val_per_class=0, size=32,
                      frames=12, workers=0, noise=0.0)
    rows = read_csv(tmp_path / "annotations" / "train.csv")
    assert [r["label"] for r in rows] == [m for m in motions for _ in range(2)]
    for r in rows:
        video = next((tmp_path / "videos" / label_folder(r["label"])).glob(f"{r['youtube_id']}_*"))
        frames = _gray(decode_all(video)[0])
        tx, ty, _, _, energy = np.mean([motion_stats(frames[t], frames[t + 1])
                                        for t in range(len(frames) - 1)], 0)
        if r["label"] == "staying still":
            assert energy < 0.01, r
        elif r["label"] == "moving right":
            assert tx > 0.3 and abs(ty) < 0.5 * tx, (r, tx, ty)
        else:
            assert ty > 0.3 and abs(tx) < 0.5 * ty, (r, tx, ty)


# --------------------------------------------------------------------------------------------
# The dataset on disk
# --------------------------------------------------------------------------------------------

SMALL = dict(classes=3, train_per_class=3, val_per_class=1, size=32, frames=12, fps=12.0)


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    info = make_demo_dataset(out, workers=2, **SMALL)
    return out, info


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_demo_layout_is_kinetics(small_demo):
    out, info = small_demo
    assert not info["skipped"] and info["generated"] == 12
    assert info["classes"] == list(CLASS_NAMES[:3])
    for split, n in (("train", 9), ("val", 3)):
        path = out / "annotations" / f"{split}.csv"
        assert path.read_text().splitlines()[0] == "label,youtube_id,time_start,time_end,split"
        rows = read_csv(path)
        assert len(rows) == n and {r["split"] for r in rows} == {split}
        assert {r["label"] for r in rows} == set(CLASS_NAMES[:3])
        for r in rows:
            start, end = int(r["time_start"]), int(r["time_end"])
            assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]{10}", r["youtube_id"])
            video = (out / "videos" / label_folder(r["label"])
                     / f"{r['youtube_id']}_{start:06d}_{end:06d}.mp4")
            assert video.is_file()
    frames, fps, codec, _ = decode_all(video)
    assert frames.shape == (12, 32, 32, 3) and fps == 12.0 and codec == "h264"
    assert len(list((out / "videos").rglob("*.mp4"))) == 12


def test_demo_skips_complete_output_and_resumes(tmp_path):
    params = dict(SMALL, classes=2, train_per_class=2, val_per_class=1)
    first = make_demo_dataset(tmp_path, workers=0, **params)
    videos = sorted((tmp_path / "videos").rglob("*.mp4"))
    stamps = [v.stat().st_mtime_ns for v in videos]

    again = make_demo_dataset(tmp_path, workers=0, **params)
    assert again["skipped"] and again["generated"] == 0
    assert [v.stat().st_mtime_ns for v in videos] == stamps

    # an interrupted run (marker missing, one video not written yet) redoes only what is missing
    (tmp_path / ".demo_complete.json").unlink()
    videos[0].unlink()
    resumed = make_demo_dataset(tmp_path, workers=0, **params)
    assert not resumed["skipped"] and resumed["generated"] == 1
    assert [v.stat().st_mtime_ns for v in videos[1:]] == stamps[1:]

    # other parameters: the old dataset is replaced
    changed = make_demo_dataset(tmp_path, workers=0, **dict(params, noise=0.05))
    assert not changed["skipped"] and changed["generated"] == len(videos)
    assert first["train_csv"] == changed["train_csv"]


def test_demo_is_deterministic_given_seed(tmp_path, small_demo):
    out, _ = small_demo
    again = make_demo_dataset(tmp_path / "again", workers=0, **SMALL)  # other worker count
    for split in ("train", "val"):
        expected = (out / "annotations" / f"{split}.csv").read_text()
        assert Path(again[f"{split}_csv"]).read_text() == expected
    for video in sorted((out / "videos").rglob("*.mp4")):  # byte for byte
        twin = Path(again["videos"]) / video.relative_to(out / "videos")
        assert video.read_bytes() == twin.read_bytes()
    other = make_demo_dataset(tmp_path / "other", workers=0, **dict(SMALL, seed=1))
    assert Path(other["train_csv"]).read_text() != (out / "annotations" / "train.csv").read_text()


def test_demo_readable_through_kinetics_csv(small_demo):
    data = importlib.import_module("snvideo.data")
    if not hasattr(data, "VideoDataset"):
        pytest.skip("snvideo.data.VideoDataset is not available yet")
    out, info = small_demo
    ds = data.VideoDataset(info["train_csv"], info["videos"], clip_len=4, frame_interval=2,
                           num_clips=1, test_mode=True, short_side=32, crop_size=32)
    assert len(ds) == 9
    rows = read_csv(info["train_csv"])
    classes = sorted({r["label"] for r in rows})
    item = ds[0]
    clip, label = (item["imgs"], item["label"]) if isinstance(item, dict) else item[:2]
    assert int(label) == classes.index(rows[0]["label"])
    assert clip.shape[-2:] == (32, 32) and 4 in clip.shape


def test_make_demo_dataset_cli(tmp_path, capsys):
    sys.path.insert(0, str(REPO / "data_tools"))
    tool = importlib.import_module("make_demo_dataset")
    argv = [str(tmp_path), "--classes", "2", "--train-per-class", "1", "--val-per-class", "1",
            "--size", "16", "--frames", "4", "--workers", "0", "--speed", "0.02", "0.03"]
    assert tool.main(argv) == 0
    assert "done 4, skipped 0, failed 0" in capsys.readouterr().out
    assert len(read_csv(tmp_path / "annotations" / "train.csv")) == 2
    assert tool.main(argv) == 0
    assert "done 0, skipped 4" in capsys.readouterr().out
    assert tool.main(argv[:1] + ["--classes", "11"]) == 2
    assert "error: classes must be in 1..10" in capsys.readouterr().err
    other = tmp_path / "motions"
    assert tool.main([str(other), "--motions", "moving up-left, shaking", *argv[3:]]) == 0
    assert {r["label"] for r in read_csv(other / "annotations" / "train.csv")} == {
        "moving up-left", "shaking"}
    assert tool.main([str(other), "--motions", "moonwalking", *argv[3:]]) == 2
    assert "error: motions must be distinct names" in capsys.readouterr().err


def test_cli_help_states_the_generator_defaults():
    sys.path.insert(0, str(REPO / "data_tools"))
    tool = importlib.import_module("make_demo_dataset")
    helps = {a.dest: a.help for a in tool.build_parser()._actions}
    for name in tool.DIFFICULTY:
        value = getattr(SceneParams(), name)
        shown = " ".join(f"{v:g}" for v in value) if isinstance(value, tuple) else f"{value:g}"
        assert f"(default {shown})" in helps[name], name
