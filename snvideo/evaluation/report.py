"""The results dict of a multi-view test, its printed summary, and its JSON / CSV files.

results = {
  "top1", "top5", "mean_class_acc":  percentages in [0, 100] over the evaluated videos
                                     (None when none was evaluated); "top5" is top-k with
                                     k = "topk" = min(5, number of classes)
  "topk":          k
  "num_videos":    videos in the annotation list (= num_evaluated + num_failed)
  "num_evaluated": videos decoded and classified
  "num_failed":    videos that could not be decoded (or are missing on disk)
  "num_unlabelled": evaluated videos without a label (label -1, e.g. a Kinetics test list):
                   predicted, but not part of the accuracies
  "settings":      {"num_clips", "num_crops", "average", "views_per_forward"}
  "processes", "seconds":  how the run went (not part of the result proper)
  "per_class":     [{"class", "accuracy", "num"}, ...] in class order: top-1 recall (percent,
                   None for a class without videos) over the labelled evaluated videos
  "confusion":     counts, row = true class, column = top-1 prediction, same class order
  "failed":  [{"video", "reason"}, ...]
  "videos":  [{"video", "label", "label_index", "pred", "pred_index", "correct",
               "top5": [[class_name, prob], ...]}, ...]   (annotation order)
}
"video" is the path relative to the data root (a missing video: its id as listed); class names
fall back to the index as a string when the class names are unknown; an unlabelled video has
label / label_index / correct = None.
"""
from __future__ import annotations

import csv
import json
import os
from typing import Any, Sequence

from snvideo.atomic import atomic_output

from .metrics import accuracy_metrics, confusion_matrix, per_class_accuracy

SETTINGS_KEYS = ("num_clips", "num_crops", "average", "views_per_forward")


def build_results(evaluated: Sequence[tuple[str, int, list[int], list[float]]],
                  failed: Sequence[tuple[str, str]], class_names: Sequence[str],
                  settings: dict, top: int = 5) -> dict:
    """evaluated: (video, label index, ranked class indices, their probabilities) per video."""
    def name(index: int) -> str:
        return class_names[index] if 0 <= index < len(class_names) else str(index)

    num_classes = len(class_names) or max((len(c) for _, _, c, _ in evaluated), default=top)
    k = min(top, num_classes)
    labelled = [(label, classes) for _, label, classes, _ in evaluated if label >= 0]
    metrics = accuracy_metrics([label for label, _ in labelled],
                               [classes for _, classes in labelled], k)
    size = len(class_names) or max([num_classes] + [max(y, c[0]) + 1 for y, c in labelled])
    confusion = confusion_matrix([y for y, _ in labelled], [c[0] for _, c in labelled], size)
    videos = [{"video": video,
               "label": name(label) if label >= 0 else None,
               "label_index": label if label >= 0 else None,
               "pred": name(classes[0]), "pred_index": classes[0],
               "correct": classes[0] == label if label >= 0 else None,
               "top5": [[name(c), round(p, 6)] for c, p in zip(classes[:k], probs[:k])]}
              for video, label, classes, probs in evaluated]
    return {**metrics, "topk": k,
            "num_videos": len(evaluated) + len(failed), "num_evaluated": len(evaluated),
            "num_failed": len(failed), "num_unlabelled": len(evaluated) - len(labelled),
            "settings": {key: settings.get(key) for key in SETTINGS_KEYS},
            "processes": settings.get("processes", 1), "seconds": settings.get("seconds"),
            "per_class": per_class_accuracy(confusion, [name(i) for i in range(size)]),
            "confusion": confusion,
            "failed": [{"video": video, "reason": reason} for video, reason in failed],
            "videos": videos}


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}%"


def format_summary(results: dict, out_path: str | None = None) -> str:
    """A few lines for the log: view settings, top-1 / top-k / mean class accuracy, failures.

    Failed videos are named inline unless they are listed in `out_path`."""
    s = results.get("settings", {})
    views = f"{s.get('num_clips')} clips x {s.get('num_crops')} crops, {s.get('average')} averaging"
    lines = [f"multi-view test ({views}): {results['num_evaluated']} of "
             f"{results['num_videos']} videos evaluated",
             f"  top-1 {_pct(results['top1'])}   top-{results['topk']} {_pct(results['top5'])}"
             f"   mean class acc {_pct(results['mean_class_acc'])}"]
    seconds = results.get("seconds")
    if seconds and results["num_videos"]:
        lines.append(f"  {results['num_videos'] / seconds:.2f} videos/s "
                     f"({results.get('processes', 1)} process(es), {seconds:.1f}s)")
    if results.get("num_unlabelled"):
        lines.append(f"  {results['num_unlabelled']} evaluated videos have no label: "
                     "predicted, not scored")
    failed = results["failed"]
    if failed:
        verb = "video failed" if len(failed) == 1 else "videos failed"
        where = f" (listed in {out_path})" if out_path else ""
        scored = results["num_evaluated"] - results.get("num_unlabelled", 0)
        lines.append(f"  {len(failed)} {verb} to decode{where}; metrics are over the "
                     f"{scored} readable videos{'' if out_path else ':'}")
        if not out_path:
            lines += [f"    {f['video']}: {f['reason']}" for f in failed]
    return "\n".join(lines)


def write_results(results: dict, path: str) -> None:
    """results.json (the dict above) or results.csv (one row per video, failed ones with
    their reason in `error`), chosen by the file extension."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".json", ".csv"):
        raise ValueError(f"results file must end in .json or .csv, got {path}")
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as f:
        if ext == ".json":
            f.write(_json_text(results))
        else:
            _write_csv(results, f)


def _json_text(results: dict) -> str:
    """Indented JSON with one line per video / failure, so the file reads like a table."""
    lines = []
    for key, value in results.items():
        if isinstance(value, list) and value:
            rows = ",\n".join(f"  {json.dumps(item)}" for item in value)
            lines.append(f" {json.dumps(key)}: [\n{rows}\n ]")
        else:
            lines.append(f" {json.dumps(key)}: {json.dumps(value)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def _write_csv(results: dict, f: Any) -> None:
    k = results["topk"]
    writer = csv.writer(f)
    writer.writerow(["video", "label", "pred", "correct",
                     *(f"top{i + 1}" for i in range(k)), *(f"prob{i + 1}" for i in range(k)),
                     "error"])
    for v in results["videos"]:
        classes = [c for c, _ in v["top5"]] + [""] * (k - len(v["top5"]))
        probs = [f"{p:.6f}" for _, p in v["top5"]] + [""] * (k - len(v["top5"]))
        correct = "" if v["correct"] is None else int(v["correct"])
        writer.writerow([v["video"], v["label"] or "", v["pred"], correct, *classes,
                         *probs, ""])
    for failure in results["failed"]:
        writer.writerow([failure["video"], "", "", "", *([""] * (2 * k)), failure["reason"]])
