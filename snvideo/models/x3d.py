"""X3D (Feichtenhofer, CVPR 2020, "X3D: Expanding Architectures for Efficient Video
Recognition"): x3d_xs, x3d_s, x3d_m, x3d_l as PySlowFast builds them, with any norm.

Facts (PySlowFast `X3D`, `X3DStem`, `X3DTransform`, `SE`, `X3DHead` and
configs/Kinetics/X3D_{XS,S,M,L}.yaml):
- Widths from dim_c1 = 12 and the width factor 2.0: stem 24 channels; stage outputs
  round(12, 24, 48, 96 x 2.0) = 24, 48, 96, 192 (res2 is not widened); inner (bottleneck)
  widths int(2.25 x out) = 54, 108, 216, 432.
- Depths ceil(depth factor x (1, 2, 5, 3)): 2.2 (XS, S, M) -> 3, 5, 11, 7; 5.0 (L) ->
  5, 10, 25, 15. XS, S and M are one network; they differ only in the input (see X3D_PRESETS).
- Stem: 1x3x3 conv, stride (1, 2, 2), then a depthwise 5x1x1 conv, norm, ReLU.
- Block: 1x1x1 conv, norm, ReLU; depthwise 3x3x3 conv (the spatial stride 2 in each stage's
  first block), norm, squeeze-excitation in every other block (blocks 0, 2, 4, ... of a
  stage), swish; 1x1x1 conv, norm; shortcut 1x1x1 conv (stride (1, 2, 2)) + norm where the
  shape changes; ReLU after the sum.
- SE: global average, 1x1x1 conv (bias) to round(C / 16) channels (a multiple of 8, at
  least 8), ReLU, 1x1x1 conv (bias) back to C, sigmoid, channel-wise product. No norm.
- Head: 1x1x1 conv 192 -> 432 (conv5), norm, ReLU, average pool, 1x1x1 conv 432 -> 2048 with
  no bias and no norm (lin5), ReLU, dropout, the linear classifier.
- 400 classes: 3.79M parameters (XS, S, M), 6.15M (L).

GFLOPs per view (the PySlowFast / PyTorchVideo zoo: XS 0.91, S 2.96, M 6.72, L 26.64) are
fvcore's count at the 3-crop test input (frames x test_crop x test_crop): conv and linear
multiply-adds (depthwise convs and SE included) plus 5 per element of every norm layer
(fvcore's estimate for a norm with affine terms; it counts BatchNorm so in training mode).
snvideo.models.info counts the multiply-adds only: 0.84, 2.72, 6.18, 24.76 at those inputs
(norms are ~8% of X3D's count; 0.60, 1.96, 4.73, 18.37 at the training crops).

Module names are PySlowFast's (s1.pathway0_stem.conv_xy / conv / bn,
s2.pathway0_res0.branch1 / branch1_bn, branch2.a / a_bn / b / b_bn / se.fc1 / se.fc2 / c / c_bn,
head.conv_5 / conv_5_bn / lin_5) whatever the norm kind, so a PySlowFast checkpoint maps onto
them by identity; only the classifier differs (their head.projection is our `fc`).

One difference at test time: PySlowFast's head pools with a fixed window of the training input
(frames x train_crop / 32 squared, stride 1) and, on a larger test crop, averages the softmax of
several windows; ours pools the whole (T, H, W) map, so it accepts any input size and gives the
same logits as PySlowFast whenever the input is the size it was built for.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

from torch import Tensor, nn

from .common import NormFactory, init_weights, run_stage, zero_init_last_norms
from .freeze import keep_frozen_norms_in_eval


@dataclass(frozen=True)
class X3DPreset:
    """One X3D size: its expansion factors and the input it is trained and tested at."""

    width_factor: float
    depth_factor: float
    frames: int          # frames per clip
    stride: int          # temporal sampling stride (frame_interval)
    train_crop: int
    test_crop: int       # the 3-crop test size (short side resized to it, 3 square crops)
    train_scales: tuple[int, int]  # training short-side jitter range before the crop


X3D_PRESETS: dict[str, X3DPreset] = {
    "x3d_xs": X3DPreset(2.0, 2.2, frames=4, stride=12, train_crop=160, test_crop=182,
                        train_scales=(182, 228)),
    "x3d_s": X3DPreset(2.0, 2.2, frames=13, stride=6, train_crop=160, test_crop=182,
                       train_scales=(182, 228)),
    "x3d_m": X3DPreset(2.0, 2.2, frames=16, stride=5, train_crop=224, test_crop=256,
                       train_scales=(256, 320)),
    "x3d_l": X3DPreset(2.0, 5.0, frames=16, stride=5, train_crop=312, test_crop=356,
                       train_scales=(356, 446)),
}

STEM_WIDTH = 12             # dim_c1, before the width factor
STAGE_WIDTHS = (12, 24, 48, 96)   # before the width factor: res2 = dim_c1, then 2x a stage
STAGE_DEPTHS = (1, 2, 5, 3)       # before the depth factor
BOTTLENECK_FACTOR = 2.25
HEAD_WIDTH = 2048           # dim_c5: lin5's output, the pooled feature width
SE_RATIO = 1 / 16


def round_width(width: float, multiplier: float, min_width: int = 1, divisor: int = 1) -> int:
    """width x multiplier to the nearest multiple of `divisor` (at least `min_width`), rounded
    up a step where rounding lost more than 10% (EfficientNet's rule, which X3D uses)."""
    scaled = width * multiplier
    rounded = max(min_width, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def conv1x1(in_ch: int, out_ch: int, stride: tuple[int, int, int] = (1, 1, 1),
            bias: bool = False) -> nn.Conv3d:
    return nn.Conv3d(in_ch, out_ch, 1, stride=stride, bias=bias)


class X3DStem(nn.Module):
    """Separable stem: 1x3x3 conv (spatial stride 2), depthwise 5x1x1 conv, norm, ReLU."""

    def __init__(self, out_ch: int, make_norm: NormFactory, temporal_kernel: int = 5) -> None:
        super().__init__()
        self.conv_xy = nn.Conv3d(3, out_ch, (1, 3, 3), (1, 2, 2), (0, 1, 1), bias=False)
        self.conv = nn.Conv3d(out_ch, out_ch, (temporal_kernel, 1, 1), padding=(
            temporal_kernel // 2, 0, 0), groups=out_ch, bias=False)
        self.bn = make_norm(out_ch)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(self.conv_xy(x))))


class SqueezeExcite(nn.Module):
    """Channel gates from the globally pooled map: 1x1x1 convs C -> C/16 -> C, ReLU between,
    sigmoid after."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        hidden = round_width(channels, SE_RATIO, min_width=8, divisor=8)
        self.fc1 = conv1x1(channels, hidden, bias=True)
        self.fc2 = conv1x1(hidden, channels, bias=True)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        gate = self.fc2(self.relu(self.fc1(x.mean((2, 3, 4), keepdim=True))))
        return x * gate.sigmoid()


class X3DBottleneck(nn.Module):
    """1x1x1 expand, depthwise 3x3x3 (carries the spatial stride), [SE], swish, 1x1x1 project."""

    def __init__(self, in_ch: int, inner: int, out_ch: int, spatial_stride: int, use_se: bool,
                 make_norm: NormFactory) -> None:
        super().__init__()
        self.a = conv1x1(in_ch, inner)
        self.a_bn = make_norm(inner)
        self.b = nn.Conv3d(inner, inner, 3, (1, spatial_stride, spatial_stride), 1,
                           groups=inner, bias=False)
        self.b_bn = make_norm(inner)
        self.se = SqueezeExcite(inner) if use_se else nn.Identity()
        self.c = conv1x1(inner, out_ch)
        self.c_bn = make_norm(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.swish = nn.SiLU()

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.a_bn(self.a(x)))
        x = self.swish(self.se(self.b_bn(self.b(x))))
        return self.c_bn(self.c(x))


class X3DBlock(nn.Module):
    """Residual block: branch2 (the bottleneck) plus the input, or branch1 (1x1x1 conv + norm)
    of it where the shape changes; ReLU after the sum."""

    def __init__(self, in_ch: int, inner: int, out_ch: int, spatial_stride: int, use_se: bool,
                 make_norm: NormFactory) -> None:
        super().__init__()
        self.branch1: nn.Module | None = None
        self.branch1_bn: nn.Module | None = None
        if in_ch != out_ch or spatial_stride != 1:
            self.branch1 = conv1x1(in_ch, out_ch, (1, spatial_stride, spatial_stride))
            self.branch1_bn = make_norm(out_ch)
        self.branch2 = X3DBottleneck(in_ch, inner, out_ch, spatial_stride, use_se, make_norm)
        self.relu = nn.ReLU(inplace=True)

    @property
    def last_norm(self) -> nn.Module:
        return self.branch2.c_bn

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.branch1 is None else self.branch1_bn(self.branch1(x))
        return self.relu(self.branch2(x) + shortcut)


def make_stage(in_ch: int, inner: int, out_ch: int, depth: int,
               make_norm: NormFactory) -> nn.Sequential:
    """`depth` blocks named pathway0_res0.. ; the first halves H and W; SE in blocks 0, 2, ..."""
    blocks = [(f"pathway0_res{i}", X3DBlock(in_ch if i == 0 else out_ch, inner, out_ch,
                                            2 if i == 0 else 1, i % 2 == 0, make_norm))
              for i in range(depth)]
    return nn.Sequential(OrderedDict(blocks))


class X3DHead(nn.Module):
    """conv5 (1x1x1 to the last stage's inner width) + norm + ReLU, global average pool, lin5
    (1x1x1, no bias, no norm) to `width` + ReLU: (N, C, T, H, W) -> (N, width)."""

    def __init__(self, in_ch: int, inner: int, width: int, make_norm: NormFactory) -> None:
        super().__init__()
        self.conv_5 = conv1x1(in_ch, inner)
        self.conv_5_bn = make_norm(inner)
        self.lin_5 = conv1x1(inner, width)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.conv_5_bn(self.conv_5(x)))
        x = x.mean((2, 3, 4), keepdim=True)
        return self.relu(self.lin_5(x)).flatten(1)


class X3D(nn.Module):
    """(N, 3, T, H, W) clips -> (N, num_classes) logits. Stages s2..s5 each halve H and W;
    T is kept throughout."""

    checkpoint_names = "pyslowfast"  # load_pretrained: PySlowFast names, head.projection = fc

    def __init__(self, width_factor: float, depth_factor: float, num_classes: int,
                 make_norm: NormFactory, dropout: float = 0.5, head_width: int = HEAD_WIDTH,
                 zero_init_last_norm: bool = False, checkpoint_stages: bool = False) -> None:
        super().__init__()
        self.checkpoint_stages = checkpoint_stages
        stem_width = round_width(STEM_WIDTH, width_factor)
        self.s1 = nn.Sequential(OrderedDict(pathway0_stem=X3DStem(stem_width, make_norm)))
        in_ch = stem_width
        depths = [math.ceil(d * depth_factor) for d in STAGE_DEPTHS]
        for i, (base, depth) in enumerate(zip(STAGE_WIDTHS, depths)):
            out_ch = round_width(base, width_factor)
            inner = int(BOTTLENECK_FACTOR * out_ch)
            self.add_module(f"s{i + 2}", make_stage(in_ch, inner, out_ch, depth, make_norm))
            in_ch = out_ch
        self.head = X3DHead(in_ch, inner, head_width, make_norm)
        self.num_features = head_width
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(head_width, num_classes)
        init_weights(self)
        if zero_init_last_norm:
            zero_init_last_norms(self)

    # freeze_backbone's view of the network (stem, layer1..4), as the ResNets name them
    @property
    def stem(self) -> nn.Module:
        return self.s1

    layer1 = property(lambda self: self.s2)
    layer2 = property(lambda self: self.s3)
    layer3 = property(lambda self: self.s4)
    layer4 = property(lambda self: self.s5)

    def forward_features(self, x: Tensor) -> Tensor:
        """The pooled lin5 features after ReLU, (N, head_width)."""
        x = self.s1(x)
        for stage in (self.s2, self.s3, self.s4, self.s5):
            x = run_stage(stage, x, self.checkpoint_stages)
        return self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.dropout(self.forward_features(x)))

    def train(self, mode: bool = True) -> "X3D":
        super().train(mode)
        keep_frozen_norms_in_eval(self)  # fine-tuning: see freeze.py
        return self


def x3d(arch: str, num_classes: int, make_norm: NormFactory, dropout: float = 0.5,
        width_factor: float | None = None, depth_factor: float | None = None,
        head_width: int = HEAD_WIDTH, zero_init_last_norm: bool = False,
        checkpoint_stages: bool = False) -> X3D:
    """X3D-XS/S/M/L (X3D_PRESETS[arch]); width_factor / depth_factor / head_width override the
    preset's (e.g. small models for CPU runs)."""
    preset = X3D_PRESETS[arch]
    return X3D(preset.width_factor if width_factor is None else width_factor,
               preset.depth_factor if depth_factor is None else depth_factor,
               num_classes, make_norm, dropout, head_width, zero_init_last_norm,
               checkpoint_stages)
