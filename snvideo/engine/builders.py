"""Turn a Config into the objects train.py and test.py use: model, datasets, optimizer, schedule."""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Callable

import torch
from torch import nn

from snvideo.config import Config, ConfigError, ModelConfig

NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm,
              nn.LayerNorm)


def model_from_config(model_cfg: ModelConfig, num_classes: int) -> nn.Module:
    """build_model with the config's settings (pretrained 2D weights are loaded separately).
    Values that only fail when the model is built raise ConfigError naming their key."""
    from snvideo.models import ARCHS, build_model
    from snvideo.models.common import NormBuildError

    if model_cfg.arch not in ARCHS:
        raise ConfigError(f"model.arch: unknown arch {model_cfg.arch!r}; valid archs: "
                          f"{', '.join(ARCHS)}")
    try:
        return build_model(model_cfg.arch, num_classes, norm=model_cfg.norm,
                           norm_kwargs=dict(model_cfg.norm_kwargs), dropout=model_cfg.dropout,
                           zero_init_last_norm=model_cfg.zero_init_last_norm,
                           checkpoint_stages=model_cfg.checkpoint_stages, **model_cfg.arch_kwargs)
    except NormBuildError as e:
        if "unknown norm kind" in str(e):
            key = "model.norm"
        elif "num_groups" in str(e):
            key = "model.norm_kwargs.num_groups"
        else:
            key = "model.norm_kwargs"
        raise ConfigError(f"{key}: {e}") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model.arch_kwargs: {e}") from None


def class_names(checkpoint: dict, checkpoint_path: str) -> list[str]:
    """A checkpoint's class names: saved in it, else label_map.txt beside it, else none."""
    names = checkpoint.get("classes")
    if names:
        return [str(n) for n in names]
    label_map = os.path.join(os.path.dirname(os.path.abspath(checkpoint_path)), "label_map.txt")
    if os.path.isfile(label_map):
        with open(label_map) as f:
            return [line.strip() for line in f if line.strip()]
    return []


def model_from_checkpoint(cfg: Config, checkpoint: dict, names: list[str] = ()) -> nn.Module:
    """The config's architecture with the checkpoint's weights (ConfigError on a mismatch);
    the class count from the checkpoint's classifier, else `names`, else model.num_classes."""
    state = checkpoint.get("model")
    if not isinstance(state, dict):
        raise ConfigError("checkpoint has no 'model' state dict")
    fc = state.get("fc.weight")
    num_classes = int(fc.shape[0]) if fc is not None else (len(names) or cfg.model.num_classes)
    if not num_classes:
        raise ConfigError("cannot tell the number of classes: set model.num_classes")
    model = model_from_config(cfg.model, num_classes)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:300]
        raise ConfigError(f"checkpoint weights do not fit model.arch={cfg.model.arch} "
                          f"norm={cfg.model.norm}: {detail}") from None
    return model


def check_data_paths(cfg: Config, need_train: bool = True) -> None:
    """Raise ConfigError naming the first missing annotation file or folder, class file or
    video root (data.root may stay empty when every annotation is a folder of class folders)."""
    keys = ["data.val_ann"] + (["data.train_ann"] if need_train else [])
    if not need_train and cfg.data.test_ann:
        keys[0] = "data.test_ann"
    for key in keys:
        value = getattr(cfg.data, key.split(".")[1])
        if not value:
            raise ConfigError(f"{key} is not set")
        if not os.path.exists(value):
            raise ConfigError(f"{key}: not found: {value}")
    if cfg.data.root or not all(_is_class_folders(getattr(cfg.data, k.split(".")[1])) for k in keys):
        if not cfg.data.root:
            raise ConfigError("data.root is not set")
        if not os.path.isdir(cfg.data.root):
            raise ConfigError(f"data.root: not found: {cfg.data.root}")
    if cfg.data.classes_file and not os.path.isfile(cfg.data.classes_file):
        raise ConfigError(f"data.classes_file: not found: {cfg.data.classes_file}")
    if cfg.data.split is not None and cfg.data.split not in (1, 2, 3):
        raise ConfigError(f"data.split must be 1, 2 or 3, got {cfg.data.split}")
    if cfg.model.pretrained2d and not os.path.isfile(cfg.model.pretrained2d):
        raise ConfigError(f"model.pretrained2d: not found: {cfg.model.pretrained2d}")
    if need_train:
        check_finetune_config(cfg)


