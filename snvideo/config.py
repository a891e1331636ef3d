"""Experiment configuration: YAML files loaded into typed dataclasses.

A config file has the sections `model`, `data`, `train`, `test` and the key `work_dir`. It may
start from another file with `_base_: other.yaml` (path relative to the file; sections merge
key by key). Command-line overrides are dotted `key=value` pairs, values parsed as YAML
(`train.lr=0.005`, `model.norm_kwargs={using_bn: false}`). Unknown keys and wrong types raise
ConfigError naming the key and the file, before any work starts.
"""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

from .atomic import atomic_output


class ConfigError(ValueError):
    """A bad config: one line naming the file, key or value."""


@dataclass
class ModelConfig:
    arch: str = "i3d_r50"
    norm: str = "sn"                      # bn | syncbn | gn | in | ln | sn | syncsn
    norm_kwargs: dict = field(default_factory=dict)
    num_classes: int | None = None        # default: from the training annotations
    dropout: float = 0.5
    zero_init_last_norm: bool = False
    checkpoint_stages: bool = False       # activation checkpointing of every residual block
    pretrained2d: str | None = None       # local ImageNet 2D ResNet state dict to inflate
    # fine-tuning: a 3D checkpoint (snvideo | torchvision | mmaction2 | pyslowfast, or auto)
    pretrained: str | None = None
    pretrained_format: str = "auto"
    pretrained_bn_to_sn: bool = False     # load into a BN twin, then convert_bn_to_sn
    pretrained_bn_logit: float = 10.0    # BN importance logit of the converted SN layers
    frozen_stages: int = -1               # -1 none, 0 the stem, K the stem and layer1..K
    freeze_norm_stats: bool = False       # every norm in eval mode during training
    arch_kwargs: dict = field(default_factory=dict)


@dataclass
class DataConfig:
    root: str = ""
    train_ann: str = ""
    val_ann: str = ""
    test_ann: str | None = None           # default: val_ann
    classes_file: str | None = None       # classInd.txt (UCF101), labels.json (SSv2) or a label map
    split: int | None = None              # HMDB51 split (1, 2, 3) of the split-file folder
    clip_len: int = 32
    frame_interval: int = 2
    batch_size: int = 8                   # clips per GPU (per process)
    num_workers: int = 4
    short_side: int = 256
    crop_size: int = 224
    backend: str = "auto"                 # auto | decord | pyav
    rotation: str = "auto"                # auto: frames upright as displayed (phone videos) | ignore: as stored
    decode_threads: int = 1               # decoder threads per DataLoader worker (0: decoder's choice)
    cache: bool = False                   # keep decoded training videos in memory (small datasets)
    cache_max_gb: float = 8.0             # bound of that cache per process (each worker has its own)
    # options of snvideo.data.train_transform: mode (rrc | jitter), area_range, aspect_range,
    # max_short_side, flip_prob (0 for datasets where left/right carries the label)
    train_aug: dict = field(default_factory=dict)
    demo_dir: str | None = None           # generate the demo dataset here first if absent
    demo_kwargs: dict = field(default_factory=dict)  # options of make_demo_dataset


@dataclass
class TrainConfig:
    epochs: int = 100
    lr: float = 0.1                       # for the total batch (all processes, accumulated)
    warmup_epochs: float = 0.0
    schedule: str = "cosine"              # cosine | step
    step_epochs: list = field(default_factory=list)
    step_gamma: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    norm_weight_decay: float = 0.0        # for norm affine params and SN importance logits
    backbone_lr_mult: float = 1.0         # lr of everything but the classifier (fc) = lr x this
    accumulate: int = 1                   # gradient accumulation steps per update
    clip_grad: float | None = 40.0        # max gradient norm; null disables
    amp: str = "off"                      # off | bf16 | fp16
    compile: bool = False
    channels_last: bool = False           # channels_last_3d memory format
    sync_norm: bool = False               # SyncSwitchNorm / SyncBatchNorm across processes
    sn_batch_average: bool = False        # recompute norm stats before evaluation and saving
    sn_batch_average_batches: int = 200
    val_interval: int = 1
    max_nonfinite: int = 5                # consecutive non-finite losses before aborting
    seed: int = 0
    log_interval: int = 20
    checkpoint_every_iters: int = 0       # also write latest.pt every N updates (0: epoch ends only)
    keep_checkpoints: int = 3             # newest epoch_K.pt files kept (0: all)


@dataclass
class TestConfig:
    num_clips: int = 10
    num_crops: int = 3
    views_per_forward: int = 10           # bounds memory: views fed to the model at once
    average: str = "prob"                 # prob (softmax, then mean) | score (mean of logits)
    num_workers: int = 2
    after_train: bool = False             # run the multi-view test at the end of train.py


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    test: TestConfig = field(default_factory=TestConfig)
    work_dir: str = "work_dirs/default"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


