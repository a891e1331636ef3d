"""Video backbones with any normalization: torchvision's r3d_18 / mc3_18 / r2plus1d_18, Hara's
3D-ResNets, I3D-ResNets, SlowFast (slowfast_r50/r101) and X3D (x3d_xs/s/m/l), both with
PySlowFast's module names.

    model = build_model("i3d_r50", num_classes=400, norm="sn")
    load_pretrained_2d(model, "resnet50.pth")   # ImageNet 2D weights, inflated
    load_pretrained(model, "i3d_r50_k400.pth")  # 3D: ours, torchvision, mmaction2, PySlowFast
    freeze_backbone(model, frozen_stages=1)     # fine-tuning: stem + layer1 fixed

Every model maps (N, 3, T, H, W) float clips to (N, num_classes) logits and has `fc` (the
nn.Linear classifier), `dropout` (before fc) and `forward_features` (pooled features).
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable, Mapping

from torch import nn

from .common import norm_factory
from .i3d import I3D_SPECS, i3d_resnet
from .freeze import FreezeResult, freeze_backbone
from .inflate import InflateResult, inflate_2d, load_pretrained_2d
from .pretrained import PretrainedError, PretrainedResult, detect_format, load_pretrained
from .resnet import ResNet3d, ResNetSpec
from .resnet3d import HARA_SPECS, VIDEO_SPECS, VideoResNet, hara_resnet3d, video_resnet
from .slowfast import SLOWFAST_SPECS, SlowFast, slowfast
from .x3d import X3D, X3D_PRESETS, x3d

# arch name -> constructor(num_classes, make_norm, dropout, **arch_kwargs)
ARCHS: dict[str, Callable[..., nn.Module]] = {
    **{name: partial(video_resnet, name) for name in VIDEO_SPECS},
    **{name: partial(hara_resnet3d, name) for name in HARA_SPECS},
    **{name: partial(i3d_resnet, name) for name in I3D_SPECS},
    **{name: partial(slowfast, name) for name in SLOWFAST_SPECS},
    **{name: partial(x3d, name) for name in X3D_PRESETS},
}


def build_model(arch: str, num_classes: int, norm: str = "sn",
                norm_kwargs: Mapping[str, Any] | None = None, dropout: float = 0.5,
                **arch_kwargs: Any) -> nn.Module:
    """Build `arch` with every norm layer from `build_norm(norm, C, dim=3, **norm_kwargs)`.

    arch_kwargs, all archs: zero_init_last_norm (bool), checkpoint_stages (bool).
    resnet3d_*: conv1_t_size (7), conv1_t_stride (1), no_max_pool (False), widen_factor (1.0).
    i3d_*: conv1_stride_t (2), pool1_stride_t (2), pool2 (True).
    slowfast_r50/r101: alpha (4), beta_inv (8), fusion_kernel (7) (PySlowFast's 8x8; 4x16 is
    alpha=8, fusion_kernel=5; kept in model.arch_kwargs), widen_factor (1.0). One clip in: the
    Slow pathway's frames are taken inside the model; T must be a multiple of alpha.
    x3d_xs/s/m/l: width_factor, depth_factor (the preset's), head_width (2048). Their inputs are
    data: X3D_PRESETS[arch].frames x .stride (XS 4x12, S 13x6, M 16x5, L 16x5), .train_crop /
    .test_crop (160/182, 160/182, 224/256, 312/356).
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; valid archs: {', '.join(ARCHS)}")
    make_norm = norm_factory(norm, norm_kwargs)
    model = ARCHS[arch](num_classes=num_classes, make_norm=make_norm, dropout=dropout,
                        **arch_kwargs)
    if make_norm.shared_importance is not None:  # norm_kwargs {shared_importance: true}
        model.add_module("norm_importance", make_norm.shared_importance)
    return model


__all__ = ["ARCHS", "FreezeResult", "InflateResult", "PretrainedError", "PretrainedResult",
           "ResNet3d", "ResNetSpec", "VideoResNet", "build_model", "detect_format",
           "freeze_backbone", "inflate_2d", "load_pretrained", "load_pretrained_2d"]
