"""PyAV decoding with a packet index built on open, so every frame is addressed exactly.

Frame i is by definition the i-th frame a sequential decode yields. On open we demux (no
decoding) the whole video stream and sort the packet timestamps: the i-th smallest pts is
frame i's pts. An MP4/MOV need not be demuxed: its sample table, which ffmpeg reads on open,
holds the same timestamps (`sample_table_index`); every packet a read demuxes is checked
against them, and at the first difference the file is indexed by demuxing after all.

To read frame i we seek to the last keyframe at or before it and decode forward, identifying
frames by pts; on the way the decoder skips the packets of frames that are neither wanted nor
referenced by any other frame, and once the last wanted packet is in, it is drained instead of
fed the packets after it. Anything unexpected (a frame without pts, a pts the index does not
know, a seek that lands after the target) switches to a sequential decode from the start,
which is slow but right by definition.

Each decoded frame is converted to RGB, cut to the requested box (and mirrored if asked) and
copied into one preallocated clip tensor at once, so the full-size RGB frame is dropped while
it is still in cache and its memory is reused by the next frame.

The container is opened with only the MPEG-4 Part 2 decoder allowed during stream probing
(`PROBE_OPTIONS`): ffmpeg's stream probing otherwise opens the video decoder and decodes the
first frames, 2 ms of a 40 ms training item, only to learn what the packet index and the
first real decode tell us anyway. MPEG-4 Part 2 still probes: its B-frame flag is read only
by its decoder. Decoding later is unaffected (the whitelist is a container option).
"""
from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass, field

import av
import numpy as np
import torch

from .errors import VideoReadError, short_message
from .mp4_index import composition_offsets

logger = logging.getLogger("snvideo.data")

PROBE_OPTIONS = {"codec_whitelist": "mpeg4"}
# Decode on through a keyframe unless that skips more than this many frames: a seek flushes
# the decoder, whose reordering delay (frames already decoded ahead) is then decoded again.
# Seeking at every keyframe made a 32x2 clip at GOP 16 take 27.1 ms instead of 23.7 ms.
SEEK_GAP = 8
# Let the decoder drop packets of frames that are neither wanted nor references (see
# PyAVBackend._decode_skipping); False decodes every frame (benchmarks/bench_data.py compares).
SKIP_NONREF = True
# Index MP4/MOV files from their sample table instead of demuxing them (`sample_table_index`);
# False always demuxes (benchmarks/bench_data.py compares).
SAMPLE_TABLE = True
AVINDEX_KEYFRAME, AVINDEX_DISCARD_FRAME = 1, 2  # AVIndexEntry flags (libavformat)
# Drain the decoder once every wanted frame's packet is in, instead of feeding it more packets
# (see PyAVBackend._decode_skipping); False feeds on until the decoder hands out the last frame.
DRAIN = True


@dataclass
class PacketIndex:
    """How many frames a stream holds and, when timestamps are usable, where each one sits."""

    num_frames: int  # frames a decoder will produce
    pts: list[int] = field(default_factory=list)  # pts[i] = pts of frame i (empty when not exact)
    keyframes: list[int] = field(default_factory=list)  # frame indices of keyframes, sorted
    exact: bool = False  # False: timestamps unusable, address frames by decode count only
    demux_error: str | None = None  # the demuxer stopped early (truncated / damaged file)
    packets_seen: int = 0  # also counts empty "drop frame" chunks and edit-list discards
    # from a sample table: the pts each packet must carry, by byte position (empty: no check)
    pts_at_position: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.frame_of_pts = {p: i for i, p in enumerate(self.pts)}


def build_index(container, stream) -> PacketIndex:
    """Demux (without decoding) every packet of `stream` and index their timestamps."""
    reorders = bool(stream.codec_context is not None and stream.codec_context.has_b_frames)
    stamps: list[int | None] = []
    key_stamps: list[int | None] = []
    first_is_key = False
    demux_error = None
    seen = 0
    try:
        for packet in container.demux(stream):
            if packet.pts is None and packet.dts is None and packet.size == 0:
                continue  # PyAV's end-of-stream flush packet
            seen += 1
            if packet.size == 0 or packet.is_discard:  # AVI drop-frame chunks, edit-list cuts
                continue
            ts = packet.pts if packet.pts is not None else packet.dts
            if not stamps:
                first_is_key = packet.is_keyframe
            stamps.append(ts)
            if packet.is_keyframe:
                key_stamps.append(ts)
    except av.FFmpegError as err:
        demux_error = short_message(err)
    return _index(stamps, key_stamps, first_is_key, reorders, demux_error, seen)


