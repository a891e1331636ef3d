"""ResNet3d: a 3D ResNet described by an architecture table, with torchvision's 2D-ResNet names.

Families (Hara et al.'s 3D-ResNets in resnet3d.py, I3D in i3d.py) differ only in data: stage
depths, block type, the temporal kernel of each block's convs, strides and the stem. Module names
follow torchvision's `resnet50` (conv1, bn1, layer1..4 of blocks conv1/bn1/conv2/bn2[/conv3/bn3],
downsample.0/.1, fc) whatever the norm kind, so 2D ImageNet weights map onto them one to one
(`inflate.py`). The norm layers are called bn* even when they are SN, GN, ...
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import cycle, islice

from torch import Tensor, nn

from .common import NormFactory, init_weights, run_stage, zero_init_last_norms
from .freeze import keep_frozen_norms_in_eval

Triple = tuple[int, int, int]
# Temporal kernel sizes of a block's (first, second) conv. A stage cycles through a pattern of
# these over its blocks, like PySlowFast's _TEMPORAL_KERNEL_BASIS / mmaction2's `inflate`.
BlockKernelsT = tuple[int, int]


def conv3d(in_ch: int, out_ch: int, kernel: Triple, stride: Triple = (1, 1, 1)) -> nn.Conv3d:
    """Bias-free conv with 'same' padding (k // 2) in every dim."""
    return nn.Conv3d(in_ch, out_ch, kernel, stride=stride,
                     padding=tuple(k // 2 for k in kernel), bias=False)


class BasicBlock(nn.Module):
    """Two (kt, 3, 3) convs; the first carries the stride."""

    expansion = 1

    def __init__(self, in_ch: int, planes: int, kernels_t: BlockKernelsT, stride: Triple,
                 downsample: nn.Module | None, make_norm: NormFactory) -> None:
        super().__init__()
        self.conv1 = conv3d(in_ch, planes, (kernels_t[0], 3, 3), stride)
        self.bn1 = make_norm(planes)
        self.conv2 = conv3d(planes, planes, (kernels_t[1], 3, 3))
        self.bn2 = make_norm(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    @property
    def last_norm(self) -> nn.Module:
        return self.bn2

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """(kt1, 1, 1) reduce, (kt2, 3, 3) with the stride, 1x1x1 expand (x4)."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, kernels_t: BlockKernelsT, stride: Triple,
                 downsample: nn.Module | None, make_norm: NormFactory) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = conv3d(in_ch, planes, (kernels_t[0], 1, 1))
        self.bn1 = make_norm(planes)
        self.conv2 = conv3d(planes, planes, (kernels_t[1], 3, 3), stride)
        self.bn2 = make_norm(planes)
        self.conv3 = conv3d(planes, out_ch, (1, 1, 1))
        self.bn3 = make_norm(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    @property
    def last_norm(self) -> nn.Module:
        return self.bn3

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


@dataclass(frozen=True)
class StemSpec:
    """conv1 (3 -> 64) + norm + ReLU, then an optional max-pool (padding k // 2)."""

    conv_kernel: Triple
    conv_stride: Triple
    pool_kernel: Triple | None
    pool_stride: Triple = (1, 1, 1)


@dataclass(frozen=True)
class ResNetSpec:
    """Everything that distinguishes one ResNet3d architecture from another."""

    block: type[BasicBlock] | type[Bottleneck]
    depths: tuple[int, int, int, int]
    # per stage: the pattern of (conv1, conv2) temporal kernels its blocks cycle through
    kernels_t: tuple[tuple[BlockKernelsT, ...], ...]
    # per stage: stride of its first block (also of the shortcut's 1x1x1 conv)
    stage_strides: tuple[Triple, Triple, Triple, Triple]
    stem: StemSpec
    # temporal max-pool (2, 1, 1) after layer1 (I3D's pool2)
    pool2: bool = False
    # channels of conv1 and of each stage's blocks (planes; bottlenecks output 4x)
    widths: tuple[int, int, int, int] = (64, 128, 256, 512)

    def block_kernels_t(self, stage: int) -> list[BlockKernelsT]:
        """The temporal kernels of each block of `stage` (0-based)."""
        return list(islice(cycle(self.kernels_t[stage]), self.depths[stage]))


def make_stage(block: type[BasicBlock] | type[Bottleneck], in_ch: int, planes: int,
               kernels_t: list[BlockKernelsT], stride: Triple,
               make_norm: NormFactory) -> nn.Sequential:
    """One residual stage; a 1x1x1 conv + norm shortcut where the shape changes (type B)."""
    out_ch = planes * block.expansion
    downsample = None
    if stride != (1, 1, 1) or in_ch != out_ch:
        downsample = nn.Sequential(nn.Conv3d(in_ch, out_ch, 1, stride=stride, bias=False),
                                   make_norm(out_ch))
    blocks = [block(in_ch, planes, kernels_t[0], stride, downsample, make_norm)]
    blocks += [block(out_ch, planes, k, (1, 1, 1), None, make_norm) for k in kernels_t[1:]]
    return nn.Sequential(*blocks)


class ResNet3d(nn.Module):
    """(N, 3, T, H, W) clips -> (N, num_classes) logits."""

    def __init__(self, spec: ResNetSpec, num_classes: int, make_norm: NormFactory,
                 dropout: float = 0.5, zero_init_last_norm: bool = False,
                 checkpoint_stages: bool = False) -> None:
        super().__init__()
        self.spec = spec
        self.checkpoint_stages = checkpoint_stages
        stem = spec.stem
        self.conv1 = conv3d(3, spec.widths[0], stem.conv_kernel, stem.conv_stride)
        self.bn1 = make_norm(spec.widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = (nn.Identity() if stem.pool_kernel is None else nn.MaxPool3d(
            stem.pool_kernel, stem.pool_stride, padding=tuple(k // 2 for k in stem.pool_kernel)))
        in_ch = spec.widths[0]
        for i, width in enumerate(spec.widths):
            stage = make_stage(spec.block, in_ch, width, spec.block_kernels_t(i),
                               spec.stage_strides[i], make_norm)
            self.add_module(f"layer{i + 1}", stage)
            in_ch = width * spec.block.expansion
        self.pool2 = nn.MaxPool3d((2, 1, 1), (2, 1, 1)) if spec.pool2 else nn.Identity()
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.num_features = in_ch
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_ch, num_classes)
        init_weights(self)
        if zero_init_last_norm:
            zero_init_last_norms(self)

    def forward_features(self, x: Tensor) -> Tensor:
        """Globally pooled backbone features, (N, num_features)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = run_stage(self.layer1, x, self.checkpoint_stages)
        x = self.pool2(x)
        for stage in (self.layer2, self.layer3, self.layer4):
            x = run_stage(stage, x, self.checkpoint_stages)
        return self.avgpool(x).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.dropout(self.forward_features(x)))

    def train(self, mode: bool = True) -> "ResNet3d":
        super().train(mode)
        keep_frozen_norms_in_eval(self)  # fine-tuning: see freeze.py
        return self
