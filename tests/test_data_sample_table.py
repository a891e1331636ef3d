"""PyAV reads without a full demux: MP4/MOV indexed from their sample table (the same index as
demuxing, checked against every packet read), and the decoder drained after the last wanted
packet (the same frames)."""
from __future__ import annotations

import av
import numpy as np
import pytest
import torch

from snvideo.data import VideoReader
from snvideo.data import pyav_backend
from snvideo.data.mp4_index import Mp4Track, composition_offsets, read_track

NUM_FRAMES = 60

# name -> (encoder, encoder options, container options); keyframes every 12 frames
SAMPLE_TABLE_CASES = {
    "h264.mp4": ("libx264", {"bf": "0", "g": "12"}, {}),
    "h264_bframes.mp4": ("libx264", {"bf": "3", "g": "12"}, {}),  # an edit list shifts its dts
    "h264_faststart.mp4": ("libx264", {"bf": "2", "g": "12"}, {"movflags": "faststart"}),
    "h264_bframes.mov": ("libx264", {"bf": "2", "g": "12"}, {}),
    "mpeg4.mp4": ("mpeg4", {"g": "12"}, {}),
    "mpeg4_bframes.mp4": ("mpeg4", {"g": "12", "bf": "2"}, {}),
}
DEMUXED_CASES = {
    "h264.mkv": ("libx264", {"bf": "2", "g": "12"}, {}),
    "vp9.webm": ("libvpx-vp9", {"g": "12", "deadline": "realtime", "cpu-used": "8"}, {}),
    "mpeg4.avi": ("mpeg4", {"g": "12"}, {}),
}


@pytest.fixture(scope="module")
def videos(tmp_path_factory, video_tools):
    folder = tmp_path_factory.mktemp("sample_table")
    return {name: video_tools.write_video(folder / name, codec, NUM_FRAMES, options=options,
                                          container_options=container_options)
            for name, (codec, options, container_options) in {**SAMPLE_TABLE_CASES, **DEMUXED_CASES}.items()}


def indexes(path):
    """(sample-table index or None, demux index) of the file's video stream."""
    with av.open(str(path), metadata_errors="ignore", container_options=pyav_backend.PROBE_OPTIONS) as container:
        stream = container.streams.video[0]
        track = read_track(str(path), stream.id)
        table = pyav_backend.sample_table_index(container, stream, track.offsets) if track else None
        return table, pyav_backend.build_index(container, stream)