def sample_table_index(container, stream, path: str) -> PacketIndex | None:
    """The index `build_index` makes, from an MP4/MOV sample table instead of a demux: decode
    timestamps, positions and keyframe flags from ffmpeg's index entries, composition offsets
    from the file (snvideo.data.mp4_index). None unless the container is MP4/MOV, the table
    lists as many samples as the header declares, none is an edit-list discard, every sample
    lies inside the file (not truncated) and the offsets line up with the samples."""
    if "mp4" not in container.format.name.split(","):
        return None
    entries = getattr(stream, "index_entries", None)  # older PyAV does not expose them
    entries = entries[:] if entries is not None else []
    if not entries or len(entries) != (stream.frames or 0):
        return None
    rows = np.array([(e.timestamp, e.pos, e.size, e.flags) for e in entries], dtype=np.int64)
    dts, positions, sizes, flags = rows.T
    if (flags & AVINDEX_DISCARD_FRAME).any() or (positions + sizes).max() > container.size:
        return None
    offsets = composition_offsets(path, stream.id)
    if offsets is None or len(offsets) != len(entries):
        return None
    stamps = (dts + offsets).tolist()
    keys = (flags & AVINDEX_KEYFRAME).astype(bool)
    reorders = bool(stream.codec_context is not None and stream.codec_context.has_b_frames)
    index = _index(stamps, [s for s, key in zip(stamps, keys) if key], bool(keys[0]), reorders,
                   None, len(entries))
    index.pts_at_position = dict(zip(positions.tolist(), stamps))
    return index


def _index(stamps: list, key_stamps: list, first_is_key: bool, reorders: bool,
           demux_error: str | None, seen: int) -> PacketIndex:
    """The index of packets with timestamps `stamps` (decode order) and keyframes at
    `key_stamps`: exact when the timestamps can address frames."""
    exact = first_is_key and None not in stamps and len(set(stamps)) == len(stamps)
    if exact and reorders and all(a < b for a, b in zip(stamps, stamps[1:])):
        # B-frames but timestamps rising in decode order: the container (e.g. AVI) made them up
        # from the decode order, so they say nothing about display order.
        exact = False
    if not exact:
        return PacketIndex(num_frames=len(stamps), demux_error=demux_error, packets_seen=seen)
    index = PacketIndex(num_frames=len(stamps), pts=sorted(stamps), exact=True, demux_error=demux_error, packets_seen=seen)
    index.keyframes = sorted(index.frame_of_pts[p] for p in key_stamps)
    return index


def _open_video(path: str, num_threads: int):
    """(container, first video stream), opened with PROBE_OPTIONS; one-line errors."""
    try:
        container = av.open(path, metadata_errors="ignore", container_options=PROBE_OPTIONS)
    except av.FFmpegError as err:
        raise VideoReadError(path, f"cannot decode: {short_message(err)}") from err
    try:
        if not container.streams.video:
            raise VideoReadError(path, "no video stream")
        stream = container.streams.video[0]
        if stream.codec_context is None:
            raise VideoReadError(path, "cannot decode: no decoder for this codec")
        if num_threads:
            stream.codec_context.thread_count = num_threads
    except BaseException:
        container.close()
        raise
    return container, stream


