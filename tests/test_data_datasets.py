"""Sampling, annotation parsing, VideoDataset / RawFrameDataset items and bad-video handling."""
from __future__ import annotations

import copy
import logging
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from PIL import Image

from snvideo.data import (
    RawFrameDataset,
    RawFrameReader,
    VideoDataset,
    VideoReader,
    VideoReadError,
    load_annotations,
    load_test_views,
    train_clip_indices,
)
from snvideo.data import sampling
from snvideo.data import test_transform as make_test_transform

CSV_HEADER = "label,youtube_id,time_start,time_end,split"


def test_package_import_leaves_synthetic_alone():
    code = "import sys, snvideo.data; assert 'snvideo.data.synthetic' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------- sampling
def test_train_clips_one_random_start_per_segment():
    rng = np.random.default_rng(0)
    for _ in range(50):
        clips = train_clip_indices(100, clip_len=4, frame_interval=2, num_clips=3, rng=rng)
        assert clips.shape == (3, 4) and clips.dtype == np.int64
        # avg_interval = (100 - 8 + 1) // 3 = 31: clip k starts in [31k, 31k + 31)
        starts = clips[:, 0]
        assert all(31 * k <= s < 31 * (k + 1) for k, s in enumerate(starts))
        assert np.array_equal(clips - starts[:, None], np.tile(np.arange(0, 8, 2), (3, 1)))


def test_train_clips_sorted_random_when_clips_outnumber_room():
    rng = np.random.default_rng(1)
    # 10 frames, span 4, 8 clips: avg_interval = 7 // 8 = 0 but 10 > max(8, 4)
    offsets = sampling.train_clip_offsets(10, 2, 2, 8, rng)
    assert np.all(np.diff(offsets) >= 0) and offsets.min() >= 0 and offsets.max() <= 10 - 4


def test_train_clips_ratio_when_no_room():
    # 10 frames, span 10, 3 clips: avg_interval = 1 // 3 = 0 and 10 > max(3, 10) fails:
    # starts spread by ratio 1/3 -> around([0, 1/3, 2/3]) = [0, 0, 1]
    offsets = sampling.train_clip_offsets(10, 5, 2, 3, np.random.default_rng(0))
    assert offsets.tolist() == [0, 0, 1]


def test_short_videos_loop():
    clips = train_clip_indices(5, clip_len=8, frame_interval=1, num_clips=1, rng=np.random.default_rng(0))
    assert clips.tolist() == [[0, 1, 2, 3, 4, 0, 1, 2]]
    test_clips = sampling.test_clip_indices(3, clip_len=4, frame_interval=2, num_clips=2)
    assert test_clips.tolist() == [[0, 2, 1, 0], [0, 2, 1, 0]]


def test_test_clips_evenly_spaced_and_deterministic():
    clips = sampling.test_clip_indices(100, clip_len=16, frame_interval=2, num_clips=3)
    # avg_interval = (100 - 32 + 1) / 3 = 23 -> starts int(23k + 11.5) = 11, 34, 57
    assert clips[:, 0].tolist() == [11, 34, 57]
    assert clips.shape == (3, 16) and clips.max() < 100
    assert np.array_equal(clips, sampling.test_clip_indices(100, 16, 2, 3))


def test_train_sampling_bounds_and_reproducibility():
    for num_frames in (1, 7, 31, 32, 33, 300):
        a = train_clip_indices(num_frames, 16, 2, 2, np.random.default_rng(5))
        b = train_clip_indices(num_frames, 16, 2, 2, np.random.default_rng(5))
        assert np.array_equal(a, b) and a.shape == (2, 16)
        assert a.min() >= 0 and a.max() < num_frames
    with pytest.raises(ValueError):
        train_clip_indices(0, 16, 2, 1)


# ----------------------------------------------------------------------------- annotations
@pytest.fixture
def kinetics(tmp_path, video_tools):
    """Root with class folders (as-is and underscored), a flat file, and one video missing."""
    root = tmp_path / "videos"
    (root / "playing guitar").mkdir(parents=True)
    (root / "riding_a_bike").mkdir()
    video_tools.write_video(root / "playing guitar" / "aaa_000010_000020.mp4", num_frames=40)
    video_tools.write_video(root / "riding_a_bike" / "bbb_000000_000010.webm", "libvpx-vp9", num_frames=30,
                            options={"deadline": "realtime", "cpu-used": "8"})
    video_tools.write_video(root / "ccc_000005_000015.mp4", num_frames=36)
    csv = tmp_path / "train.csv"
    csv.write_text(
        f"{CSV_HEADER},is_cc\n"
        "playing guitar,aaa,10,20,train,0\n"
        "riding a bike,bbb,0,10,train,1\n"
        "abseiling,ccc,5,15,train,0\n"
        "abseiling,zzz,0,10,train,0\n"
    )
    return csv, root