def request_sets(seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [
        list(range(20, 52, 2)),  # a clip at interval 2, across keyframes
        sorted(rng.choice(NUM_FRAMES, 8, replace=False).tolist()),
        [NUM_FRAMES - 1, 3, 30, 30],
        list(range(0, 10)),
    ]


def check_frames(reader, indices, video_tools):
    frames = reader.get_frames(indices)
    assert [video_tools.frame_index(f.numpy()) for f in frames] == list(indices)


@pytest.mark.parametrize("name", sorted(SAMPLE_TABLE_CASES))
def test_sample_table_index_equals_the_demux_index(videos, name):
    table, demuxed = indexes(videos[name])
    assert table is not None and demuxed.exact
    assert table.pts == demuxed.pts
    assert (table.entries, table.seek_to) == (demuxed.entries, demuxed.seek_to)
    assert (table.num_frames, table.chunks_seen, table.addressing) == (demuxed.num_frames, demuxed.chunks_seen, "pts")
    assert len(table.pts_at_position) == NUM_FRAMES


@pytest.mark.parametrize("name", sorted(SAMPLE_TABLE_CASES))
def test_reader_indexed_from_the_sample_table_reads_the_right_frames(videos, video_tools, name):
    with VideoReader(videos[name], backend="pyav") as reader:
        assert reader._backend._index.pts_at_position, "indexed by demuxing"
        assert len(reader) == NUM_FRAMES
        for indices in request_sets(seed=len(name)):
            check_frames(reader, indices, video_tools)
        assert reader._backend._index.pts_at_position, "a packet contradicted the table"


@pytest.mark.parametrize("name", sorted(DEMUXED_CASES))
def test_other_containers_are_demuxed(videos, name):
    table, _ = indexes(videos[name])
    assert table is None


def test_without_index_entries_in_pyav_the_file_is_demuxed(videos):
    """Older PyAV (the project allows av>=12) has no stream.index_entries."""
    from types import SimpleNamespace

    container = SimpleNamespace(format=SimpleNamespace(name="mov,mp4,m4a,3gp,3g2,mj2"))
    stream = SimpleNamespace(frames=NUM_FRAMES, id=1, codec_context=None)
    offsets = composition_offsets(str(videos["h264.mp4"]), 1)
    assert pyav_backend.sample_table_index(container, stream, offsets) is None


def test_truncated_mp4_is_demuxed(tmp_path, video_tools):
    """The sample table (moov at the front) lists samples the cut file no longer holds."""
    path = video_tools.write_video(tmp_path / "full.mp4", options={"g": "12"},
                                   container_options={"movflags": "faststart"})
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    table, demuxed = indexes(cut)
    assert table is None and demuxed.num_frames < NUM_FRAMES


def test_ctts_offsets_expand_per_sample(videos):
    with av.open(str(videos["h264_bframes.mp4"])) as container:
        stream = container.streams.video[0]
        track = stream.id  # the MP4 track ID
        dts = [e.timestamp for e in stream.index_entries]
        pts = [p.pts for p in container.demux(stream) if p.size]
    offsets = composition_offsets(str(videos["h264_bframes.mp4"]), track)
    assert offsets.tolist() == [p - d for p, d in zip(pts, dts)]
    assert len(set(offsets.tolist())) > 1  # B-frames: presentation is not decode order
    assert not composition_offsets(str(videos["h264.mp4"]), track).any()  # no B-frames
    assert composition_offsets(str(videos["h264.mp4"]), track + 7) is None  # no such track
    assert composition_offsets(str(videos["h264.mkv"]), track) is None  # not an MP4


def test_a_sample_table_contradicted_by_the_packets_is_replaced_by_demuxing(videos, video_tools,
                                                                           monkeypatch):
    """Offsets one tick off: still a plausible exact index, but the first packet read differs
    from it, so the reader demuxes the file and reads the right frames."""
    real = pyav_backend.read_track

    def one_tick_off(path, track_id):
        track = real(path, track_id)
        return Mp4Track(track.offsets + 1, track.matrix)

    monkeypatch.setattr(pyav_backend, "read_track", one_tick_off)
    with VideoReader(videos["h264_bframes.mp4"], backend="pyav") as reader:
        assert reader._backend._index.pts_at_position and reader._backend.seeks_exactly
        check_frames(reader, list(range(20, 52, 2)), video_tools)
        assert not reader._backend._index.pts_at_position  # the demux index now
        assert reader._backend.seeks_exactly
        check_frames(reader, [5, 59, 33], video_tools)


@pytest.mark.parametrize("name", ["h264_bframes.mp4", "mpeg4_bframes.mp4", "h264.mkv"])
def test_draining_after_the_last_wanted_packet_gives_the_same_frames(videos, video_tools, name,
                                                                     monkeypatch):
    """Several reads on one reader: each pass after a drain starts with a seek, which must
    flush the drained decoder."""
    results = {}
    for drain in (True, False):
        monkeypatch.setattr(pyav_backend, "DRAIN", drain)
        with VideoReader(videos[name], backend="pyav") as reader:
            results[drain] = [reader.get_frames(indices) for indices in request_sets(seed=3)]
            for indices in request_sets(seed=3):
                check_frames(reader, indices, video_tools)
    assert all(torch.equal(a, b) for a, b in zip(results[True], results[False]))


def test_video_track_after_an_audio_track(tmp_path, video_tools):
    """As in Kinetics files, the MP4 holds audio too; here the audio is track 1, so the video
    track's ID (2) differs from its stream index (1)."""
    path = tmp_path / "audio_first.mp4"
    with av.open(str(path), "w") as container:
        audio = container.add_stream("aac", rate=16000)
        video = container.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        video.options = {"bf": "2", "g": "12"}
        for i in range(NUM_FRAMES):
            container.mux(video.encode(av.VideoFrame.from_ndarray(video_tools.index_frame(i), format="rgb24")))
            sound = av.AudioFrame.from_ndarray(np.zeros((1, 640), np.float32), format="fltp", layout="mono")
            sound.sample_rate, sound.pts = 16000, i * 640
            container.mux(audio.encode(sound))
        container.mux(video.encode())
        container.mux(audio.encode())
    table, demuxed = indexes(path)
    assert table is not None and (table.pts, table.entries) == (demuxed.pts, demuxed.entries)
    with VideoReader(path) as reader:
        for indices in request_sets(seed=11):
            check_frames(reader, indices, video_tools)
        assert reader._backend._index.pts_at_position