class PyAVBackend:
    """Frame-accurate random access to one video with PyAV."""

    name = "pyav"

    def __init__(self, path: str, num_threads: int = 1):
        self.path = path
        self.num_threads = num_threads
        self.frames_decoded = 0  # every frame the decoder produced, including those skipped after a seek
        self._container, self._stream = _open_video(path, num_threads)
        try:
            context = self._stream.codec_context
            self.codec, self.has_b_frames = context.name, bool(context.has_b_frames)
            self.declared_frames = int(self._stream.frames or 0)
            self.frame_size = (int(context.height), int(context.width))  # from the header
            index = sample_table_index(self._container, self._stream, path) if SAMPLE_TABLE else None
            self._set_index(index if index is not None and index.exact
                            else build_index(self._container, self._stream))
            self.fps = _stream_fps(self._stream, self.num_frames)
        except BaseException:
            self._container.close()
            raise

    def _set_index(self, index: PacketIndex) -> None:
        self._index = index
        self.frames_present = index.num_frames
        # A header that declares more frames than the file holds means the file was cut short:
        # report the declared length so the missing frames fail loudly instead of vanishing.
        truncated = self.declared_frames > index.packets_seen
        self.num_frames = self.declared_frames if truncated else self.frames_present

    def _index_by_demuxing(self) -> None:
        """Replace a sample-table index that a packet contradicted: reopen, demux everything."""
        logger.debug("%s: the sample table's timestamps differ from the packets'; demuxing", self.path)
        self._container.close()
        self._container, self._stream = _open_video(self.path, self.num_threads)
        self._set_index(build_index(self._container, self._stream))

    @property
    def seeks_exactly(self) -> bool:
        """True when frames are addressed by timestamp (keyframe seek); False: decoded by count
        from the first frame, because the timestamps cannot be trusted."""
        return self._index.exact

    def close(self) -> None:
        self._container.close()

    def read(self, wanted: np.ndarray, box: tuple[int, int, int, int] | None = None,
             flip: bool = False) -> torch.Tensor:
        """Frames at sorted unique indices `wanted` as uint8 (len(wanted), H, W, 3); with
        box = (top, left, height, width) only that part of each frame, cut right after its
        RGB conversion; flip=True mirrors each (cut) frame left-right in the same copy."""
        wanted = [int(i) for i in wanted]
        self._check_present(wanted)
        try:
            while self._index.exact:
                try:
                    return self._read_by_seeking(wanted, self._clip(len(wanted), box, flip))
                except _SampleTableMismatch:  # once at most: a demux index has no table to contradict
                    self._index_by_demuxing()
                    self._check_present(wanted)
                except _AddressingMismatch:
                    break
            return self._read_sequential(wanted, self._clip(len(wanted), box, flip))
        except av.FFmpegError as err:
            raise VideoReadError(self.path, f"cannot decode: {short_message(err)}") from err

    def _check_present(self, wanted: list[int]) -> None:
        if wanted and wanted[-1] >= self.frames_present:
            missing = next(i for i in wanted if i >= self.frames_present)
            raise VideoReadError(
                self.path,
                f"cannot decode frame {missing}: file truncated ({self.frames_present} of {self.num_frames} frames present)",
            )

    def _clip(self, count: int, box: tuple[int, int, int, int] | None, flip: bool) -> _ClipFrames:
        return _ClipFrames(self.path, count, self.frame_size, box, flip)

    def _read_by_seeking(self, wanted: list[int], clip: _ClipFrames) -> torch.Tensor:
        index = self._index
        context = self._stream.codec_context
        pos = 0
        try:
            while pos < len(wanted):
                target = wanted[pos]
                key = index.keyframes[max(bisect.bisect_right(index.keyframes, target) - 1, 0)]
                self._container.seek(index.pts[key], stream=self._stream, backward=True, any_frame=False)
                for frame in self._decode_skipping([index.pts[i] for i in wanted[pos:]]):
                    self.frames_decoded += 1
                    current = index.frame_of_pts.get(frame.pts)
                    if current is None or current > target:
                        raise _AddressingMismatch  # unknown pts, or the seek landed past the target
                    if current < target:
                        continue
                    clip.add(frame)
                    pos += 1
                    if pos == len(wanted):
                        break
                    target = wanted[pos]
                    next_key = index.keyframes[max(bisect.bisect_right(index.keyframes, target) - 1, 0)]
                    if next_key - current > SEEK_GAP:  # cheaper to jump to the keyframe than to decode the gap
                        break
                else:
                    raise VideoReadError(self.path, f"cannot decode frame {target}: stream ended early")
        finally:
            context.skip_frame = "DEFAULT"
        return clip.frames()

    def _decode_skipping(self, wanted_pts: list[int]):
        """Decoded frames from the current position until the last of `wanted_pts` is out.

        The decoder drops a packet whose frame is not wanted when no other frame references
        it (`skip_frame = NONREF` for that packet only). Such a frame cannot change any other
        frame, so every wanted frame is decoded exactly as before; an unwanted frame that is a
        reference is decoded as usual. Most B-frames are not references: this spares the decode
        of about half the frames between the keyframe and a clip, and of the frames inside it
        that the frame interval leaves out. Once the packet of every wanted frame is sent, the
        decoder is drained: the packets after them, which a decoder with B-frame delay takes in
        before it hands out the last frames, are not decoded at all. (The next seek flushes the
        drained decoder.)
        """
        context = self._stream.codec_context
        context.skip_frame = "DEFAULT"  # an earlier pass (before a seek) may have left NONREF
        skipping = False
        unsent = set(wanted_pts)
        expected = self._index.pts_at_position
        for packet in self._container.demux(self._stream):
            pts = packet.pts  # None: the final flush packet
            if expected and pts is not None and expected.get(packet.pos) != pts:
                raise _SampleTableMismatch
            wanted = pts in unsent
            skip = SKIP_NONREF and pts is not None and not wanted
            if skip != skipping:  # set only on a change: the setter costs a call into FFmpeg
                context.skip_frame = "NONREF" if skip else "DEFAULT"
                skipping = skip
            yield from context.decode(packet)
            if wanted:
                unsent.discard(pts)
                if DRAIN and not unsent:
                    yield from context.decode(None)
                    return

    def _read_sequential(self, wanted: list[int], clip: _ClipFrames) -> torch.Tensor:
        """Decode from the first frame, counting: correct by definition, used when pts mislead."""
        pos, count = 0, 0
        with av.open(self.path, metadata_errors="ignore") as container:
            stream = container.streams.video[0]
            if self.num_threads:
                stream.codec_context.thread_count = self.num_threads
            for frame in container.decode(stream):
                self.frames_decoded += 1
                count += 1
                if count - 1 == wanted[pos]:
                    clip.add(frame)
                    pos += 1
                    if pos == len(wanted):
                        return clip.frames()
        raise VideoReadError(self.path, f"cannot decode frame {wanted[pos]}: stream ended after {count} frames")


