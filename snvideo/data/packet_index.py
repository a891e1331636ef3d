"""Where each frame of a video sits, from its packets, and how it may be addressed.

Frame i is, by definition, the i-th frame a sequential decode yields. An index says how many
frames that is and how a reader finds frame i without decoding from the start; it is built
from the packets alone (a demux, or an MP4's sample table), without decoding, and each way of
addressing is used only where the container and the packets prove it:

- "pts": the container stores presentation timestamps (MP4/MOV, Matroska/WebM, MPEG-TS, FLV).
  Frame i has the i-th smallest pts among the packets the decoder turns into frames. A seek
  goes to a keyframe by the timestamp its demuxer seeks by (`containers.SEEK_BY_DTS`).
  Packets before the first keyframe, and packets after it that display before it, make frames
  only if the decoder can decode them; when a file has such packets (a stream cut without a
  leading keyframe) PyAVBackend decodes the head once to see which do (`head_stamps`).
- "count": the container makes timestamps up (AVI), but the decoder hands out one frame per
  chunk in chunk order: streams without B-frames, and MPEG-4 Part 2 with packed B-frames (the
  Xvid/DivX way, where a chunk holds a P-frame with the B-frame shown before it and an almost
  empty chunk later stands for the P-frame). Frame i is the i-th non-empty chunk's; a seek goes
  to a chunk from which decoding starts clean (a keyframe; with packed B-frames, a chunk that
  holds an I-frame alone and owes no frame to an earlier chunk).
- "sequential": nothing proven (B-frames in AVI without packing, packets without timestamps,
  repeated timestamps, no keyframe): frames are counted from the start of the file.

The read path checks every seek against what the decoder hands out (pyav_backend).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import av
import numpy as np

from . import containers
from .errors import short_message

AVINDEX_KEYFRAME, AVINDEX_DISCARD_FRAME = 1, 2  # AVIndexEntry flags (libavformat)
VOP_START = b"\x00\x00\x01\xb6"  # MPEG-4 Part 2 video object plane
VOP_TYPES = "IPBS"


@dataclass
class PacketIndex:
    """How many frames a stream holds and how frame i is found."""

    num_frames: int  # frames a sequential decode yields from the packets the file holds
    addressing: str = "sequential"  # "pts", "count" or "sequential" (module docstring)
    reason: str = ""  # why this addressing, in words
    pts: list[int] = field(default_factory=list)  # "pts": pts[i] = pts of frame i
    entries: list[int] = field(default_factory=list)  # frames a seek can start at, sorted
    seek_to: list[int] = field(default_factory=list)  # the timestamp that seeks to entries[j]
    demux_error: str | None = None  # the demuxer stopped early (truncated / damaged file)
    chunks_seen: int = 0  # packets and chunks the file holds, empty "drop frame" chunks included
    # from a sample table: the pts each packet must carry, by byte position (empty: no check)
    pts_at_position: dict[int, int] = field(default_factory=dict)
    # "pts" with a head to check: timestamps of packets that decode to a frame only if the
    # decoder manages without the frames before the cut (PyAVBackend decodes the head once)
    head_stamps: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.frame_of_pts = {p: i for i, p in enumerate(self.pts)}

    @property
    def exact(self) -> bool:
        """True when frames can be reached by a seek."""
        return self.addressing != "sequential"


@dataclass
class _Packet:
    pts: int | None
    dts: int | None
    key: bool
    vops: str = ""  # MPEG-4 Part 2 in AVI: the types of the VOPs the packet holds, e.g. "PB"


def build_index(container, stream) -> PacketIndex:
    """Demux (without decoding) every packet of `stream` and index them."""
    invented = containers.invents_timestamps(container)
    read_vops = invented and stream.codec_context is not None and stream.codec_context.name == "mpeg4"
    packets: list[_Packet] = []
    demux_error = None
    seen = last_dts = 0
    try:
        for packet in container.demux(stream):
            if packet.pts is None and packet.dts is None and packet.size == 0:
                continue  # PyAV's end-of-stream flush packet
            seen += 1
            if packet.dts is not None:
                last_dts = max(last_dts, packet.dts + 1)
            if packet.size == 0 or packet.is_discard:  # AVI drop-frame chunks, edit-list cuts
                continue
            packets.append(_Packet(packet.pts, packet.dts, packet.is_keyframe,
                                   vop_types(bytes(packet)) if read_vops else ""))
    except av.FFmpegError as err:
        demux_error = short_message(err)
    if invented:
        # AVI numbers chunks by dts, also the empty ones its demuxer does not hand out
        avi = "avi" in containers.format_names(container)
        index = count_index(packets, _has_b_frames(stream), avi)
        index.chunks_seen = max(seen, last_dts) if avi else seen
    else:
        index = pts_index(packets, containers.seeks_by_dts(container), _has_b_frames(stream))
        index.chunks_seen = seen
    index.demux_error = demux_error
    return index


def sample_table_index(container, stream, offsets: np.ndarray | None) -> PacketIndex | None:
    """The index `build_index` makes, from an MP4/MOV sample table instead of a demux: decode
    timestamps, positions and keyframe flags from ffmpeg's index entries, composition offsets
    from the file (`mp4_index.read_track`). None unless the container is MP4/MOV, the table
    lists as many samples as the header declares, none is an edit-list discard, every sample
    lies inside the file (not truncated) and the offsets line up with the samples."""
    if not containers.is_mp4_family(container) or offsets is None:
        return None
    entries = getattr(stream, "index_entries", None)  # older PyAV does not expose them
    entries = entries[:] if entries is not None else []
    if not entries or len(entries) != (stream.frames or 0) or len(offsets) != len(entries):
        return None
    rows = np.array([(e.timestamp, e.pos, e.size, e.flags) for e in entries], dtype=np.int64)
    dts, positions, sizes, flags = rows.T
    if (flags & AVINDEX_DISCARD_FRAME).any() or (positions + sizes).max() > container.size:
        return None
    stamps = (dts + offsets).tolist()
    keys = (flags & AVINDEX_KEYFRAME).astype(bool).tolist()
    packets = [_Packet(p, d, k) for p, d, k in zip(stamps, dts.tolist(), keys)]
    index = pts_index(packets, containers.seeks_by_dts(container), _has_b_frames(stream))
    index.chunks_seen = len(entries)
    index.pts_at_position = dict(zip(positions.tolist(), stamps))
    return index


def pts_index(packets: list[_Packet], seek_by_dts: bool, reorders: bool) -> PacketIndex:
    """The index of a container that stores presentation timestamps (module docstring)."""
    stamps = [p.pts if p.pts is not None else p.dts for p in packets]
    if not packets:
        return PacketIndex(0, reason="no packets")
    if None in stamps:
        return _sequential(packets, "packets without timestamps")
    first_key = next((i for i, p in enumerate(packets) if p.key), None)
    if first_key is None:
        return _sequential(packets, "no keyframe")
    if reorders and first_key == 0 and all(a < b for a, b in zip(stamps, stamps[1:])):
        # B-frames but timestamps rising in decode order: made up from the decode order
        return _sequential(packets, "B-frames with timestamps in decode order (made up by the muxer)")
    key_pts = stamps[first_key]
    body = [s for s in stamps[first_key:] if s >= key_pts]
    head = [s for s in stamps if s < key_pts] + [s for s in stamps[:first_key] if s >= key_pts]
    if len(set(stamps)) != len(stamps):
        return _sequential(packets, "repeated timestamps")
    index = PacketIndex(num_frames=len(body), addressing="pts", pts=sorted(body), head_stamps=sorted(head),
                        reason="presentation timestamps from the container")
    _add_entries(index, packets[first_key:], seek_by_dts)
    return index


def with_head(index: PacketIndex, decoded_head: list[int]) -> PacketIndex:
    """`index` with the head frames a decode showed (timestamps the decoder handed out)."""
    kept = sorted(set(index.head_stamps) & set(decoded_head))
    new = PacketIndex(num_frames=index.num_frames + len(kept), addressing=index.addressing,
                      reason=index.reason + (f"; {len(index.head_stamps) - len(kept)} packets before the "
                                             "first keyframe decode to nothing" if len(kept) < len(index.head_stamps) else ""),
                      pts=sorted(index.pts + kept), demux_error=index.demux_error,
                      chunks_seen=index.chunks_seen, pts_at_position=index.pts_at_position)
    # entries keep their timestamps; their frame numbers move by the head frames before them
    entry_pts = [index.pts[e] for e in index.entries]
    new.entries = [new.frame_of_pts[p] for p in entry_pts]
    new.seek_to = list(index.seek_to)
    return new


def _add_entries(index: PacketIndex, packets: list[_Packet], seek_by_dts: bool) -> None:
    for packet in packets:
        if packet.key:
            pts = packet.pts if packet.pts is not None else packet.dts
            frame = index.frame_of_pts.get(pts)
            if frame is None:
                continue
            index.entries.append(frame)
            index.seek_to.append(packet.dts if seek_by_dts and packet.dts is not None else pts)
    order = sorted(range(len(index.entries)), key=index.entries.__getitem__)
    index.entries = [index.entries[j] for j in order]
    index.seek_to = [index.seek_to[j] for j in order]


def count_index(packets: list[_Packet], reorders: bool, chunk_dts: bool) -> PacketIndex:
    """The index of a container that makes timestamps up (module docstring): "count" where
    the decoder hands out one frame per chunk in chunk order, else "sequential"."""
    if not packets:
        return PacketIndex(0, reason="no packets")
    if not packets[0].key:
        return _sequential(packets, "the first chunk is not a keyframe")
    if chunk_dts and any(p.dts is None for p in packets):
        return _sequential(packets, "chunks without numbers")
    packed = any(len(p.vops) > 1 for p in packets)
    if packed:
        entries = _packed_entries(packets)
        reason = "no presentation timestamps; packed B-frames: one frame per chunk"
    elif reorders or any("B" in p.vops for p in packets):
        return _sequential(packets, "B-frames in a container without presentation timestamps")
    else:
        entries = [i for i, p in enumerate(packets) if p.key]
        reason = "no presentation timestamps; no B-frames: one frame per chunk"
    index = PacketIndex(num_frames=len(packets), addressing="count", reason=reason, entries=entries)
    index.seek_to = [packets[i].dts if packets[i].dts is not None else i for i in entries]
    return index


def _packed_entries(packets: list[_Packet]) -> list[int]:
    """Chunks a decode can start from in a packed stream: an I-frame alone, while no anchor
    frame packed into an earlier chunk is still waiting for its placeholder chunk."""
    entries, owed = [], False
    for i, packet in enumerate(packets):
        if len(packet.vops) > 1:  # an anchor with the B-frame shown before it: the anchor is owed
            owed = True
        elif owed and packet.vops in ("I", "P", "S"):  # the placeholder that shows the owed anchor
            owed = False
        elif packet.vops == "I" and packet.key and not owed:
            entries.append(i)
    return entries


def vop_types(data: bytes) -> str:
    """The coding types of the MPEG-4 Part 2 VOPs in a packet, in order ("I", "PB", ...)."""
    types = []
    at = data.find(VOP_START)
    while 0 <= at < len(data) - 4:
        types.append(VOP_TYPES[data[at + 4] >> 6])
        at = data.find(VOP_START, at + 4)
    return "".join(types)


def _sequential(packets: list[_Packet], reason: str) -> PacketIndex:
    """Frames counted from the start; packets before the first keyframe are taken to decode to
    nothing (what H.264/HEVC decoders do; `check_videos.py --deep` compares with a decode)."""
    first_key = next((i for i, p in enumerate(packets) if p.key), 0)
    return PacketIndex(num_frames=len(packets) - first_key, reason=reason)


def _has_b_frames(stream) -> bool:
    return bool(stream.codec_context is not None and stream.codec_context.has_b_frames)
