"""Turn a Config into the objects train.py and test.py use: model, datasets, optimizer, schedule."""
from __future__ import annotations

import math
import os

import torch
from torch import nn

from snvideo.config import Config, ConfigError, ModelConfig

NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm,
              nn.LayerNorm)


def model_from_config(model_cfg: ModelConfig, num_classes: int) -> nn.Module:
    """build_model with the config's settings (pretrained 2D weights are loaded separately)."""
    from snvideo.models import build_model

    return build_model(model_cfg.arch, num_classes, norm=model_cfg.norm,
                       norm_kwargs=dict(model_cfg.norm_kwargs), dropout=model_cfg.dropout,
                       zero_init_last_norm=model_cfg.zero_init_last_norm,
                       checkpoint_stages=model_cfg.checkpoint_stages, **model_cfg.arch_kwargs)


def check_data_paths(cfg: Config, need_train: bool = True) -> None:
    """Raise ConfigError naming the first missing annotation file or video root."""
    keys = ["data.root", "data.val_ann"] + (["data.train_ann"] if need_train else [])
    if not need_train and cfg.data.test_ann:
        keys[1] = "data.test_ann"
    for key in keys:
        value = getattr(cfg.data, key.split(".")[1])
        if not value:
            raise ConfigError(f"{key} is not set")
        exists = os.path.isdir(value) if key == "data.root" else os.path.isfile(value)
        if not exists:
            raise ConfigError(f"{key}: not found: {value}")
    if cfg.model.pretrained2d and not os.path.isfile(cfg.model.pretrained2d):
        raise ConfigError(f"model.pretrained2d: not found: {cfg.model.pretrained2d}")


def train_dataset(cfg: Config):
    from snvideo.data import VideoDataset, train_transform

    d = cfg.data
    aug = {k: tuple(v) if isinstance(v, list) else v for k, v in d.train_aug.items()}
    try:
        transform = train_transform(d.short_side, d.crop_size, **aug)
    except TypeError as e:
        raise ConfigError(f"data.train_aug: {e}") from None
    return VideoDataset(d.train_ann, d.root, clip_len=d.clip_len, frame_interval=d.frame_interval,
                        num_clips=1, test_mode=False, transform=transform,
                        short_side=d.short_side, crop_size=d.crop_size, backend=d.backend,
                        seed=cfg.train.seed)


def eval_dataset(cfg: Config, ann_file: str, num_clips: int, num_crops: int, classes=None):
    """Test-mode dataset: every video decoded once into num_clips x num_crops views."""
    from snvideo.data import VideoDataset

    d = cfg.data
    return VideoDataset(ann_file, d.root, clip_len=d.clip_len, frame_interval=d.frame_interval,
                        num_clips=num_clips, test_mode=True, short_side=d.short_side,
                        crop_size=d.crop_size, num_crops=num_crops, backend=d.backend,
                        classes=classes)


def param_groups(model: nn.Module, weight_decay: float, norm_weight_decay: float) -> list[dict]:
    """Norm affine parameters and SN importance logits get `norm_weight_decay` (default 0)."""
    from snvideo.norm.switchnorm import _SwitchNorm

    norm_params, other_params = [], []
    for module in model.modules():
        is_norm = isinstance(module, NORM_TYPES + (_SwitchNorm,))
        for param in module.parameters(recurse=False):
            if param.requires_grad:
                (norm_params if is_norm else other_params).append(param)
    return [{"params": other_params, "weight_decay": weight_decay},
            {"params": norm_params, "weight_decay": norm_weight_decay}]


def lr_lambda(cfg: Config, iters_per_epoch: int):
    """Per-update learning-rate factor: linear warmup, then cosine to 0 or steps."""
    t = cfg.train
    total = max(1, t.epochs * iters_per_epoch)
    warmup = int(t.warmup_epochs * iters_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if t.schedule == "cosine":
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        epoch = step / iters_per_epoch
        return t.step_gamma ** sum(epoch >= e for e in t.step_epochs)

    return factor


def build_optimizer(model: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    t = cfg.train
    # fused: the step can skip a non-finite update on the device (engine.nonfinite)
    return torch.optim.SGD(param_groups(model, t.weight_decay, t.norm_weight_decay), lr=t.lr,
                           momentum=t.momentum, nesterov=False, fused=True)
