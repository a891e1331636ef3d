"""Synthetic videos: an encoder helper and the embedded motion-only demo dataset.

The demo dataset is a small Kinetics-layout action-recognition set whose classes are defined
purely by *motion* of a textured object over a textured background ("moving left", "rotating
clockwise", "growing", ...).  Every per-frame state variable has the same distribution in every
class, so a single frame carries no label information and a model has to use time:

* position is uniform on the frame, treated as a torus (objects wrap around the edges), and
  translation on a torus keeps a uniform distribution uniform;
* angle is uniform on [0, 360) and rotation keeps it uniform;
* size is log-uniform between ``object_size`` bounds; growing and shrinking move the log-size
  around that interval as a circle, and the object fades out near the wrap point so that the
  wrap is not a pop (the fade is a function of the size, hence class-independent as well);
* textures, colours, background drift, noise and distractors are drawn the same way for every
  class.

Generation is deterministic given ``seed`` (every video has its own seeded generator, so the
result does not depend on the number of workers).
"""
from __future__ import annotations

import csv
import json
import math
import multiprocessing as mp
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from snvideo.atomic import atomic_output, atomic_write_text

__all__ = [
    "ALL_MOTIONS", "CLASS_NAMES", "DIRECTIONS", "SceneParams", "label_folder",
    "make_demo_dataset", "object_states",
    "render_video", "write_video",
]

CLASS_NAMES: tuple[str, ...] = (
    "moving left",
    "moving right",
    "moving up",
    "moving down",
    "rotating clockwise",
    "rotating counter-clockwise",
    "growing",
    "shrinking",
    "swinging side to side",
    "staying still",
)
# Directions of "moving <direction>" classes, as unit (dx, dy) on screen (y down).
_DIAGONAL = 1 / math.sqrt(2)
DIRECTIONS: dict[str, tuple[float, float]] = {
    "left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0),
    "up-left": (-_DIAGONAL, -_DIAGONAL), "up-right": (_DIAGONAL, -_DIAGONAL),
    "down-left": (-_DIAGONAL, _DIAGONAL), "down-right": (_DIAGONAL, _DIAGONAL),
}
# Every motion the generator draws: CLASS_NAMES (the default classes), the diagonals, and more
# motions for other class sets (the embedded demo picks its classes with `motions`).
MORE_MOTIONS: tuple[str, ...] = (
    "swinging up and down",
    "circling clockwise",
    "circling counter-clockwise",
    "shaking",
)
ALL_MOTIONS: tuple[str, ...] = CLASS_NAMES + tuple(
    f"moving {d}" for d in DIRECTIONS if f"moving {d}" not in CLASS_NAMES) + MORE_MOTIONS

# The appearance task (make_demo_dataset(task="appearance")): the class is the object's colour
# family, its motion is drawn from the dataset's motions independently of the class.
APPEARANCE_COLORS: dict[str, tuple[float, float, float]] = {
    "red object": (0.9, 0.1, 0.1), "green object": (0.1, 0.8, 0.1),
    "blue object": (0.1, 0.2, 0.9), "yellow object": (0.95, 0.9, 0.1),
    "cyan object": (0.1, 0.9, 0.9), "magenta object": (0.9, 0.1, 0.9),
    "orange object": (1.0, 0.55, 0.0), "purple object": (0.5, 0.1, 0.6),
    "white object": (0.95, 0.95, 0.95), "black object": (0.05, 0.05, 0.05),
}
_COLOR_JITTER = 0.12  # each palette colour: the family's colour +- this per channel

_CODECS = {"h264": "libx264", "mpeg4": "mpeg4", "vp9": "libvpx-vp9"}
_MARKER = ".demo_complete.json"
_PARAMS = ".demo_params.json"


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------

