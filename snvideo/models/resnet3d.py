"""3D-ResNets: torchvision's r3d_18 and Hara et al.'s resnet3d_10/18/34/50/101.

r3d_18 (Tran et al., "A Closer Look at Spatiotemporal Convolutions"): the module tree and
parameter names of `torchvision.models.video.r3d_18`, so its state dicts load strictly
(stem = conv (3,7,7)/(1,2,2) + norm + ReLU, no max-pool, 3x3x3 BasicBlocks, strides 1,2,2,2).

resnet3d_N (Hara, Kataoka, Satoh, CVPR 2018, "Can Spatiotemporal 3D CNNs Retrace the History of
2D CNNs and ImageNet?", kenshohara/3D-ResNets-PyTorch): conv1 7x7x7 with stride (1, 2, 2),
3x3x3 max-pool stride 2, all-3D 3x3x3 convs, shortcut type B, stage strides 1,2,2,2 in all
dims. Built by `ResNet3d` (resnet.py) with torchvision's 2D-ResNet names.
"""
from __future__ import annotations

from dataclasses import replace

from torch import Tensor, nn

from .common import NormFactory, init_weights, run_stage, zero_init_last_norms
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


# --- torchvision r3d_18 ------------------------------------------------------------------------
class VideoBasicBlock(nn.Module):
    """torchvision's video BasicBlock with Conv3DSimple: conv1 = (conv, norm, ReLU),
    conv2 = (conv, norm) as Sequentials, so the names are conv1.0, conv1.1, conv2.0, conv2.1."""

    def __init__(self, in_ch: int, planes: int, stride: int, make_norm: NormFactory) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv3d(in_ch, planes, 3, stride, 1, bias=False),
                                   make_norm(planes), nn.ReLU(inplace=True))
        self.conv2 = nn.Sequential(nn.Conv3d(planes, planes, 3, 1, 1, bias=False),
                                   make_norm(planes))
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_ch != planes:
            self.downsample = nn.Sequential(nn.Conv3d(in_ch, planes, 1, stride, bias=False),
                                            make_norm(planes))

    @property
    def last_norm(self) -> nn.Module:
        return self.conv2[1]

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.conv2(self.conv1(x)) + identity)


R3D_18_DEPTHS = (2, 2, 2, 2)


class VideoResNet(nn.Module):
    """torchvision's VideoResNet layout (stem, layer1..4, avgpool, fc) plus `dropout` before fc,
    with BasicBlocks of 3x3x3 convs and any norm."""

    def __init__(self, depths: tuple[int, ...], num_classes: int, make_norm: NormFactory,
                 dropout: float = 0.5, zero_init_last_norm: bool = False,
                 checkpoint_stages: bool = False) -> None:
        super().__init__()
        self.checkpoint_stages = checkpoint_stages
        self.stem = nn.Sequential(
            nn.Conv3d(3, 64, (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
            make_norm(64), nn.ReLU(inplace=True))
        in_ch = 64
        for i, (width, depth) in enumerate(zip((64, 128, 256, 512), depths)):
            stride = 1 if i == 0 else 2
            blocks = [VideoBasicBlock(in_ch, width, stride, make_norm)]
            blocks += [VideoBasicBlock(width, width, 1, make_norm) for _ in range(depth - 1)]
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


def r3d_18(num_classes: int, make_norm: NormFactory, dropout: float = 0.5,
           zero_init_last_norm: bool = False, checkpoint_stages: bool = False) -> VideoResNet:
    return VideoResNet(R3D_18_DEPTHS, num_classes, make_norm, dropout, zero_init_last_norm,
                       checkpoint_stages)
