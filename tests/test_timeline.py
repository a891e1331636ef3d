"""Long-video timelines: windows streamed in order with bounded memory, each exactly the clip the
reader path would give the model; test.py --timeline writes the JSON, the plot and the video."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from snvideo.config import load_config
from snvideo.data import TestTransform, VideoReader, normalize_views
from snvideo.engine.builders import model_from_config
from snvideo.engine.checkpoint import save_checkpoint
from snvideo.evaluation.timeline import TimelineStats, stream_windows, timeline_json

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import test as test_script  # noqa: E402

CLIP_LEN, INTERVAL, SHORT, CROP = 8, 2, 40, 32
SPAN = (CLIP_LEN - 1) * INTERVAL + 1


@pytest.fixture(scope="module")
def model():
    cfg = load_config(str(REPO / "configs" / "demo.yaml"),
                      [f"data.clip_len={CLIP_LEN}", f"data.crop_size={CROP}", f"data.short_side={SHORT}"])
    torch.manual_seed(0)
    return model_from_config(cfg.model, 3).eval(), cfg


def reader_probs(net, video, start_frame, count):
    """The window's probabilities through VideoReader and the test transform (one center crop)."""
    transform = TestTransform(SHORT, CROP, 1)
    with VideoReader(video) as reader:
        ids = (start_frame + INTERVAL * np.arange(CLIP_LEN)) % count
        frames = reader.get_frames(ids).permute(0, 3, 1, 2)
    views = transform.views(transform.resize(frames), [torch.arange(CLIP_LEN)], normalize=False)
    with torch.no_grad():
        return torch.softmax(net(normalize_views(views)), 1)[0]


def test_windows_are_the_reader_clips_and_memory_stays_bounded(tmp_path, video_tools, model):
    net, _ = model
    long = video_tools.write_video(tmp_path / "long.mp4", num_frames=250, size=(64, 48),
                                   options={"g": "30"})
    stats = TimelineStats()
    windows = list(stream_windows(net, str(long), CLIP_LEN, INTERVAL, SHORT, CROP,
                                  stride_seconds=0.4, batch=3, stats=stats))  # 25 fps: 10 frames
    assert [round(w.start * 25) for w in windows] == list(range(0, 250 - SPAN + 1, 10))
    assert all(abs((w.end - w.start) * 25 - SPAN) < 1e-6 for w in windows)
    assert stats.frames_decoded == 250 and stats.windows == len(windows)
    assert stats.max_frames_held <= SPAN  # a window's frames at most, whatever the length
    for k in (0, 7, len(windows) - 1):
        start = round(windows[k].start * 25)
        torch.testing.assert_close(windows[k].probs, reader_probs(net, long, start, 250),
                                   rtol=1e-5, atol=1e-6)
    names = ["a", "b", "c"]
    entry = timeline_json(windows, names)["windows"][0]
    assert set(entry) == {"start", "end", "top5"} and len(entry["top5"]) == 3
    assert [p for _, p in entry["top5"]] == sorted((p for _, p in entry["top5"]), reverse=True)


def test_a_video_shorter_than_a_window_loops_as_test_sampling_does(tmp_path, video_tools, model):
    net, _ = model
    short = video_tools.write_video(tmp_path / "short.mp4", num_frames=9, size=(64, 48))
    windows = list(stream_windows(net, str(short), CLIP_LEN, INTERVAL, SHORT, CROP))
    assert len(windows) == 1
    torch.testing.assert_close(windows[0].probs, reader_probs(net, short, 0, 9), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_test_py_timeline_writes_json_plot_and_video(tmp_path, model, capsys):
    net, cfg = model
    checkpoint = tmp_path / "best.pt"
    save_checkpoint({"model": net.state_dict(), "config": cfg.to_dict(), "classes": ["a", "b", "c"]},
                    str(checkpoint))
    video = REPO / "tests" / "data" / "real_world" / "rot90.mp4"
    out = tmp_path / "tl.json"
    assert test_script.main(["--checkpoint", str(checkpoint), "--video", str(video), "--device", "cpu",
                             "--timeline", str(out), "--window-stride", "0.5",
                             "--timeline-plot", str(tmp_path / "tl.png"),
                             "--out-video", str(tmp_path / "tl.mp4")]) == 0
    windows = json.loads(out.read_text())["windows"]
    assert len(windows) == len(range(0, 96 - SPAN + 1, 12)) and windows[1]["start"] == 0.48
    assert (tmp_path / "tl.png").stat().st_size > 0 and (tmp_path / "tl.mp4").stat().st_size > 0
    assert test_script.main(["--checkpoint", str(checkpoint), "--video", str(video),
                             "--timeline", str(out), "--window-stride", "0"]) == 2
    assert "--window-stride must be > 0" in capsys.readouterr().err
