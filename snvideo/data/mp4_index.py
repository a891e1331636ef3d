"""Presentation timestamps of an MP4/MOV video track from its sample table, without demuxing.

ffmpeg reads the sample table (the `moov` box) when it opens an MP4 and keeps one entry per
sample: decode timestamp, byte position, size, keyframe flag (PyAV: `stream.index_entries`).
It does not expose the composition offsets (`ctts`) that turn decode into presentation
timestamps, so they are read here from the file: pts = dts + offset, as ffmpeg's mov demuxer
computes a packet's pts. Together they give PyAVBackend the packet index that demuxing every
packet gives (`pyav_backend.build_index`), at about a tenth of its cost.

Only the plain layout is read: one `moov`, no fragments (`mvex`), offsets that are not
negative and one per sample. Anything else returns None and the caller demuxes. The read path
checks every packet it demuxes against these timestamps all the same.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import BinaryIO, Iterator

import numpy as np

MAX_MOOV_BYTES = 256 << 20  # a sample table beyond this is not read into memory


@dataclass
class Mp4Track:
    """What snvideo reads of one MP4/MOV track itself, beside what ffmpeg exposes."""

    offsets: np.ndarray | None  # per-sample composition offsets (None: not the plain layout)
    matrix: tuple[int, int, int, int] | None  # the track header's a, b, c, d (16.16), None: no tkhd


def read_track(path: str, track_id: int) -> Mp4Track | None:
    """Track `track_id` of an MP4/MOV file, or None when its `moov` cannot be read. The
    offsets are zeros when the track has no `ctts` box (presentation order is decode order)
    and None when the file is not laid out as described in the module docstring."""
    try:
        with open(path, "rb") as file:
            moov = _read_moov(file)
        if moov is None:
            return None
        # fragmented (`mvex`): the samples are described by later moof boxes
        fragmented = any(kind == b"mvex" for kind, _, _ in _boxes(moov, 0, len(moov)))
        for kind, start, end in _boxes(moov, 0, len(moov)):
            if kind == b"trak" and _track_id(moov, start, end) == track_id:
                offsets = None if fragmented else _track_offsets(moov, start, end)
                return Mp4Track(offsets, _track_matrix(moov, start, end))
    except (OSError, struct.error, ValueError):
        return None
    return None


def composition_offsets(path: str, track_id: int) -> np.ndarray | None:
    """Per-sample composition offsets (decode order) of track `track_id` (see `read_track`)."""
    track = read_track(path, track_id)
    return None if track is None else track.offsets


def _header(data: bytes, position: int, end: int) -> tuple[bytes, int, int]:
    """(type, header length, size) of the box at data[position]; size 0 means up to `end`."""
    size, kind = struct.unpack_from(">I4s", data, position)
    offset = 8
    if size == 1:  # a 64-bit size follows the type
        size, offset = struct.unpack_from(">Q", data, position + 8)[0], 16
    elif size == 0:
        size = end - position
    if size < offset:
        raise ValueError("box smaller than its header")
    return kind, offset, size


def _read_moov(file: BinaryIO) -> bytes | None:
    """The payload of the file's one top-level `moov` box, or None. A box that runs past the
    end of the file (a cut `mdat`) ends the walk."""
    file_size = os.fstat(file.fileno()).st_size
    moov, position = None, 0
    while position + 8 <= file_size:
        file.seek(position)
        kind, offset, size = _header(file.read(16), 0, file_size - position)
        if kind == b"moov":
            if moov is not None or size - offset > MAX_MOOV_BYTES:
                return None
            file.seek(position + offset)
            moov = file.read(size - offset)
            if len(moov) != size - offset:
                return None
        position += size
    return moov


def _boxes(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, payload end) of the boxes in data[start:end]."""
    position = start
    while position + 8 <= end:
        kind, offset, size = _header(data, position, end)
        if position + size > end:
            raise ValueError("box runs past its parent")
        yield kind, position + offset, position + size
        position += size


def _child(data: bytes, start: int, end: int, kind: bytes) -> tuple[int, int] | None:
    for child, child_start, child_end in _boxes(data, start, end):
        if child == kind:
            return child_start, child_end
    return None


def _track_id(data: bytes, start: int, end: int) -> int | None:
    tkhd = _child(data, start, end, b"tkhd")
    if tkhd is None:
        return None
    version = data[tkhd[0]]
    # full box header (4 bytes), creation and modification times (4 or 8 bytes each), track_ID
    return struct.unpack_from(">I", data, tkhd[0] + 4 + (16 if version == 1 else 8))[0]


def _track_matrix(data: bytes, start: int, end: int) -> tuple[int, int, int, int] | None:
    """a, b, c, d of the track header's transformation matrix (ISO 14496-12 tkhd)."""
    tkhd = _child(data, start, end, b"tkhd")
    if tkhd is None:
        return None
    version = data[tkhd[0]]
    # full box header 4, times and track_ID and reserved and duration (v0: 20, v1: 32),
    # reserved 8, layer, alternate_group, volume, reserved (2 each); then the 3x3 matrix
    at = tkhd[0] + 4 + (32 if version == 1 else 20) + 8 + 8
    a, b, _, c, d = struct.unpack_from(">5i", data, at)
    return a, b, c, d


def _track_offsets(data: bytes, start: int, end: int) -> np.ndarray | None:
    box = (start, end)
    for kind in (b"mdia", b"minf", b"stbl"):
        box = _child(data, *box, kind)
        if box is None:
            return None
    stsz = _child(data, *box, b"stsz")
    if stsz is None:
        return None
    samples = struct.unpack_from(">I", data, stsz[0] + 8)[0]  # after full box header, sample_size
    ctts = _child(data, *box, b"ctts")
    if ctts is None:
        return np.zeros(samples, dtype=np.int64)
    count = struct.unpack_from(">I", data, ctts[0] + 4)[0]
    if ctts[0] + 8 + 8 * count > ctts[1]:
        return None
    # (sample_count, sample_offset) pairs; the offset is read as signed, as ffmpeg does
    runs = np.frombuffer(data, dtype=">i4", count=2 * count, offset=ctts[0] + 8).reshape(count, 2)
    counts, offsets = runs[:, 0].astype(np.int64), runs[:, 1].astype(np.int64)
    if (counts < 0).any() or (offsets < 0).any() or counts.sum() != samples:
        return None
    return np.repeat(offsets, counts)
