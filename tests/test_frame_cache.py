"""data.cache: decoded videos kept in memory give the same items as decoding the files."""
from __future__ import annotations

import logging

import pytest
import torch

from snvideo.data import VideoDataset
from snvideo.data.frame_cache import FrameCache
from snvideo.data.transforms import train_transform

CSV_HEADER = "label,youtube_id,time_start,time_end,split"


@pytest.fixture
def two_videos(tmp_path, video_tools):
    root = tmp_path / "videos"
    for label, vid, frames in (("a", "v0", 40), ("b", "v1", 30)):
        (root / label).mkdir(parents=True)
        video_tools.write_video(root / label / f"{vid}_000000_000010.mp4", num_frames=frames)
    ann = tmp_path / "train.csv"
    ann.write_text(CSV_HEADER + "\na,v0,0,10,train\nb,v1,0,10,train\n")
    return ann, root


def _dataset(ann, root, cache_bytes=0, **kwargs):
    return VideoDataset(ann, root, clip_len=8, frame_interval=2, transform=train_transform(40, 32),
                        short_side=40, crop_size=32, normalize=False, cache_bytes=cache_bytes,
                        **kwargs)


class CountingOpens:
    """Wraps a dataset's open() to count the files it opens."""

    def __init__(self, dataset):
        self.count, self._open = 0, dataset.open
        dataset.open = self

    def __call__(self, index):
        self.count += 1
        return self._open(index)


def test_cached_items_equal_decoded_items_and_open_each_file_once(two_videos):
    ann, root = two_videos
    plain, cached = _dataset(ann, root), _dataset(ann, root, cache_bytes=10**8)
    opens = CountingOpens(cached)
    for epoch in range(3):
        for index in range(2):
            a, label_a = plain[index, epoch]
            b, label_b = cached[index, epoch]
            assert label_a == label_b and a.dtype == b.dtype == torch.uint8
            assert torch.equal(a, b), (index, epoch)
    assert opens.count == 2  # each video decoded once, then served from memory
    assert len(cached._cache) == 2


def test_cache_bound_decodes_the_rest_from_files(two_videos, caplog):
    ann, root = two_videos
    one_video = 40 * 48 * 64 * 3  # uint8 frames of v0 (40 frames of 64x48)
    dataset = _dataset(ann, root, cache_bytes=one_video + 1)
    opens = CountingOpens(dataset)
    with caplog.at_level(logging.WARNING):
        for epoch in range(2):
            for index in range(2):
                dataset[index, epoch]
    assert len(dataset._cache) == 1 and dataset._cache.bytes == one_video
    assert opens.count == 3  # v0 once; v1 (did not fit) from its file every time
    assert sum("data.cache is full" in r.message for r in caplog.records) == 1


def test_test_views_from_the_cache_equal_the_files(two_videos):
    ann, root = two_videos
    kwargs = dict(clip_len=8, frame_interval=2, num_clips=2, test_mode=True, short_side=40,
                  crop_size=32, num_crops=3)
    plain = VideoDataset(ann, root, **kwargs)
    cached = VideoDataset(ann, root, cache_bytes=10**8, **kwargs)
    for _ in range(2):
        for index in range(2):
            assert torch.equal(plain[index][0], cached[index][0])


def test_frame_cache_does_not_keep_a_video_that_fails(tmp_path):
    from snvideo.data import VideoReadError, VideoReader

    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    cache = FrameCache(10**6)
    with pytest.raises(VideoReadError):
        cache.reader(0, lambda index: VideoReader(str(bad)))
    assert len(cache) == 0
