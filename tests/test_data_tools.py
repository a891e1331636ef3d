"""The data tools on tiny generated videos and the real-world fixtures: extract_frames,
resize_videos, build_file_list, check_videos (layouts, list files, resume, failures, rotation,
--deep, argument errors)."""
from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from snvideo.data.synthetic import render_video, write_video

REPO = Path(__file__).resolve().parents[1]
REAL = REPO / "tests" / "data" / "real_world"  # made by make_fixtures.sh there
sys.path.insert(0, str(REPO / "data_tools"))
TOOLS = ["extract_frames", "resize_videos", "build_file_list", "check_videos",
         "make_demo_dataset"]


def tool(name: str):
    return importlib.import_module(name)


def make_video(path: Path, frames: int = 12, height: int = 32, width: int = 48, fps: float = 10,
               codec: str = "h264", seed: int = 0) -> Path:
    return write_video(path, render_video(seed % 10, seed, height, width, frames), fps=fps,
                       codec=codec)


def rot90_frame5() -> np.ndarray:
    """Frame 5 of rot90.mp4 as the ffmpeg CLI shows it: upright, 96 wide and 128 high."""
    return np.fromfile(REAL / "rot90.raw", np.uint8).reshape(128, 96, 3).astype(float)


def mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, dtype=float) - b).mean())


