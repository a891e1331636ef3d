"""Clip transforms: crop boxes, shapes, normalization, clip-consistent augmentation."""
from __future__ import annotations

import pytest
import torch

from snvideo.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TrainTransform,
    center_crop_box,
    random_resized_crop_box,
    resize_short_side,
    three_crop_boxes,
    train_transform,
)
from snvideo.data import test_transform as make_test_transform


def video_of(frame: torch.Tensor, num_frames: int = 4) -> torch.Tensor:
    """(T, C, H, W) uint8 with the same (C, H, W) frame repeated, channels-last like decoded video."""
    thwc = frame.permute(1, 2, 0).unsqueeze(0).repeat(num_frames, 1, 1, 1).contiguous()
    return thwc.permute(0, 3, 1, 2)


def column_ramp(height: int, width: int) -> torch.Tensor:
    """(3, H, W) uint8 frame whose value grows with the column (0 at the left)."""
    ramp = torch.linspace(0, 255, width).round().to(torch.uint8)
    return ramp.view(1, 1, width).expand(3, height, width).clone()


def test_three_crop_boxes_landscape():
    assert three_crop_boxes(256, 340, 224) == [(16, 0, 224, 224), (16, 58, 224, 224), (16, 116, 224, 224)]


def test_three_crop_boxes_portrait():
    assert three_crop_boxes(340, 256, 224) == [(0, 16, 224, 224), (58, 16, 224, 224), (116, 16, 224, 224)]


def test_three_crop_boxes_at_short_side_cover_the_long_side():
    boxes = three_crop_boxes(256, 455, 256)
    assert [b[0] for b in boxes] == [0, 0, 0]
    assert boxes[0][1] == 0 and boxes[-1][1] + 256 == 455
    assert all(b[2:] == (256, 256) for b in boxes)


def test_crop_larger_than_frame_is_rejected():
    with pytest.raises(ValueError, match="short side"):
        three_crop_boxes(200, 300, 224)
    with pytest.raises(ValueError):
        center_crop_box(200, 300, 224)


def test_center_crop_box():
    assert center_crop_box(256, 340, 224) == (16, 58, 224, 224)


def test_resize_short_side_landscape_and_portrait_stays_uint8():
    landscape = video_of(torch.zeros(3, 48, 64, dtype=torch.uint8))
    out = resize_short_side(landscape, 96)
    assert out.shape == (4, 3, 96, 128) and out.dtype == torch.uint8
    portrait = video_of(torch.zeros(3, 64, 48, dtype=torch.uint8))
    assert resize_short_side(portrait, 24).shape == (4, 3, 32, 24)
    assert resize_short_side(landscape, 48) is landscape  # already the right size: untouched


def test_normalization_values():
    frame = torch.zeros(3, 40, 40, dtype=torch.uint8)
    frame[1] = 255
    frame[2] = 51
    out = make_test_transform(short_side=40, crop_size=32, num_crops=1)(video_of(frame))
    expected = [(v - m) / s for v, m, s in zip((0.0, 1.0, 0.2), IMAGENET_MEAN, IMAGENET_STD)]
    for channel, value in enumerate(expected):
        assert torch.allclose(out[:, channel], torch.full_like(out[:, channel], value), atol=1e-5)


def test_test_transform_shapes_and_three_crop_positions():
    video = video_of(column_ramp(48, 96), num_frames=5)  # landscape, resized to 64 x 128
    out = make_test_transform(short_side=64, crop_size=64, num_crops=3)(video)
    assert out.shape == (3, 3, 5, 64, 64) and out.dtype == torch.float32 and out.is_contiguous()
    left_edge = out[:, 0, 0, 32, 0]  # red value at the left column of each crop
    assert left_edge[0] < left_edge[1] < left_edge[2]  # crops ordered left, center, right
    assert left_edge[0] == out[:, 0].min()  # first crop starts at the frame's left edge
    single = make_test_transform(short_side=64, crop_size=56, num_crops=1)(video)
    assert single.shape == (1, 3, 5, 56, 56)


def test_test_transform_portrait_crops_run_top_to_bottom():
    frame = column_ramp(48, 96).transpose(1, 2).contiguous()  # (3, 96, 48): value grows downwards
    out = make_test_transform(short_side=48, crop_size=48, num_crops=3)(video_of(frame))
    top_rows = out[:, 0, 0, 0, 24]
    assert top_rows[0] < top_rows[1] < top_rows[2]


def test_train_transform_shape_dtype():
    video = video_of(torch.randint(0, 256, (3, 72, 96), dtype=torch.uint8), num_frames=8)
    out = train_transform(short_side=64, crop_size=56)(video, torch.Generator().manual_seed(0))
    assert out.shape == (3, 8, 56, 56) and out.dtype == torch.float32 and out.is_contiguous()


