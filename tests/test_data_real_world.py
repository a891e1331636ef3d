"""Files snvideo did not write (tests/data/real_world, made by the ffmpeg CLI: make_fixtures.sh):
every frame and every 32x2 clip reads exactly as the sequential decode shows it, upright,
with crops, and no dataset item raises anything but a counted, skipped VideoReadError."""
from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch

from snvideo.data import VideoDataset, VideoReader, VideoReadError
from snvideo.data.containers import Orientation
from snvideo.data.datasets import collate_clips

DATA = Path(__file__).parent / "data" / "real_world"
# file -> how its frames are reached (snvideo.data.packet_index)
ADDRESSING = {
    "xvid_packed.avi": "count",  # MPEG-4 Part 2, packed B-frames (Xvid/DivX, UCF101/HMDB51)
    "xvid_nob.avi": "count",
    "mjpeg.avi": "count",
    "h264_bframes.avi": "sequential",  # B-frames and no timestamps: nothing to seek by
    "h264_bframes.ts": "pts",  # MPEG-TS seeks by DTS
    "h264_onegop.ts": "pts",
    "cut_nokey.ts": "pts",  # cut without a leading keyframe
    "cut_nokey.mkv": "pts",
    "cut_nokey.mp4": "pts",
    "mpeg4_cut_nokey.mkv": "pts",  # ... whose decoder shows the frames before the keyframe
    "flv1.flv": "pts",  # no frame size in the header
    "h263.3gp": "pts",
    "av1.mp4": "pts",  # libaom: hidden alt-ref frames
    "rot90.mp4": "pts",  # display matrices
    "rot270.mov": "pts",
    "rot180.mp4": "pts",
    "cut_source.mp4": "pts",
}
CLIP_LEN, INTERVAL = 32, 2


def sequential_frames(path: Path, upright: bool = True) -> list[np.ndarray]:
    """The reference: a plain PyAV decode from the start, each frame turned by its own display
    matrix as players do."""
    frames = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            rgb = frame.to_ndarray(format="rgb24")
            if upright:
                rgb = Orientation.from_degrees(frame.rotation).to_display(rgb)
            frames.append(np.ascontiguousarray(rgb))
    return frames


@pytest.fixture(scope="module")
def references():
    return {name: sequential_frames(DATA / name) for name in ADDRESSING}


def test_every_fixture_is_there_and_small():
    for name in ADDRESSING:
        assert (DATA / name).stat().st_size < 130_000, name


@pytest.mark.parametrize("name", sorted(ADDRESSING))
def test_length_addressing_and_every_frame(references, name):
    """len() is what a sequential decode yields, the file is reached the way its container
    allows, and every frame reads exactly, in a shuffled order on one reader (seeks back and
    forth) and then alone on a fresh reader each."""
    reference = references[name]
    with VideoReader(DATA / name) as reader:
        assert len(reader) == len(reference)
        assert reader.frame_size == reference[0].shape[:2]
        assert reader.addressing == ADDRESSING[name], reader.choice_reason
        order = np.random.default_rng(len(name)).permutation(len(reference))
        for i in order:
            assert np.array_equal(reader.get_frames([i])[0].numpy(), reference[i]), (name, i)
        assert reader._backend.seek_failure is None
    for i in range(len(reference)):
        with VideoReader(DATA / name) as reader:
            assert np.array_equal(reader.get_frames([i])[0].numpy(), reference[i]), (name, i)
            assert reader._backend.seek_failure is None, (name, i, reader._backend.seek_failure)


