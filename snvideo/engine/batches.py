"""Training batches from the DataLoader to the model's input tensor on the training device."""
from __future__ import annotations

from typing import Any, Iterable, Iterator

import torch


def to_model_input(clips: torch.Tensor, device: torch.device, transform: Any = None,
                   channels_last: bool = False) -> torch.Tensor:
    """clips (N, C, T, H, W) -> float32 on `device`, in the model's memory format.

    uint8 clips (the standard transform with normalize=False) are normalized here, once, with
    `transform`'s mean/std (ImageNet's without one) by `normalize_views`, the function the
    evaluator uses: on the GPU with CUDA, in the main process on CPU. Float clips (a custom
    transform) are moved as they are."""
    clips = clips.to(device, non_blocking=True)
    memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
    if clips.dtype == torch.uint8:
        from snvideo.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize_views

        return normalize_views(clips, getattr(transform, "mean", IMAGENET_MEAN),
                               getattr(transform, "std", IMAGENET_STD), memory_format)
    return clips.contiguous(memory_format=memory_format) if channels_last else clips


def model_inputs(batches: Iterable, device: torch.device, transform: Any = None,
                 channels_last: bool = False) -> Iterator[torch.Tensor]:
    """The model inputs of (clips, labels, ...) batches, e.g. for recompute_norm_stats."""
    for batch in batches:
        yield to_model_input(batch[0], device, transform, channels_last)