def write_video(path: str | os.PathLike, frames: Any, fps: float = 25.0, codec: str = "h264",
                gop: int | None = None, crf: int | None = None, preset: str | None = None,
                threads: int = 1) -> Path:
    """Encode ``frames`` (uint8 array or tensor of shape (T, H, W, 3), RGB) to ``path``.

    The container follows the file extension (.mp4, .avi, .mkv, .webm, .mov).  ``codec`` is
    "h264" (libx264, yuv420p), "mpeg4" or "vp9".  ``gop`` fixes the keyframe interval exactly
    (no scene-cut keyframes); None keeps the encoder default (250 for libx264).  ``crf``
    sets the quality of h264/vp9 (encoder default if None).  h264 output is reproducible
    byte for byte (x264's mbtree is off).  The file is written under a temporary name and
    moved into place, so it is either complete or absent.
    """
    if codec not in _CODECS:
        raise ValueError(f"codec must be one of {sorted(_CODECS)}, got {codec!r}")
    if hasattr(frames, "detach"):  # torch tensor, without importing torch here
        frames = frames.detach().cpu().numpy()
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    t, h, w, _ = frames.shape
    if t == 0:
        raise ValueError("frames is empty")
    if h % 2 or w % 2:
        raise ValueError(f"frame size must be even for yuv420p, got {w}x{h}")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")

    import av  # local import: PyAV is only needed when encoding

    path = Path(path)
    rate = Fraction(fps).limit_denominator(1001)
    hidden = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")  # folders get scanned
    with atomic_output(path, hidden) as tmp, av.open(tmp, mode="w") as container:
        stream = container.add_stream(_CODECS[codec], rate=rate)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.thread_count = max(0, int(threads))
        options: dict[str, str] = {}
        if gop is not None:
            if gop < 1:
                raise ValueError(f"gop must be >= 1, got {gop}")
            stream.codec_context.gop_size = int(gop)
            options.update({"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0"})
        if codec == "h264":
            options["crf"] = str(23 if crf is None else crf)
            # x264's macroblock-tree rate control makes the output depend on heap contents
            # (the same frames encoded twice in one process can differ); without it the
            # encode is reproducible, which the seeded demo dataset promises.
            options["x264-params"] = "mbtree=0"
            if preset:
                options["preset"] = preset
        elif codec == "vp9":
            options.update({"crf": str(32 if crf is None else crf), "b": "0",
                            "deadline": "realtime", "cpu-used": "8"})
        else:  # mpeg4 has no crf: give it a bitrate that keeps textures visible
            stream.codec_context.bit_rate = max(400_000, int(w * h * float(rate) * 0.6))
        stream.options = options
        for i in range(t):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frames[i]),
                                               format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SceneParams:
    """Difficulty knobs of the demo scenes.  Lengths are fractions of the frame's short side,
    rates are per frame; ``(lo, hi)`` pairs are uniform ranges."""

    speed: tuple[float, float] = (0.012, 0.024)        # translation, short sides per frame
    rot_speed: tuple[float, float] = (4.0, 8.0)        # rotation, degrees per frame
    zoom_rate: tuple[float, float] = (0.012, 0.024)    # growth, log-size per frame
    swing_amplitude: tuple[float, float] = (0.08, 0.16)
    swing_period: tuple[float, float] = (10.0, 18.0)   # frames
    circle_radius: tuple[float, float] = (0.12, 0.2)   # circling: radius of the path
    circle_speed: tuple[float, float] = (15.0, 25.0)   # circling: degrees of the path per frame
    shake_amplitude: tuple[float, float] = (0.03, 0.06)
    shake_period: tuple[float, float] = (2.5, 4.0)     # frames, drawn for x and y separately
    object_size: tuple[float, float] = (0.22, 0.6)     # object diameter
    zoom_fade: float = 0.1   # fraction of the log-size circle over which the object fades
    noise: float = 0.02      # std of additive per-pixel Gaussian noise (0..1 intensities)
    bg_drift: float = 0.006  # max background speed, short sides per frame (any direction)
    distractors: int = 0     # extra small objects in class-independent straight motion
    min_contrast: float = 0.25  # min RGB distance between object and background mean colours
    # half-width (object radii) of an inverted bar from the centre to the edge of every object:
    # it shows orientation, so rotation is visible on small frames; 0 = none
    orientation_mark: float = 0.0


