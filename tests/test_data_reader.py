"""VideoReader: frame accuracy per codec/container and backend, fallbacks, bad files."""
from __future__ import annotations

import pickle

import av
import numpy as np
import pytest
import torch

from snvideo.data import VideoReader, VideoReadError
from snvideo.data.decord_backend import decord

NUM_FRAMES, FPS = 60, 25

# name -> (encoder, encoder options, container options). All have a keyframe every 12 frames.
CASES = {
    "h264_bframes.mp4": ("libx264", {"bf": "2", "g": "12"}, {}),
    "mpeg4.avi": ("mpeg4", {"g": "12"}, {}),
    "vp9.webm": ("libvpx-vp9", {"g": "12", "deadline": "realtime", "cpu-used": "8"}, {}),
    "vp9.mkv": ("libvpx-vp9", {"g": "12", "deadline": "realtime", "cpu-used": "8"}, {}),
}
# Files decord addresses wrongly or cannot open: "auto" must notice and use PyAV.
DECORD_TRAPS = {
    "mpeg4_bframes.avi": ("mpeg4", {"g": "12", "bf": "2"}, {}),  # Xvid-style: decord seeks off by frames
    "h264_bframes.avi": ("libx264", {"bf": "3", "g": "12"}, {}),  # no pts in AVI: decord seeks blindly
    "live.webm": ("libvpx-vp9", {"g": "12", "deadline": "realtime", "cpu-used": "8"}, {"live": "1"}),  # no duration
}
needs_decord = pytest.mark.skipif(decord is None, reason="decord not installed")


@pytest.fixture(scope="session")
def videos(tmp_path_factory, video_tools):
    folder = tmp_path_factory.mktemp("reader_videos")
    made = {}
    for name, (codec, options, container_options) in {**CASES, **DECORD_TRAPS}.items():
        made[name] = video_tools.write_video(
            folder / name, codec, NUM_FRAMES, FPS, options=options, container_options=container_options
        )
    return made


