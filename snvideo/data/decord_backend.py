"""decord decoding, plus the cheap checks that tell when its frame addressing cannot be trusted."""
from __future__ import annotations

import av  # noqa: F401  (before decord: see below)
import numpy as np
import torch

from .containers import UPRIGHT, Orientation
from .errors import VideoReadError, short_message

# decord bundles its own FFmpeg libraries. Loaded before PyAV's, they leave PyAV unable to open
# some encoders (libvpx-vp9: "avcodec_open2 ... returned 22"), so PyAV is always imported first.
try:
    import decord
except ImportError:  # decord ships x86-64 Linux wheels only; PyAV is the decoder elsewhere
    decord = None


class DecordBackend:
    """One decord.VideoReader per backend object, dropped on close.

    decord's reader grows memory when reused for many get_batch calls; a fresh reader per video
    and a seek(0) after each batch avoid that. num_threads=0 lets ffmpeg choose.
    """

    name = "decord"

    def __init__(self, path: str, num_threads: int = 1, turn: Orientation = UPRIGHT):
        # decord's FFmpeg hands frames out turned for display already (tested on MP4/MOV with
        # 90, 180 and 270 degrees); `turn` is applied on top (its inverse for stored frames)
        self.turn = turn
        if decord is None:
            raise VideoReadError(path, "cannot decode: decord is not installed")
        self.path = path
        self.frames_decoded = 0  # frames requested from decord (it does not report its own work)
        try:
            self._reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=num_threads)
            self.num_frames = len(self._reader)
            self.fps = float(self._reader.get_avg_fps())
        except Exception as err:  # decord raises DECORDError or a bare RuntimeError
            message = short_message(err)
            if "cannot find video stream" in message.lower():
                raise VideoReadError(path, "no video stream") from err
            raise VideoReadError(path, f"cannot decode: {message}") from err

    def untrusted_reason(self) -> str | None:
        """Why decord's own index looks wrong, judged from its frame timestamps (costs microseconds)."""
        if self.num_frames <= 0:
            return "decord found no frames"
        stamps = self._reader.get_frame_timestamp(np.arange(self.num_frames))[:, 0]
        if not np.all(np.isfinite(stamps)) or stamps[0] < -1e-3:
            return "decord has no presentation timestamps (seeking would be inaccurate)"
        if self.num_frames > 1 and not np.all(np.diff(stamps) > 0):
            return "decord's frame timestamps are not increasing"
        return None

    def read(self, wanted: np.ndarray, box: tuple[int, int, int, int] | None = None,
             flip: bool = False) -> torch.Tensor:
        """Frames at sorted unique indices `wanted` as uint8 (len(wanted), H, W, 3), turned by
        `turn`; `box` (top, left, height, width) cuts a view of them (decord decodes
        whole frames), flip=True mirrors them left-right (a copy)."""
        try:
            batch = self._reader.get_batch([int(i) for i in wanted])
            self._reader.seek(0)
        except Exception as err:  # decord raises DECORDError or a bare RuntimeError
            raise VideoReadError(self.path, f"cannot decode: {short_message(err)}") from err
        self.frames_decoded += len(wanted)
        frames = torch.utils.dlpack.from_dlpack(batch.to_dlpack())  # zero-copy hand-over
        frames = self.turn.to_display(frames, axes=(1, 2))
        if box is not None:
            top, left, height, width = box
            frames = frames[:, top : top + height, left : left + width]
        return frames.flip(2) if flip else frames

    def close(self) -> None:
        self._reader = None