def _smooth_texture(rng: np.random.Generator, size: int, cutoff: float) -> np.ndarray:
    """Periodic smooth noise in [0, 1]: white noise low-passed in the Fourier domain."""
    f = np.fft.fftfreq(size)
    r2 = f[:, None] ** 2 + f[None, :] ** 2
    spec = np.fft.fft2(rng.standard_normal((size, size))) * np.exp(-r2 / (2 * cutoff ** 2))
    tex = np.fft.ifft2(spec).real
    tex -= tex.min()
    return tex / max(tex.max(), 1e-8)


def _palette_texture(rng: np.random.Generator, size: int, cutoff: float, colors: np.ndarray,
                     sharpness: float) -> np.ndarray:
    """(size, size, 3) periodic colour texture mixing ``colors`` (k, 3) by a smooth field."""
    t = _smooth_texture(rng, size, cutoff)
    t = 1.0 / (1.0 + np.exp(-sharpness * (t - 0.5)))  # push towards crisp two-tone patterns
    t = (t - t.min()) / max(t.max() - t.min(), 1e-8)
    pos = t * (len(colors) - 1)
    i0 = np.minimum(pos.astype(np.int64), len(colors) - 2)
    frac = (pos - i0)[..., None]
    return colors[i0] * (1 - frac) + colors[i0 + 1] * frac


