"""View aggregation and video-level accuracy metrics.

Accuracies are percentages in [0, 100] (the numbers the summary prints), computed over the
videos that were actually evaluated; None when no video was.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

AVERAGE_MODES = ("prob", "score")


def aggregate_views(logits: Tensor, average: str = "prob") -> Tensor:
    """(V, K) per-view logits -> (K,) class probabilities of the video.

    prob:  softmax over classes per view, then the mean over views (default);
    score: mean of the logits over views, then one softmax.
    """
    if logits.dim() != 2 or logits.shape[0] == 0:
        raise ValueError(f"expected (views, classes) logits, got shape {tuple(logits.shape)}")
    logits = logits.float()
    if average == "prob":
        return logits.softmax(dim=1).mean(dim=0)
    if average == "score":
        return logits.mean(dim=0).softmax(dim=0)
    raise ValueError(f"average must be one of {', '.join(AVERAGE_MODES)}, got {average!r}")


def top_k(probs: Tensor, k: int) -> tuple[list[int], list[float]]:
    """The k most probable classes of one video: (indices, probabilities), best first.

    Ties go to the lower class index (stable sort), so the order is deterministic."""
    order = torch.argsort(probs, descending=True, stable=True)[: min(k, probs.numel())]
    return order.tolist(), probs[order].tolist()


def accuracy_metrics(labels: Sequence[int], ranked: Sequence[Sequence[int]],
                     k: int = 5) -> dict[str, float | None]:
    """top-1, top-k and mean class accuracy (percentages) from each video's label and its
    classes ranked by probability (at least k of them, best first).

    Mean class accuracy averages the per-class top-1 recall over the classes that occur among
    `labels` (classes absent from the evaluated set are not counted as 0)."""
    if len(labels) != len(ranked):
        raise ValueError(f"{len(labels)} labels but {len(ranked)} predictions")
    if not labels:
        return {"top1": None, "top5": None, "mean_class_acc": None}
    top1_hits = [int(r[0] == y) for y, r in zip(labels, ranked)]
    topk_hits = [int(y in list(r)[:k]) for y, r in zip(labels, ranked)]
    per_class: dict[int, list[int]] = {}
    for y, hit in zip(labels, top1_hits):
        per_class.setdefault(y, []).append(hit)
    recalls = [sum(h) / len(h) for h in per_class.values()]
    return {"top1": 100.0 * sum(top1_hits) / len(labels),
            "top5": 100.0 * sum(topk_hits) / len(labels),
            "mean_class_acc": 100.0 * sum(recalls) / len(recalls)}


def confusion_matrix(labels: Sequence[int], predictions: Sequence[int],
                     num_classes: int) -> list[list[int]]:
    """Counts: row = true class, column = predicted class (num_classes x num_classes)."""
    matrix = [[0] * num_classes for _ in range(num_classes)]
    for y, p in zip(labels, predictions, strict=True):
        if not (0 <= y < num_classes and 0 <= p < num_classes):
            raise ValueError(f"class index out of range 0..{num_classes - 1}: label {y}, prediction {p}")
        matrix[y][p] += 1
    return matrix


def per_class_accuracy(confusion: Sequence[Sequence[int]],
                       class_names: Sequence[str]) -> list[dict]:
    """[{"class", "accuracy", "num"}] in class order: top-1 recall (percent) of each class over
    its `num` evaluated videos; accuracy None for a class with no video."""
    rows = []
    for index, (name, row) in enumerate(zip(class_names, confusion, strict=True)):
        num = sum(row)
        rows.append({"class": name, "accuracy": 100.0 * row[index] / num if num else None,
                     "num": num})
    return rows