def check_finetune_config(cfg: Config) -> None:
    """Raise ConfigError for a fine-tuning setting that cannot work, before any work starts."""
    m, t = cfg.model, cfg.train
    if m.pretrained and not os.path.isfile(m.pretrained):
        raise ConfigError(f"model.pretrained: not found: {m.pretrained}")
    if not -1 <= m.frozen_stages <= 4:
        raise ConfigError(f"model.frozen_stages must be -1 (none) to 4, got {m.frozen_stages}")
    if t.backbone_lr_mult < 0:
        raise ConfigError(f"train.backbone_lr_mult must be >= 0, got {t.backbone_lr_mult}")
    if m.pretrained_bn_to_sn:
        if not m.pretrained:
            raise ConfigError("model.pretrained_bn_to_sn needs model.pretrained (a BN checkpoint)")
        if m.norm not in ("sn", "syncsn"):
            raise ConfigError(f"model.pretrained_bn_to_sn makes an SN model: model.norm must be "
                              f"sn or syncsn, got {m.norm!r}")
        if m.norm_kwargs:
            raise ConfigError("model.norm_kwargs does not apply with model.pretrained_bn_to_sn "
                              "(the SN layers take eps and momentum from the BN layers)")
    if t.sn_batch_average and (m.freeze_norm_stats or m.frozen_stages >= 0):
        raise ConfigError("train.sn_batch_average recomputes the norm statistics that "
                          "model.freeze_norm_stats / model.frozen_stages keep fixed")


def finetune_model(model: nn.Module, model_cfg: ModelConfig, num_classes: int,
                   log: Callable[[str], None] | None = print) -> nn.Module:
    """Apply model.pretrained (optionally through BN -> SN conversion), model.frozen_stages and
    model.freeze_norm_stats to a model built by model_from_config; logs what it loaded, skipped
    and froze. Returns the model (a new one when converting). PretrainedError -> ConfigError."""
    from snvideo.models import PretrainedError, freeze_backbone, load_pretrained
    from snvideo.norm import convert_bn_to_sn

    m = model_cfg
    log = log or (lambda text: None)
    if m.pretrained:
        if m.pretrained_bn_to_sn:  # a BN twin takes the BN checkpoint, then becomes SN
            bn_kind = "syncbn" if m.norm == "syncsn" else "bn"
            model = model_from_config(dataclasses.replace(m, norm=bn_kind), num_classes)
        try:
            result = load_pretrained(model, m.pretrained, m.pretrained_format)
        except PretrainedError as e:
            raise ConfigError(f"model.pretrained: {e}") from None
        log(result.summary())
        for name in ("skipped", "missing"):
            keys = getattr(result, name)
            if keys:
                more = f" ... (+{len(keys) - 8} more)" if len(keys) > 8 else ""
                log(f"  {name}: {', '.join(keys[:8])}{more}")
        for mismatch in result.shape_mismatches:
            log(f"  shape differs, not loaded: {mismatch}")
        if m.pretrained_bn_to_sn:
            before = sum(isinstance(x, nn.modules.batchnorm._BatchNorm) for x in model.modules())
            model = convert_bn_to_sn(model, m.pretrained_bn_logit)
            share = math.exp(m.pretrained_bn_logit) / (math.exp(m.pretrained_bn_logit) + 2)
            log(f"converted {before} BatchNorm layers to SwitchNorm (BN importance "
                f"{share:.5f} for means and variances)")
    if m.frozen_stages >= 0 or m.freeze_norm_stats:
        log(freeze_backbone(model, m.frozen_stages, m.freeze_norm_stats).summary())
    return model


