"""UCF101, HMDB51, Something-Something v2 and folder-per-class layouts, each a miniature in the
published format (generated videos): train.py one epoch, test.py, every test video's label by
name; class order from the class file; data.split; the ambiguity and malformed-line errors."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

import train as train_script
from snvideo.data import VideoDataset, load_annotations
from snvideo.data.synthetic import write_video
from snvideo.engine.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = {"arch": "resnet3d_10", "norm": "sn", "dropout": 0.0,
              "arch_kwargs": {"widen_factor": 0.125, "no_max_pool": True}}
CODECS = {".avi": "mpeg4", ".webm": "vp9", ".mp4": "h264"}
# classInd order on purpose not alphabetical
UCF_CLASSES = ["PlayingCello", "ApplyEyeMakeup", "Basketball"]
HMDB_CLASSES = ["brush_hair", "cartwheel", "sword_exercise"]
SSV2_LABELS = {"Pushing something from left to right": "2", "Holding something": "0",
               "Moving something up": "1"}
SSV2_TEMPLATES = {"Pushing something from left to right": "Pushing [something] from left to right",
                  "Holding something": "Holding [something]", "Moving something up": "Moving [something] up"}


def make_video(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 255, (1, 32, 32, 3), dtype=np.uint8).repeat(10, axis=0)
    frames[:, :, : 4 + seed % 24] //= 2  # videos differ, frames move a little
    write_video(path, frames, fps=10, codec=CODECS[path.suffix])


def load_test_cli():
    spec = importlib.util.spec_from_file_location("snvideo_test_cli_layouts", REPO / "test.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TEST_CLI = load_test_cli()


def write_config(tmp_path: Path, data: dict) -> str:
    cfg = {"work_dir": str(tmp_path / "work"), "model": dict(TINY_MODEL),
           "data": {"clip_len": 4, "frame_interval": 1, "batch_size": 2, "num_workers": 0,
                    "short_side": 32, "crop_size": 28, "backend": "pyav", **data},
           "train": {"epochs": 1, "lr": 0.05, "log_interval": 1, "clip_grad": None},
           "test": {"num_clips": 1, "num_crops": 1, "views_per_forward": 4, "num_workers": 0}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def train_and_test(tmp_path: Path, data: dict) -> tuple[dict, dict]:
    """train.py one epoch, then test.py on the val annotation: (checkpoint, results.json)."""
    cfg = write_config(tmp_path, data)
    assert train_script.main(["--config", cfg, "--device", "cpu"]) == 0
    ckpt_path = tmp_path / "work" / "latest.pt"
    out = tmp_path / "results.json"
    assert TEST_CLI.main(["--checkpoint", str(ckpt_path), "--out", str(out), "--device", "cpu"]) == 0
    return load_checkpoint(str(ckpt_path)), json.loads(out.read_text())


def labels_by_video(results: dict) -> dict[str, str]:
    assert results["num_failed"] == 0
    return {v["video"]: v["label"] for v in results["videos"]}


# --------------------------------------------------------------------------------------------
# UCF101: classInd.txt (1-based), trainlist01 "Class/v_Class_gNN_cNN.avi N", testlist01 without
# labels, CRLF line ends, AVI (MPEG-4 Part 2)
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ucf101(tmp_path_factory):
    base = tmp_path_factory.mktemp("ucf101")
    videos, lists = base / "UCF-101", base / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_bytes(
        "".join(f"{i} {name}\r\n" for i, name in enumerate(UCF_CLASSES, start=1)).encode())
    train_lines, test_lines, expected = [], [], {}
    for index, name in enumerate(UCF_CLASSES, start=1):
        for group in (1, 8, 9):  # split 1 tests groups 1-7 and trains on 8-25
            rel = f"{name}/v_{name}_g{group:02d}_c01.avi"
            make_video(videos / rel, seed=10 * index + group)
            if group == 1:
                test_lines.append(f"{rel}\r\n")
                expected[rel] = name
            else:
                train_lines.append(f"{rel} {index}\r\n")
    (lists / "trainlist01.txt").write_bytes("".join(train_lines).encode())
    (lists / "testlist01.txt").write_bytes("".join(test_lines).encode())
    return {"root": videos, "lists": lists, "expected": expected}


def ucf_data(ucf101, **extra) -> dict:
    lists = ucf101["lists"]
    return {"root": str(ucf101["root"]), "train_ann": str(lists / "trainlist01.txt"),
            "val_ann": str(lists / "testlist01.txt"), "classes_file": str(lists / "classInd.txt"),
            **extra}


def test_ucf101_labels_by_name_in_classind_order(ucf101, tmp_path):
    ckpt, results = train_and_test(tmp_path, ucf_data(ucf101))
    assert ckpt["classes"] == UCF_CLASSES  # classInd order, not re-sorted
    assert (tmp_path / "work" / "label_map.txt").read_text().split() == UCF_CLASSES
    assert labels_by_video(results) == ucf101["expected"]
    assert [c["class"] for c in results["per_class"]] == UCF_CLASSES
    assert [c["num"] for c in results["per_class"]] == [1, 1, 1]
    train = load_annotations(ucf101["lists"] / "trainlist01.txt", ucf101["root"],
                             classes_file=ucf101["lists"] / "classInd.txt")
    assert train.format == "ucf101" and not train.missing
    for record in train.records:  # "PlayingCello/... 1" is class 0 named PlayingCello
        assert UCF_CLASSES[record.label] == record.video_id.split("/")[0]


def test_ucf101_list_without_classind_is_an_error_not_a_guess(ucf101, tmp_path, capsys):
    lists = ucf101["lists"]
    for ann in ("trainlist01.txt", "testlist01.txt"):
        with pytest.raises(ValueError, match="data.classes_file") as err:
            VideoDataset(lists / ann, ucf101["root"])
        assert "UCF101" in str(err.value) and "\n" not in str(err.value)
    cfg = write_config(tmp_path, ucf_data(ucf101, classes_file=None))
    assert train_script.main(["--config", cfg, "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "data.classes_file" in err and "trainlist01.txt" in err
    # the same file with a label map is read, explicitly, as 0-based: label 1 -> second name
    label_map = tmp_path / "names.txt"
    label_map.write_text("a\nb\nc\nd\n")
    plain = load_annotations(lists / "trainlist01.txt", ucf101["root"], classes_file=label_map)
    assert plain.format == "list" and plain.records[0].label == 1


def test_ucf101_malformed_lines_name_file_and_line(ucf101, tmp_path):
    lists, root = ucf101["lists"], ucf101["root"]
    cases = {"PlayingCello/v_PlayingCello_g08_c01.avi 1\r\nApplyEyeMakeup/v_x.avi one\r\n": ":2:",
             "PlayingCello/v_PlayingCello_g08_c01.avi 2\r\n": ":1: index 2 does not match",
             "\r\nDancing/v_Dancing_g01_c01.avi\r\n": ":2: class folder 'Dancing'"}
    for text, message in cases.items():
        bad = tmp_path / "bad_list.txt"
        bad.write_bytes(text.encode())
        with pytest.raises(ValueError, match=message) as err:
            load_annotations(bad, root, classes_file=lists / "classInd.txt")
        assert str(bad) in str(err.value)
    zero_based = tmp_path / "zero_based.txt"
    zero_based.write_text("0 PlayingCello\n1 ApplyEyeMakeup\n")
    with pytest.raises(ValueError, match=r"zero_based.txt:1: .*numbered 1"):
        load_annotations(lists / "testlist01.txt", root, classes_file=zero_based)


# --------------------------------------------------------------------------------------------
# HMDB51: folder of <class>_test_split<k>.txt, lines "video.avi F " (1 train, 2 test, 0 unused)
# --------------------------------------------------------------------------------------------
HMDB_ROLES = {  # video stem -> its flag in splits 1, 2, 3
    "v0": "112", "v1": "121", "v2": "211", "v3": "000",
}


@pytest.fixture(scope="module")
def hmdb51(tmp_path_factory):
    base = tmp_path_factory.mktemp("hmdb51")
    videos, splits = base / "videos", base / "testTrainMulti_7030_splits"
    splits.mkdir()
    for c, name in enumerate(HMDB_CLASSES):
        for k in (1, 2, 3):
            lines = []
            for v, (stem, flags) in enumerate(HMDB_ROLES.items()):
                video = f"{name}_{stem}_f_cm_np1_fr_med_{v}.avi"
                if k == 1:
                    make_video(videos / name / video, seed=20 * c + v)
                lines.append(f"{video} {flags[k - 1]} \n")
            (splits / f"{name}_test_split{k}.txt").write_text("".join(lines))
    return {"root": videos, "splits": splits}


def hmdb_expected(split: int, flag: str) -> dict[str, str]:
    return {f"{name}/{name}_{stem}_f_cm_np1_fr_med_{v}.avi": name
            for name in HMDB_CLASSES for v, (stem, flags) in enumerate(HMDB_ROLES.items())
            if flags[split - 1] == flag}


def test_hmdb51_split_honoured_and_labels_by_name(hmdb51, tmp_path):
    data = {"root": str(hmdb51["root"]), "train_ann": str(hmdb51["splits"]),
            "val_ann": str(hmdb51["splits"]), "split": 2}
    ckpt, results = train_and_test(tmp_path, data)
    assert ckpt["classes"] == HMDB_CLASSES
    assert labels_by_video(results) == hmdb_expected(2, "2")
    for split in (1, 2, 3):
        for test_mode, flag in ((False, "1"), (True, "2")):
            ds = VideoDataset(hmdb51["splits"], hmdb51["root"], test_mode=test_mode, split=split)
            assert ds.format == "hmdb51"
            got = {ds.video_id(i): ds.classes[ds.labels[i]] for i in range(len(ds))}
            assert got == hmdb_expected(split, flag)


def test_hmdb51_errors(hmdb51, tmp_path, capsys):
    with pytest.raises(ValueError, match="data.split"):
        load_annotations(hmdb51["splits"], hmdb51["root"])
    cfg = write_config(tmp_path, {"root": str(hmdb51["root"]), "train_ann": str(hmdb51["splits"]),
                                  "val_ann": str(hmdb51["splits"]), "split": 4})
    assert train_script.main(["--config", cfg]) == 2
    assert "data.split" in capsys.readouterr().err
    bad = tmp_path / "splits"
    bad.mkdir()
    (bad / "chew_test_split1.txt").write_text("a.avi 1 \nb.avi 3 \n")
    with pytest.raises(ValueError, match=r"chew_test_split1.txt:2: "):
        load_annotations(bad, hmdb51["root"], split=1)


# --------------------------------------------------------------------------------------------
# Something-Something v2: train.json / validation.json entries, labels.json, <root>/<id>.webm
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sthv2(tmp_path_factory):
    base = tmp_path_factory.mktemp("sthv2")
    videos, labels = base / "20bn-something-something-v2", base / "labels"
    labels.mkdir()
    (labels / "labels.json").write_text(json.dumps(SSV2_LABELS, indent=1))
    entries = {"train": [], "validation": []}
    expected, video_id = {}, 1000
    for name, template in SSV2_TEMPLATES.items():
        for part in ("train", "train", "validation"):
            video_id += 7
            make_video(videos / f"{video_id}.webm", seed=video_id)
            obj = f"object {video_id}"
            entries[part].append({"id": str(video_id), "label": template.replace("[something]", obj),
                                  "template": template, "placeholders": [obj]})
            if part == "validation":
                expected[f"{video_id}.webm"] = name
    for part, items in entries.items():
        (labels / f"{part}.json").write_text(json.dumps(items, indent=1))
    (labels / "test.json").write_text(json.dumps([{"id": e["id"]} for e in entries["validation"]]))
    return {"root": videos, "labels": labels, "expected": expected}


def test_sthv2_labels_by_name_in_labels_json_order(sthv2, tmp_path):
    labels = sthv2["labels"]
    data = {"root": str(sthv2["root"]), "train_ann": str(labels / "train.json"),
            "val_ann": str(labels / "validation.json"), "classes_file": str(labels / "labels.json")}
    ckpt, results = train_and_test(tmp_path, data)
    by_index = sorted(SSV2_LABELS, key=lambda k: int(SSV2_LABELS[k]))
    assert ckpt["classes"] == by_index == ["Holding something", "Moving something up",
                                           "Pushing something from left to right"]
    assert labels_by_video(results) == sthv2["expected"]
    unlabelled = load_annotations(labels / "test.json", sthv2["root"], classes_file=labels / "labels.json")
    assert {r.label for r in unlabelled.records} == {-1} and len(unlabelled.records) == 3


def test_sthv2_errors(sthv2, tmp_path):
    labels = sthv2["labels"]
    with pytest.raises(ValueError, match="data.classes_file.*labels.json"):
        load_annotations(labels / "train.json", sthv2["root"])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"id": "1", "template": "Holding [something]"},
                               {"id": "2", "template": "Spinning [something]"}]))
    with pytest.raises(ValueError, match=r"bad.json: entry 2 \(id 2\): template 'Spinning something'"):
        load_annotations(bad, sthv2["root"], classes_file=labels / "labels.json")
    kinetics_json = tmp_path / "kinetics_train.json"  # a dict keyed by video id: not read
    kinetics_json.write_text(json.dumps({"abc": {"annotations": {"label": "x"}}}))
    with pytest.raises(ValueError, match="Something-Something v2's, a list"):
        load_annotations(kinetics_json, sthv2["root"])


# --------------------------------------------------------------------------------------------
# Folder per class: train/<class>/*.mp4, val/<class>/*.mp4, no data.root needed
# --------------------------------------------------------------------------------------------
def test_class_folders_labels_by_name(tmp_path):
    base = tmp_path / "mydata"
    names = ["wave", "clap", "jump"]  # read back sorted: clap, jump, wave
    expected = {}
    for c, name in enumerate(names):
        for i in range(3):
            part = "val" if i == 0 else "train"
            make_video(base / part / name / f"clip{c}{i}.mp4", seed=30 * c + i)
            if part == "val":
                expected[f"{name}/clip{c}{i}.mp4"] = name
    ckpt, results = train_and_test(tmp_path, {"train_ann": str(base / "train"),
                                              "val_ann": str(base / "val")})
    assert ckpt["classes"] == sorted(names)
    assert labels_by_video(results) == expected
    class_file = tmp_path / "order.txt"
    class_file.write_text("wave\nclap\njump\n")
    ordered = load_annotations(base / "val", "", classes_file=class_file)
    assert ordered.classes == names and [r.label for r in ordered.records] == [0, 1, 2]


def test_plain_lists_still_read_as_before(tmp_path):
    root = tmp_path / "videos"
    make_video(root / "a" / "x.mp4", 1)
    make_video(root / "b" / "y.mp4", 2)
    ann = tmp_path / "list.txt"
    ann.write_text("a/x.mp4 0\nb/y.mp4 1\n")  # folders one to one with labels, but 0-based
    assert [r.label for r in load_annotations(ann, root).records] == [0, 1]


def test_check_videos_reads_a_ucf101_list_with_its_class_file(ucf101, capsys):
    spec = importlib.util.spec_from_file_location("snvideo_check_videos", REPO / "data_tools" / "check_videos.py")
    tool = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = tool  # its dataclasses look their module up
    spec.loader.exec_module(tool)
    lists = ucf101["lists"]
    capsys.readouterr()
    assert tool.main([str(lists / "testlist01.txt"), "--root", str(ucf101["root"]), "--workers", "0",
                      "--classes-file", str(lists / "classInd.txt")]) == 0
    assert "checked 3: good 3, bad 0" in capsys.readouterr().out
    assert tool.main([str(lists / "trainlist01.txt"), "--root", str(ucf101["root"]), "--workers", "0"]) == 2
    assert "data.classes_file" in capsys.readouterr().err
