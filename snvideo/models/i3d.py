"""I3D-ResNet: the inflated ResNet-50/101 of Non-local nets / SlowFast / mmaction2 (Kinetics).

Facts (mmaction2 `configs/_base_/models/i3d_r50.py` + `ResNet3d`, PySlowFast "i3d" tables):
- conv1 5x7x7, stride (conv1_stride_t, 2, 2), padding (2, 3, 3); max-pool 1x3x3, stride
  (pool1_stride_t, 2, 2), padding (0, 1, 1). mmaction2's i3d_r50 32x2x1 recipe uses
  conv1_stride_t = pool1_stride_t = 2, our defaults (PySlowFast's 8x8 I3D uses 1 and 1).
- pool2: temporal max-pool (2, 1, 1) / (2, 1, 1) after res2 (layer1). So 32 input frames reach
  res5 as 4.
- Bottlenecks: "inflated" blocks have a 3x1x1 first conv (padding (1, 0, 0)), the others 1x1x1;
  the 3x3 conv is 1x3x3 and carries the spatial stride; the shortcut is a 1x1x1 conv with
  stride (1, s, s) + norm. Inflation pattern per stage, cycled over its blocks:
  res2 [1], res3 [1, 0], res4 [1, 0], res5 [0, 1] -> r50: (1,1,1), (1,0,1,0), (1,0,1,0,1,0),
  (0,1,0); r101 res4: 1,0,1,0,... over 23 blocks (12 inflated).
- i3d_r50 with BN, 400 classes: 28.04M parameters (mmaction2 / pytorchvideo report 28.04M).
"""
from __future__ import annotations

from dataclasses import replace

from .common import NormFactory
from .resnet import Bottleneck, ResNet3d, ResNetSpec, StemSpec

_INFLATED = (3, 1)   # (3x1x1 first conv, 1x3x3 second conv)
_FLAT = (1, 1)       # (1x1x1, 1x3x3)
_I3D_KERNELS_T = ((_INFLATED,), (_INFLATED, _FLAT), (_INFLATED, _FLAT), (_FLAT, _INFLATED))
_I3D_STRIDES = ((1, 1, 1), (1, 2, 2), (1, 2, 2), (1, 2, 2))
_I3D_STEM = StemSpec(conv_kernel=(5, 7, 7), conv_stride=(2, 2, 2),
                     pool_kernel=(1, 3, 3), pool_stride=(2, 2, 2))

I3D_SPECS: dict[str, ResNetSpec] = {
    "i3d_r50": ResNetSpec(Bottleneck, (3, 4, 6, 3), _I3D_KERNELS_T, _I3D_STRIDES, _I3D_STEM,
                          pool2=True),
    "i3d_r101": ResNetSpec(Bottleneck, (3, 4, 23, 3), _I3D_KERNELS_T, _I3D_STRIDES, _I3D_STEM,
                           pool2=True),
}


def i3d_resnet(arch: str, num_classes: int, make_norm: NormFactory, dropout: float = 0.5,
               conv1_stride_t: int = 2, pool1_stride_t: int = 2, pool2: bool = True,
               zero_init_last_norm: bool = False, checkpoint_stages: bool = False) -> ResNet3d:
    """Defaults are mmaction2's i3d_r50 32x2x1 Kinetics-400 recipe; for 8-frame inputs use
    conv1_stride_t=1, pool1_stride_t=1 (PySlowFast's I3D 8x8)."""
    spec = I3D_SPECS[arch]
    stem = replace(spec.stem, conv_stride=(conv1_stride_t, 2, 2),
                   pool_stride=(pool1_stride_t, 2, 2))
    return ResNet3d(replace(spec, stem=stem, pool2=pool2), num_classes, make_norm, dropout,
                    zero_init_last_norm, checkpoint_stages)
