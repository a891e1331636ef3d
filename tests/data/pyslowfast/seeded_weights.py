"""Deterministic weights from state-dict keys, shared by the reference generators in this folder
and the tests: the same key and shape give the same values in any process, so PySlowFast's own
model (make_*_reference.py) and ours (tests) get identical weights without shipping them.

Values come from numpy's PCG64 bit stream (stable across numpy versions) seeded with the CRC-32
of the key, turned into normals by Box-Muller in float64, at scales that keep a deep network's activations of order 1:
conv / linear weights N(0, 1 / fan_in), norm weights 1 + 0.1 N, biases and running means 0.1 N,
running variances uniform [0.5, 1.5]. Integer buffers (num_batches_tracked) are left alone.
(Eval-mode norms with such statistics do not renormalize, so He's N(0, 2 / fan_in) lets each
residual block double the variance: X3D-M's logits reach ~1e4 and most squeeze-excitation gates
saturate at 0 or 1, where a comparison would not see them.)
"""
from __future__ import annotations

import math
import zlib
from typing import Mapping

import numpy as np
import torch


def _uniform(key: str, count: int) -> np.ndarray:
    return np.random.Generator(np.random.PCG64(zlib.crc32(key.encode()))).random(count)


def _normal(key: str, count: int) -> np.ndarray:
    u = _uniform(key, 2 * count)
    return np.sqrt(-2.0 * np.log1p(-u[:count])) * np.cos(2.0 * math.pi * u[count:])


def seeded_tensor(key: str, shape: tuple[int, ...], dtype: torch.dtype = torch.float32
                  ) -> torch.Tensor:
    """The value of `key` (a float parameter or buffer of `shape`), see the module docstring."""
    count = math.prod(shape)
    name = key.rsplit(".", 1)[-1]
    if name == "running_var":
        values = 0.5 + _uniform(key, count)
    elif name in ("running_mean", "bias"):
        values = 0.1 * _normal(key, count)
    elif name == "weight" and len(shape) == 1:  # a norm's affine weight
        values = 1.0 + 0.1 * _normal(key, count)
    elif name == "weight":  # conv (out, in / groups, k...) or linear (out, in)
        values = _normal(key, count) / math.sqrt(math.prod(shape[1:]))
    else:
        values = _normal(key, count)
    return torch.from_numpy(values.reshape(shape)).to(dtype)


def seeded_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict of the same keys and shapes with every float tensor seeded_tensor()."""
    return {key: seeded_tensor(key, tuple(value.shape), value.dtype)
            if value.is_floating_point() else value.clone() for key, value in state.items()}
