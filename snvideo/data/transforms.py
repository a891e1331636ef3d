"""Clip transforms on uint8 video tensors (T, C, H, W); outputs are float32 (C, T, H, W).

Speed rules: every op handles all frames of a clip at once (no per-frame loop), frames are
resized as uint8 (torchvision's fast path for channels-last uint8, which is the memory layout
decoded frames already have), and cropping happens before resizing so only kept pixels are
resized. Normalization (ImageNet mean/std on [0, 1] values) goes into one preallocated output:
a single transposing uint8 -> float copy to (C, T, H, W), then in-place per-channel scaling.
Training clips and test views can instead stay uint8 (`train_transform(...)(video, generator,
normalize=False)`, `TestTransform.views(..., normalize=False)`): a quarter of the bytes to ship
from a DataLoader worker, normalized once on the training device by `normalize_views`, with the
same arithmetic.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torchvision.transforms.v2 import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Box = tuple[int, int, int, int]  # (top, left, height, width)


def short_side_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(height, width) after scaling the shorter side to `short_side`, keeping the aspect ratio."""
    if height <= width:
        return short_side, max(1, int(width * short_side / height + 0.5))
    return max(1, int(height * short_side / width + 0.5)), short_side


def resize_short_side(video: torch.Tensor, short_side: int) -> torch.Tensor:
    """Resize uint8 frames (..., H, W) so the short side is `short_side`; no-op if it already is."""
    height, width = video.shape[-2:]
    size = short_side_size(height, width, short_side)
    if size == (height, width):
        return video
    return F.resize(video, list(size), antialias=True)


def center_crop_box(height: int, width: int, crop_size: int) -> Box:
    _check_crop(height, width, crop_size)
    return (height - crop_size) // 2, (width - crop_size) // 2, crop_size, crop_size


