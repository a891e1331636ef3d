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


class _ColourClassifier(torch.nn.Module):
    """A model whose answer is known: the clip's dominant colour channel (0 red, 1 green, 2 blue)."""

    def forward(self, clips):
        return 10.0 * clips.mean(dim=(2, 3, 4))


def test_the_top_class_follows_the_segments(tmp_path):
    """A long video of three segments (red, green, blue scenes with texture): every window that
    lies inside one segment names that segment's class."""
    from snvideo.data.synthetic import write_video

    rng = np.random.default_rng(0)
    segments = [0, 1, 2, 0]
    frames = []
    for colour in segments:
        for _ in range(50):
            frame = rng.integers(0, 90, (96, 128, 3)).astype(np.uint8)
            frame[..., colour] += 120
            frames.append(frame)
    video = tmp_path / "segments.mp4"
    write_video(video, np.stack(frames), fps=25)
    windows = list(stream_windows(_ColourClassifier(), str(video), CLIP_LEN, INTERVAL, SHORT, CROP,
                                  stride_seconds=0.2, batch=4))
    inside = [(w, segments[int(w.start * 25) // 50]) for w in windows
              if int(w.start * 25) // 50 == (int(round(w.end * 25)) - 1) // 50]
    assert len(inside) >= 0.6 * len(windows)
    hits = sum(int(w.probs.argmax()) == segment for w, segment in inside)
    assert hits >= 0.9 * len(inside), (hits, len(inside))


# peak RSS of this process image: VmHWM (ru_maxrss would carry the forking parent's peak)
_RSS_SCRIPT = """
import sys, torch
from snvideo.evaluation.timeline import stream_windows
sys.path.insert(0, {tests!r})
from test_timeline import _ColourClassifier
count = sum(1 for _ in stream_windows(_ColourClassifier(), sys.argv[1], 8, 2, 240, 240, 0.5, 8))
peak = next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(count, peak)
"""


@pytest.mark.slow
def test_memory_stays_flat_as_the_video_grows(tmp_path):
    """Peak RSS of a timeline over a 4x longer video (3600 frames of 320x240) is within 20% of
    the 1x one; holding the cropped frames would add about 330 MB, 40% of the 1x peak
    (checked by making the timeline keep them)."""
    import subprocess

    import av

    base = np.linspace(0, 255, 320, dtype=np.float32)[None, :, None].repeat(240, 0).repeat(3, 2)
    peaks = {}
    for scale in (1, 4):
        video = tmp_path / f"x{scale}.mp4"
        with av.open(str(video), "w") as container:  # encoded as generated: no array of it all
            stream = container.add_stream("libx264", rate=30)
            stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
            stream.options = {"g": "30", "preset": "ultrafast"}
            for i in range(900 * scale):
                frame = np.roll(base, 3 * i, axis=1).astype(np.uint8)
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())
        out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT.format(tests=str(REPO / "tests")), str(video)],
                             capture_output=True, text=True, timeout=600, cwd=REPO)
        assert out.returncode == 0, out.stderr[-2000:]
        windows, rss = map(int, out.stdout.split()[-2:])
        assert windows >= 59 * scale
        peaks[scale] = rss
    assert peaks[4] <= 1.2 * peaks[1], peaks