def test_kinetics_csv_finds_videos_in_any_layout(kinetics, caplog):
    csv, root = kinetics
    with caplog.at_level(logging.WARNING, logger="snvideo.data"):
        ds = VideoDataset(csv, root, clip_len=4, frame_interval=2, short_side=48, crop_size=32)
    assert ds.classes == ["abseiling", "playing guitar", "riding a bike"]  # sorted names
    assert len(ds) == 3 and ds.labels.tolist() == [1, 2, 0]
    assert ds.video_path(1).endswith("riding_a_bike/bbb_000000_000010.webm")
    assert ds.missing == ["zzz_000000_000010"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "zzz_000000_000010" in warnings[0].getMessage()


def test_kinetics_csv_without_is_cc_and_with_given_classes(kinetics, tmp_path):
    _, root = kinetics
    csv = tmp_path / "val.csv"
    csv.write_text(f"{CSV_HEADER}\nabseiling,ccc,5,15,val\n")
    label_map = tmp_path / "classes.txt"
    label_map.write_text("zumba\nabseiling\n")
    ann = load_annotations(csv, root, classes=label_map)
    assert ann.format == "kinetics_csv" and ann.classes == ["zumba", "abseiling"]
    assert [(r.label, r.video_id) for r in ann.records] == [(1, "ccc_000005_000015")]
    with pytest.raises(ValueError, match="not in the given classes"):
        load_annotations(csv, root, classes=["zumba"])


def test_list_file_and_label_map(tmp_path, video_tools):
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    video_tools.write_video(root / "a" / "x.mp4", num_frames=20)
    video_tools.write_video(root / "y.mp4", num_frames=20)
    ann_file = tmp_path / "list.txt"
    ann_file.write_text("a/x.mp4 2\ny.mp4 0\nb/gone.mp4 1\n")
    ds = VideoDataset(ann_file, root, clip_len=4, short_side=48, crop_size=32)
    assert ds.format == "list" and ds.classes == ["0", "1", "2"]
    assert ds.labels.tolist() == [2, 0] and ds.missing == ["b/gone.mp4"]
    label_map = tmp_path / "out" / "label_map.txt"
    ds.write_label_map(label_map)
    assert label_map.read_text().splitlines() == ["0", "1", "2"]
    named = VideoDataset(ann_file, root, clip_len=4, short_side=48, crop_size=32, classes=["cat", "dog", "emu"])
    assert named.classes == ["cat", "dog", "emu"]
    with pytest.raises(ValueError, match="outside"):
        VideoDataset(ann_file, root, classes=["cat"])


def test_unlabelled_list_entries_are_accepted(tmp_path, video_tools):
    """data_tools write label -1 for videos without a class (test lists)."""
    root = tmp_path / "root"
    root.mkdir()
    video_tools.write_video(root / "x.mp4", num_frames=20)
    ann_file = tmp_path / "list.txt"
    ann_file.write_text("x.mp4 -1\n")
    ds = VideoDataset(ann_file, root, clip_len=4, short_side=48, crop_size=32, classes=["a", "b"])
    assert ds.labels.tolist() == [-1]


# ----------------------------------------------------------------------------- dataset items
def test_train_item_shape_and_label(kinetics):
    csv, root = kinetics
    ds = VideoDataset(csv, root, clip_len=8, frame_interval=2, short_side=48, crop_size=32)
    clip, label = ds[0]
    assert clip.shape == (3, 8, 32, 32) and clip.dtype == torch.float32 and label == 1
    multi = VideoDataset(csv, root, clip_len=4, frame_interval=2, num_clips=3, short_side=48, crop_size=32)
    assert multi[2][0].shape == (3, 3, 4, 32, 32)


def test_custom_transform_gets_uint8_tchw_video(kinetics):
    csv, root = kinetics
    seen = []

    def transform(video):
        seen.append((type(video).__name__, video.dtype, tuple(video.shape)))
        return video.permute(1, 0, 2, 3).float()

    ds = VideoDataset(csv, root, clip_len=4, frame_interval=1, transform=transform)
    clip, _ = ds[0]
    assert seen == [("Video", torch.uint8, (4, 3, 48, 64))] and clip.shape == (3, 4, 48, 64)


def test_test_mode_views_are_clip_major_and_decoded_once(kinetics, monkeypatch):
    csv, root = kinetics
    calls = []
    original = VideoReader.get_frames

    def spy(self, indices):
        calls.append(np.asarray(indices).tolist())
        return original(self, indices)

    monkeypatch.setattr(VideoReader, "get_frames", spy)
    ds = VideoDataset(csv, root, clip_len=4, frame_interval=3, num_clips=2, test_mode=True,
                      short_side=48, crop_size=32, num_crops=3)
    views, label = ds[0]
    assert views.shape == (6, 3, 4, 32, 32) and label == 1
    clips = sampling.test_clip_indices(40, 4, 3, 2)
    assert calls == [sorted(set(clips.ravel().tolist()))]  # one call, the union of both clips

    # rebuild each view by hand: view v = clip v // 3, crop v % 3
    with VideoReader(ds.video_path(0)) as reader:
        preset = make_test_transform(48, 32, 3)
        for clip_index, clip in enumerate(clips):
            frames = reader.get_frames(clip).permute(0, 3, 1, 2)
            expected = preset(frames)
            for crop_index in range(3):
                assert torch.allclose(views[clip_index * 3 + crop_index], expected[crop_index], atol=1e-5)


@pytest.mark.parametrize("backend", ["auto", "pyav"])
def test_load_test_views_decode_work_stays_within_the_clips(tmp_path, video_tools, backend):
    path = video_tools.write_video(tmp_path / "v.mp4", num_frames=120, options={"g": "12"})
    views, info = load_test_views(path, num_clips=4, clip_len=8, frame_interval=2, short_side=48,
                                  crop_size=48, num_crops=3, backend=backend)
    assert views.shape == (12, 3, 8, 48, 48) and info.clip_indices.shape == (4, 8)
    # clips start at 13, 39, 65, 91 and span 15 frames each
    assert info.get_frames_calls == 1 and info.frames_requested == 32 and info.frames_spanned == 60
    # auto seeks with PyAV on an MP4 too: it decodes from the keyframe (every 12th frame)
    # before each clip, no more
    assert info.frames_decoded <= info.frames_spanned + 4 * 11


# ----------------------------------------------------------------------------- bad videos
@pytest.fixture
def with_bad_videos(tmp_path, video_tools):
    """A list dataset: one good video (label 0) and bad ones (labels 1..4)."""
    root = tmp_path / "root"
    root.mkdir()
    good = video_tools.write_video(root / "good.mp4", num_frames=30)
    (root / "zero.mp4").write_bytes(b"")
    (root / "text.mp4").write_text("not a video\n" * 40)
    (root / "cut.mp4").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    video_tools.write_video(root / "later_missing.mp4", num_frames=30)
    ann_file = tmp_path / "list.txt"
    ann_file.write_text("good.mp4 0\nzero.mp4 1\ntext.mp4 2\ncut.mp4 3\nlater_missing.mp4 4\n")
    return ann_file, root


def test_bad_videos_are_replaced_counted_and_logged_once(with_bad_videos, caplog):
    ann_file, root = with_bad_videos
    ds = VideoDataset(ann_file, root, clip_len=4, short_side=48, crop_size=32, max_retries=50)
    (root / "later_missing.mp4").unlink()  # disappears after the dataset was built
    with caplog.at_level(logging.WARNING, logger="snvideo.data"):
        for _ in range(2):
            for index in range(1, 5):
                clip, label = ds[index]
                assert label == 0 and clip.shape == (3, 4, 32, 32)  # the one good video stands in
    assert ds.num_failed >= 8
    logged = [r.getMessage() for r in caplog.records if "skipping unreadable video" in r.getMessage()]
    for name, reason in [("zero.mp4", "zero-byte"), ("text.mp4", "cannot decode"),
                         ("cut.mp4", "cannot decode"), ("later_missing.mp4", "file not found")]:
        assert sum(name in m for m in logged) == 1 and any(name in m and reason in m for m in logged)
    ds.reset_failures()
    assert ds.num_failed == 0


def test_test_mode_raises_for_bad_videos(with_bad_videos):
    ann_file, root = with_bad_videos
    ds = VideoDataset(ann_file, root, clip_len=4, short_side=48, crop_size=32, test_mode=True)
    (root / "later_missing.mp4").unlink()
    assert ds[0][0].shape == (1, 3, 4, 32, 32)
    for index, name, reason in [(1, "zero.mp4", "zero-byte"), (2, "text.mp4", "cannot decode"),
                                (3, "cut.mp4", "cannot decode"), (4, "later_missing.mp4", "file not found")]:
        with pytest.raises(VideoReadError) as caught:
            ds[index]
        assert caught.value.path.endswith(name) and caught.value.reason.startswith(reason)
    assert ds.num_failed == 0


def test_retries_are_bounded(tmp_path):
    (tmp_path / "zero.mp4").write_bytes(b"")
    ann_file = tmp_path / "list.txt"
    ann_file.write_text("zero.mp4 0\n")
    ds = VideoDataset(ann_file, tmp_path, max_retries=3)
    with pytest.raises(RuntimeError, match="after 3 substitutions"):
        ds[0]
    assert ds.num_failed == 4


@pytest.mark.slow
@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_failure_count_crosses_worker_processes(with_bad_videos, context):
    ann_file, root = with_bad_videos
    ds = VideoDataset(ann_file, root, clip_len=4, short_side=48, crop_size=32, max_retries=50)
    (root / "later_missing.mp4").unlink()
    loader = DataLoader(ds, batch_size=5, num_workers=1, multiprocessing_context=context)
    (clips, labels), = list(loader)
    assert clips.shape == (5, 3, 4, 32, 32) and labels.tolist() == [0, 0, 0, 0, 0]
    assert ds.num_failed >= 4  # every bad video failed at least once, inside the worker process


def test_dataset_copies_keep_their_failure_count(with_bad_videos):
    ann_file, root = with_bad_videos
    ds = VideoDataset(ann_file, root, clip_len=4, short_side=48, crop_size=32, max_retries=50)
    ds[1]
    clone = copy.deepcopy(ds)
    assert clone.num_failed == ds.num_failed >= 1
    assert pickle.loads(pickle.dumps(ds)).num_failed == ds.num_failed


# ----------------------------------------------------------------------------- raw frames
@pytest.fixture
def rawframes(tmp_path, video_tools):
    root = tmp_path / "frames"
    for name, count in [("clip_a", 20), ("clip_b", 12)]:
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(video_tools.index_frame(i, noise=False)).save(root / name / f"img_{i + 1:05d}.jpg", quality=95)
    ann_file = tmp_path / "frames.txt"
    ann_file.write_text("clip_a 20 1\nclip_b 12 0\nclip_gone 30 1\n")
    return ann_file, root


def test_rawframe_reader_reads_one_based_files(rawframes, video_tools):
    _, root = rawframes
    reader = RawFrameReader(str(root / "clip_a"), 20)
    frames = reader.get_frames([19, 0, 7, 7])
    assert frames.shape == (4, 48, 64, 3) and frames.dtype == torch.uint8
    assert [video_tools.frame_index(f.numpy()) for f in frames] == [19, 0, 7, 7]


def test_rawframe_dataset_items(rawframes):
    ann_file, root = rawframes
    ds = RawFrameDataset(ann_file, root, clip_len=4, frame_interval=2, short_side=48, crop_size=32)
    assert len(ds) == 2 and ds.missing == ["clip_gone"] and ds.classes == ["0", "1"]
    clip, label = ds[0]
    assert clip.shape == (3, 4, 32, 32) and label == 1
    test_ds = RawFrameDataset(ann_file, root, clip_len=4, frame_interval=2, num_clips=2, num_crops=3,
                              test_mode=True, short_side=48, crop_size=48)
    views, label = test_ds[1]
    assert views.shape == (6, 3, 4, 48, 48) and label == 0


def test_rawframe_dataset_replaces_a_folder_with_a_missing_frame(rawframes, caplog):
    ann_file, root = rawframes
    (root / "clip_b" / "img_00003.jpg").unlink()
    ds = RawFrameDataset(ann_file, root, clip_len=12, frame_interval=1, short_side=48, crop_size=32)
    with caplog.at_level(logging.WARNING, logger="snvideo.data"):
        clip, label = ds[1]  # clip_b's only clip covers every frame, including the missing one
    assert label == 1 and ds.num_failed >= 1
    assert any("img_00003.jpg" in r.getMessage() for r in caplog.records)
