"""Write raw RGB frames to stdout for make_fixtures.sh: frame i shows the 8 bits of i as
vertical stripes (tests/conftest.py reads them back), over a texture that moves 3 pixels a
frame, so that encoders choose B-frames and motion vectors as on real footage.

    python index_frames.py WIDTH HEIGHT FRAMES | ffmpeg -f rawvideo -pix_fmt rgb24 -s WxH ...
"""
import sys

import numpy as np

width, height, count = (int(a) for a in sys.argv[1:4])
rng = np.random.default_rng(0)
texture = np.kron(rng.integers(-24, 25, (height // 4 + 1, 2 * width // 4 + 1)), np.ones((4, 4)))
stripe = width // 8
for i in range(count):
    frame = np.full((height, width), 40.0)
    for bit in range(8):
        if (i >> bit) & 1:
            frame[:, bit * stripe:(bit + 1) * stripe] = 215.0
    shift = (3 * i) % width
    frame += texture[:height, shift:shift + width]
    # a colour ramp, so that rotations and mirrors are told apart in every channel
    rgb = np.stack([frame, frame * 0.8 + np.linspace(0, 40, height)[:, None], frame * 0.9], axis=-1)
    sys.stdout.buffer.write(np.clip(rgb, 0, 255).astype(np.uint8).tobytes())