class _ClipFrames:
    """The frames of one read: each is converted to RGB, cut to `box`, mirrored when `flip`,
    and copied into one uint8 tensor allocated for all of them at the first frame."""

    def __init__(self, path: str, count: int, frame_size: tuple[int, int],
                 box: tuple[int, int, int, int] | None, flip: bool):
        self.path, self.count, self.frame_size, self.box, self.flip = path, count, frame_size, box, flip
        self._frames: torch.Tensor | None = None
        self._array: np.ndarray | None = None  # the same memory, for numpy's faster plain copy
        self._filled = 0

    def add(self, frame) -> None:
        rgb = frame.to_ndarray(format="rgb24")
        if self.box is not None:
            if rgb.shape[:2] != self.frame_size:
                raise VideoReadError(self.path, f"cannot decode: a {rgb.shape[1]}x{rgb.shape[0]} frame in a "
                                                f"{self.frame_size[1]}x{self.frame_size[0]} stream")
            top, left, height, width = self.box
            rgb = rgb[top : top + height, left : left + width]
        if self._frames is None:
            self._frames = torch.empty((self.count, *rgb.shape), dtype=torch.uint8)
            self._array = self._frames.numpy()
        elif rgb.shape != self._array.shape[1:]:
            raise VideoReadError(self.path, f"cannot decode: frames of {self._array.shape[2]}x"
                                            f"{self._array.shape[1]} and {rgb.shape[1]}x{rgb.shape[0]} in one stream")
        if self.flip:  # torch: numpy's copy through a negative stride is ten times slower
            self._frames[self._filled].copy_(torch.from_numpy(rgb).flip(1))
        else:
            self._array[self._filled] = rgb
        self._filled += 1

    def frames(self) -> torch.Tensor:
        """The frames added so far, (count, H, W, 3)."""
        if self._frames is not None:
            return self._frames[: self._filled]
        height, width = (self.box[2], self.box[3]) if self.box else (0, 0)
        return torch.empty((0, height, width, 3), dtype=torch.uint8)


class _AddressingMismatch(Exception):
    """Timestamps did not behave; fall back to counting frames from the start."""


class _SampleTableMismatch(_AddressingMismatch):
    """A packet's pts is not the one the sample table gave; index by demuxing instead."""


def _stream_fps(stream, num_frames: int) -> float:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return float(rate)
    if stream.duration and stream.time_base and num_frames:
        return num_frames / float(stream.duration * stream.time_base)
    return 0.0