@pytest.mark.parametrize("name", sorted(ADDRESSING))
def test_every_32x2_clip_start_with_crops_and_flips(references, name):
    """Every clip start a training sampler can draw (looping past the end as it does), each on
    a fresh reader as a DataLoader worker opens it, with a random crop box in the displayed
    frame and a random flip: the same pixels as cutting the reference."""
    reference = references[name]
    count = len(reference)
    height, width = reference[0].shape[:2]
    rng = np.random.default_rng(7)
    for start in range(count):
        indices = (start + INTERVAL * np.arange(CLIP_LEN)) % count
        top, left = int(rng.integers(0, height // 2)), int(rng.integers(0, width // 2))
        box = (top, left, int(rng.integers(8, height - top + 1)), int(rng.integers(8, width - left + 1)))
        flip = bool(rng.integers(2))
        with VideoReader(DATA / name) as reader:
            clip = reader.get_frames(indices, crop=box, flip=flip).numpy()
            assert reader._backend.seek_failure is None, (name, start)
        expected = np.stack([reference[i][box[0]:box[0] + box[2], box[1]:box[1] + box[3]] for i in indices])
        if flip:
            expected = expected[:, :, ::-1]
        assert np.array_equal(clip, expected), (name, start, box, flip)


def test_rotation_matches_the_ffmpeg_cli():
    """rot90.raw is frame 5 of rot90.mp4 as the ffmpeg CLI shows it (autorotate)."""
    cli = np.fromfile(DATA / "rot90.raw", np.uint8).reshape(128, 96, 3)
    with VideoReader(DATA / "rot90.mp4") as reader:
        assert reader.frame_size == (128, 96) and reader.orientation.degrees == 90
        assert np.array_equal(reader.get_frames([5])[0].numpy(), cli)
    with VideoReader(DATA / "rot90.mp4", rotation="ignore") as reader:
        stored = reader.get_frames([5])[0].numpy()
        assert reader.frame_size == (96, 128) and stored.shape == (96, 128, 3)
        assert np.array_equal(np.rot90(stored), cli)
    # the same picture turned the other ways
    with VideoReader(DATA / "rot270.mov") as reader:
        assert np.array_equal(reader.get_frames([5])[0].numpy(), np.rot90(cli, 2))
    with VideoReader(DATA / "rot180.mp4") as reader:
        assert np.array_equal(reader.get_frames([5])[0].numpy(), np.rot90(cli, 1))


@pytest.mark.parametrize("backend", ["pyav", pytest.param("decord", marks=pytest.mark.skipif(
    __import__("snvideo.data.decord_backend", fromlist=["decord"]).decord is None, reason="decord not installed"))])
def test_rotation_on_the_forced_backends(references, backend):
    with VideoReader(DATA / "rot90.mp4", backend=backend) as reader:
        frames = reader.get_frames([0, 50, 95], crop=(10, 20, 100, 60))
        expected = np.stack([references["rot90.mp4"][i][10:110, 20:80] for i in (0, 50, 95)])
        assert np.array_equal(frames.numpy(), expected)
    stored = sequential_frames(DATA / "rot90.mp4", upright=False)
    with VideoReader(DATA / "rot90.mp4", backend=backend, rotation="ignore") as reader:
        assert reader.frame_size == (96, 128)
        assert np.array_equal(reader.get_frames([7]).numpy()[0], stored[7])


def test_a_mirrored_matrix_is_turned_as_its_frames_say(tmp_path, references):
    """A track header matrix with a mirror (rot90's, transposed): the reader turns the frames
    by the angle FFmpeg gives them, before decoding, so crops drawn in frame_size work."""
    import struct

    data = bytearray((DATA / "rot90.mp4").read_bytes())
    at = data.find(b"tkhd") + 4 + 40 + 4  # version 0 tkhd: the matrix's b
    data[at:at + 4] = struct.pack(">i", -struct.unpack(">i", data[at:at + 4])[0])
    path = tmp_path / "mirror.mp4"
    path.write_bytes(bytes(data))
    with av.open(str(path)) as container:
        degrees = next(container.decode(video=0)).rotation
    with VideoReader(path) as reader:
        assert reader.orientation == Orientation.from_degrees(degrees) and reader.frame_size == (128, 96)
        assert reader.get_frames([5], crop=(0, 0, 64, 64)).shape == (1, 64, 64, 3)
        assert reader._backend.seek_failure is None


def test_rotation_found_only_in_the_frames_is_learned(tmp_path, monkeypatch, references):
    """A container whose header gives no rotation but whose frames carry one (not MP4): a read
    without a box is turned right away; the next reader of the file knows it before decoding."""
    from snvideo.data import pyav_backend
    from snvideo.data.containers import UPRIGHT

    path = tmp_path / "rot90.mp4"
    path.write_bytes((DATA / "rot90.mp4").read_bytes())
    real = pyav_backend._header_orientation
    monkeypatch.setattr(pyav_backend, "_header_orientation",
                        lambda container, stream, p: (pyav_backend._ROTATION_SEEN_IN_FRAMES.get(p, UPRIGHT),
                                                      real(container, stream, p)[1]))
    with VideoReader(path) as reader:
        assert reader.frame_size == (96, 128)  # not known yet
        with pytest.raises(VideoReadError, match="display rotation"):
            reader.get_frames([5], crop=(0, 0, 50, 50))
        assert reader.frame_size == (128, 96)
        assert np.array_equal(reader.get_frames([5])[0].numpy(), references["rot90.mp4"][5])
    with VideoReader(path) as reader:
        assert reader.frame_size == (128, 96)


def test_a_head_the_decoder_shows_counts_and_reads_from_the_start(references):
    """MPEG-4 Part 2 decodes the P-frames before the first keyframe (against grey): they are
    frames, read from the start; frames after the keyframe are still seeked to."""
    with VideoReader(DATA / "mpeg4_cut_nokey.mkv") as reader:
        first_key = reader._backend._index.entries[0]
        assert first_key > 0 and len(reader) == len(references["mpeg4_cut_nokey.mkv"])
        reader.get_frames([0, first_key - 1])
        decoded = reader.frames_decoded
        reader.get_frames([len(reader) - 1])
        assert reader._backend.seek_failure is None and reader.frames_decoded - decoded < len(reader) - first_key


def test_av1_keeps_seeking_without_skipping_frames():
    """libdav1d loses frames when told to skip non-references: AV1 decodes every frame."""
    with VideoReader(DATA / "av1.mp4") as reader:
        assert not reader._backend.skips_frames
        reader.get_frames(list(range(0, 96, 3)))
        assert reader._backend.seek_failure is None


def test_a_spoiled_skipping_pass_is_read_again_without_skipping(monkeypatch, references):
    """If a decoder drops a frame it was told it may drop (as libdav1d does), the reader reads
    again without skipping before it gives up seeking."""
    from snvideo.data import containers

    monkeypatch.setattr(containers, "SKIPS_NON_REFERENCE", containers.SKIPS_NON_REFERENCE | {"libdav1d"})
    with VideoReader(DATA / "av1.mp4") as reader:
        assert reader._backend.skips_frames
        wanted = [19, 27]  # frames a skipping pass loses (libdav1d 1.x in PyAV 18)
        frames = reader.get_frames(wanted)
        assert not reader._backend.skips_frames and reader._backend.seek_failure is None
        assert all(np.array_equal(f.numpy(), references["av1.mp4"][i]) for f, i in zip(frames, wanted))


def test_mpegts_seeks_by_dts_land_on_the_keyframe():
    """Few decoded frames per read: no pass had to start from an earlier keyframe or the start."""
    with VideoReader(DATA / "h264_bframes.ts") as reader:
        index = reader._backend._index
        assert len(index.entries) > 2
        last_key = index.entries[-1]
        reader.get_frames([last_key + 1])
        assert reader.frames_decoded <= 1 + 1 + 8  # the keyframe, the frame, the reorder delay


def test_packed_avi_counts_chunks_that_hold_a_frame():
    """The empty chunks of a packed Xvid file do not count; the declared length does not make
    the last frames 'truncated'."""
    with VideoReader(DATA / "xvid_packed.avi") as reader:
        backend = reader._backend
        assert backend.declared_frames == len(reader) + 1  # one empty chunk
        assert backend._index.chunks_seen == backend.declared_frames
        reader.get_frames([len(reader) - 2, len(reader) - 1])


@pytest.mark.slow
@pytest.mark.parametrize("test_mode", [False, True])
def test_a_dataloader_over_every_fixture_counts_no_failure(tmp_path, test_mode):
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{name} {i % 3}\n" for i, name in enumerate(sorted(ADDRESSING))))
    dataset = VideoDataset(listing, DATA, clip_len=CLIP_LEN, frame_interval=INTERVAL, num_clips=2,
                           test_mode=test_mode, short_side=80, crop_size=64, num_crops=3,
                           normalize=False, max_retries=0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=2,
                                         collate_fn=None if test_mode else collate_clips)
    seen = 0
    for clips, labels in loader:
        seen += len(labels)
        assert clips.dtype == torch.uint8 and clips.shape[-2:] == (64, 64)
    assert seen == len(ADDRESSING)
    assert dataset.num_failed == 0


def test_any_error_in_an_item_is_a_counted_video_read_error(tmp_path):
    """A file's odd properties that break arithmetic after decoding (a zero frame size did, in
    the transform) surface as VideoReadError: counted and replaced in training, raised for the
    evaluator to list in test mode."""
    listing = tmp_path / "list.txt"
    listing.write_text("flv1.flv 0\nmjpeg.avi 1\n")

    def broken(video):
        raise ZeroDivisionError("float division by zero")

    train = VideoDataset(listing, DATA, clip_len=4, frame_interval=1, transform=broken, max_retries=3)
    with pytest.raises(RuntimeError, match="ZeroDivisionError"):
        train[0]
    assert train.num_failed == 4
    test = VideoDataset(listing, DATA, clip_len=4, frame_interval=1, test_mode=True, transform=broken)
    with pytest.raises(VideoReadError, match="flv1.flv: ZeroDivisionError"):
        test[0]


def test_flv1_and_h263_know_their_frame_size():
    for name in ("flv1.flv", "h263.3gp"):
        with VideoReader(DATA / name) as reader:
            assert reader.frame_size == (96, 128)
            assert reader.get_frames([3], crop=(10, 10, 40, 40)).shape == (1, 40, 40, 3)
