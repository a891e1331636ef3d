"""3D-ResNets: torchvision's r3d_18 / mc3_18 / r2plus1d_18 and Hara et al.'s resnet3d_10..101.

r3d_18, mc3_18, r2plus1d_18 (Tran et al., "A Closer Look at Spatiotemporal Convolutions"): the
module trees and parameter names of `torchvision.models.video`, so its state dicts load strictly
(r3d: stem conv (3,7,7)/(1,2,2) + norm + ReLU, no max-pool, 3x3x3 BasicBlocks, strides 1,2,2,2;
mc3: 1x3x3 convs from layer2 on; r2plus1d: (2+1)D convs and a (1,7,7) + (3,1,1) stem).

resnet3d_N (Hara, Kataoka, Satoh, CVPR 2018, "Can Spatiotemporal 3D CNNs Retrace the History of
2D CNNs and ImageNet?", kenshohara/3D-ResNets-PyTorch): conv1 7x7x7 with stride (1, 2, 2),
3x3x3 max-pool stride 2, all-3D 3x3x3 convs, shortcut type B, stage strides 1,2,2,2 in all
dims. Built by `ResNet3d` (resnet.py) with torchvision's 2D-ResNet names.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from torch import Tensor, nn

from .common import NormFactory, init_weights, run_stage, zero_init_last_norms
from .freeze import keep_frozen_norms_in_eval
from .resnet import BasicBlock, Bottleneck, ResNet3d, ResNetSpec, StemSpec

# --- Hara et al. -------------------------------------------------------------------------------
_HARA_STEM = StemSpec(conv_kernel=(7, 7, 7), conv_stride=(1, 2, 2),
                      pool_kernel=(3, 3, 3), pool_stride=(2, 2, 2))
_HARA_STRIDES = ((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2))
_ALL_3X3X3 = (((3, 3),),) * 4          # BasicBlock: both convs 3x3x3
_BOTTLENECK_3D = (((1, 3),),) * 4      # Bottleneck: 1x1x1, 3x3x3, 1x1x1

HARA_SPECS: dict[str, ResNetSpec] = {
    "resnet3d_10": ResNetSpec(BasicBlock, (1, 1, 1, 1), _ALL_3X3X3, _HARA_STRIDES, _HARA_STEM),
    "resnet3d_18": ResNetSpec(BasicBlock, (2, 2, 2, 2), _ALL_3X3X3, _HARA_STRIDES, _HARA_STEM),
    "resnet3d_34": ResNetSpec(BasicBlock, (3, 4, 6, 3), _ALL_3X3X3, _HARA_STRIDES, _HARA_STEM),
    "resnet3d_50": ResNetSpec(Bottleneck, (3, 4, 6, 3), _BOTTLENECK_3D, _HARA_STRIDES, _HARA_STEM),
    "resnet3d_101": ResNetSpec(Bottleneck, (3, 4, 23, 3), _BOTTLENECK_3D, _HARA_STRIDES,
                               _HARA_STEM),
}


def hara_resnet3d(arch: str, num_classes: int, make_norm: NormFactory, dropout: float = 0.5,
                  conv1_t_size: int = 7, conv1_t_stride: int = 1, no_max_pool: bool = False,
                  widen_factor: float = 1.0, zero_init_last_norm: bool = False,
                  checkpoint_stages: bool = False) -> ResNet3d:
    """conv1_t_size / conv1_t_stride / no_max_pool / widen_factor are the reference repo's
    options of the same names (its defaults: 7, 1, False, 1.0); widen_factor scales the channel
    widths 64, 128, 256, 512 (small models for CPU runs such as the demo)."""
    spec = HARA_SPECS[arch]
    spec = replace(spec, widths=tuple(max(1, round(w * widen_factor)) for w in spec.widths))
    stem = replace(spec.stem, conv_kernel=(conv1_t_size, 7, 7),
                   conv_stride=(conv1_t_stride, 2, 2),
                   pool_kernel=None if no_max_pool else spec.stem.pool_kernel)
    return ResNet3d(replace(spec, stem=stem), num_classes, make_norm, dropout,
                    zero_init_last_norm, checkpoint_stages)


# --- torchvision r3d_18 / mc3_18 / r2plus1d_18 --------------------------------------------------
# The block convs of torchvision's video ResNets (Tran et al.): "3d" = Conv3DSimple (3x3x3),
# "2d" = Conv3DNoTemporal (1x3x3, spatial stride only), "2+1d" = Conv2Plus1D (1x3x3 to `mid`
# channels, norm, ReLU, then 3x1x1 with the temporal stride).
ConvKind = str


def video_conv(kind: ConvKind, in_ch: int, out_ch: int, mid_ch: int, stride: int,
               make_norm: NormFactory) -> nn.Module:
    if kind == "3d":
        return nn.Conv3d(in_ch, out_ch, 3, stride, 1, bias=False)
    if kind == "2d":
        return nn.Conv3d(in_ch, out_ch, (1, 3, 3), (1, stride, stride), (0, 1, 1), bias=False)
    return nn.Sequential(
        nn.Conv3d(in_ch, mid_ch, (1, 3, 3), (1, stride, stride), (0, 1, 1), bias=False),
        make_norm(mid_ch), nn.ReLU(inplace=True),
        nn.Conv3d(mid_ch, out_ch, (3, 1, 1), (stride, 1, 1), (1, 0, 0), bias=False))


class VideoBasicBlock(nn.Module):
    """torchvision's video BasicBlock: conv1 = (conv, norm, ReLU), conv2 = (conv, norm) as
    Sequentials, so the names are conv1.0, conv1.1, conv2.0, conv2.1 (conv1.0.0/.0.1/.0.3 for
    a (2+1)D conv). A (2+1)D block's middle width keeps the 3x3x3 conv's parameter count."""

    def __init__(self, in_ch: int, planes: int, stride: int, make_norm: NormFactory,
                 conv: ConvKind = "3d") -> None:
        super().__init__()
        mid_ch = (in_ch * planes * 27) // (in_ch * 9 + 3 * planes)
        self.conv1 = nn.Sequential(video_conv(conv, in_ch, planes, mid_ch, stride, make_norm),
                                   make_norm(planes), nn.ReLU(inplace=True))
        self.conv2 = nn.Sequential(video_conv(conv, planes, planes, mid_ch, 1, make_norm),
                                   make_norm(planes))
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_ch != planes:
            shortcut_stride = (1, stride, stride) if conv == "2d" else (stride,) * 3
            self.downsample = nn.Sequential(
                nn.Conv3d(in_ch, planes, 1, shortcut_stride, bias=False), make_norm(planes))

    @property
    def last_norm(self) -> nn.Module:
        return self.conv2[1]

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.conv2(self.conv1(x)) + identity)


def video_stem(kind: str, make_norm: NormFactory) -> nn.Sequential:
    """torchvision's BasicStem ("r3d") or R2Plus1dStem ("r2plus1d")."""
    if kind == "r3d":
        return nn.Sequential(
            nn.Conv3d(3, 64, (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
            make_norm(64), nn.ReLU(inplace=True))
    return nn.Sequential(
        nn.Conv3d(3, 45, (1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False),
        make_norm(45), nn.ReLU(inplace=True),
        nn.Conv3d(45, 64, (3, 1, 1), stride=1, padding=(1, 0, 0), bias=False),
        make_norm(64), nn.ReLU(inplace=True))


@dataclass(frozen=True)
class VideoResNetSpec:
    """One of torchvision's video ResNets: stem kind and each stage's conv kind."""

    stem: str
    convs: tuple[ConvKind, ConvKind, ConvKind, ConvKind]
    depths: tuple[int, int, int, int] = (2, 2, 2, 2)


VIDEO_SPECS: dict[str, VideoResNetSpec] = {
    "r3d_18": VideoResNetSpec("r3d", ("3d", "3d", "3d", "3d")),
    "mc3_18": VideoResNetSpec("r3d", ("3d", "2d", "2d", "2d")),
    "r2plus1d_18": VideoResNetSpec("r2plus1d", ("2+1d", "2+1d", "2+1d", "2+1d")),
}


class VideoResNet(nn.Module):
    """torchvision's VideoResNet layout (stem, layer1..4, avgpool, fc) plus `dropout` before fc,
    with any norm."""

    def __init__(self, spec: VideoResNetSpec, num_classes: int,
                 make_norm: NormFactory, dropout: float = 0.5, zero_init_last_norm: bool = False,
                 checkpoint_stages: bool = False) -> None:
        super().__init__()
        self.checkpoint_stages = checkpoint_stages
        self.stem = video_stem(spec.stem, make_norm)
        in_ch = 64
        for i, (width, depth, conv) in enumerate(zip((64, 128, 256, 512), spec.depths,
                                                     spec.convs)):
            stride = 1 if i == 0 else 2
            blocks = [VideoBasicBlock(in_ch, width, stride, make_norm, conv)]
            blocks += [VideoBasicBlock(width, width, 1, make_norm, conv)
                       for _ in range(depth - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            in_ch = width
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.num_features = in_ch
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_ch, num_classes)
        init_weights(self)
        if zero_init_last_norm:
            zero_init_last_norms(self)

    def forward_features(self, x: Tensor) -> Tensor:
        """Globally pooled backbone features, (N, num_features)."""
        x = self.stem(x)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = run_stage(stage, x, self.checkpoint_stages)
        return self.avgpool(x).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.dropout(self.forward_features(x)))

    def train(self, mode: bool = True) -> "VideoResNet":
        super().train(mode)
        keep_frozen_norms_in_eval(self)
        return self


def video_resnet(arch: str, num_classes: int, make_norm: NormFactory, dropout: float = 0.5,
                 zero_init_last_norm: bool = False, checkpoint_stages: bool = False
                 ) -> VideoResNet:
    """r3d_18, mc3_18 or r2plus1d_18 with torchvision's module tree and parameter names."""
    return VideoResNet(VIDEO_SPECS[arch], num_classes, make_norm, dropout, zero_init_last_norm,
                       checkpoint_stages)


def r3d_18(num_classes: int, make_norm: NormFactory, dropout: float = 0.5,
           zero_init_last_norm: bool = False, checkpoint_stages: bool = False) -> VideoResNet:
    return video_resnet("r3d_18", num_classes, make_norm, dropout, zero_init_last_norm,
                        checkpoint_stages)
