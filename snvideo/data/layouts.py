"""The published layouts of UCF101, HMDB51 and Something-Something v2, and folder-per-class.

UCF101: `classInd.txt` ("1 ApplyEyeMakeup" per line, 1-based, CRLF) is the class file;
`trainlistNN.txt` lines are "Class/v_Class_gXX_cYY.avi N" (N 1-based, checked against the
folder), `testlistNN.txt` lines carry no label: it comes from the class folder.

HMDB51: a folder of split files `<class>_test_split<k>.txt`, lines "video.avi F " with F = 1
train, 2 test, 0 unused; `split` picks k; videos are `<root>/<class>/<video>`. Training reads
the videos marked 1, test mode those marked 2. Classes: the sorted names (no class file).

Something-Something v2: `train.json` / `validation.json` are lists of {"id", "label",
"template", "placeholders"}; `labels.json` maps the template without brackets to the class
index as a string (class names are its keys, in index order); videos are `<root>/<id>.webm`.
`test.json` entries have no template: unlabelled.

Folder per class: a directory whose subfolders are the classes, videos inside them.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Sequence

from .containers import VIDEO_EXTENSIONS
from .records import Annotations, VideoRecord

HMDB_SPLIT_FILE = re.compile(r"(.+)_test_split(\d+)\.txt")
_INDEXED_LINE = re.compile(r"(-?\d+)\s+(\S.*)")
SSV2_VIDEO_EXTENSIONS = (".webm", ".mp4")


@dataclass(frozen=True)
class ClassFile:
    names: list[str]  # index = class label
    kind: str  # "classind" (UCF101), "labels_json" (Something-Something v2) or "names"
    path: str


def read_class_file(path: str | os.PathLike) -> ClassFile:
    """classInd.txt ("1 Name" lines, numbered 1..N), labels.json ({"name": "index"}), or a
    label map (one name per line, index = line). Lines "i Name" not numbered 1..N are an
    error: they could be either an index map or names."""
    path = os.fspath(path)
    with open(path, encoding="utf-8-sig") as f:
        text = f.read()
    if path.lower().endswith(".json") or text.lstrip().startswith("{"):
        return ClassFile(_labels_json(path, text), "labels_json", path)
    lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not lines:
        raise ValueError(f"{path}: the class file is empty")
    indexed = [(n, _INDEXED_LINE.fullmatch(line)) for n, line in lines]
    if not all(match for _, match in indexed):
        return ClassFile([line for _, line in lines], "names", path)
    names = []
    for expected, (n, match) in enumerate(indexed, start=1):
        if int(match.group(1)) != expected:
            raise ValueError(
                f"{path}:{n}: class file lines 'index name' must be numbered 1, 2, ... in order "
                f"(UCF101's classInd.txt); got {match.group(1)} where {expected} was due. For a "
                "label map write one class name per line")
        names.append(match.group(2).strip())
    return ClassFile(names, "classind", path)


def _labels_json(path: str, text: str) -> list[str]:
    try:
        mapping = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
    if not isinstance(mapping, dict) or not mapping:
        raise ValueError(f"{path}: expected labels.json's {{\"class name\": \"index\"}} object")
    by_index: dict[int, str] = {}
    for name, value in mapping.items():
        try:
            index = int(value)
        except (TypeError, ValueError):
            raise ValueError(f"{path}: class {name!r} has index {value!r}, not an integer") from None
        if index in by_index:
            raise ValueError(f"{path}: index {index} is given to both {by_index[index]!r} and {name!r}")
        by_index[index] = name
    if sorted(by_index) != list(range(len(by_index))):
        raise ValueError(f"{path}: class indices must be 0..{len(by_index) - 1}, each once")
    return [by_index[i] for i in range(len(by_index))]


def detect_directory_format(ann_dir: str | os.PathLike) -> str:
    """"hmdb51" (split files) or "folders" (one subfolder of videos per class)."""
    entries = [e for e in os.listdir(ann_dir) if not e.startswith(".")]
    split_files = [e for e in entries if HMDB_SPLIT_FILE.fullmatch(e)]
    class_dirs = [e for e in entries if os.path.isdir(os.path.join(ann_dir, e))]
    if split_files and class_dirs:
        raise ValueError(f"{ann_dir}: holds both HMDB51 split files (<class>_test_split<k>.txt) "
                         "and class folders; point the annotation at one layout")
    if split_files:
        return "hmdb51"
    if class_dirs:
        return "folders"
    raise ValueError(f"{ann_dir}: an annotation folder must hold HMDB51 split files "
                     "(<class>_test_split<k>.txt) or one folder of videos per class")


def is_sthv2_json(ann_file: str | os.PathLike) -> bool:
    with open(ann_file, encoding="utf-8-sig") as f:
        start = f.read(64).lstrip()
    return os.fspath(ann_file).lower().endswith(".json") or re.match(r"\[\s*[{\]]", start) is not None


# ----------------------------------------------------------------------------- UCF101
def load_ucf101(ann_file: str | os.PathLike, root: str | os.PathLike, class_file: ClassFile) -> Annotations:
    """trainlist (path + 1-based index, checked against the folder) or testlist (path only)."""
    index = {name: i for i, name in enumerate(class_file.names)}
    records, missing = [], []
    with open(ann_file, encoding="utf-8-sig") as f:
        for n, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            where = f"{os.fspath(ann_file)}:{n}"
            if len(fields) > 2 or (len(fields) == 2 and not fields[1].isdigit()):
                raise ValueError(f"{where}: expected 'Class/video.avi [index]' (UCF101 list), got {line.strip()!r}")
            relative = fields[0].replace("\\", "/")
            folder = relative.split("/")[0] if "/" in relative else None
            if folder is None:
                raise ValueError(f"{where}: {relative!r} has no class folder (UCF101 lists read 'Class/video.avi')")
            if folder not in index:
                raise ValueError(f"{where}: class folder {folder!r} is not in {class_file.path}")
            label = index[folder]
            if len(fields) == 2 and int(fields[1]) != label + 1:
                raise ValueError(f"{where}: index {fields[1]} does not match class folder {folder!r}, "
                                 f"which is {label + 1} in {class_file.path} (1-based)")
            path = os.path.join(root, relative)
            if os.path.isfile(path):
                records.append(VideoRecord(path=path, label=label, video_id=relative))
            else:
                missing.append(relative)
    return Annotations(records, list(class_file.names), missing, "ucf101")


# ----------------------------------------------------------------------------- HMDB51
def load_hmdb51(split_dir: str | os.PathLike, root: str | os.PathLike, split: int | None,
                subset: str, class_names: list[str] | None) -> Annotations:
    """The videos of split `split` marked for `subset` ("train": 1, "test": 2)."""
    split_dir = os.fspath(split_dir)
    if split is None:
        raise ValueError(f"{split_dir} is an HMDB51 split folder: set data.split to 1, 2 or 3")
    if not root:
        raise ValueError(f"{split_dir} is an HMDB51 split folder: set data.root to the folder of class folders")
    files = {}
    for entry in os.listdir(split_dir):
        match = HMDB_SPLIT_FILE.fullmatch(entry)
        if match and int(match.group(2)) == split:
            files[match.group(1)] = os.path.join(split_dir, entry)
    if not files:
        raise ValueError(f"{split_dir}: no <class>_test_split{split}.txt files for data.split={split}")
    names = class_names if class_names is not None else sorted(files)
    index = {name: i for i, name in enumerate(names)}
    wanted = {"train": "1", "test": "2"}[subset]
    records, missing = [], []
    for name in sorted(files, key=lambda c: index.get(c, -1)):
        if name not in index:
            raise ValueError(f"{files[name]}: class {name!r} is not in the given classes")
        with open(files[name], encoding="utf-8-sig") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                parts = line.strip().rsplit(maxsplit=1)
                if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                    raise ValueError(f"{files[name]}:{n}: expected 'video.avi 0|1|2' (HMDB51 split file), "
                                     f"got {line.strip()!r}")
                if parts[1] != wanted:
                    continue
                relative = f"{name}/{parts[0]}"
                path = os.path.join(root, name, parts[0])
                if os.path.isfile(path):
                    records.append(VideoRecord(path=path, label=index[name], video_id=relative))
                else:
                    missing.append(relative)
    return Annotations(records, list(names), missing, "hmdb51")


# ----------------------------------------------------------------------------- Something-Something v2
def load_sthv2(ann_file: str | os.PathLike, root: str | os.PathLike, class_file: ClassFile | None) -> Annotations:
    ann_file = os.fspath(ann_file)
    with open(ann_file, encoding="utf-8-sig") as f:
        try:
            entries = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{ann_file}:{e.lineno}: invalid JSON: {e.msg}") from None
    if not isinstance(entries, list):
        raise ValueError(f"{ann_file}: the only JSON annotation read is Something-Something v2's, a list "
                         "of {\"id\", \"template\", ...} entries")
    if class_file is None or class_file.kind != "labels_json":
        got = f" (got {class_file.path})" if class_file else ""
        raise ValueError(f"{ann_file} is a Something-Something v2 list: set data.classes_file to its "
                         f"labels.json{got}")
    index = {name: i for i, name in enumerate(class_file.names)}
    records, missing = [], []
    for n, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict) or "id" not in entry:
            raise ValueError(f"{ann_file}: entry {n} has no 'id' (Something-Something v2 list)")
        video_id = str(entry["id"])
        label = -1
        if "template" in entry:
            template = str(entry["template"]).replace("[", "").replace("]", "")
            if template not in index:
                raise ValueError(f"{ann_file}: entry {n} (id {video_id}): template {template!r} is not "
                                 f"in {class_file.path}")
            label = index[template]
        path = next((p for p in (os.path.join(root, video_id + ext) for ext in SSV2_VIDEO_EXTENSIONS)
                     if os.path.isfile(p)), None)
        if path is None:
            missing.append(video_id)
        else:
            records.append(VideoRecord(path=path, label=label, video_id=video_id))
    return Annotations(records, list(class_file.names), missing, "sthv2")


# ----------------------------------------------------------------------------- folder per class
def load_class_folders(ann_dir: str | os.PathLike, class_names: list[str] | None) -> Annotations:
    """Every video under `<ann_dir>/<class>/` (recursively); classes sorted unless given."""
    ann_dir = os.fspath(ann_dir)
    folders = sorted(e for e in os.listdir(ann_dir)
                     if not e.startswith(".") and os.path.isdir(os.path.join(ann_dir, e)))
    names = class_names if class_names is not None else folders
    index = {name: i for i, name in enumerate(names)}
    records = []
    for folder in sorted(folders, key=lambda c: index.get(c, -1)):
        if folder not in index:
            raise ValueError(f"{os.path.join(ann_dir, folder)}: class folder {folder!r} is not in the given classes")
        for current, dirs, files in os.walk(os.path.join(ann_dir, folder), followlinks=True):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if not name.startswith(".") and os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS:
                    path = os.path.join(current, name)
                    records.append(VideoRecord(path=path, label=index[folder],
                                               video_id=os.path.relpath(path, ann_dir)))
    return Annotations(records, list(names), [], "folders")


def relabel(annotations: Annotations, classes: Sequence[str], source: str) -> Annotations:
    """The same records with labels in the order of `classes` (e.g. a model's), by name."""
    classes = list(classes)
    if classes == annotations.classes:
        return annotations
    index = {name: i for i, name in enumerate(classes)}
    used = {r.label for r in annotations.records if r.label >= 0}
    for label in sorted(used):
        if annotations.classes[label] not in index:
            raise ValueError(f"{source}: class {annotations.classes[label]!r} is not among the "
                             f"{len(classes)} given classes")
    records = [VideoRecord(r.path, index[annotations.classes[r.label]] if r.label >= 0 else -1,
                           r.video_id, r.num_frames) for r in annotations.records]
    return Annotations(records, classes, annotations.missing, annotations.format)