def _sample_periodic(tex: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear lookup of a periodic (S, S, 3) texture at float coordinates (any shape)."""
    s = tex.shape[0]
    flat = tex.reshape(-1, 3).astype(np.float32, copy=False)
    x, y = x.astype(np.float32, copy=False), y.astype(np.float32, copy=False)
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    x0 = x0.astype(np.int32) % s
    y0 = y0.astype(np.int32) % s
    x1, y1 = (x0 + 1) % s, (y0 + 1) % s
    r0, r1 = y0 * s, y1 * s
    top = flat[r0 + x0] * (1 - fx) + flat[r0 + x1] * fx
    bottom = flat[r1 + x0] * (1 - fx) + flat[r1 + x1] * fx
    return top * (1 - fy) + bottom * fy


def _wrap(d: np.ndarray, period: float) -> np.ndarray:
    return (d + period / 2) % period - period / 2


@dataclass
class _Object:
    """Per-frame trajectories of one object: centre (px), angle (rad, clockwise on screen),
    radius (px), opacity; plus its look."""

    cx: np.ndarray
    cy: np.ndarray
    angle: np.ndarray
    radius: np.ndarray
    alpha: np.ndarray
    texture: np.ndarray
    sides: int  # 0 = disc, else a regular polygon
    orientation_mark: float = 0.0


def _random_colors(rng: np.random.Generator, k: int) -> np.ndarray:
    return rng.uniform(0.0, 1.0, (k, 3))


def _object_trajectory(rng: np.random.Generator, motion: str, t: np.ndarray, h: int, w: int,
                       p: SceneParams, size_scale: float = 1.0,
                       velocity: tuple[float, float] | None = None) -> dict[str, np.ndarray]:
    short = min(h, w)
    # Stationary start state, identical for every class.
    x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
    a0 = rng.uniform(0, 2 * np.pi)
    u0 = rng.uniform(0, 1)  # position on the log-size circle
    lo, hi = (s * size_scale for s in p.object_size)
    log_range = math.log(hi / lo)
    speed = rng.uniform(*p.speed) * short
    rot = math.radians(rng.uniform(*p.rot_speed))
    zoom = rng.uniform(*p.zoom_rate) / log_range
    x, y = np.full_like(t, x0), np.full_like(t, y0)
    angle, u = np.full_like(t, a0), np.full_like(t, u0)
    if motion.startswith("moving ") and motion[len("moving "):] in DIRECTIONS:
        dx, dy = DIRECTIONS[motion[len("moving "):]]
        x, y = x0 + dx * speed * t, y0 + dy * speed * t
    elif motion == "rotating clockwise":
        angle = a0 + rot * t
    elif motion == "rotating counter-clockwise":
        angle = a0 - rot * t
    elif motion == "growing":
        u = u0 + zoom * t
    elif motion == "shrinking":
        u = u0 - zoom * t
    elif motion in ("swinging side to side", "swinging up and down"):
        amp = rng.uniform(*p.swing_amplitude) * short
        period = rng.uniform(*p.swing_period)
        offset = amp * np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi))
        if motion == "swinging side to side":
            x = x0 + offset
        else:
            y = y0 + offset
    elif motion in ("circling clockwise", "circling counter-clockwise"):
        # the centre runs around a circle (y points down: increasing angle is clockwise)
        radius = rng.uniform(*p.circle_radius) * short
        turn = math.radians(rng.uniform(*p.circle_speed))
        phase = rng.uniform(0, 2 * np.pi) + (turn if motion == "circling clockwise" else -turn) * t
        x, y = x0 + radius * np.cos(phase), y0 + radius * np.sin(phase)
    elif motion == "shaking":  # fast small oscillations, independent in x and y
        amp = rng.uniform(*p.shake_amplitude) * short
        x = x0 + amp * np.sin(2 * np.pi * t / rng.uniform(*p.shake_period)
                              + rng.uniform(0, 2 * np.pi))
        y = y0 + amp * np.sin(2 * np.pi * t / rng.uniform(*p.shake_period)
                              + rng.uniform(0, 2 * np.pi))
    elif motion == "drifting":  # distractors: straight motion in a random direction
        vx, vy = velocity if velocity is not None else (0.0, 0.0)
        x, y = x0 + vx * t, y0 + vy * t
    elif motion != "staying still":
        raise ValueError(f"unknown motion {motion!r}")
    u = u % 1.0
    radius = 0.5 * short * lo * np.exp(u * log_range)
    fade = max(p.zoom_fade, 1e-6)
    alpha = np.clip(np.minimum(u, 1.0 - u) / fade, 0.0, 1.0)
    return {"cx": x % w, "cy": y % h, "angle": angle, "radius": radius, "alpha": alpha}


def _make_object(rng: np.random.Generator, motion: str, t: np.ndarray, h: int, w: int,
                 p: SceneParams, colors: np.ndarray, size_scale: float = 1.0,
                 velocity: tuple[float, float] | None = None) -> _Object:
    traj = _object_trajectory(rng, motion, t, h, w, p, size_scale, velocity)
    texture = _palette_texture(rng, 32, rng.uniform(0.06, 0.14), colors, rng.uniform(4, 12))
    sides = int(rng.choice([0, 3, 4, 5, 6]))
    return _Object(texture=texture, sides=sides, orientation_mark=p.orientation_mark, **traj)


def _composite(frames: np.ndarray, obj: _Object, xs: np.ndarray, ys: np.ndarray) -> None:
    """Alpha-blend ``obj`` into ``frames`` (T, H, W, 3) in place, wrapping around the edges."""
    h, w = xs.shape
    for i in range(frames.shape[0]):
        dx = _wrap(xs - obj.cx[i], w)
        dy = _wrap(ys - obj.cy[i], h)
        c, s = math.cos(obj.angle[i]), math.sin(obj.angle[i])
        r = obj.radius[i]
        u = (c * dx + s * dy) / r  # object coordinates, unit radius
        v = (-s * dx + c * dy) / r
        rho = np.hypot(u, v)
        if obj.sides:
            n = obj.sides
            theta = np.arctan2(v, u) % (2 * np.pi / n) - np.pi / n
            rho = rho * np.cos(theta) / math.cos(math.pi / n)  # 1 on the polygon's edge
        cover = np.clip((1.0 - rho) * r + 0.5, 0.0, 1.0) * obj.alpha[i]
        inside = np.nonzero(cover)
        if not inside[0].size:
            continue
        tex_px = obj.texture.shape[0]
        color = _sample_periodic(obj.texture, (u[inside] + 1) * tex_px / 2,
                                 (v[inside] + 1) * tex_px / 2)
        if obj.orientation_mark:
            bar = (u[inside] > 0) & (np.abs(v[inside]) < obj.orientation_mark)
            color[bar] = 1.0 - color[bar]
        a = cover[inside][:, None]
        frames[i][inside] = frames[i][inside] * (1 - a) + color * a


def object_states(label: int | str, rng: np.random.Generator | int, height: int = 64,
                  width: int | None = None, frames: int = 32,
                  params: SceneParams | None = None) -> dict[str, np.ndarray]:
    """Per-frame state of a class-``label`` object as render_video draws it: centre ``cx``,
    ``cy`` (pixels), ``angle`` (radians, clockwise), ``radius`` (pixels) and ``alpha``.
    For checking that single-frame states do not depend on the class."""
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    motion = CLASS_NAMES[label] if isinstance(label, (int, np.integer)) else str(label)
    if motion not in ALL_MOTIONS:
        raise ValueError(f"unknown class {label!r}")
    t = np.arange(frames, dtype=np.float64)
    return _object_trajectory(rng, motion, t, int(height), int(width or height),
                              params or SceneParams())


def render_video(label: int | str, rng: np.random.Generator | int, height: int = 64,
                 width: int | None = None, frames: int = 32,
                 params: SceneParams | None = None,
                 object_color: tuple[float, float, float] | None = None) -> np.ndarray:
    """Render one demo video of class ``label`` (index into CLASS_NAMES or name) as uint8
    (frames, height, width, 3). ``object_color``: the object's palette is drawn around this
    colour (the appearance task) instead of uniformly."""
    p = params or SceneParams()
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    motion = CLASS_NAMES[label] if isinstance(label, (int, np.integer)) else str(label)
    if motion not in ALL_MOTIONS:
        raise ValueError(f"unknown class {label!r}")
    h, w = int(height), int(width or height)
    short = min(h, w)
    t = np.arange(frames, dtype=np.float64)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5

    # Colours: object and background palettes whose mean colours differ by min_contrast.
    for _ in range(100):
        bg_colors, obj_colors = _random_colors(rng, 2), _random_colors(rng, 3)
        if object_color is not None:
            jitter = rng.uniform(-_COLOR_JITTER, _COLOR_JITTER, (3, 3))
            obj_colors = np.clip(np.asarray(object_color) + jitter, 0.0, 1.0)
        if np.linalg.norm(bg_colors.mean(0) - obj_colors.mean(0)) >= p.min_contrast:
            break

    # Background: a periodic texture tiled over the frame, drifting slowly.
    bg_tex = _palette_texture(rng, 64, rng.uniform(0.03, 0.08), bg_colors, rng.uniform(2, 6))
    bg_scale = 64 / short * rng.uniform(0.6, 1.2)  # texture pixels per frame pixel
    drift = rng.uniform(0, p.bg_drift) * short
    heading = rng.uniform(0, 2 * np.pi)
    bx = (drift * math.cos(heading) * t)[:, None, None]
    by = (drift * math.sin(heading) * t)[:, None, None]
    out = _sample_periodic(bg_tex, (xs[None] - bx) * bg_scale, (ys[None] - by) * bg_scale)

    objects = []
    for _ in range(p.distractors):
        speed = rng.uniform(*p.speed) * short
        heading = rng.uniform(0, 2 * np.pi)
        objects.append(_make_object(rng, "drifting", t, h, w, p, _random_colors(rng, 3),
                                    size_scale=0.5,
                                    velocity=(speed * math.cos(heading),
                                              speed * math.sin(heading))))
    objects.append(_make_object(rng, motion, t, h, w, p, obj_colors))
    for obj in objects:
        _composite(out, obj, xs, ys)

    if p.noise > 0:
        out += p.noise * rng.standard_normal(out.shape, dtype=np.float32)
    return (np.clip(out, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Demo dataset
# --------------------------------------------------------------------------------------------

def label_folder(name: str) -> str:
    """Class folder name for a label ("moving left" -> "moving_left")."""
    return name.replace(" ", "_")


_ID_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"


def _youtube_ids(rng: np.random.Generator, n: int) -> list[str]:
    """``n`` distinct 11-character YouTube-like ids (never starting with '-')."""
    ids: list[str] = []
    seen: set[str] = set()
    while len(ids) < n:
        chars = rng.integers(0, len(_ID_CHARS), 11)
        vid = "".join(_ID_CHARS[c] for c in chars)
        if vid[0] != "-" and vid not in seen:
            seen.add(vid)
            ids.append(vid)
    return ids


@dataclass(frozen=True)
class _VideoJob:
    path: str
    motion: str  # the class's motion, by name (its index depends on the class set)
    seed: tuple[int, ...]
    size: int
    frames: int
    fps: float
    codec: str
    params: SceneParams
    object_color: tuple[float, float, float] | None = None


def _render_and_write(job: _VideoJob) -> str:
    if os.path.exists(job.path):  # written atomically, so an existing file is complete
        return "skipped"
    frames = render_video(job.motion, np.random.default_rng(list(job.seed)), job.size, job.size,
                          job.frames, job.params, job.object_color)
    write_video(job.path, frames, fps=job.fps, codec=job.codec, crf=18)
    return "done"


def _run_jobs(jobs: Sequence[_VideoJob], workers: int) -> list[str]:
    if workers <= 1 or len(jobs) <= 1:
        return [_render_and_write(j) for j in jobs]
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    chunk = max(1, len(jobs) // (workers * 8))
    with ProcessPoolExecutor(workers, mp_context=mp.get_context(method)) as pool:
        return list(pool.map(_render_and_write, jobs, chunksize=chunk))


def _default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def make_demo_dataset(out_dir: str | os.PathLike, classes: int = 10, train_per_class: int = 40,
                      val_per_class: int = 10, size: int = 64, frames: int = 32,
                      fps: float = 16.0, seed: int = 0, workers: int | None = None,
                      codec: str = "h264", *, motions: Sequence[str] | None = None,
                      speed: tuple[float, float] = SceneParams.speed,
                      rot_speed: tuple[float, float] = SceneParams.rot_speed,
                      zoom_rate: tuple[float, float] = SceneParams.zoom_rate,
                      swing_amplitude: tuple[float, float] = SceneParams.swing_amplitude,
                      swing_period: tuple[float, float] = SceneParams.swing_period,
                      circle_radius: tuple[float, float] = SceneParams.circle_radius,
                      circle_speed: tuple[float, float] = SceneParams.circle_speed,
                      shake_amplitude: tuple[float, float] = SceneParams.shake_amplitude,
                      shake_period: tuple[float, float] = SceneParams.shake_period,
                      object_size: tuple[float, float] = SceneParams.object_size,
                      zoom_fade: float = SceneParams.zoom_fade,
                      noise: float = SceneParams.noise,
                      bg_drift: float = SceneParams.bg_drift,
                      distractors: int = SceneParams.distractors,
                      min_contrast: float = SceneParams.min_contrast,
                      orientation_mark: float = SceneParams.orientation_mark,
                      task: str = "motion", verbose: bool = False) -> dict[str, Any]:
    """Generate the motion demo dataset in the Kinetics layout and return a summary dict.

    Layout: ``out_dir/annotations/{train,val}.csv`` (label,youtube_id,time_start,time_end,
    split) and ``out_dir/videos/<label_folder>/{id}_{start:06d}_{end:06d}.mp4``.  A complete
    dataset with the same parameters is detected by a marker file and not regenerated; an
    interrupted run resumes (finished videos are kept); a dataset made with different
    parameters is replaced. ``motions`` picks the classes by name from ALL_MOTIONS (default:
    the first ``classes`` of CLASS_NAMES).

    ``task="appearance"``: the same scenes with other cues. The classes are the first
    ``classes`` colour families of APPEARANCE_COLORS (the object's palette is drawn around the
    family's colour); each video's motion is drawn uniformly from ``motions`` (default: the
    first ``classes`` of CLASS_NAMES), whatever its class, so motion carries no label.
    """
    if task not in ("motion", "appearance"):
        raise ValueError(f"task must be 'motion' or 'appearance', got {task!r}")
    appearance_motions: tuple[str, ...] = ()
    if task == "appearance":
        appearance_motions = tuple(motions) if motions is not None else \
            CLASS_NAMES[:classes]
        if not 1 <= classes <= len(APPEARANCE_COLORS):
            raise ValueError(f"classes must be in 1..{len(APPEARANCE_COLORS)} for the "
                             f"appearance task, got {classes}")
        motions = None
    if motions is not None:
        unknown = [m for m in motions if m not in ALL_MOTIONS]
        if unknown or len(set(motions)) != len(motions) or not motions:
            raise ValueError(f"motions must be distinct names from {', '.join(ALL_MOTIONS)}; "
                             f"got {list(motions)}")
        names, classes = tuple(motions), len(motions)
    elif not 1 <= classes <= len(CLASS_NAMES):
        raise ValueError(f"classes must be in 1..{len(CLASS_NAMES)}, got {classes}")
    else:
        names = CLASS_NAMES[:classes]
    if train_per_class < 0 or val_per_class < 0 or train_per_class + val_per_class == 0:
        raise ValueError("need at least one train or val video per class")
    if size < 8 or size % 2:
        raise ValueError(f"size must be an even number >= 8, got {size}")
    if frames < 2:
        raise ValueError(f"frames must be >= 2, got {frames}")
    for name, rng_ in (("speed", speed), ("rot_speed", rot_speed), ("zoom_rate", zoom_rate),
                       ("swing_amplitude", swing_amplitude), ("swing_period", swing_period),
                       ("circle_radius", circle_radius), ("circle_speed", circle_speed),
                       ("shake_amplitude", shake_amplitude), ("shake_period", shake_period),
                       ("object_size", object_size)):
        if len(rng_) != 2 or not 0 <= rng_[0] <= rng_[1]:
            raise ValueError(f"{name} must be a (lo, hi) pair with 0 <= lo <= hi, got {rng_}")
    if not (0 < object_size[0] and object_size[1] < 1 and swing_period[0] > 0
            and shake_period[0] > 0):
        raise ValueError(f"need 0 < object_size < 1 and swing_period, shake_period > 0, got "
                         f"{object_size}, {swing_period}, {shake_period}")
    if noise < 0 or bg_drift < 0 or distractors < 0 or zoom_fade < 0:
        raise ValueError("noise, bg_drift, distractors and zoom_fade must be >= 0")
    scene = SceneParams(speed=tuple(speed), rot_speed=tuple(rot_speed),
                        zoom_rate=tuple(zoom_rate), swing_amplitude=tuple(swing_amplitude),
                        swing_period=tuple(swing_period), circle_radius=tuple(circle_radius),
                        circle_speed=tuple(circle_speed), shake_amplitude=tuple(shake_amplitude),
                        shake_period=tuple(shake_period), object_size=tuple(object_size),
                        zoom_fade=zoom_fade, noise=noise, bg_drift=bg_drift,
                        distractors=int(distractors), min_contrast=min_contrast,
                        orientation_mark=float(orientation_mark))
    ext = {"vp9": ".webm"}.get(codec, ".mp4")
    config = {"classes": list(names), "train_per_class": train_per_class,
              "val_per_class": val_per_class, "size": size, "frames": frames,
              "fps": float(fps), "seed": seed, "codec": codec, "scene": asdict(scene),
              "version": 1}
    if task == "appearance":
        names = tuple(APPEARANCE_COLORS)[:classes]
        config.update(classes=list(names), task=task, motions=list(appearance_motions))
    config = json.loads(json.dumps(config))  # tuples -> lists, as read back from disk

    root = Path(out_dir)
    ann_dir, video_dir = root / "annotations", root / "videos"
    marker, params_file = root / _MARKER, root / _PARAMS
    summary = {"root": str(root), "annotations": str(ann_dir), "videos": str(video_dir),
               "train_csv": str(ann_dir / "train.csv"), "val_csv": str(ann_dir / "val.csv"),
               "classes": list(names),
               "num_train": classes * train_per_class, "num_val": classes * val_per_class}
    if marker.exists():
        try:
            done = json.loads(marker.read_text())
        except (OSError, ValueError):
            done = {}
        if done.get("config") == config and all(Path(summary[k]).exists()
                                                for k in ("train_csv", "val_csv")):
            return {**summary, "skipped": True, "generated": 0, "seconds": 0.0}

    start = time.perf_counter()
    # A previous run with other parameters (ours: it left a params file) is replaced.
    if params_file.exists():
        try:
            previous = json.loads(params_file.read_text())
        except (OSError, ValueError):
            previous = None
        if previous != config:
            for d in (ann_dir, video_dir):
                shutil.rmtree(d, ignore_errors=True)
    marker.unlink(missing_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    _atomic_write(params_file, json.dumps(config, indent=1))

    splits = [("train", train_per_class), ("val", val_per_class)]
    id_rng = np.random.default_rng([seed, 0])
    ids = iter(_youtube_ids(id_rng, classes * (train_per_class + val_per_class)))
    rows: dict[str, list[tuple[str, str, int, int, str]]] = {"train": [], "val": []}
    jobs: list[_VideoJob] = []
    for split_idx, (split, per_class) in enumerate(splits):
        for c, name in enumerate(names):
            for i in range(per_class):
                vid = next(ids)
                t0 = int(id_rng.integers(0, 290))
                rows[split].append((name, vid, t0, t0 + 10, split))
                path = video_dir / label_folder(name) / f"{vid}_{t0:06d}_{t0 + 10:06d}{ext}"
                if task == "appearance":  # class: colour; motion: any, drawn per video
                    motion = appearance_motions[int(id_rng.integers(len(appearance_motions)))]
                    jobs.append(_VideoJob(str(path), motion, (seed, 1, split_idx, c, i), size,
                                          frames, float(fps), codec, scene,
                                          APPEARANCE_COLORS[name]))
                    continue
                jobs.append(_VideoJob(str(path), name, (seed, 1, split_idx, c, i), size, frames,
                                      float(fps), codec, scene))
    results = _run_jobs(jobs, _default_workers() if workers is None else int(workers))

    for split, _ in splits:
        lines = ["label,youtube_id,time_start,time_end,split"]
        lines += [_csv_line(r) for r in rows[split]]
        _atomic_write(ann_dir / f"{split}.csv", "\n".join(lines) + "\n")
    seconds = time.perf_counter() - start
    generated = results.count("done")
    _atomic_write(marker, json.dumps({"config": config, "generated": generated,
                                      "seconds": round(seconds, 2)}, indent=1))
    if verbose:
        print(f"demo dataset: {generated} videos written, {results.count('skipped')} kept, "
              f"{seconds:.1f}s -> {root}")
    return {**summary, "skipped": False, "generated": generated, "seconds": seconds}


def _csv_line(row: Iterable[Any]) -> str:
    import io

    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow(row)
    return buf.getvalue()


def _atomic_write(path: Path, text: str) -> None:
    """Hidden while half-written: the dataset folder is scanned for its files."""
    atomic_write_text(path, text, tmp=path.with_name(f".{path.name}.tmp{os.getpid()}"))