def sequential_indices(path, video_tools) -> list[int]:
    with av.open(str(path)) as container:
        return [video_tools.frame_index(f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]


def check_frames(reader, indices, video_tools):
    frames = reader.get_frames(indices)
    assert frames.dtype == torch.uint8 and frames.shape == (len(indices), 48, 64, 3)
    assert [video_tools.frame_index(f.numpy()) for f in frames] == list(indices)


def index_sets(seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [
        sorted(rng.choice(NUM_FRAMES, 8, replace=False).tolist()),  # random, sorted
        rng.choice(NUM_FRAMES, 8, replace=False).tolist(),  # random order
        [NUM_FRAMES - 1, NUM_FRAMES - 2, NUM_FRAMES - 2, 37],  # late frames, a repeat
        list(range(41, 57, 2)),  # a late clip
        [0, 13, 12, 11, 59],  # across keyframes, backwards
    ]


def test_generated_videos_decode_sequentially_to_their_index(videos, video_tools):
    for name, path in videos.items():
        assert sequential_indices(path, video_tools) == list(range(NUM_FRAMES)), name


@pytest.mark.parametrize("backend", ["auto", "pyav", pytest.param("decord", marks=needs_decord)])
@pytest.mark.parametrize("name", sorted(CASES))
def test_frames_are_the_sequential_decode_frames(videos, video_tools, name, backend):
    with VideoReader(videos[name], backend=backend) as reader:
        if backend != "auto":
            assert reader.backend == backend
        for indices in index_sets(seed=len(name)):
            check_frames(reader, indices, video_tools)


@pytest.mark.parametrize("backend", ["auto", "pyav", pytest.param("decord", marks=needs_decord)])
@pytest.mark.parametrize("name", sorted(CASES))
def test_len_and_fps(videos, name, backend):
    with VideoReader(videos[name], backend=backend) as reader:
        assert len(reader) == NUM_FRAMES
        assert reader.fps == pytest.approx(FPS)


@pytest.mark.parametrize("name", sorted(CASES) + ["live.webm"])
def test_auto_seeks_with_pyav_when_its_index_is_exact(videos, name):
    with VideoReader(videos[name]) as reader:
        assert reader.backend == "pyav" and reader._backend.seeks_exactly, reader.choice_reason
        assert reader.fallback_reason is None


def test_auto_rules_decord_out_where_pyav_must_count_frames(videos):
    """h264 in AVI with B-frames: no usable timestamps for PyAV, and decord seeks blindly."""
    with VideoReader(videos["h264_bframes.avi"]) as reader:
        assert reader.backend == "pyav" and not reader._backend.seeks_exactly
        if decord is not None:
            assert reader.fallback_reason


@needs_decord
def test_auto_uses_decord_where_pyav_has_no_exact_index_but_decord_is_sound(tmp_path, video_tools):
    """AVI without B-frames but one repeated timestamp would do; here: a PyAV index made
    inexact by hand, on a file decord reads right, must give decord and the right frames."""
    from snvideo.data import pyav_backend

    path = video_tools.write_video(tmp_path / "plain.mp4", options={"g": "12", "bf": "0"})
    real = pyav_backend.build_index

    def inexact(container, stream):
        index = real(container, stream)
        return pyav_backend.PacketIndex(num_frames=index.num_frames, chunks_seen=index.chunks_seen)

    pyav_backend.build_index = inexact
    pyav_backend.SAMPLE_TABLE = False  # an MP4's sample table would give the exact index
    try:
        with VideoReader(path) as reader:
            assert reader.backend == "decord", reader.fallback_reason
            for indices in index_sets(seed=3):
                check_frames(reader, indices, video_tools)
            assert reader.frame_size == (48, 64)  # from PyAV's header, for crops at decode
            full = reader.get_frames([9, 2, 2])
            assert torch.equal(reader.get_frames([9, 2, 2], crop=(4, 8, 40, 48)), full[:, 4:44, 8:56])
    finally:
        pyav_backend.build_index = real
        pyav_backend.SAMPLE_TABLE = True


@pytest.mark.parametrize("name", sorted(DECORD_TRAPS))
def test_auto_reads_the_right_frames_where_decord_is_wrong(videos, video_tools, name):
    with VideoReader(videos[name]) as reader:
        assert reader.backend == "pyav"
        assert len(reader) == NUM_FRAMES
        for indices in index_sets(seed=7):
            check_frames(reader, indices, video_tools)


def test_pyav_seeks_instead_of_decoding_from_the_start(tmp_path, video_tools):
    path = video_tools.write_video(tmp_path / "long.mp4", "libx264", 240, options={"bf": "2", "g": "24"})
    with VideoReader(path, backend="pyav") as reader:
        check_frames(reader, list(range(200, 232, 2)), video_tools)
        # keyframe 192 -> frame 230, plus at most a few frames of decoder delay
        assert reader.frames_decoded <= 232 - 192 + 8


@pytest.mark.parametrize("threads", [1, 2])
def test_pyav_skips_unwanted_non_reference_frames_and_reads_the_same_frames(tmp_path, video_tools,
                                                                            threads):
    """Frames that are neither wanted nor references are dropped by the decoder: fewer frames
    decoded, the same wanted frames (every other frame of a clip, as frame_interval=2 asks),
    also with frame threads."""
    path = video_tools.write_video(tmp_path / "long.mp4", "libx264", 240,
                                   options={"bf": "3", "b_pyramid": "0", "g": "250"})
    with VideoReader(path, backend="pyav", num_threads=threads) as reader:
        check_frames(reader, list(range(160, 224, 2)), video_tools)
        # from keyframe 0: 224 frames to the clip's end, 3 of every 4 of them non-reference
        # B-frames; those not in the clip are skipped
        assert reader.frames_decoded < 224 * 0.5
        assert reader._backend._stream.codec_context.skip_frame == "DEFAULT"  # reset after


def test_pyav_skipping_survives_a_seek_between_clips(tmp_path, video_tools):
    """Two clips far apart, so the reader seeks between them. The first ends while unwanted
    B-frames are being skipped; the second starts at its keyframe with wanted B-frames right
    after it, which must not be skipped (else the reader falls back to decoding everything
    from the start)."""
    path = video_tools.write_video(tmp_path / "two.mp4", "libx264", 240, options={
        "bf": "3", "g": "24", "sc_threshold": "0", "x264-params": "b-adapt=0:b-pyramid=0"})
    wanted = list(range(10, 41, 2)) + list(range(192, 200))
    with VideoReader(path, backend="pyav") as reader:
        check_frames(reader, wanted, video_tools)
        assert reader._backend.seeks_exactly
        assert reader.frames_decoded < 60  # two short passes, not 200 frames from the start


def test_truncated_file_raises_for_frames_it_lost(tmp_path, video_tools):
    """Header (moov at the front) promises 60 frames, the data holds about half."""
    path = video_tools.write_video(
        tmp_path / "full.mp4", options={"g": "12"}, container_options={"movflags": "faststart"}
    )
    data = path.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    for backend in ("auto", "pyav"):
        with VideoReader(cut, backend=backend) as reader:
            assert len(reader) == NUM_FRAMES
            check_frames(reader, [0, 5], video_tools)
            with pytest.raises(VideoReadError) as caught:
                reader.get_frames([3, NUM_FRAMES - 1])
            assert caught.value.path == str(cut)


def test_truncated_avi_raises_for_frames_it_lost(tmp_path, video_tools):
    path = video_tools.write_video(tmp_path / "full.avi", "mpeg4", options={"g": "12"})
    data = path.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    with VideoReader(cut) as reader:
        assert len(reader) == NUM_FRAMES  # what the AVI header declares
        with pytest.raises(VideoReadError, match="truncated"):
            reader.get_frames([NUM_FRAMES - 1])


def _bad_files(tmp_path, video_tools):
    good = video_tools.write_video(tmp_path / "good.mp4", options={"g": "12"})
    data = good.read_bytes()
    (tmp_path / "zero.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("this is not a video\n" * 50)
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])  # moov atom is at the end: lost
    with av.open(str(tmp_path / "audio.m4a"), "w") as container:  # a valid file with no video
        stream = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return {
        "missing.mp4": "file not found",
        "zero.mp4": "zero-byte file",
        "text.mp4": "cannot decode",
        "cut.mp4": "cannot decode",
        "audio.m4a": "no video stream",
    }


@pytest.mark.parametrize("backend", ["auto", "pyav", pytest.param("decord", marks=needs_decord)])
def test_bad_files_raise_video_read_error(tmp_path, video_tools, backend):
    for name, reason in _bad_files(tmp_path, video_tools).items():
        path = tmp_path / name
        with pytest.raises(VideoReadError) as caught:
            VideoReader(path, backend=backend).get_frames([0])
        err = caught.value
        assert err.path == str(path)
        assert err.reason.startswith(reason), (name, err.reason)
        text = str(err)
        assert "\n" not in text and str(path) in text and err.reason in text


def test_video_read_error_survives_pickling():
    err = pickle.loads(pickle.dumps(VideoReadError("/data/a.mp4", "zero-byte file")))
    assert (err.path, err.reason) == ("/data/a.mp4", "zero-byte file")
    assert str(err) == "cannot read video /data/a.mp4: zero-byte file"


def test_index_checks(videos):
    with VideoReader(videos["h264_bframes.mp4"]) as reader:
        with pytest.raises(IndexError):
            reader.get_frames([NUM_FRAMES])
        with pytest.raises(IndexError):
            reader.get_frames([-1])
        with pytest.raises(ValueError):
            reader.get_frames([])
    with pytest.raises(ValueError, match="backend"):
        VideoReader(videos["h264_bframes.mp4"], backend="opencv")
