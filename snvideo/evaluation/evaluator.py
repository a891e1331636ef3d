"""Multi-view (clips x crops) evaluation of a video classifier.

Each video is decoded once by the test-mode dataset into V = num_clips * num_crops views;
the views go through the model in chunks of `views_per_forward` (bounding activation memory)
and are averaged into one probability vector per video (see metrics.aggregate_views).

Under torchrun every process takes a strided shard of the videos (no padding, so nothing is
counted twice); the per-video results are gathered and put back in annotation order, so the
output equals a single-process run. A video that cannot be decoded is recorded as failed
with its reason instead of stopping the run. With strict=True the first failure raises
EvaluationError: at once in a single process; under torchrun the failing process stops, the
others finish their shards, and every process raises for the failure first in list order
(so no process is left waiting in a collective).

Views travel from the DataLoader workers as uint8 (a quarter of float32's bytes: 144 MB
instead of 578 MB for 10x3 views of 32x224x224) and are normalized on the model's device; the
model then runs under the training's autocast dtype (`amp`) and memory format
(`channels_last`) when given. A custom (non-TestTransform) transform's float views pass
through unchanged.
"""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from snvideo.data.worker_memory import init_worker
from snvideo.engine.checkpoint import unwrap
from snvideo.engine.distributed import DistEnv, all_gather_objects

from .metrics import aggregate_views, top_k
from .report import build_results

TOP_K = 5
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class EvaluationError(RuntimeError):
    """A video failed with strict=True."""

    def __init__(self, video: str, reason: str) -> None:
        super().__init__(f"{video}: {reason}")
        self.video, self.reason = video, reason


@dataclass
class _Views:
    index: int
    views: Tensor  # uint8 (normalize with mean/std on the device) or already float
    label: int
    mean: tuple[float, ...] | None = None  # None: ImageNet's, as the standard transform's
    std: tuple[float, ...] | None = None

    def pin_memory(self) -> "_Views":  # called by DataLoader(pin_memory=True)
        self.views = self.views.pin_memory()
        return self


@dataclass
class _Failure:
    index: int
    reason: str


class _CatchReadErrors(Dataset):
    """This process's shard of a test-mode dataset; an unreadable video becomes a _Failure
    item instead of an exception, so a bad file never kills a DataLoader worker.

    uint8=True ships the standard test transform's views unnormalized (see `_uint8_source`)."""

    def __init__(self, dataset: Any, indices: Sequence[int], uint8: bool = False) -> None:
        self.dataset, self.indices, self.uint8 = dataset, list(indices), uint8

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> _Views | _Failure:
        from snvideo.data import VideoReadError

        index = self.indices[i]
        source = _uint8_source(self.dataset, index) if self.uint8 else None
        try:
            if source is None:
                views, label = self.dataset[index]
                return _Views(index, views, int(label))
            base, base_index = source
            views, label = base.test_views(base_index, normalize=False)
        except VideoReadError as e:
            return _Failure(index, str(getattr(e, "reason", None) or e))
        return _Views(index, views, int(label), tuple(base.transform.mean),
                      tuple(base.transform.std))


def _uint8_source(dataset: Any, index: int) -> tuple[Any, int] | None:
    """(dataset, index) to call `test_views(index, normalize=False)` on, through any Subsets,
    when the dataset uses the standard TestTransform; None otherwise (custom transforms)."""
    from torch.utils.data import Subset

    from snvideo.data.transforms import TestTransform  # lazily: snvideo.data needs a decoder

    while isinstance(dataset, Subset):
        dataset, index = dataset.dataset, dataset.indices[index]
    if (getattr(dataset, "test_mode", False) and hasattr(dataset, "test_views")
            and isinstance(getattr(dataset, "transform", None), TestTransform)):
        return dataset, index
    return None


def _single_item(batch: list) -> Any:
    return batch[0]


def shard_indices(num_items: int, rank: int, world_size: int) -> range:
    """Strided shard: every item in exactly one shard, sizes differ by at most one."""
    return range(rank, num_items, world_size)


