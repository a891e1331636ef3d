"""Data loading fast paths: uint8 training clips normalized on the device, the decode-forward
rule of PyAV's keyframe seek, and the data.decode_threads knob."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from torch.utils.data import default_collate

import train as train_script
from snvideo.config import ConfigError, load_config
from snvideo.data import TrainTransform, VideoDataset, VideoReader, normalize_views
from snvideo.data import pyav_backend
from snvideo.data.datasets import collate_clips
from snvideo.engine import builders
from snvideo.engine.batches import model_inputs, to_model_input
from snvideo.engine.distributed import DistEnv


@pytest.fixture(scope="module")
def clip_data(tmp_path_factory, video_tools):
    """Six 64x48 index videos (keyframe every 12 frames) and a list file."""
    root = tmp_path_factory.mktemp("loading")
    lines = []
    for i in range(6):
        video_tools.write_video(root / f"v{i}.mp4", "libx264", 40, options={"g": "12", "bf": "2"})
        lines.append(f"v{i}.mp4 {i % 3}\n")
    (root / "list.txt").write_text("".join(lines))
    return root


def dataset(root, **kw) -> VideoDataset:
    options = dict(clip_len=4, frame_interval=2, short_side=48, crop_size=40, seed=5)
    options.update(kw)
    return VideoDataset(root / "list.txt", root, **options)


@pytest.mark.parametrize("num_clips", [1, 2])
def test_uint8_items_normalized_on_the_device_equal_the_float_items(clip_data, num_clips):
    as_uint8 = dataset(clip_data, num_clips=num_clips, normalize=False)
    as_float = dataset(clip_data, num_clips=num_clips)
    for key in [(i, epoch) for i in range(6) for epoch in (0, 3)]:
        raw, label = as_uint8[key]
        ref, ref_label = as_float[key]
        assert raw.dtype == torch.uint8 and ref.dtype == torch.float32 and label == ref_label
        assert raw.shape == ref.shape
        # the same crop, flip and frames; the same float32 arithmetic, so equal to the last bit
        got = to_model_input(raw.unsqueeze(0), torch.device("cpu"), as_uint8.transform)
        assert torch.equal(got[0], ref)


@pytest.mark.parametrize("flip_prob", [0.0, 1.0])
def test_uint8_train_transform_is_the_float_transform_before_normalization(flip_prob):
    video = torch.randint(0, 256, (6, 3, 30, 41), dtype=torch.uint8)
    video = video.contiguous(memory_format=torch.channels_last)  # decoded frames' layout
    transform = TrainTransform(crop_size=24, flip_prob=flip_prob, mean=(0.1, 0.2, 0.3),
                               std=(0.5, 0.6, 0.7))
    raw = transform(video, torch.Generator().manual_seed(4), normalize=False)
    ref = transform(video, torch.Generator().manual_seed(4))
    assert raw.dtype == torch.uint8 and raw.shape == (3, 6, 24, 24)
    assert raw.permute(1, 2, 3, 0).is_contiguous()  # the frames' memory order, no transpose
    assert torch.equal(normalize_views(raw, transform.mean, transform.std), ref)


def test_custom_transform_output_passes_through(clip_data):
    def custom(video):  # tv_tensors.Video (T, C, H, W) uint8 -> float (C, T, H, W)
        return video[..., :8, :8].permute(1, 0, 2, 3).float() / 255

    ds = dataset(clip_data, transform=custom, normalize=False)
    clip, _ = ds[(0, 0)]
    assert clip.dtype == torch.float32
    assert torch.equal(to_model_input(clip[None], torch.device("cpu"), ds.transform), clip[None])


def test_test_mode_uint8_views_normalize_to_the_float_views(clip_data):
    raw, _ = dataset(clip_data, test_mode=True, num_clips=2, num_crops=3, normalize=False)[1]
    ref, _ = dataset(clip_data, test_mode=True, num_clips=2, num_crops=3)[1]
    assert raw.dtype == torch.uint8
    assert torch.equal(normalize_views(raw), ref)


def test_channels_last_model_input():
    clips = torch.randint(0, 256, (2, 3, 4, 8, 8), dtype=torch.uint8)
    out = to_model_input(clips, torch.device("cpu"), channels_last=True)
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=torch.channels_last_3d)
    assert torch.equal(out, normalize_views(clips))
    floats = torch.randn(2, 3, 4, 8, 8)
    assert to_model_input(floats, torch.device("cpu"), channels_last=True).is_contiguous(
        memory_format=torch.channels_last_3d)


def test_train_loader_batches_equal_the_float_pipeline(tmp_path, clip_data):
    """train.py's loader (uint8 workers) + to_model_input gives the float pipeline's batches,
    with workers too; model_inputs does the same for recompute_norm_stats."""
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "data": {"root": str(clip_data), "train_ann": str(clip_data / "list.txt"),
                 "val_ann": str(clip_data / "list.txt"), "clip_len": 4, "frame_interval": 2,
                 "batch_size": 2, "num_workers": 2, "short_side": 48, "crop_size": 40},
        "train": {"seed": 5}}))
    cfg = load_config(str(cfg_path), [])
    train_set = builders.train_dataset(cfg)
    assert train_set.normalize is False
    env = DistEnv()
    loader = train_script.make_train_loader(train_set, cfg, env)
    loader.sampler.set_epoch(1)
    reference = dataset(clip_data, transform=train_set.transform, seed=5)
    keys = [(i, 1) for i in loader.sampler.indices()]
    raw = [clips for clips, _ in loader]
    assert all(c.dtype == torch.uint8 and c.is_contiguous(memory_format=torch.channels_last_3d)
               for c in raw)  # collate_clips kept the frames' memory order
    batches = [to_model_input(clips, env.device, train_set.transform) for clips in raw]
    expected = torch.stack([reference[key][0] for key in keys])
    assert torch.equal(torch.cat(batches), expected)
    loader.sampler.set_epoch(1)
    assert torch.equal(torch.cat(list(model_inputs(loader, env.device, train_set.transform))),
                       expected)


def test_collate_clips_keeps_layout_and_values():
    frames = torch.randint(0, 256, (3, 4, 3, 6, 5), dtype=torch.uint8)  # items (T, C, H, W)
    items = [(f.contiguous(memory_format=torch.channels_last).permute(1, 0, 2, 3), i)
             for i, f in enumerate(frames)]
    clips, labels = collate_clips(items)
    reference, ref_labels = default_collate(items)
    assert torch.equal(clips, reference) and torch.equal(labels, ref_labels)
    assert clips.is_contiguous(memory_format=torch.channels_last_3d)
    floats = [(torch.randn(3, 4, 6, 5), 0), (torch.randn(3, 4, 6, 5), 1)]
    assert torch.equal(collate_clips(floats)[0], default_collate(floats)[0])


def test_decode_threads_reach_the_reader_and_are_checked(tmp_path, clip_data):
    ds = dataset(clip_data, decode_threads=2)
    with ds.open(0) as reader:
        assert reader.num_threads == 2
        assert reader._backend._stream.codec_context.thread_count == 2
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump({"data": {"root": str(clip_data),
                                                 "train_ann": str(clip_data / "list.txt"),
                                                 "decode_threads": -1}}))
    cfg = load_config(str(cfg_path), [])
    assert cfg.data.decode_threads == -1
    with pytest.raises(ConfigError, match="data.decode_threads"):
        builders.train_dataset(cfg)
    assert load_config(str(cfg_path), ["data.decode_threads=0"]).data.decode_threads == 0


def test_pyav_decodes_on_through_keyframes_and_seeks_across_gaps(tmp_path, video_tools):
    path = video_tools.write_video(tmp_path / "g8.mp4", "libx264", 120, options={"g": "8", "bf": "2"})
    contiguous = list(range(3, 60, 2))  # crosses 7 keyframes
    with VideoReader(path, backend="pyav") as reader:
        frames = reader.get_frames(contiguous)
        assert [video_tools.frame_index(f.numpy()) for f in frames] == contiguous
        # one seek (to keyframe 0), then forward: the frames up to 59 plus the decoder's delay
        assert reader.frames_decoded <= 60 + 4
    sparse = [2, 100]  # 98 frames apart: a second seek, to keyframe 96
    with VideoReader(path, backend="pyav") as reader:
        frames = reader.get_frames(sparse)
        assert [video_tools.frame_index(f.numpy()) for f in frames] == sparse
        assert reader.frames_decoded <= 3 + pyav_backend.SEEK_GAP + (100 - 96 + 1) + 8


@pytest.mark.parametrize("backend", ["auto", "pyav"])
def test_crop_at_decode_gives_the_crop_of_the_decoded_frames(clip_data, backend):
    with VideoReader(clip_data / "v1.mp4", backend=backend) as reader:
        assert reader.frame_size == (48, 64)
        indices = [7, 3, 3, 30, 12]
        full = reader.get_frames(indices)
        box = (5, 9, 30, 41)
        assert torch.equal(reader.get_frames(indices, crop=box), full[:, 5:35, 9:50])
        with pytest.raises(ValueError, match="outside"):
            reader.get_frames(indices, crop=(20, 0, 30, 10))


@pytest.mark.parametrize("backend", ["auto", "pyav", "decord", "cache"])
def test_flip_at_decode_mirrors_the_cut_frames(clip_data, backend):
    from snvideo.data.decord_backend import decord
    from snvideo.data.frame_cache import FrameCache

    if backend == "decord" and decord is None:
        pytest.skip("decord not installed")
    indices, box = [7, 3, 3, 30, 12], (5, 9, 30, 41)
    if backend == "cache":
        reader = FrameCache(1 << 30).reader(0, lambda _: VideoReader(clip_data / "v1.mp4"))
    else:
        reader = VideoReader(clip_data / "v1.mp4", backend=backend)
    with reader:
        assert torch.equal(reader.get_frames(indices, flip=True), reader.get_frames(indices).flip(2))
        if backend == "decord":
            return  # decord alone does not know the frame size before decoding: no crop
        cut = reader.get_frames(indices, crop=box)
        assert torch.equal(reader.get_frames(indices, crop=box, flip=True), cut.flip(2))


def test_training_item_equals_the_transform_of_the_whole_frames(clip_data):
    """The dataset cuts the crop while decoding; the item is what the transform makes of
    the whole decoded frames with the same draws (seed, epoch, index)."""
    from snvideo.data import train_clip_indices

    ds = dataset(clip_data, normalize=False)
    for index, epoch in [(0, 0), (4, 2), (5, 7), (1, 1), (2, 3), (3, 4), (0, 5), (1, 6)]:
        rng = np.random.default_rng([ds.seed, epoch, index])
        with VideoReader(ds.video_path(index), backend="pyav") as reader:
            clip_indices = train_clip_indices(len(reader), ds.clip_len, ds.frame_interval, 1, rng)
            frames = reader.get_frames(clip_indices.reshape(-1)).permute(0, 3, 1, 2)
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        expected = ds.transform(frames, generator, normalize=False)
        clip, _ = ds[(index, epoch)]
        assert torch.equal(clip, expected)
