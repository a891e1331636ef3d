"""Annotation files -> video records: the Kinetics CSV, mmaction2 list files, rawframe lists.

Kinetics CSV: header `label,youtube_id,time_start,time_end,split` (optional `is_cc`; the test
split has no label column). Videos are `{youtube_id}_{start:06d}_{end:06d}.<any video ext>` under
the root, flat or in class folders (named after the label, spaces kept or turned into
underscores); the root is indexed once by file stem. Class indices follow the sorted names.

List file: `relative/path.mp4 label` per line (label an int index, paths relative to the root);
classes are the label ints as strings unless a label map is given.

Rawframe list: `frame_dir total_frames label` per line.

UCF101, HMDB51, Something-Something v2 and folder-per-class layouts: see snvideo.data.layouts.
A `path label` list whose labels start at 1 and follow its class folders (a UCF101 trainlist)
is refused unless a class file says how to read it: classInd.txt (1-based) or a label map.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Sequence

from .containers import VIDEO_EXTENSIONS
from .layouts import (detect_directory_format, is_sthv2_json, load_class_folders, load_hmdb51,
                      load_sthv2, load_ucf101, read_class_file, relabel)
from .records import Annotations, VideoRecord

__all__ = ["VIDEO_EXTENSIONS", "Annotations", "VideoRecord", "detect_format", "load_annotations",
           "load_rawframe_annotations", "read_class_names", "write_label_map"]

KINETICS_COLUMNS = ("youtube_id", "time_start", "time_end")


def read_class_names(classes: Sequence[str] | str | os.PathLike | None) -> list[str] | None:
    """A label map: a list of names, or a text file with one class name per line (index = line)."""
    if classes is None:
        return None
    if isinstance(classes, (str, os.PathLike)):
        lines = Path(classes).read_text(encoding="utf-8").splitlines()
        return [line.strip() for line in lines if line.strip()]
    return [str(name) for name in classes]


def write_label_map(classes: Sequence[str], path: str | os.PathLike) -> None:
    """One class name per line; the line number is the class index."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{name}\n" for name in classes), encoding="utf-8")


def _is_label(text: str) -> bool:
    """A class index, or -1 for an unlabelled video (as data_tools write for test lists)."""
    return text.isdigit() or text == "-1"


def detect_format(ann_file: str | os.PathLike, classes_file: str | os.PathLike | None = None) -> str:
    """"kinetics_csv", "list", "rawframes", "ucf101", "hmdb51", "sthv2" or "folders".

    A folder: HMDB51 split files or class folders. A JSON list: Something-Something v2. A text
    list: UCF101 when `classes_file` is a classInd.txt, otherwise from the first line."""
    if os.path.isdir(ann_file):
        return detect_directory_format(ann_file)
    if is_sthv2_json(ann_file):
        return "sthv2"
    with open(ann_file, encoding="utf-8-sig") as f:
        first = next((line.strip() for line in f if line.strip()), "")
    if "youtube_id" in first and "," in first:
        return "kinetics_csv"
    fields = first.split()
    if len(fields) >= 3 and _is_label(fields[-1]) and fields[-2].isdigit():
        return "rawframes"
    if classes_file is not None and read_class_file(classes_file).kind == "classind":
        return "ucf101"
    return "list"


def load_annotations(
    ann_file: str | os.PathLike,
    root: str | os.PathLike,
    classes: Sequence[str] | str | None = None,
    classes_file: str | os.PathLike | None = None,
    split: int | None = None,
    subset: str = "train",
) -> Annotations:
    """Video records of any supported layout (detected), missing files split off.

    classes_file: the dataset's class file (classInd.txt, labels.json, or a label map), which
    fixes the class order. classes: the order to label in (e.g. a trained model's), matched by
    name; for an int-labelled list it is the label map. split / subset: the HMDB51 split
    (1, 2, 3) and which part of it ("train": videos marked 1, "test": marked 2)."""
    class_file = read_class_file(classes_file) if classes_file is not None else None
    given = read_class_names(classes)
    fmt = detect_format(ann_file, classes_file)
    source = os.fspath(ann_file)
    if fmt in ("ucf101", "hmdb51", "sthv2", "folders"):
        names = class_file.names if class_file is not None else None
        if fmt == "ucf101":
            annotations = load_ucf101(ann_file, root, class_file)
        elif fmt == "sthv2":
            annotations = load_sthv2(ann_file, root, class_file)
        elif fmt == "hmdb51":
            annotations = load_hmdb51(ann_file, root, split, subset, names)
        else:
            annotations = load_class_folders(ann_file, names)
        return relabel(annotations, given, source) if given is not None else annotations
    if class_file is not None and class_file.kind == "labels_json":
        raise ValueError(f"{class_file.path} is a Something-Something v2 labels.json, but {source} "
                         f"is not a Something-Something v2 list (data.classes_file)")
    label_map = given if given is not None else (class_file.names if class_file is not None else None)
    if fmt == "kinetics_csv":
        return _load_kinetics_csv(ann_file, root, label_map)
    if fmt == "rawframes":
        raise ValueError(f"{ann_file} looks like a rawframe list (frame_dir total_frames label); use RawFrameDataset")
    return _load_list(ann_file, root, label_map, explicit_label_map=class_file is not None)


def index_videos(root: str | os.PathLike) -> dict[str, list[str]]:
    """Every video file under `root` (recursively), by file stem. One walk of the tree."""
    by_stem: dict[str, list[str]] = {}
    for folder, _, files in os.walk(root, followlinks=True):
        for name in files:
            stem, ext = os.path.splitext(name)
            if ext.lower() in VIDEO_EXTENSIONS:
                by_stem.setdefault(stem, []).append(os.path.join(folder, name))
    for paths in by_stem.values():
        paths.sort()
    return by_stem