CHOICES = {
    "model.pretrained_format": ("auto", "snvideo", "torchvision", "mmaction2", "pyslowfast"),
    "train.schedule": ("cosine", "step"),
    "train.amp": ("off", "bf16", "fp16"),
    "test.average": ("prob", "score"),
    "data.backend": ("auto", "decord", "pyav"),
    "data.rotation": ("auto", "ignore"),
}


def _read_yaml(path: str) -> dict:
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    base = data.pop("_base_", None)
    if base is None:
        return data
    base_path = os.path.join(os.path.dirname(path), base)
    return _merge(_read_yaml(base_path), data)


def _merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key in _SECTIONS:
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


_SECTIONS = {f.name: f.type for f in dataclasses.fields(Config) if f.name != "work_dir"}


def _check_type(key: str, value: Any, annotation: Any, source: str) -> Any:
    """Return value converted to the annotated type, or raise ConfigError."""
    hint = annotation
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) or \
        typing.get_origin(hint) is typing.Union else (hint,)
    if value is None and type(None) in options:
        return None
    for option in options:
        origin = typing.get_origin(option) or option
        if origin is bool and isinstance(value, bool):
            return value
        if origin is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if origin is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if origin in (str, dict, list) and isinstance(value, origin):
            return value
    names = " or ".join("null" if o is type(None) else getattr(o, "__name__", str(o)) for o in options)
    raise ConfigError(f"{source}: {key} must be {names}, got {value!r}")


def build_config(raw: dict, source: str = "<config>") -> Config:
    """Typed Config from a plain dict; unknown keys and wrong types raise ConfigError."""
    cfg = Config()
    for key, value in raw.items():
        if key == "work_dir":
            cfg.work_dir = _check_type("work_dir", value, str, source)
            continue
        if key not in _SECTIONS:
            raise ConfigError(f"{source}: unknown key {key!r} (sections: "
                              f"{', '.join(_SECTIONS)}, work_dir)")
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: section {key!r} must be a mapping, got {value!r}")
        section = getattr(cfg, key)
        types_ = typing.get_type_hints(type(section))
        for name, item in value.items():
            dotted = f"{key}.{name}"
            if name not in types_:
                raise ConfigError(f"{source}: unknown key {dotted!r}")
            if dotted in CHOICES and isinstance(item, bool):
                item = "on" if item else "off"  # YAML 1.1 reads a bare off / on as a boolean
            item = _check_type(dotted, item, types_[name], source)
            if dotted in CHOICES and item not in CHOICES[dotted]:
                raise ConfigError(f"{source}: {dotted} must be one of "
                                  f"{', '.join(CHOICES[dotted])}, got {item!r}")
            setattr(section, name, item)
    return cfg


def parse_overrides(overrides: list[str]) -> dict:
    """['train.lr=0.01', 'work_dir=x'] -> nested dict, values parsed as YAML scalars."""
    nested: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. train.lr=0.01)")
        key, text = item.split("=", 1)
        try:
            value = yaml.safe_load(text) if text != "" else ""
        except yaml.YAMLError:
            value = text
        parts = key.strip().split(".")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override")
        node[parts[-1]] = value
    return nested


def load_config(path: str | None, overrides: list[str] | None = None) -> Config:
    """Read `path` (with `_base_` inheritance), apply dotted overrides, validate."""
    raw = _read_yaml(path) if path else {}
    cfg = build_config(raw, source=path or "<defaults>")
    if overrides:
        cfg = build_config(_merge(raw, parse_overrides(overrides)), source="command-line override")
    return cfg


def config_for_checkpoint(config_path: str | None, overrides: list[str], checkpoint: dict,
                          checkpoint_name: str) -> Config:
    """The config a tool runs a checkpoint with: `config_path` when given, else the config saved
    in the checkpoint; command-line overrides applied either way."""
    if config_path:
        return load_config(config_path, overrides)
    raw = checkpoint.get("config")
    if not isinstance(raw, dict):
        raise ConfigError(f"{checkpoint_name} has no saved config: pass --config")
    merged = {key: dict(value) if isinstance(value, dict) else value for key, value in raw.items()}
    for key, value in parse_overrides(overrides).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key].update(value)
        else:
            merged[key] = value
    return build_config(merged, source="checkpoint config + overrides" if overrides
                        else "<checkpoint config>")


def config_from_dict(data: dict) -> Config:
    """Rebuild a Config saved with Config.to_dict() (e.g. from a checkpoint)."""
    return build_config(data, source="<checkpoint config>")


def save_config(cfg: Config, path: str) -> None:
    with atomic_output(path) as tmp, open(tmp, "w") as f:
        yaml.safe_dump(cfg.to_dict(), f, sort_keys=False)