@pytest.mark.parametrize("mode", ["rrc", "jitter"])
def test_train_augmentation_is_the_same_for_every_frame(mode):
    """Identical input frames must stay identical: one crop and one flip decision per clip."""
    video = video_of(torch.randint(0, 256, (3, 60, 80), dtype=torch.uint8), num_frames=6)
    transform = TrainTransform(short_side=60, crop_size=32, mode=mode, max_short_side=80)
    for seed in range(20):
        out = transform(video, torch.Generator().manual_seed(seed))
        assert torch.equal(out, out[:, :1].expand_as(out)), seed


def test_flip_mirrors_all_frames():
    video = video_of(column_ramp(32, 32), num_frames=3)
    unflipped = TrainTransform(crop_size=32, area_range=(1.0, 1.0), aspect_range=(1.0, 1.0), flip_prob=0.0)(video)
    flipped = TrainTransform(crop_size=32, area_range=(1.0, 1.0), aspect_range=(1.0, 1.0), flip_prob=1.0)(video)
    assert torch.all(unflipped[:, :, :, 0] < unflipped[:, :, :, -1])
    assert torch.equal(flipped, unflipped.flip(-1))


def test_mirroring_before_the_resize_gives_the_pixels_of_mirroring_after_it():
    """TrainTransform (and the decoder, which mirrors as it copies) flips the crop before the
    antialiased uint8 resize; the result must be the resized crop flipped, bit for bit."""
    import torchvision.transforms.v2.functional as F

    generator = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (3, 256, 340, 3), dtype=torch.uint8, generator=generator)
    video = frames.permute(0, 3, 1, 2)  # channels-last, as decoded
    for _ in range(40):
        height = int(torch.randint(16, 257, (1,), generator=generator))
        width = int(torch.randint(16, 341, (1,), generator=generator))
        for size in (224, 112, 57):
            part = video[..., :height, :width]
            after = F.resize(part, [size, size], antialias=True).flip(-1)
            assert torch.equal(F.resize(part.flip(-1), [size, size], antialias=True), after), (height, width, size)


def test_train_transform_flips_with_the_draw_after_the_box():
    """The generator's order: the crop box, then the flip; the output is the crop resized,
    then mirrored when the flip draw says so."""
    import torchvision.transforms.v2.functional as F

    video = torch.randint(0, 256, (4, 70, 90, 3), dtype=torch.uint8).permute(0, 3, 1, 2)
    transform = TrainTransform(crop_size=32, flip_prob=0.5)
    flips = set()
    for seed in range(12):
        out = transform(video, torch.Generator().manual_seed(seed), normalize=False)
        generator = torch.Generator().manual_seed(seed)
        top, left, h, w = transform.crop_box(70, 90, generator)
        flip = float(torch.rand((), generator=generator)) < 0.5
        expected = F.resize(video[..., top:top + h, left:left + w], [32, 32], antialias=True)
        expected = expected.flip(-1) if flip else expected
        assert torch.equal(out, expected.permute(1, 0, 2, 3)), seed
        assert transform.draw(70, 90, torch.Generator().manual_seed(seed)) == ((top, left, h, w), flip)
        flips.add(flip)
    assert flips == {True, False}


def test_train_transform_is_reproducible_with_a_generator():
    video = video_of(torch.randint(0, 256, (3, 64, 80), dtype=torch.uint8))
    transform = train_transform(short_side=64, crop_size=40)
    first = transform(video, torch.Generator().manual_seed(3))
    assert torch.equal(first, transform(video, torch.Generator().manual_seed(3)))
    assert not torch.equal(first, transform(video, torch.Generator().manual_seed(4)))


def test_random_resized_crop_box_bounds():
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        top, left, h, w = random_resized_crop_box(90, 160, (0.08, 1.0), (3 / 4, 4 / 3), generator)
        assert 0 <= top and top + h <= 90 and 0 <= left and left + w <= 160
        assert 0.07 <= h * w / (90 * 160) <= 1.0
        assert 3 / 4 - 0.05 <= w / h <= 4 / 3 + 0.05


def test_jitter_crop_covers_crop_size_over_the_jittered_short_side():
    transform = TrainTransform(short_side=256, crop_size=224, mode="jitter", max_short_side=320)
    generator = torch.Generator().manual_seed(0)
    sides = {transform.crop_box(128, 170, generator)[2] for _ in range(100)}
    # a 224 crop at short side 256..320 is 70%..87.5% of the short side: 90..112 px of 128
    assert min(sides) >= 89 and max(sides) <= 112 and len(sides) > 5


def test_bad_options_are_rejected():
    with pytest.raises(ValueError):
        make_test_transform(num_crops=2)
    with pytest.raises(ValueError):
        TrainTransform(mode="multiscale")