def kinetics_video_id(youtube_id: str, time_start: str, time_end: str) -> str:
    return f"{youtube_id}_{int(float(time_start)):06d}_{int(float(time_end)):06d}"


def _load_kinetics_csv(ann_file, root, classes: list[str] | None) -> Annotations:
    with open(ann_file, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if rows and any(column not in rows[0] for column in KINETICS_COLUMNS):
        raise ValueError(f"{ann_file}: a Kinetics CSV needs the columns {', '.join(KINETICS_COLUMNS)}")
    has_labels = bool(rows) and "label" in rows[0]
    if classes is None:
        classes = sorted({row["label"] for row in rows}) if has_labels else []
    class_index = {name: i for i, name in enumerate(classes)}
    videos = index_videos(root)
    records, missing = [], []
    for line, row in enumerate(rows, start=2):
        video_id = kinetics_video_id(row["youtube_id"], row["time_start"], row["time_end"])
        label_name = row.get("label") if has_labels else None
        if label_name is not None and label_name not in class_index:
            raise ValueError(f"{ann_file}:{line}: label {label_name!r} is not in the given classes")
        path = _pick(videos.get(video_id) or videos.get(row["youtube_id"]), label_name)
        if path is None:
            missing.append(video_id)
            continue
        label = class_index[label_name] if label_name is not None else -1
        records.append(VideoRecord(path=path, label=label, video_id=video_id))
    return Annotations(records, list(classes), missing, "kinetics_csv")


def _pick(paths: list[str] | None, label: str | None) -> str | None:
    """Prefer the copy inside the label's class folder when a stem exists more than once."""
    if not paths:
        return None
    if label is not None and len(paths) > 1:
        folders = {label, label.replace(" ", "_")}
        for path in paths:
            if os.path.basename(os.path.dirname(path)) in folders:
                return path
    return paths[0]


def _load_list(ann_file, root, classes: list[str] | None, explicit_label_map: bool = False) -> Annotations:
    entries = []
    for line_number, line in _lines(ann_file):
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not _is_label(parts[1]):
            if _looks_like_ucf101_testlist(ann_file):
                raise ValueError(f"{ann_file}: the lines carry no label, as in a UCF101 testlist (the label is "
                                 "the class folder): set data.classes_file to its classInd.txt")
            raise ValueError(f"{ann_file}:{line_number}: expected 'relative/path label', got {line!r}")
        entries.append((parts[0], int(parts[1]), line_number))
    if not explicit_label_map and _looks_like_ucf101_trainlist(entries):
        raise ValueError(
            f"{ann_file}: the labels start at 1 and follow the class folders, as in a UCF101 trainlist "
            "(1-based): set data.classes_file to its classInd.txt, or to a label map (one class name "
            "per line) to read it as a 0-based 'path label' list")
    classes = _classes_for_int_labels(ann_file, [(label, n) for _, label, n in entries], classes)
    records, missing = [], []
    for relative, label, _ in entries:
        path = os.path.join(root, relative)
        if os.path.isfile(path):
            records.append(VideoRecord(path=path, label=label, video_id=relative))
        else:
            missing.append(relative)
    return Annotations(records, classes, missing, "list")


def load_rawframe_annotations(
    ann_file: str | os.PathLike, root: str | os.PathLike, classes: Sequence[str] | str | None = None
) -> Annotations:
    """Records of a `frame_dir total_frames label` list; frame folders absent on disk split off."""
    entries = []
    for line_number, line in _lines(ann_file):
        parts = line.rsplit(maxsplit=2)
        if len(parts) != 3 or not parts[1].isdigit() or not _is_label(parts[2]):
            raise ValueError(f"{ann_file}:{line_number}: expected 'frame_dir total_frames label', got {line!r}")
        entries.append((parts[0], int(parts[1]), int(parts[2]), line_number))
    names = _classes_for_int_labels(ann_file, [(label, n) for *_, label, n in entries], read_class_names(classes))
    records, missing = [], []
    for frame_dir, num_frames, label, _ in entries:
        path = os.path.join(root, frame_dir)
        if os.path.isdir(path) and num_frames > 0:
            records.append(VideoRecord(path=path, label=label, video_id=frame_dir, num_frames=num_frames))
        else:
            missing.append(frame_dir)
    return Annotations(records, names, missing, "rawframes")


def _looks_like_ucf101_trainlist(entries: list[tuple[str, int, int]]) -> bool:
    """Every path in a class folder, folders and labels one to one, and no label 0: a 1-based list."""
    if not entries or min(label for _, label, _ in entries) < 1:
        return False
    folder_label: dict[str, int] = {}
    for path, label, _ in entries:
        path = path.replace("\\", "/")
        if "/" not in path or folder_label.setdefault(path.split("/")[0], label) != label:
            return False
    return len(set(folder_label.values())) == len(folder_label)


def _looks_like_ucf101_testlist(ann_file) -> bool:
    lines = [line for _, line in _lines(ann_file)]
    return bool(lines) and all(len(line.split()) == 1 and "/" in line for line in lines)


def _classes_for_int_labels(ann_file, labels: list[tuple[int, int]], classes: list[str] | None) -> list[str]:
    top = max((label for label, _ in labels), default=-1)
    if classes is None:
        return [str(i) for i in range(top + 1)]
    for label, line_number in labels:
        if label >= len(classes):
            raise ValueError(f"{ann_file}:{line_number}: label {label} is outside the {len(classes)} given classes")
    return classes


def _lines(ann_file):
    with open(ann_file, encoding="utf-8-sig") as f:
        for line_number, line in enumerate(f, start=1):
            line = line.strip()
            if line and not line.startswith("#"):
                yield line_number, line