def video_name(dataset: Any, index: int) -> str:
    """The video's path relative to the dataset root (as listed if it is not under it)."""
    if hasattr(dataset, "video_path"):
        path = str(dataset.video_path(index))
    elif hasattr(dataset, "samples"):
        sample = dataset.samples[index]
        path = str(getattr(sample, "path", sample))
    else:
        return str(index)
    root = getattr(dataset, "root", None)
    if root:
        rel = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
        if not rel.startswith(".."):
            return rel
    return path


def autocast_context(device: torch.device | str, amp: str = "off"):
    """torch.autocast for amp "bf16" / "fp16" (train.amp's values); a no-op for "off"."""
    if amp in (None, "off"):
        return contextlib.nullcontext()
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp must be one of off, {', '.join(AMP_DTYPES)}; got {amp!r}")
    return torch.autocast(torch.device(device).type, dtype=AMP_DTYPES[amp])


def predict_views(model: nn.Module, views: Tensor, views_per_forward: int = 10,
                  average: str = "prob", device: torch.device | str | None = None, *,
                  amp: str = "off", channels_last: bool = False,
                  mean: Sequence[float] | None = None,
                  std: Sequence[float] | None = None) -> Tensor:
    """(V, C, T, H, W) views of one video -> (K,) class probabilities (float32, CPU).

    uint8 views are normalized with mean/std (default ImageNet's, as the standard test
    transform) on `device`; float views are used as given;
    the model runs under autocast `amp` and, with channels_last, on channels_last_3d inputs.
    The caller puts the model in eval mode; this runs under inference_mode."""
    if views.dim() != 5:
        raise ValueError(f"expected (views, C, T, H, W), got shape {tuple(views.shape)}")
    if views_per_forward < 1:
        raise ValueError(f"views_per_forward must be >= 1, got {views_per_forward}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
    logits = []
    with torch.inference_mode():
        for chunk in torch.split(views, views_per_forward):
            chunk = chunk.to(device, non_blocking=True)
            if chunk.dtype == torch.uint8:
                chunk = _normalize(chunk, mean, std, memory_format)
            elif channels_last:
                chunk = chunk.contiguous(memory_format=memory_format)
            with autocast_context(device, amp):
                logits.append(model(chunk).float())
    return aggregate_views(torch.cat(logits).cpu(), average)  # one copy back per video


def _normalize(views: Tensor, mean, std, memory_format: torch.memory_format) -> Tensor:
    from snvideo.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize_views

    return normalize_views(views, IMAGENET_MEAN if mean is None else mean,
                           IMAGENET_STD if std is None else std, memory_format)


def evaluate(model: nn.Module, dataset: Any, test_cfg: Any, env: DistEnv | None = None,
             device: torch.device | str | None = None, progress: bool = True,
             strict: bool = False, amp: str = "off", channels_last: bool = False) -> dict:
    """Multi-view test of `model` on a test-mode dataset; returns the results dict
    (see snvideo.evaluation.report) on every process.

    amp ("off" | "bf16" | "fp16") and channels_last: as in training (train.amp,
    train.channels_last); the caller converts the model's memory format.

    test_cfg needs views_per_forward, average, num_workers (num_clips / num_crops are only
    recorded: the dataset was built with them). The model is restored to its previous
    train/eval mode afterwards; DDP / compile wrappers are stripped so that processes with
    different numbers of videos never wait on each other inside forward.
    """
    env = env or DistEnv()
    device = torch.device(device) if device is not None else env.device
    missing = list(getattr(dataset, "missing", None) or [])
    if strict and missing:  # the same on every process: no one is left waiting
        raise EvaluationError(str(missing[0]), "file not found")
    net = unwrap(model)
    was_training = net.training
    net.eval()
    autocast_context(device, amp)  # a bad amp value fails before any decoding
    shard = _CatchReadErrors(dataset, shard_indices(len(dataset), env.rank, env.world_size),
                             uint8=True)
    num_workers = int(getattr(test_cfg, "num_workers", 0))
    loader = DataLoader(shard, batch_size=1, shuffle=False, num_workers=num_workers,
                        collate_fn=_single_item, pin_memory=device.type == "cuda",
                        worker_init_fn=init_worker,
                        prefetch_factor=2 if num_workers > 0 else None)
    evaluated: list[tuple[int, int, list[int], list[float]]] = []
    failed: list[tuple[int, str]] = []
    start = time.perf_counter()
    try:
        for item in _progress(loader, len(shard), progress and env.is_main, env.world_size):
            if isinstance(item, _Failure):
                failed.append((item.index, item.reason))
                if strict and not env.distributed:
                    raise EvaluationError(video_name(dataset, item.index), item.reason)
                if strict:  # stop here; the others finish their shards, then all raise below
                    break
                continue
            probs = predict_views(net, item.views, test_cfg.views_per_forward,
                                  test_cfg.average, device, amp=amp,
                                  channels_last=channels_last, mean=item.mean, std=item.std)
            classes, probabilities = top_k(probs, TOP_K)
            evaluated.append((item.index, item.label, classes, probabilities))
    finally:
        net.train(was_training)
    seconds = time.perf_counter() - start

    gathered = all_gather_objects((evaluated, failed), env)
    evaluated = sorted(v for part, _ in gathered for v in part)
    failed = sorted(f for _, part in gathered for f in part)
    if strict and failed:
        raise EvaluationError(video_name(dataset, failed[0][0]), failed[0][1])
    names = list(getattr(dataset, "classes", None) or [])
    # Listed videos absent from disk never became dataset items: they fail here, not silently.
    missing = [(str(video), "file not found") for video in missing]
    return build_results(
        evaluated=[(video_name(dataset, i), label, classes, probs)
                   for i, label, classes, probs in evaluated],
        failed=[(video_name(dataset, i), reason) for i, reason in failed] + missing,
        class_names=names, settings=_settings(test_cfg, env, seconds), top=TOP_K)


def _settings(test_cfg: Any, env: DistEnv, seconds: float) -> dict:
    return {"num_clips": getattr(test_cfg, "num_clips", None),
            "num_crops": getattr(test_cfg, "num_crops", None),
            "average": test_cfg.average, "views_per_forward": test_cfg.views_per_forward,
            "processes": env.world_size, "seconds": round(seconds, 3)}


def _progress(loader: DataLoader, total: int, enabled: bool, world_size: int):
    """A bar on a terminal, a line every 5% of the videos in a log file (snvideo.progress)."""
    if not enabled:
        return loader
    from snvideo.progress import progress

    desc = "test" if world_size == 1 else f"test (rank 0 of {world_size})"
    return progress(loader, total=total, desc=desc, unit="video", every=max(1, total // 20),
                    leave=True)


def predict_video(model: nn.Module, path: str, test_cfg: Any, data_cfg: Any,
                  device: torch.device | str | None = None, amp: str = "off",
                  channels_last: bool = False) -> Tensor:
    """Class probabilities (K,) of one video file with the same views, chunking, averaging,
    autocast and memory format as `evaluate`. Raises snvideo.data.VideoReadError for an
    unreadable video."""
    from snvideo.data import load_test_views

    views, _ = load_test_views(path, test_cfg.num_clips, data_cfg.clip_len,
                               data_cfg.frame_interval, data_cfg.short_side,
                               data_cfg.crop_size, test_cfg.num_crops,
                               backend=getattr(data_cfg, "backend", "auto"), normalize=False,
                               num_threads=getattr(data_cfg, "decode_threads", 1),
                               rotation=getattr(data_cfg, "rotation", "auto"))
    net = unwrap(model)
    was_training = net.training
    net.eval()
    try:
        return predict_views(net, views, test_cfg.views_per_forward, test_cfg.average, device,
                             amp=amp, channels_last=channels_last)
    finally:
        net.train(was_training)