def _is_class_folders(path: str) -> bool:
    from snvideo.data.layouts import detect_directory_format

    try:
        return os.path.isdir(path) and detect_directory_format(path) == "folders"
    except ValueError:
        return False


def check_decode_threads(cfg: Config) -> None:
    if cfg.data.decode_threads < 0:
        raise ConfigError(f"data.decode_threads must be >= 0 (0: the decoder's choice), "
                          f"got {cfg.data.decode_threads}")


def train_dataset(cfg: Config):
    """Training clips stay uint8 in the workers; train.py normalizes them on its device."""
    from snvideo.data import VideoDataset, train_transform

    d = cfg.data
    check_decode_threads(cfg)
    if d.cache and not d.cache_max_gb > 0:
        raise ConfigError(f"data.cache_max_gb must be > 0 with data.cache, got {d.cache_max_gb}")
    aug = {k: tuple(v) if isinstance(v, list) else v for k, v in d.train_aug.items()}
    try:
        transform = train_transform(d.short_side, d.crop_size, **aug)
    except TypeError as e:
        raise ConfigError(f"data.train_aug: {e}") from None
    try:
        return VideoDataset(d.train_ann, d.root, clip_len=d.clip_len, frame_interval=d.frame_interval,
                            num_clips=1, test_mode=False, transform=transform,
                            short_side=d.short_side, crop_size=d.crop_size, backend=d.backend,
                            rotation=d.rotation, seed=cfg.train.seed, classes_file=d.classes_file, split=d.split,
                            normalize=False, decode_threads=d.decode_threads,
                            cache_bytes=int(d.cache_max_gb * 1e9) if d.cache else 0)
    except ValueError as e:  # a malformed or ambiguous annotation: one line naming the file
        raise ConfigError(str(e).splitlines()[0]) from None


def eval_dataset(cfg: Config, ann_file: str, num_clips: int, num_crops: int, classes=None):
    """Test-mode dataset: every video decoded once into num_clips x num_crops views."""
    from snvideo.data import VideoDataset

    d = cfg.data
    check_decode_threads(cfg)
    try:
        return VideoDataset(ann_file, d.root, clip_len=d.clip_len, frame_interval=d.frame_interval,
                            num_clips=num_clips, test_mode=True, short_side=d.short_side,
                            crop_size=d.crop_size, num_crops=num_crops, backend=d.backend,
                            rotation=d.rotation, classes=classes, classes_file=d.classes_file, split=d.split,
                            decode_threads=d.decode_threads)
    except ValueError as e:
        raise ConfigError(str(e).splitlines()[0]) from None


def param_groups(model: nn.Module, weight_decay: float, norm_weight_decay: float) -> list[dict]:
    """Norm affine parameters and SN importance logits get `norm_weight_decay` (default 0)."""
    from snvideo.norm.switchnorm import SharedImportance, _SwitchNorm

    norm_params, other_params = [], []
    for module in model.modules():
        is_norm = isinstance(module, NORM_TYPES + (_SwitchNorm, SharedImportance))
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
    """SGD; with train.backbone_lr_mult != 1 the classifier (fc) groups come first with
    train.lr and the rest get train.lr x backbone_lr_mult (groups named 'head' / 'backbone')."""
    t = cfg.train
    groups = param_groups(model, t.weight_decay, t.norm_weight_decay)
    if t.backbone_lr_mult != 1.0:
        head_ids = {id(p) for p in getattr(model, "fc", nn.Identity()).parameters()}
        split = []
        for name, is_head, lr in (("head", True, t.lr), ("backbone", False,
                                                          t.lr * t.backbone_lr_mult)):
            for group in groups:
                params = [p for p in group["params"] if (id(p) in head_ids) == is_head]
                if params:
                    split.append({**group, "params": params, "lr": lr, "name": name})
        groups = split
    # fused: the step can skip a non-finite update on the device (engine.nonfinite)
    return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, nesterov=False, fused=True)
