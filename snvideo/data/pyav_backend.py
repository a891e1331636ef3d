"""PyAV decoding with a packet index built on open, so every frame is addressed exactly.

Frame i is by definition the i-th frame a sequential decode yields. On open the stream's
packets are indexed without decoding (snvideo.data.packet_index: a demux, or for MP4/MOV the
sample table ffmpeg reads on open); the index says how many frames there are and how frame i
is reached: by presentation timestamp, by counting frames from a clean chunk (AVI), or only by
decoding from the start.

To read frame i we seek to the last entry point (keyframe) at or before it, by the timestamp
the container seeks by, and decode forward. Every pass checks what the decoder hands out: the
first frame after a seek must be the entry point or an earlier frame (a seek that lands later
steps back one keyframe), timestamps must rise in output order and be in the index, a counted
pass must start on a keyframe, and the stream must not end before the frame. Anything else
switches the reader to a sequential decode from the start, which is slow but right by
definition, and never raises for a frame that exists. On the way the decoder skips the packets
of frames that are neither wanted nor referenced (pts addressing), and once the last wanted
packet is in, it is drained instead of fed the packets after it.

Each decoded frame is converted to RGB, cut to the requested box, turned upright (the display
matrix of a phone video), mirrored if asked, and copied into one preallocated clip tensor, so
the full-size RGB frame is dropped while it is still in cache.

The container is opened with only the MPEG-4 Part 2 decoder allowed during stream probing
(`PROBE_OPTIONS`): ffmpeg's stream probing otherwise opens the video decoder and decodes the
first frames, 2 ms of a 40 ms training item, only to learn what the packet index and the first
real decode tell us anyway. MPEG-4 Part 2 still probes: its B-frame flag is read only by its
decoder. Codecs whose frame size only the decoder knows (FLV1, H.263) are probed in full.
"""
from __future__ import annotations

import bisect
import logging

import av
import numpy as np
import torch

from . import containers
from .containers import UPRIGHT, Orientation
from .errors import VideoReadError, short_message
from .mp4_index import read_track
from .packet_index import PacketIndex, build_index, sample_table_index, with_head

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
# Drain the decoder once every wanted frame's packet is in, instead of feeding it more packets
# (see PyAVBackend._decode_skipping); False feeds on until the decoder hands out the last frame.
DRAIN = True
# A seek that lands after its keyframe is retried this many keyframes earlier before the
# reader gives up seeking in the file.
MAX_STEP_BACK = 2
ROTATIONS = ("auto", "ignore")
# Display rotations found only in decoded frames (not in the container header), by path: the
# next reader of the file in this process knows them before it decodes (module docstring).
_ROTATION_SEEN_IN_FRAMES: dict[str, Orientation] = {}


def _open_video(path: str, num_threads: int, probe_all: bool = False):
    """(container, first video stream); one-line errors. Probing is limited to MPEG-4 Part 2
    (PROBE_OPTIONS) unless the header leaves the frame size unknown or `probe_all`."""
    try:
        container = av.open(path, metadata_errors="ignore",
                            container_options=None if probe_all else PROBE_OPTIONS)
    except av.FFmpegError as err:
        raise VideoReadError(path, f"cannot decode: {short_message(err)}") from err
    try:
        if not container.streams.video:
            raise VideoReadError(path, "no video stream")
        stream = container.streams.video[0]
        if stream.codec_context is None:
            raise VideoReadError(path, "cannot decode: no decoder for this codec")
        context = stream.codec_context
        if not (context.width > 0 and context.height > 0):
            if not probe_all:  # FLV1, H.263: the size is in the bitstream, not the header
                container.close()
                return _open_video(path, num_threads, probe_all=True)
            raise VideoReadError(path, "cannot decode: no frame size in the stream")
        if num_threads:
            context.thread_count = num_threads
    except BaseException:
        container.close()
        raise
    return container, stream


def header_frames(path: str) -> tuple[Orientation, tuple[int, int] | None]:
    """(display orientation, stored (height, width)) of the first video stream as the header
    gives them, for readers that do not open the file with PyAV (decord); (UPRIGHT, None) for
    a file PyAV cannot open."""
    try:
        container, stream = _open_video(path, 0)
    except VideoReadError:
        return UPRIGHT, None
    with container:
        size = (int(stream.codec_context.height), int(stream.codec_context.width))
        return _header_orientation(container, stream, path)[0], size


def _header_orientation(container, stream, path: str):
    """(orientation, mp4_index track or None) of an opened file: what its frames showed this
    process before, else the MP4/MOV track header's matrix."""
    track = read_track(path, stream.id) if containers.is_mp4_family(container) else None
    if path in _ROTATION_SEEN_IN_FRAMES:
        return _ROTATION_SEEN_IN_FRAMES[path], track
    if track is not None and track.matrix is not None:
        return Orientation.from_matrix(*track.matrix), track
    return UPRIGHT, track


