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
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from snvideo.engine.checkpoint import unwrap
from snvideo.engine.distributed import DistEnv, all_gather_objects

from .metrics import aggregate_views, top_k
from .report import build_results

TOP_K = 5


class EvaluationError(RuntimeError):
    """A video failed with strict=True."""

    def __init__(self, video: str, reason: str) -> None:
        super().__init__(f"{video}: {reason}")
        self.video, self.reason = video, reason


@dataclass
class _Views:
    index: int
    views: Tensor
    label: int

    def pin_memory(self) -> "_Views":  # called by DataLoader(pin_memory=True)
        self.views = self.views.pin_memory()
        return self


@dataclass
class _Failure:
    index: int
    reason: str


class _CatchReadErrors(Dataset):
    """This process's shard of a test-mode dataset; an unreadable video becomes a _Failure
    item instead of an exception, so a bad file never kills a DataLoader worker."""

    def __init__(self, dataset: Any, indices: Sequence[int]) -> None:
        self.dataset, self.indices = dataset, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> _Views | _Failure:
        from snvideo.data import VideoReadError

        index = self.indices[i]
        try:
            views, label = self.dataset[index]
        except VideoReadError as e:
            return _Failure(index, str(getattr(e, "reason", None) or e))
        return _Views(index, views, int(label))


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


def predict_views(model: nn.Module, views: Tensor, views_per_forward: int = 10,
                  average: str = "prob", device: torch.device | str | None = None) -> Tensor:
    """(V, C, T, H, W) views of one video -> (K,) class probabilities (float32, CPU).

    The caller puts the model in eval mode; this runs under inference_mode."""
    if views.dim() != 5:
        raise ValueError(f"expected (views, C, T, H, W), got shape {tuple(views.shape)}")
    if views_per_forward < 1:
        raise ValueError(f"views_per_forward must be >= 1, got {views_per_forward}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    logits = []
    with torch.inference_mode():
        for chunk in torch.split(views, views_per_forward):
            chunk = chunk.to(device, non_blocking=True)
            logits.append(model(chunk).float().cpu())
    return aggregate_views(torch.cat(logits), average)


def evaluate(model: nn.Module, dataset: Any, test_cfg: Any, env: DistEnv | None = None,
             device: torch.device | str | None = None, progress: bool = True,
             strict: bool = False) -> dict:
    """Multi-view test of `model` on a test-mode dataset; returns the results dict
    (see snvideo.evaluation.report) on every process.

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
    shard = _CatchReadErrors(dataset, shard_indices(len(dataset), env.rank, env.world_size))
    num_workers = int(getattr(test_cfg, "num_workers", 0))
    loader = DataLoader(shard, batch_size=1, shuffle=False, num_workers=num_workers,
                        collate_fn=_single_item, pin_memory=device.type == "cuda",
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
                                  test_cfg.average, device)
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
    if not enabled:
        return loader
    from tqdm import tqdm

    desc = "test" if world_size == 1 else f"test (rank 0 of {world_size})"
    return tqdm(loader, total=total, desc=desc, unit="video", dynamic_ncols=True)


def predict_video(model: nn.Module, path: str, test_cfg: Any, data_cfg: Any,
                  device: torch.device | str | None = None) -> Tensor:
    """Class probabilities (K,) of one video file with the same views, chunking and averaging
    as `evaluate`. Raises snvideo.data.VideoReadError for an unreadable video."""
    from snvideo.data import load_test_views

    views, _ = load_test_views(path, test_cfg.num_clips, data_cfg.clip_len,
                               data_cfg.frame_interval, data_cfg.short_side,
                               data_cfg.crop_size, test_cfg.num_crops,
                               backend=getattr(data_cfg, "backend", "auto"))
    net = unwrap(model)
    was_training = net.training
    net.eval()
    try:
        return predict_views(net, views, test_cfg.views_per_forward, test_cfg.average, device)
    finally:
        net.train(was_training)
