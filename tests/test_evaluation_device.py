"""Evaluation on the device: uint8 views from the workers normalized where the model runs, the
training's autocast dtype and memory format, and custom transforms / single videos still fine."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from snvideo.config import DataConfig
from snvideo.config import TestConfig as EvalConfig  # not "Test*": pytest would collect it
from snvideo.data import VideoDataset, normalize_views
from snvideo.data.synthetic import write_video
from snvideo.data.transforms import to_normalized_clip
from snvideo.evaluation import evaluate, predict_video, predict_views
from snvideo.evaluation.evaluator import _CatchReadErrors
from snvideo.norm import SwitchNorm3d

CLASSES = ["a", "b"]
VIEWS = {"clip_len": 4, "frame_interval": 2, "short_side": 32, "crop_size": 32}


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    lines = []
    for i in range(4):
        frames = np.random.default_rng(i).integers(0, 255, (20, 36, 48, 3), dtype=np.uint8)
        write_video(root / f"v{i}.mp4", frames, fps=10, crf=0)
        lines.append(f"v{i}.mp4 {i % 2}\n")
    (root / "list.txt").write_text("".join(lines))
    return root


def make_dataset(root, transform=None):
    return VideoDataset(root / "list.txt", root, num_clips=2, num_crops=3, test_mode=True,
                        classes=CLASSES, backend="pyav", transform=transform, **VIEWS)


class Net(nn.Module):
    """Records, per forward, the input's dtype, memory format and autocast state."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv3d(3, 4, 3, padding=1)
        self.norm = SwitchNorm3d(4)
        self.fc = nn.Linear(4, 2)
        nn.init.normal_(self.fc.weight, 0, 3.0)
        self.seen: list[tuple] = []

    def forward(self, x):
        self.seen.append((x.dtype, x.is_contiguous(memory_format=torch.channels_last_3d),
                          torch.is_autocast_enabled("cpu")))
        x = torch.relu(self.norm(self.conv(x)))
        return self.fc(x.float().mean(dim=(2, 3, 4)))


def test_loader_items_are_uint8_and_normalize_to_the_float_views_exactly(videos):
    data = make_dataset(videos)
    item = _CatchReadErrors(data, [1], uint8=True)[0]
    float_views, label = data[1]
    assert item.views.dtype == torch.uint8 and item.views.shape == float_views.shape
    assert item.label == label
    assert item.views.element_size() * 4 == float_views.element_size()  # a quarter of the bytes
    torch.testing.assert_close(normalize_views(item.views, item.mean, item.std), float_views,
                               rtol=0, atol=0)
    channels_last = normalize_views(item.views, memory_format=torch.channels_last_3d)
    assert channels_last.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(channels_last, float_views, rtol=0, atol=0)
    # the old float item is what the dataset still returns by default
    assert _CatchReadErrors(data, [1])[0].views.dtype == torch.float32


def test_evaluate_on_uint8_views_equals_the_float_pipeline(videos):
    data = make_dataset(videos)
    model = Net().eval()
    cfg = EvalConfig(num_clips=2, num_crops=3, views_per_forward=4, num_workers=0)
    results = evaluate(model, data, cfg, progress=False)
    assert {s[0] for s in model.seen} == {torch.float32}
    for i, video in enumerate(results["videos"]):
        probs = predict_views(model, data[i][0], 4, "prob", "cpu")  # float views, as before
        expected = probs.sort(descending=True).values[:2].tolist()
        assert [p for _, p in video["top5"]] == pytest.approx(expected, abs=1e-6)


def test_evaluate_runs_under_the_training_amp_and_memory_format(videos):
    data = make_dataset(videos)
    cfg = EvalConfig(num_clips=2, num_crops=3, views_per_forward=6, num_workers=0)
    model = Net().eval()
    fp32 = evaluate(model, data, cfg, progress=False)
    model.seen.clear()
    model.to(memory_format=torch.channels_last_3d)
    bf16 = evaluate(model, data, cfg, progress=False, amp="bf16", channels_last=True)
    assert model.seen and all(s == (torch.float32, True, True) for s in model.seen)
    for a, b in zip(fp32["videos"], bf16["videos"]):
        assert a["pred"] == b["pred"] or abs(a["top5"][0][1] - 0.5) < 0.02
        assert [p for _, p in b["top5"]] == pytest.approx([p for _, p in a["top5"]], abs=0.02)
    with pytest.raises(ValueError, match="amp must be one of"):
        evaluate(model, data, cfg, progress=False, amp="fp8")


def test_custom_transform_views_pass_through_as_float(videos):
    calls = []

    def transform(video):  # uint8 (T, C, H, W) -> float (C, T, 32, 32), one crop
        calls.append(video.dtype)
        return to_normalized_clip(video[..., :32, :32])

    data = make_dataset(videos, transform)
    item = _CatchReadErrors(data, [0], uint8=True)[0]
    assert item.views.dtype == torch.float32 and item.views.shape == (2, 3, 4, 32, 32)
    model = Net().eval()
    results = evaluate(model, data, EvalConfig(num_clips=2, num_crops=1, views_per_forward=2,
                                               num_workers=0), progress=False)
    assert results["num_evaluated"] == 4 and calls and set(calls) == {torch.uint8}
    probs = predict_views(model, data[0][0], 2, "prob", "cpu")
    assert results["videos"][0]["top5"][0][1] == pytest.approx(float(probs.max()), abs=1e-6)


def test_single_video_prediction_with_amp_and_channels_last(videos):
    model = Net().eval()
    cfg = EvalConfig(num_clips=2, num_crops=3, views_per_forward=4)
    data_cfg = DataConfig(backend="pyav", **VIEWS)
    plain = predict_video(model, str(videos / "v2.mp4"), cfg, data_cfg, "cpu")
    expected = predict_views(model, make_dataset(videos)[2][0], 4, "prob", "cpu")
    torch.testing.assert_close(plain, expected, rtol=0, atol=1e-6)
    model.seen.clear()
    bf16 = predict_video(model, str(videos / "v2.mp4"), cfg, data_cfg, "cpu", amp="bf16",
                         channels_last=True)
    assert all(s[1] and s[2] for s in model.seen)
    torch.testing.assert_close(bf16, plain, rtol=0, atol=0.02)