class PyAVBackend:
    """Frame-accurate random access to one video with PyAV.

    rotation="auto" hands out frames as displayed (`orientation`, from the MP4/MOV track
    header or the frames' display matrix); "ignore" as stored."""

    name = "pyav"

    def __init__(self, path: str, num_threads: int = 1, rotation: str = "auto"):
        if rotation not in ROTATIONS:
            raise ValueError(f"unknown rotation {rotation!r}; choose from {', '.join(ROTATIONS)}")
        self.path = path
        self.num_threads = num_threads
        self.rotation = rotation
        self.frames_decoded = 0  # every frame the decoder produced, including those skipped after a seek
        self.seek_failure: str | None = None  # why seeking was given up for this file, if it was
        self._container, self._stream = _open_video(path, num_threads)
        try:
            context = self._stream.codec_context
            self.codec, self.has_b_frames = context.name, bool(context.has_b_frames)
            # skip unwanted non-reference frames where the decoder does that safely; a pass the
            # skipping spoils is retried without it (`_read`)
            self.skips_frames = SKIP_NONREF and self.codec in containers.SKIPS_NON_REFERENCE
            self.declared_frames = int(self._stream.frames or 0)
            self.stored_size = (int(context.height), int(context.width))
            self.header_orientation, track = _header_orientation(self._container, self._stream, path)
            self.orientation = self.header_orientation if rotation == "auto" else UPRIGHT
            index = None
            if SAMPLE_TABLE and track is not None:
                index = sample_table_index(self._container, self._stream, track.offsets)
            self._set_index(index if index is not None and index.exact
                            else build_index(self._container, self._stream))
            if self._index.head_stamps:
                self._set_index(self._check_head(self._index))
            self.fps = _stream_fps(self._stream, self.num_frames)
        except BaseException:
            self._container.close()
            raise

    @property
    def frame_size(self) -> tuple[int, int]:
        """(height, width) of the frames as handed out (displayed, unless rotation="ignore")."""
        return self.orientation.display_size(*self.stored_size)

    @property
    def addressing(self) -> str:
        """How frames are reached: "pts", "count" or "sequential" (snvideo.data.packet_index)."""
        return self._index.addressing if self.seek_failure is None else "sequential"

    @property
    def addressing_reason(self) -> str:
        return self.seek_failure or self._index.reason

    @property
    def seeks_exactly(self) -> bool:
        """True when frames are reached by a seek; False: decoded by count from the first frame."""
        return self.addressing != "sequential"

    def _set_index(self, index: PacketIndex) -> None:
        self._index = index
        self.frames_present = index.num_frames
        # A header that declares more frames than the file holds means the file was cut short:
        # report the declared length so the missing frames fail loudly instead of vanishing.
        missing = self.declared_frames - index.chunks_seen
        self.num_frames = self.frames_present + missing if missing > 0 else self.frames_present

    def _reopen(self) -> None:
        self._container.close()
        self._container, self._stream = _open_video(self.path, self.num_threads)

    def _index_by_demuxing(self) -> None:
        """Replace a sample-table index that a packet contradicted: reopen, demux everything."""
        logger.debug("%s: the sample table's timestamps differ from the packets'; demuxing", self.path)
        self._reopen()
        index = build_index(self._container, self._stream)
        self._set_index(self._check_head(index) if index.head_stamps else index)

    def _check_head(self, index: PacketIndex) -> PacketIndex:
        """Decode the head of a stream that does not start clean (a cut without a leading
        keyframe) until every head packet has had its chance to come out, and keep the frames
        that did. Timestamps not rising in output order make the index sequential."""
        last_head = index.head_stamps[-1]
        seen: list[int] = []
        container, stream = _open_video(self.path, self.num_threads)
        with container:
            try:
                for frame in container.decode(stream):
                    if frame.pts is None or (seen and frame.pts <= seen[-1]):
                        return PacketIndex(index.num_frames, reason="timestamps do not rise in output order",
                                           chunks_seen=index.chunks_seen)
                    seen.append(frame.pts)
                    if frame.pts > last_head:
                        break
            except av.FFmpegError as err:
                raise VideoReadError(self.path, f"cannot decode: {short_message(err)}") from err
        return with_head(index, seen)

    def close(self) -> None:
        self._container.close()

    def read(self, wanted: np.ndarray, box: tuple[int, int, int, int] | None = None,
             flip: bool = False) -> torch.Tensor:
        """Frames at sorted unique indices `wanted` as uint8 (len(wanted), H, W, 3), upright
        (see `orientation`); with box = (top, left, height, width) in the handed-out frame only
        that part of each frame, cut right after its RGB conversion; flip=True mirrors each
        (cut) frame left-right in the same copy."""
        wanted = [int(i) for i in wanted]
        self._check_present(wanted)
        try:
            try:
                return self._read(wanted, box, flip)
            except _OrientationChanged as change:
                self._learn_orientation(change.orientation)
                if box is not None:  # the box was drawn in frames of the old shape
                    raise VideoReadError(self.path, f"the frames carry a {change.orientation.degrees} degree "
                                                    "display rotation the header does not") from None
                return self._read(wanted, box, flip)
        except av.FFmpegError as err:
            raise VideoReadError(self.path, f"cannot decode: {short_message(err)}") from err

    def _read(self, wanted: list[int], box, flip: bool) -> torch.Tensor:
        # frames before the first keyframe (a cut stream whose decoder shows its head) are
        # reached only from the start
        while self.seeks_exactly and self._index.entries and wanted[0] >= self._index.entries[0]:
            try:
                return self._read_by_seeking(wanted, self._clip(len(wanted), box, flip))
            except _SampleTableMismatch:  # once at most: a demux index has no table to contradict
                self._index_by_demuxing()
                self._check_present(wanted)
            except _AddressingMismatch as mismatch:
                if self.skips_frames:  # first try the same seeks decoding every frame, with a
                    self.skips_frames = False  # new decoder (libdav1d keeps skipping after a flush)
                    logger.debug("%s: %s; reading again without skipping frames", self.path, mismatch)
                    self._reopen()
                    continue
                self.seek_failure = f"seeking gave up: {mismatch}"
                logger.debug("%s: %s; decoding from the first frame", self.path, self.seek_failure)
        return self._read_sequential(wanted, self._clip(len(wanted), box, flip))

    def _learn_orientation(self, orientation: Orientation) -> None:
        _ROTATION_SEEN_IN_FRAMES[self.path] = orientation
        self.orientation = orientation

    def _check_present(self, wanted: list[int]) -> None:
        if wanted and wanted[-1] >= self.frames_present:
            missing = next(i for i in wanted if i >= self.frames_present)
            raise VideoReadError(
                self.path,
                f"cannot decode frame {missing}: file truncated ({self.frames_present} of {self.num_frames} frames present)",
            )

    def _clip(self, count: int, box: tuple[int, int, int, int] | None, flip: bool) -> _ClipFrames:
        return _ClipFrames(self.path, count, self.stored_size, self.orientation,
                           self.rotation == "auto", box, flip)

    def _read_by_seeking(self, wanted: list[int], clip: _ClipFrames) -> torch.Tensor:
        index = self._index
        pos = 0
        try:
            while pos < len(wanted):
                entry = bisect.bisect_right(index.entries, wanted[pos]) - 1
                for step_back in range(MAX_STEP_BACK + 1):
                    try:
                        pos = self._pass(entry, wanted, pos, clip)
                        break
                    except _LandedLate:
                        if entry == 0 or step_back == MAX_STEP_BACK:
                            raise _AddressingMismatch("seeks land after their keyframe") from None
                        entry -= 1
        finally:
            self._stream.codec_context.skip_frame = "DEFAULT"
        return clip.frames()

    def _pass(self, entry: int, wanted: list[int], pos: int, clip: _ClipFrames) -> int:
        """Seek to entry point `entry`, decode forward and add wanted frames from wanted[pos] on,
        until they are all in or the next one is better reached by another seek; returns the
        new pos. Raises _LandedLate when the first frame is past the target, and
        _AddressingMismatch when the decoder contradicts the index."""
        index = self._index
        counting = index.addressing == "count"
        target = wanted[pos]
        self._container.seek(index.seek_to[entry], stream=self._stream, backward=True, any_frame=False)
        if counting:
            frames = self._decode_all(index.seek_to[entry])
        else:
            frames = self._decode_skipping([index.pts[i] for i in wanted[pos:]])
        current = last = index.entries[entry] - 1 if counting else -1
        for frame in frames:
            self.frames_decoded += 1
            if counting:
                if last == index.entries[entry] - 1 and not frame.key_frame:
                    raise _AddressingMismatch(f"the seek to frame {index.entries[entry]} did not start on a keyframe")
                current = last + 1
            else:
                current = index.frame_of_pts.get(frame.pts)
                if current is None:
                    raise _AddressingMismatch(f"the decoder handed out a frame at pts {frame.pts}, not in the index")
                if last < 0 and current > index.entries[entry]:
                    raise _LandedLate
                if current <= last:
                    raise _AddressingMismatch("timestamps do not rise in output order")
            last = current
            if current < target:
                continue
            if current > target:
                raise _AddressingMismatch(f"frame {target} never came out of the decoder")
            clip.add(frame)
            pos += 1
            if pos == len(wanted):
                return pos
            target = wanted[pos]
            next_entry = index.entries[bisect.bisect_right(index.entries, target) - 1]
            if next_entry - current > SEEK_GAP:  # cheaper to jump to the keyframe than to decode the gap
                return pos
        raise _AddressingMismatch(f"the stream ended before frame {target}")

    def _decode_all(self, first_dts: int):
        """Every frame from the current position to the end of the stream ("count"
        addressing: no frame may be skipped, each one is counted). The seek must have landed
        on the chunk numbered `first_dts`, or the count would start from another frame."""
        context = self._stream.codec_context
        context.skip_frame = "DEFAULT"
        first = True
        for packet in self._container.demux(self._stream):
            if first and packet.size:
                if packet.dts != first_dts:
                    raise _AddressingMismatch(f"a seek to chunk {first_dts} landed on chunk {packet.dts}")
                first = False
            yield from context.decode(packet)

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
                raise _SampleTableMismatch("a packet's pts differs from the sample table")
            wanted = pts in unsent
            skip = self.skips_frames and pts is not None and not wanted
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
        container, stream = _open_video(self.path, self.num_threads)
        with container:
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
    """The frames of one read: each is converted to RGB, cut to `box` (given in the displayed
    frame), turned upright, mirrored when `flip`, and copied into one uint8 tensor allocated
    for all of them at the first frame. `check_rotation`: the first frame's display rotation
    must be `orientation` (else _OrientationChanged)."""

    def __init__(self, path: str, count: int, stored_size: tuple[int, int], orientation: Orientation,
                 check_rotation: bool, box: tuple[int, int, int, int] | None, flip: bool):
        self.path, self.count, self.stored_size, self.flip = path, count, stored_size, flip
        self.orientation, self.check_rotation = orientation, check_rotation
        self.box = orientation.stored_box(box, *stored_size) if box is not None else None
        self._frames: torch.Tensor | None = None
        self._array: np.ndarray | None = None  # the same memory, for numpy's faster plain copy
        self._filled = 0

    def add(self, frame) -> None:
        if self._filled == 0 and self.check_rotation:
            seen = Orientation.from_degrees(frame.rotation)
            if seen != self.orientation:
                raise _OrientationChanged(seen)
        rgb = frame.to_ndarray(format="rgb24")
        if self.box is not None:
            if rgb.shape[:2] != self.stored_size:
                raise VideoReadError(self.path, f"cannot decode: a {rgb.shape[1]}x{rgb.shape[0]} frame in a "
                                                f"{self.stored_size[1]}x{self.stored_size[0]} stream")
            top, left, height, width = self.box
            rgb = rgb[top : top + height, left : left + width]
        rgb = self.orientation.to_display(rgb)
        if self._frames is None:
            self._frames = torch.empty((self.count, *rgb.shape), dtype=torch.uint8)
            self._array = self._frames.numpy()
        elif rgb.shape != self._array.shape[1:]:
            raise VideoReadError(self.path, f"cannot decode: frames of {self._array.shape[2]}x"
                                            f"{self._array.shape[1]} and {rgb.shape[1]}x{rgb.shape[0]} in one stream")
        if self.flip and self.orientation == UPRIGHT:  # torch: numpy's copy through a negative stride is ten times slower
            self._frames[self._filled].copy_(torch.from_numpy(rgb).flip(1))
        elif self.flip:  # a turned frame is a view with negative strides, which torch cannot take
            self._array[self._filled] = rgb[:, ::-1]
        else:
            self._array[self._filled] = rgb
        self._filled += 1

    def frames(self) -> torch.Tensor:
        """The frames added so far, (count, H, W, 3)."""
        if self._frames is not None:
            return self._frames[: self._filled]
        height, width = (self.box[2], self.box[3]) if self.box else (0, 0)
        height, width = self.orientation.display_size(height, width)
        return torch.empty((0, height, width, 3), dtype=torch.uint8)


class _AddressingMismatch(Exception):
    """The decoder contradicted the index; decode from the start instead."""


class _SampleTableMismatch(_AddressingMismatch):
    """A packet's pts is not the one the sample table gave; index by demuxing instead."""


class _LandedLate(Exception):
    """The first frame after a seek lies past the frame the seek was for."""


class _OrientationChanged(Exception):
    """The frames carry a display rotation the header did not announce."""

    def __init__(self, orientation: Orientation):
        super().__init__(orientation)
        self.orientation = orientation


def _stream_fps(stream, num_frames: int) -> float:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return float(rate)
    if stream.duration and stream.time_base and num_frames:
        return num_frames / float(stream.duration * stream.time_base)
    return 0.0
