"""Shared pytest fixtures."""
from __future__ import annotations

import os
import types
from pathlib import Path

import numpy as np
import pytest

# Without a GPU, Triton kernels run on CPU tensors in Triton's interpreter, which must be chosen
# before triton is first imported (tests/test_norm_triton.py checks the SN kernels that way).
if "TRITON_INTERPRET" not in os.environ:
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"

# ---------------------------------------------------------------------------------------------
# snvideo.data tests: tiny videos whose frames say which frame they are.
# Frame i shows the 8 bits of i as 8 vertical stripes (bright = 1), which survives lossy codecs.
# ---------------------------------------------------------------------------------------------
STRIPES = 8


def index_frame(index: int, width: int = 64, height: int = 48, noise: bool = True) -> np.ndarray:
    """RGB frame (H, W, 3) uint8 encoding `index` (0..255); optional texture makes files larger."""
    frame = np.full((height, width, 3), 40, np.uint8)
    stripe = width // STRIPES
    for bit in range(STRIPES):
        if (index >> bit) & 1:
            frame[:, bit * stripe : (bit + 1) * stripe] = 215
    if noise:
        texture = np.random.default_rng(index).integers(-30, 31, (height, width, 1))
        frame = np.clip(frame.astype(np.int16) + texture, 0, 255).astype(np.uint8)
    return frame


def frame_index(frame) -> int:
    """Inverse of index_frame for a decoded frame (H, W, 3)."""
    frame = np.asarray(frame)
    stripe = frame.shape[1] // STRIPES
    bits = [frame[:, b * stripe + 2 : (b + 1) * stripe - 2].mean() > 128 for b in range(STRIPES)]
    return sum(1 << b for b, on in enumerate(bits) if on)


def write_video(
    path: Path,
    codec: str = "libx264",
    num_frames: int = 60,
    fps: int = 25,
    size: tuple[int, int] = (64, 48),
    options: dict | None = None,
    container_options: dict | None = None,
) -> Path:
    """Encode index frames with PyAV; size is (width, height)."""
    import av

    width, height = size
    with av.open(str(path), "w", options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = dict(options or {})
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(index_frame(i, width, height), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


@pytest.fixture(scope="session")
def video_tools():
    """Helpers to write and recognise index-encoding test videos."""
    return types.SimpleNamespace(write_video=write_video, frame_index=frame_index, index_frame=index_frame)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A 3-class generated demo dataset (4 training, 2 validation videos a class, 32x32), made
    once per session for the tests that train on it."""
    from snvideo.data.synthetic import make_demo_dataset

    root = tmp_path_factory.mktemp("tiny_demo")
    make_demo_dataset(root, classes=3, train_per_class=4, val_per_class=2, size=32, frames=16,
                      seed=0, workers=1)
    return root