def three_crop_boxes(height: int, width: int, crop_size: int) -> list[Box]:
    """Three crop_size squares along the long side: left/center/right (landscape or square) or
    top/center/bottom (portrait), centred on the short side. With crop_size == short side they
    cover the whole frame (mmaction2 ThreeCrop / SlowFast "3 crops at the short side")."""
    _check_crop(height, width, crop_size)
    if width >= height:
        top = (height - crop_size) // 2
        return [(top, left, crop_size, crop_size) for left in (0, (width - crop_size) // 2, width - crop_size)]
    left = (width - crop_size) // 2
    return [(top, left, crop_size, crop_size) for top in (0, (height - crop_size) // 2, height - crop_size)]


def random_resized_crop_box(
    height: int,
    width: int,
    area_range: tuple[float, float] = (0.08, 1.0),
    aspect_range: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
) -> Box:
    """Inception-style crop box: random area fraction and aspect ratio, random position
    (same algorithm as torchvision RandomResizedCrop, with an explicit generator)."""
    area = height * width
    log_lo, log_hi = math.log(aspect_range[0]), math.log(aspect_range[1])
    for _ in range(10):
        target_area = area * _uniform(*area_range, generator)
        aspect = math.exp(_uniform(log_lo, log_hi, generator))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return top, left, h, w
    ratio = width / height  # fallback: the largest centred box within the aspect range
    if ratio < aspect_range[0]:
        w, h = width, int(round(width / aspect_range[0]))
    elif ratio > aspect_range[1]:
        w, h = int(round(height * aspect_range[1])), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def crop(video: torch.Tensor, box: Box) -> torch.Tensor:
    """A view of frames (..., H, W) inside `box`; no copy."""
    top, left, h, w = box
    return video[..., top : top + h, left : left + w]


def copy_cthw(out: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
    """Copy uint8 frames (T, C, H, W) into `out` (C, T, H, W) as 0..255 values (see `normalize_`)."""
    return out.copy_(video.permute(1, 0, 2, 3))


def normalize_(clips: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """In place: 0..255 values, channels in dim -4 (layout (..., C, T, H, W)) -> (x / 255 - mean) / std."""
    for channel, (m, s) in enumerate(zip(mean, std)):  # python scalars: the fastest kernels
        clips.select(-4, channel).mul_(1.0 / (255.0 * s)).sub_(m / s)
    return clips


def normalize_views(views: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                    memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """uint8 views (..., C, T, H, W) -> normalized float32 on the same device, in `memory_format`.

    The same float32 arithmetic as the CPU pipeline (`copy_cthw` + `normalize_`), so views
    shipped as uint8 and normalized here (e.g. on the GPU) equal those normalized in the workers.
    """
    out = torch.empty(views.shape, dtype=torch.float32, device=views.device,
                      memory_format=memory_format)
    return normalize_(out.copy_(views), mean, std)


def to_normalized_clip(video: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """uint8 (T, C, H, W) -> normalized float32 (C, T, H, W)."""
    t, c, h, w = video.shape
    return normalize_(copy_cthw(torch.empty((c, t, h, w), dtype=torch.float32), video), mean, std)


@dataclass
class TrainTransform:
    """Random crop (same box for every frame), resize to crop_size, random flip, normalize.

    mode "rrc": RandomResizedCrop (area_range, aspect_range), as in mmaction2's Kinetics recipes.
    The crop is scale-invariant, so resizing the short side to `short_side` first would change
    nothing but interpolation; frames are resized once, from the source resolution.
    mode "jitter": short side drawn from [short_side, max_short_side], then a random
    crop_size x crop_size crop (SlowFast-style), also computed on source pixels with one resize.
    """

    short_side: int = 256
    crop_size: int = 224
    mode: str = "rrc"
    area_range: tuple[float, float] = (0.08, 1.0)
    aspect_range: tuple[float, float] = (3 / 4, 4 / 3)
    max_short_side: int = 320
    flip_prob: float = 0.5
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.mode not in ("rrc", "jitter"):
            raise ValueError(f"TrainTransform mode must be 'rrc' or 'jitter', got {self.mode!r}")

    def crop_box(self, height: int, width: int, generator: torch.Generator | None = None) -> Box:
        if self.mode == "rrc":
            return random_resized_crop_box(height, width, self.area_range, self.aspect_range, generator)
        target_short = _uniform(self.short_side, max(self.short_side, self.max_short_side), generator)
        side = min(height, width, max(1, int(round(self.crop_size * min(height, width) / target_short))))
        top = int(torch.randint(0, height - side + 1, (1,), generator=generator))
        left = int(torch.randint(0, width - side + 1, (1,), generator=generator))
        return top, left, side, side

    def draw(self, height: int, width: int,
             generator: torch.Generator | None = None) -> tuple[Box, bool]:
        """One clip's random choices, in the generator's order: its crop box in (height, width)
        frames, and whether it is mirrored left-right."""
        box = self.crop_box(height, width, generator)
        flip = self.flip_prob > 0 and float(torch.rand((), generator=generator)) < self.flip_prob
        return box, flip

    def __call__(self, video: torch.Tensor, generator: torch.Generator | None = None,
                 normalize: bool = True) -> torch.Tensor:
        """uint8 (T, C, H, W) -> float32 (C, T, crop_size, crop_size); with normalize=False the
        uint8 pixels (C, T, crop_size, crop_size) in the input's memory order (a permuted view
        of channels-last frames), to be finished by `normalize_views`."""
        box, flip = self.draw(video.shape[-2], video.shape[-1], generator)
        cropped = crop(video, box)
        return self.resize_crop(cropped.flip(-1) if flip else cropped, normalize)

    def resize_crop(self, cropped: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """What __call__ does after the crop and the flip: `cropped` (T, C, h, w) holds the
        frames' box, mirrored if `draw` said so (e.g. cut and mirrored by the decoder,
        `VideoReader.get_frames(..., crop=box, flip=flip)`); resize it to crop_size and
        normalize unless normalize=False. Mirroring before the resize gives the same pixels as
        after it (the antialiased resize is symmetric) and saves a pass over the clip when the
        decoder mirrors as it copies."""
        clip = F.resize(cropped, [self.crop_size, self.crop_size], antialias=True)
        if not normalize:
            # (C, T, H, W) as a view: the frames' channels-last memory is kept (no transposing
            # copy in the worker); datasets.collate_clips batches it as channels_last_3d
            return clip.permute(1, 0, 2, 3)
        return to_normalized_clip(clip, self.mean, self.std)


@dataclass
class TestTransform:
    """Resize the short side to short_side, then num_crops (1: center, 3: three-crop) squares."""

    short_side: int = 256
    crop_size: int = 224
    num_crops: int = 1
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    __test__ = False  # not a pytest test class despite the name

    def __post_init__(self) -> None:
        if self.num_crops not in (1, 3):
            raise ValueError(f"num_crops must be 1 (center crop) or 3 (three-crop), got {self.num_crops}")

    def boxes(self, height: int, width: int) -> list[Box]:
        if self.num_crops == 1:
            return [center_crop_box(height, width, self.crop_size)]
        return three_crop_boxes(height, width, self.crop_size)

    def resize(self, video: torch.Tensor) -> torch.Tensor:
        return resize_short_side(video, self.short_side)

    def views(self, resized: torch.Tensor, clips: list[torch.Tensor],
              normalize: bool = True) -> torch.Tensor:
        """Crops of already resized frames: `clips` holds, per clip, the positions of its frames
        in `resized`. Returns (len(clips) * num_crops, C, T, crop, crop), clip-major: float32
        normalized, or with normalize=False the uint8 pixels (4x smaller to ship from a
        DataLoader worker; `normalize_views` finishes them on the device)."""
        boxes = self.boxes(resized.shape[-2], resized.shape[-1])
        channels, size = resized.shape[1], self.crop_size
        out = torch.empty((len(clips) * len(boxes), channels, len(clips[0]), size, size),
                          dtype=torch.float32 if normalize else resized.dtype)
        for clip_index, positions in enumerate(clips):
            frames = resized.index_select(0, positions)
            for crop_index, box in enumerate(boxes):
                copy_cthw(out[clip_index * len(boxes) + crop_index], crop(frames, box))
        return normalize_(out, self.mean, self.std) if normalize else out

    def __call__(self, video: torch.Tensor) -> torch.Tensor:
        """uint8 (T, C, H, W) -> float32 (num_crops, C, T, crop_size, crop_size)."""
        return self.views(self.resize(video), [torch.arange(video.shape[0])])


def train_transform(short_side: int = 256, crop_size: int = 224, **options) -> TrainTransform:
    """The standard training preset; options: mode, area_range, aspect_range, max_short_side, flip_prob."""
    return TrainTransform(short_side=short_side, crop_size=crop_size, **options)


def test_transform(short_side: int = 256, crop_size: int = 224, num_crops: int = 1) -> TestTransform:
    """The standard test preset: short-side resize, then center crop or three crops."""
    return TestTransform(short_side=short_side, crop_size=crop_size, num_crops=num_crops)


test_transform.__test__ = False  # type: ignore[attr-defined]


def _check_crop(height: int, width: int, crop_size: int) -> None:
    if crop_size > min(height, width):
        raise ValueError(f"crop_size {crop_size} exceeds the short side of {height}x{width} frames")


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return float(torch.empty(()).uniform_(low, high, generator=generator))
