"""What a container says about its video frames, in one place: which timestamps it stores and
which it makes up, what its demuxer seeks by, which files are videos, and how the picture is
turned for display.

These are rules about FFmpeg's demuxers, used by PyAVBackend to choose how frames are addressed
(docs/data_loading.md has the table). A rule here only chooses a path; every path checks what
the decoder hands out and falls back when a rule was wrong for a file.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".flv", ".mpg", ".mpeg", ".3gp", ".ogv", ".wmv", ".ts"}
)

# Containers that store no presentation timestamps: AVI numbers its chunks in decode order
# (FFmpeg's MPEG-4 parser then makes up pts from the frame types, unique but not the display
# order when B-frames are packed), raw elementary streams have only what a parser guesses.
# Their frames are addressed by counting decoded frames, never by pts.
INVENTED_TIMESTAMPS = frozenset({"avi", "h264", "hevc", "m4v", "mpegvideo", "h263", "cavsvideo", "vc1"})
# Demuxers whose seek takes a decode timestamp (MPEG-TS and MPEG-PS search their packets by
# DTS, AVI by chunk number = dts). The others (MP4/MOV by their sample table, Matroska/WebM by
# cues, FLV by its keyframe list) land on the keyframe when given its pts.
SEEK_BY_DTS = frozenset({"mpegts", "mpegtsraw", "mpeg", "avi"})
# Decoders whose `skip_frame = NONREF` drops only frames no other frame references, so that
# skipping unwanted ones leaves every wanted frame as a full decode gives it. libdav1d (AV1) is
# not one: it loses frames that a later packet shows (tested on libaom's alt-ref frames).
# Other decoders decode every frame.
SKIPS_NON_REFERENCE = frozenset({"h264", "hevc", "mpeg4", "mpeg1video", "mpeg2video", "vp8", "vp9",
                                 "h263", "flv", "msmpeg4", "msmpeg4v2", "msmpeg4v3", "wmv1", "wmv2"})
# MP4-family demuxers: a sample table (`mp4_index`) and a track header with the display matrix.
MP4_FAMILY = "mov"


def format_names(container) -> set[str]:
    """FFmpeg's names for the container's format ("mov,mp4,m4a,3gp,3g2,mj2" -> six names)."""
    return set(container.format.name.split(","))


def invents_timestamps(container) -> bool:
    return bool(format_names(container) & INVENTED_TIMESTAMPS)


def seeks_by_dts(container) -> bool:
    return bool(format_names(container) & SEEK_BY_DTS)


def is_mp4_family(container) -> bool:
    return MP4_FAMILY in format_names(container)


@dataclass(frozen=True)
class Orientation:
    """How stored frames are turned for display: `quarter_turns` counter-clockwise quarter turns
    (np.rot90's k), as players, the ffmpeg CLI and decord show a phone video. From the MP4/MOV
    track header's matrix, or FFmpeg's per-frame rotation (`VideoFrame.rotation`)."""

    quarter_turns: int = 0

    @classmethod
    def from_degrees(cls, degrees: float) -> Orientation:
        """From FFmpeg's display rotation (PyAV's `VideoFrame.rotation`, counter-clockwise);
        angles that are not a multiple of 90 degrees are rounded to the nearest one."""
        return cls(int(round(degrees / 90.0)) % 4)

    @classmethod
    def of_frame(cls, frame, rotation: str = "auto") -> Orientation:
        """How a decoded PyAV frame is turned for display under the `data.rotation` setting:
        by its own display matrix with "auto", not at all with "ignore"."""
        return cls.from_degrees(frame.rotation) if rotation == "auto" else UPRIGHT

    @classmethod
    def from_matrix(cls, a: int, b: int, c: int, d: int) -> Orientation:
        """From the rotation part of an MP4 track header's matrix (a, b, c, d), the angle
        FFmpeg gives the decoded frames (av_display_rotation_get). A mirror in the matrix is
        not applied, as FFmpeg's rotation leaves it out too (docs/data_loading.md)."""
        if not (math.hypot(a, c) and math.hypot(b, d)):
            return cls(0)
        return cls.from_degrees(-math.degrees(math.atan2(b / math.hypot(b, d), a / math.hypot(a, c))))

    def inverse(self) -> Orientation:
        return Orientation((4 - self.quarter_turns) % 4)

    @property
    def degrees(self) -> int:
        return 90 * self.quarter_turns

    def display_size(self, height: int, width: int) -> tuple[int, int]:
        return (width, height) if self.quarter_turns % 2 else (height, width)

    def stored_box(self, box: tuple[int, int, int, int], height: int, width: int) -> tuple[int, int, int, int]:
        """The box (top, left, h, w) of the displayed frame, in the stored (height, width) frame."""
        top, left, h, w = box
        turns = self.quarter_turns
        if turns == 0:
            return box
        if turns == 2:
            return height - top - h, width - left - w, h, w
        if turns == 1:  # displayed (r, c) shows stored (c, width - 1 - r)
            return left, width - top - h, w, h
        return height - left - w, top, w, h  # turns == 3: displayed (r, c) shows stored (height - 1 - c, r)

    def to_display(self, frames: np.ndarray | torch.Tensor, axes: tuple[int, int] = (0, 1)):
        """A view of stored frames (their height and width on `axes`) as displayed."""
        if self.quarter_turns == 0:
            return frames
        if isinstance(frames, torch.Tensor):
            return torch.rot90(frames, self.quarter_turns, dims=axes)
        return np.rot90(frames, self.quarter_turns, axes=axes)


UPRIGHT = Orientation(0)