def probe(path: Path) -> dict:
    """Frame count, size, fps, codec, keyframe indices and stream kinds of a video."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        keys = [i for i, p in enumerate(q for q in c.demux(s) if q.size) if p.is_keyframe]
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        n = sum(1 for _ in c.decode(s))
        return {"frames": n, "size": (s.width, s.height), "fps": s.average_rate,
                "codec": s.codec_context.name, "keys": keys,
                "kinds": sorted(st.type for st in c.streams)}


@pytest.fixture(scope="module")
def src_tree(tmp_path_factory) -> Path:
    """SRC/class_a/v1.mp4 (12 frames, 48x32), SRC/class_b/v2.avi (mpeg4, 12 frames, 40x40),
    SRC/flat.webm (vp9, 10 frames) and a text file posing as SRC/class_a/broken.mp4."""
    src = tmp_path_factory.mktemp("src")
    make_video(src / "class_a" / "v1.mp4", seed=1)
    make_video(src / "class_b" / "v2.avi", height=40, width=40, codec="mpeg4", seed=2)
    make_video(src / "flat.webm", frames=10, height=32, width=32, codec="vp9", seed=3)
    (src / "class_a" / "broken.mp4").write_text("this is not a video\n")
    (src / "class_a" / "notes.txt").write_text("ignored: not a video extension\n")
    return src


# --------------------------------------------------------------------------------------------
# extract_frames
# --------------------------------------------------------------------------------------------

def test_extract_frames_layout_list_and_resume(tmp_path, src_tree, capsys):
    out = tmp_path / "frames"
    assert tool("extract_frames").main([str(src_tree), str(out), "--short-side", "24",
                                        "--quality", "90", "--workers", "2"]) == 0
    summary = capsys.readouterr()
    assert "done 3, skipped 0, failed 1" in summary.out
    assert "broken.mp4" in summary.err

    v1 = out / "class_a" / "v1"
    assert sorted(p.name for p in v1.iterdir()) == [f"img_{i:05d}.jpg" for i in range(1, 13)]
    assert Image.open(v1 / "img_00001.jpg").size == (36, 24)        # 48x32 -> short side 24
    assert Image.open(out / "class_b" / "v2" / "img_00012.jpg").size == (24, 24)
    assert len(list((out / "flat").glob("img_*.jpg"))) == 10
    assert not (out / "class_a" / "broken").exists()
    lines = (out / "rawframes_list.txt").read_text().splitlines()
    assert lines == ["class_a/v1 12 0", "class_b/v2 12 1", "flat 10 -1"]

    # Re-run after an interrupted one: a half-written frame dir and a finished dir lost.
    stamp = (v1 / "img_00001.jpg").stat().st_mtime_ns
    shutil.rmtree(out / "class_b" / "v2")
    partial = out / "class_b" / ".v2.partial"
    partial.mkdir()
    (partial / "img_00001.jpg").write_bytes(b"half")
    assert tool("extract_frames").main([str(src_tree), str(out), "--short-side", "24",
                                        "--workers", "0", "--list", str(tmp_path / "l.txt")]) == 0
    assert "done 1, skipped 2, failed 1" in capsys.readouterr().out
    assert (v1 / "img_00001.jpg").stat().st_mtime_ns == stamp      # finished video untouched
    assert len(list((out / "class_b" / "v2").glob("img_*.jpg"))) == 12
    assert not partial.exists()
    assert (tmp_path / "l.txt").read_text().splitlines() == lines


def test_extract_frames_short_side_zero_keeps_size(tmp_path):
    src = tmp_path / "src"
    make_video(src / "a.mp4", frames=3, height=20, width=30)
    assert tool("extract_frames").main([str(src), str(tmp_path / "o"), "--short-side", "0",
                                        "--workers", "1"]) == 0
    assert Image.open(tmp_path / "o" / "a" / "img_00003.jpg").size == (30, 20)
    assert (tmp_path / "o" / "rawframes_list.txt").read_text() == "a 3 -1\n"


def test_extracted_frames_match_video_reader_and_load_as_rawframes(tmp_path):
    from snvideo.data import RawFrameDataset, VideoReader

    src, out = tmp_path / "src", tmp_path / "frames"
    make_video(src / "b" / "x.mp4", frames=10, height=32, width=32, seed=0)
    make_video(src / "a" / "y.mp4", frames=10, height=32, width=32, seed=6)
    assert tool("extract_frames").main([str(src), str(out), "--short-side", "0",
                                        "--quality", "100", "--workers", "0"]) == 0
    decoded = VideoReader(src / "b" / "x.mp4").get_frames(list(range(10))).numpy().astype(float)
    for k in range(10):  # img_{k+1} is frame k: closer to it than to any other frame
        jpg = np.asarray(Image.open(out / "b" / "x" / f"img_{k + 1:05d}.jpg"), dtype=float)
        errors = np.abs(decoded - jpg).mean(axis=(1, 2, 3))
        assert errors.argmin() == k and errors[k] < 10  # JPEG + chroma subsampling
    ds = RawFrameDataset(out / "rawframes_list.txt", out, clip_len=4, frame_interval=2,
                         test_mode=True, short_side=32, crop_size=32)
    assert len(ds) == 2 and sorted(int(label) for label in ds.labels) == [0, 1]
    clip, label = ds[0]
    assert clip.shape[-3:] == (4, 32, 32)


def test_extract_frames_writes_rotated_video_upright(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(REAL / "rot90.mp4", src)
    raw = rot90_frame5()
    for rotation, short_side in (("auto", "0"), ("ignore", "0"), ("auto", "48")):
        out = tmp_path / f"{rotation}{short_side}"
        assert tool("extract_frames").main([str(src), str(out), "--short-side", short_side,
                                            "--quality", "100", "--rotation", rotation,
                                            "--workers", "0"]) == 0
        assert (out / "rawframes_list.txt").read_text() == "rot90 96 -1\n"
        jpg = np.asarray(Image.open(out / "rot90" / "img_00006.jpg"))   # frame 5
        if short_side == "48":  # the short side of the upright frame
            assert jpg.shape == (64, 48, 3)
        elif rotation == "auto":
            assert jpg.shape == (128, 96, 3)
            assert mean_abs(jpg, raw) < 4                       # JPEG + chroma subsampling
            assert mean_abs(jpg, np.rot90(raw, 2)) > 30         # turned the wrong way
        else:  # as stored: landscape, the displayed frame turned back
            assert jpg.shape == (96, 128, 3)
            assert mean_abs(jpg, np.rot90(raw, -1)) < 4


# --------------------------------------------------------------------------------------------
# resize_videos
# --------------------------------------------------------------------------------------------

def make_video_with_audio(path: Path, frames: int = 20, fps: int = 10) -> None:
    video = render_video(4, 9, 36, 52, frames)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = 52, 36, "yuv420p"
        aus = c.add_stream("aac", rate=16000)
        aus.layout = "mono"
        for i, f in enumerate(video):
            for p in vs.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for i in range(frames * 16000 // fps // 1024):
            af = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                            layout="mono")
            af.sample_rate, af.pts = 16000, i * 1024
            for p in aus.encode(af):
                c.mux(p)
        for s in (vs, aus):
            for p in s.encode():
                c.mux(p)


def test_resize_videos_dims_gop_frames_and_resume(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    make_video_with_audio(src / "sub" / "dir" / "talk.mp4")
    make_video(src / "b.avi", frames=15, height=40, width=30, fps=Fraction(30000, 1001),
               codec="mpeg4")
    assert probe(src / "sub" / "dir" / "talk.mp4")["kinds"] == ["audio", "video"]

    assert tool("resize_videos").main([str(src), str(out), "--short-side", "20", "--gop", "4",
                                       "--crf", "20", "--workers", "2"]) == 0
    assert "done 2, skipped 0, failed 0" in capsys.readouterr().out
    a = probe(out / "sub" / "dir" / "talk.mp4")
    assert a["size"] == (28, 20)               # 52x36 -> 28.9x20 -> even 28x20
    assert a["frames"] == 20 and a["fps"] == 10 and a["codec"] == "h264"
    assert a["keys"] == [0, 4, 8, 12, 16]
    assert a["kinds"] == ["video"]             # audio dropped
    b = probe(out / "b.mp4")
    assert b["size"] == (20, 26)               # 30x40 -> 20x26.7 -> 20x26
    assert b["frames"] == 15 and b["fps"] == Fraction(30000, 1001)
    assert b["keys"] == [0, 4, 8, 12]

    stamp = (out / "b.mp4").stat().st_mtime_ns
    assert tool("resize_videos").main([str(src), str(out), "--short-side", "20",
                                       "--workers", "0"]) == 0
    assert "done 0, skipped 2, failed 0" in capsys.readouterr().out
    assert (out / "b.mp4").stat().st_mtime_ns == stamp
    assert not [p for p in out.rglob(".*")]    # no temporary files left

    # entropy coding: CAVLC by default (faster to decode), CABAC on request; x264 writes its
    # settings into the first packet
    assert b"cabac=0" in x264_settings(out / "b.mp4")
    assert tool("resize_videos").main([str(src), str(tmp_path / "cabac"), "--short-side", "20",
                                       "--cabac", "--workers", "0"]) == 0
    assert b"cabac=1" in x264_settings(tmp_path / "cabac" / "b.mp4")


def test_resize_videos_encodes_rotated_video_upright(tmp_path):
    from snvideo.data import VideoReader

    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(REAL / "rot90.mp4", src)
    raw = rot90_frame5()
    for rotation, size in (("auto", (96, 128)), ("ignore", (128, 96))):
        out = tmp_path / rotation
        assert tool("resize_videos").main([str(src), str(out), "--short-side", "96",
                                           "--preset", "veryfast", "--rotation", rotation,
                                           "--workers", "0"]) == 0
        with av.open(str(out / "rot90.mp4")) as c:
            frames = list(c.decode(video=0))
        assert len(frames) == 96 and {f.rotation for f in frames} == {0}   # no display matrix
        assert (frames[0].width, frames[0].height) == size
        frame5 = frames[5].to_ndarray(format="rgb24")
        if rotation == "auto":
            assert mean_abs(frame5, raw) < 5 and mean_abs(frame5, np.rot90(raw, 2)) > 30
        else:
            assert mean_abs(frame5, np.rot90(raw, -1)) < 5
        with VideoReader(out / "rot90.mp4") as reader:
            assert reader.orientation.quarter_turns == 0 and reader.frame_size == size[::-1]


def x264_settings(path: Path) -> bytes:
    with av.open(str(path)) as c:
        return bytes(next(c.demux(video=0)))


# --------------------------------------------------------------------------------------------
# build_file_list
# --------------------------------------------------------------------------------------------

KINETICS_CSV = """label,youtube_id,time_start,time_end,split
playing drums,abc-DEF_123,14,24,train
abseiling,--xyz987654,0,10,train
playing drums,MISSING0001,3,13,train
zumba,flat_video1,120,130,train
"""


def test_build_file_list_labels_and_missing(tmp_path, capsys):
    root = tmp_path / "videos"
    for rel in ("playing_drums/abc-DEF_123_000014_000024.mp4",
                "abseiling/--xyz987654_000000_000010.mkv",
                "flat_video1_000120_000130.webm",
                "zumba/unrelated_000001_000011.mp4"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")  # build_file_list only looks at names
    (tmp_path / "train.csv").write_text(KINETICS_CSV)
    out = tmp_path / "train_list.txt"
    assert tool("build_file_list").main(["--csv", str(tmp_path / "train.csv"), "--root",
                                         str(root), "--out", str(out)]) == 0
    assert "found 3, missing 1" in capsys.readouterr().out
    # classes sorted: abseiling 0, playing drums 1, zumba 2
    assert out.read_text().splitlines() == [
        "playing_drums/abc-DEF_123_000014_000024.mp4 1",
        "abseiling/--xyz987654_000000_000010.mkv 0",
        "flat_video1_000120_000130.webm 2",
    ]
    assert Path(f"{out}.missing.txt").read_text() == "MISSING0001_000003_000013\n"

    # the test split has no label column: label -1; --missing names the report
    (tmp_path / "test.csv").write_text("youtube_id,time_start,time_end,split\n"
                                       "abc-DEF_123,14,24,test\nGONE0000001,0,10,test\n")
    custom = tmp_path / "gone.txt"
    assert tool("build_file_list").main(["--csv", str(tmp_path / "test.csv"), "--root",
                                         str(root), "--out", str(out), "--missing",
                                         str(custom)]) == 0
    assert out.read_text() == "playing_drums/abc-DEF_123_000014_000024.mp4 -1\n"
    assert custom.read_text() == "GONE0000001_000000_000010\n"


# --------------------------------------------------------------------------------------------
# check_videos
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def check_tree(tmp_path_factory) -> Path:
    """Two good videos; a zero-byte, two truncated and a text-renamed one."""
    root = tmp_path_factory.mktemp("check")
    good = make_video(root / "good" / "a.mp4", frames=16, seed=4)
    make_video(root / "good" / "b.avi", frames=16, codec="mpeg4", seed=5)
    (root / "bad").mkdir()
    (root / "bad" / "empty.mp4").write_bytes(b"")
    data = good.read_bytes()
    (root / "bad" / "truncated.mp4").write_bytes(data[: len(data) // 2])  # index (moov) lost
    (root / "bad" / "text.mp4").write_text("Lorem ipsum dolor sit amet\n" * 20)
    # index at the front ("faststart"), so the file opens and only the later frames are gone
    faststart = root / "faststart.mp4"
    with av.open(str(good)) as src, av.open(str(faststart), "w",
                                            options={"movflags": "faststart"}) as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                dst.mux(packet)
    data = faststart.read_bytes()
    (root / "bad" / "tail_cut.mp4").write_bytes(data[: len(data) * 2 // 3])
    faststart.unlink()
    return root


BAD = {"bad/empty.mp4", "bad/text.mp4", "bad/truncated.mp4", "bad/tail_cut.mp4"}


def read_bad(path: Path, root: Path | None = None) -> dict[str, str]:
    rows = [line.split("\t") for line in path.read_text().splitlines()]
    assert all(len(r) == 2 and r[1] for r in rows)  # path<TAB>non-empty reason
    return {str(Path(p).relative_to(root)) if root else p: reason for p, reason in rows}


def test_check_videos_directory(tmp_path, check_tree, capsys):
    out = tmp_path / "bad.txt"
    assert tool("check_videos").main([str(check_tree), "--out", str(out), "--workers", "2"]) == 0
    bad = read_bad(out, check_tree)
    assert set(bad) == BAD
    assert "0 bytes" in bad["bad/empty.mp4"] or "zero" in bad["bad/empty.mp4"].lower()
    assert "truncated" in bad["bad/tail_cut.mp4"]  # opens, but the last frame is not there
    assert "checked 6" in capsys.readouterr().out and not Path(f"{out}.partial").exists()

    assert tool("check_videos").main([str(check_tree), "--fail-on-bad", "--workers", "0"]) == 1
    assert tool("check_videos").main([str(check_tree / "good"), "--full", "--fail-on-bad",
                                      "--workers", "0"]) == 0


def test_check_videos_list_csv_and_resume(tmp_path, check_tree, capsys):
    listing = tmp_path / "list.txt"
    listing.write_text("good/a.mp4 0\ngood/b.avi 1\nbad/text.mp4 1\nnot/there.mp4 2\n")
    out = tmp_path / "bad.txt"
    assert tool("check_videos").main([str(listing), "--root", str(check_tree), "--out",
                                      str(out), "--workers", "0"]) == 0
    bad = read_bad(out)
    assert set(bad) == {"bad/text.mp4", "not/there.mp4"} and bad["not/there.mp4"] == "missing"

    # Kinetics CSV: names resolved under --root; rows without a file are counted only.
    vids = tmp_path / "k"
    (vids / "x").mkdir(parents=True)
    shutil.copy(check_tree / "good" / "a.mp4", vids / "x" / "ok_id_0001_000001_000011.mp4")
    shutil.copy(check_tree / "bad" / "truncated.mp4", vids / "x" / "badid000001_000002_000012.mp4")
    (tmp_path / "k.csv").write_text("label,youtube_id,time_start,time_end,split\n"
                                    "x,ok_id_0001,1,11,val\nx,badid000001,2,12,val\n"
                                    "x,nofile00001,3,13,val\n")
    capsys.readouterr()
    assert tool("check_videos").main([str(tmp_path / "k.csv"), "--root", str(vids), "--out",
                                      str(out), "--workers", "0"]) == 0
    assert set(read_bad(out)) == {"x/badid000001_000002_000012.mp4"}
    assert "1 CSV rows without a video" in capsys.readouterr().out

    # Resume: results recorded by an interrupted run are reused, not re-checked.
    Path(f"{out}.partial").write_text("bad\tgood/a.mp4\trecorded earlier\n")
    assert tool("check_videos").main([str(listing), "--root", str(check_tree), "--out",
                                      str(out), "--workers", "0"]) == 0
    assert read_bad(out)["good/a.mp4"] == "recorded earlier"
    assert "(1 from an interrupted run)" in capsys.readouterr().out
    assert not Path(f"{out}.partial").exists()


def deep_rows(stdout: str) -> dict[str, list[str]]:
    """check_videos --deep lines by file name: [addressing, verdict, detail]."""
    rows = [line.split("\t") for line in stdout.splitlines() if "\t" in line]
    assert all(len(r) == 4 and r[3] for r in rows)
    return {Path(r[0]).name: r[1:] for r in rows}


# how VideoReader(backend="auto") reaches the frames of these fixtures
DEEP_FIXTURES = {"xvid_packed.avi": "count", "h264_bframes.ts": "pts", "cut_nokey.mkv": "pts",
                 "flv1.flv": "pts", "rot90.mp4": "pts", "h264_bframes.avi": "sequential"}


def test_check_videos_deep_real_world_files(tmp_path, capsys):
    root = tmp_path / "videos"
    root.mkdir()
    for name in DEEP_FIXTURES:
        shutil.copy(REAL / name, root)
    out = tmp_path / "bad.txt"
    assert tool("check_videos").main([str(root), "--deep", "--fail-on-bad", "--out", str(out),
                                      "--workers", "2"]) == 0
    stdout = capsys.readouterr().out
    rows = deep_rows(stdout)
    assert {name: row[:2] for name, row in rows.items()} == {
        name: [addressing, "ok"] for name, addressing in DEEP_FIXTURES.items()}
    assert "keyframe seek" in rows["xvid_packed.avi"][2]              # the reader's choice_reason
    assert out.read_text() == ""
    assert ("good 6, bad 0; deep: ok 6, falls back 0, MISMATCH 0, BAD 0; "
            "addressing: count 1, pts 4, sequential 1") in stdout


def test_check_videos_deep_reports_mismatch_and_fallback(tmp_path, capsys, monkeypatch):
    """Forged faults: a reader that hands out frame i + 1 for frame i (off by one, as decord on
    some files) or frames of another size than its frame_size is a MISMATCH and bad; a file
    where every seek is contradicted falls back to sequential decoding, reads right and stays
    good."""
    import snvideo.data
    from snvideo.data import pyav_backend

    class Forged(snvideo.data.VideoReader):
        @property
        def frame_size(self):
            size = super().frame_size
            return size[::-1] if Path(self.path).name == "turned.mp4" else size

        def get_frames(self, indices, *args, **kwargs):
            if Path(self.path).name == "shifted.ts":
                indices = np.minimum(np.asarray(indices) + 1, len(self) - 1)
            return super().get_frames(indices, *args, **kwargs)

    read_by_seeking = pyav_backend.PyAVBackend._read_by_seeking

    def contradicted(self, wanted, clip):
        if Path(self.path).name == "fallback.mp4":
            raise pyav_backend._AddressingMismatch("forged contradiction")
        return read_by_seeking(self, wanted, clip)

    monkeypatch.setattr(snvideo.data, "VideoReader", Forged)
    monkeypatch.setattr(pyav_backend.PyAVBackend, "_read_by_seeking", contradicted)
    root = tmp_path / "videos"
    root.mkdir()
    shutil.copy(REAL / "h264_bframes.ts", root / "shifted.ts")
    shutil.copy(REAL / "rot90.mp4", root / "fallback.mp4")
    shutil.copy(REAL / "xvid_packed.avi", root / "fine.avi")
    shutil.copy(REAL / "cut_source.mp4", root / "turned.mp4")
    (root / "broken.mp4").write_text("not a video\n")
    out = tmp_path / "bad.txt"
    args = [str(root), "--deep", "--out", str(out), "--workers", "0"]
    assert tool("check_videos").main(args + ["--fail-on-bad"]) == 1
    stdout = capsys.readouterr().out
    rows = deep_rows(stdout)
    assert rows["shifted.ts"][:2] == ["pts", "MISMATCH"]
    assert rows["shifted.ts"][2].startswith("frame 0 read alone ")
    assert rows["fallback.mp4"] == ["pts", "falls back", "to sequential decoding: seeking gave "
                                    "up: forged contradiction"]
    assert rows["fine.avi"][:2] == ["count", "ok"]
    assert rows["turned.mp4"] == ["pts", "MISMATCH", "frames read alone are 128x96, the reader's "
                                  "frame_size on open says 96x128 (training crops would fail)"]
    assert rows["broken.mp4"][:2] == ["-", "BAD"]
    bad = read_bad(out, root)
    assert set(bad) == {"shifted.ts", "turned.mp4", "broken.mp4"}
    assert bad["shifted.ts"].startswith("MISMATCH: frame 0 read alone ")
    assert "deep: ok 1, falls back 1, MISMATCH 2, BAD 1" in stdout

    # Resume: a --deep run reuses what a --deep run recorded, and re-checks the rest.
    Path(f"{out}.partial").write_text(f"ok\t{root / 'shifted.ts'}\t\tpts\tok\trecorded earlier\n"
                                      f"bad\t{root / 'fine.avi'}\trecorded without --deep\n")
    assert tool("check_videos").main(args) == 0
    stdout = capsys.readouterr().out
    rows = deep_rows(stdout)
    assert rows["shifted.ts"] == ["pts", "ok", "recorded earlier"]   # not checked again
    assert rows["fine.avi"][:2] == ["count", "ok"] and len(rows) == 5
    assert "(1 from an interrupted run)" in stdout and "deep: ok 2, falls back 1" in stdout
    assert set(read_bad(out, root)) == {"turned.mp4", "broken.mp4"}
    assert not Path(f"{out}.partial").exists()


# --------------------------------------------------------------------------------------------
# CLI behaviour common to the tools
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,argv,message", [
    ("extract_frames", ["/no/such/dir", "OUT"], "SRC '/no/such/dir' does not exist"),
    ("extract_frames", ["{src}", "OUT", "--quality", "0"], "--quality must be in 1..100"),
    ("resize_videos", ["/no/such/dir", "OUT"], "SRC '/no/such/dir' does not exist"),
    ("resize_videos", ["{src}", "OUT", "--gop", "0"], "--gop must be >= 1"),
    ("build_file_list", ["--csv", "/no/such.csv", "--root", "{src}", "--out", "x"],
     "--csv '/no/such.csv' does not exist"),
    ("build_file_list", ["--csv", "{src}/class_a/notes.txt", "--root", "{src}", "--out", "x"],
     "is not a Kinetics CSV"),
    ("check_videos", ["/no/such/dir"], "'/no/such/dir' does not exist"),
    ("make_demo_dataset", ["{src}/class_a/notes.txt"], "exists and is not a directory"),
])
def test_bad_arguments_exit_2_with_one_line(name, argv, message, src_tree, tmp_path, capsys,
                                            monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = [a.replace("{src}", str(src_tree)) for a in argv]
    assert tool(name).main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"{name}: error: ") and message in err
    assert not (tmp_path / "OUT").exists()


def test_scripts_run_from_repo_root(tmp_path, src_tree):
    for name in TOOLS:
        res = subprocess.run([sys.executable, f"data_tools/{name}.py", "--help"], cwd=REPO,
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 0 and res.stdout.startswith(f"usage: {name}"), res.stderr
        if name != "build_file_list":  # the one tool with no per-video work
            assert "--workers N" in res.stdout
    res = subprocess.run([sys.executable, "data_tools/extract_frames.py", str(src_tree),
                          str(tmp_path / "f"), "--workers", "2"], cwd=REPO,
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": ""})
    assert res.returncode == 0, res.stderr
    assert "done 3, skipped 0, failed 1" in res.stdout
