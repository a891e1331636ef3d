"""Initialize a 3D backbone from a 2D ImageNet ResNet checkpoint ("inflation", Carreira &
Zisserman 2017): each 2D kernel is repeated over the 3D kernel's temporal size and divided by
it, so a clip that is constant in time gives the 2D network's activations; norm parameters and
running statistics are copied as they are.

Name mapping. ResNet3d models (resnet3d_*, i3d_*) use torchvision's 2D-ResNet names, so a
target key is its own 2D key. r3d_18 (torchvision's video layout) maps stem.0 -> conv1,
stem.1 -> bn1, layerX.Y.convN.0 -> layerX.Y.convN, layerX.Y.convN.1 -> layerX.Y.bnN.
Source checkpoints may be torchvision's (bn1, ...) or the official SN ImageNet release's, whose
norms are named sn1/sn2/sn3 with weight/bias shaped (1, C, 1, 1) and running stats (1, C, 1);
a leading `module.` (DataParallel) is stripped. The classifier (fc) is never loaded.
"""
from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

# (pattern, replacement) from our 3D key to the torchvision 2D key; no-ops on ResNet3d names.
_TARGET_TO_2D = [
    (re.compile(r"^stem\.0\."), "conv1."),
    (re.compile(r"^stem\.1\."), "bn1."),
    (re.compile(r"\.conv(\d)\.0\."), r".conv\1."),
    (re.compile(r"\.conv(\d)\.1\."), r".bn\1."),
]
_SN_NORM_NAME = re.compile(r"(^|\.)sn(\d)\.")
_HEAD_PREFIX = "fc."


@dataclass
class InflateResult:
    """loaded: target keys given pretrained values. skipped: source keys not used (fc, shape
    mismatches, keys with no 3D counterpart). missing: target backbone keys (params and
    buffers, fc excluded) that kept their initial values."""

    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"inflated 2D weights: {len(self.loaded)} loaded, {len(self.skipped)} source keys "
                f"skipped, {len(self.missing)} target keys missing")


def target_to_2d_name(key: str) -> str:
    """The torchvision 2D-ResNet name of one of our 3D models' state-dict keys."""
    for pattern, replacement in _TARGET_TO_2D:
        key = pattern.sub(replacement, key)
    return key


def source_to_2d_name(key: str) -> str:
    """Normalize a 2D checkpoint key to torchvision naming (DataParallel prefix, SN names)."""
    while key.startswith("module."):
        key = key[len("module."):]
    return _SN_NORM_NAME.sub(r"\1bn\2.", key)


def _fit(value: Tensor, target: Tensor) -> Tensor | None:
    """`value` reshaped or inflated to `target`'s shape, or None when it can't be."""
    if value.shape == target.shape:
        return value
    shape_without_t = target.shape[:2] + target.shape[3:]
    if value.dim() == 4 and target.dim() == 5 and shape_without_t == value.shape:
        return value.unsqueeze(2).expand_as(target) / target.shape[2]  # repeat over time, / kt
    if target.dim() == 1 and value.numel() == target.numel() == max(value.shape, default=1):
        return value.reshape(target.shape)  # official SN shapes (1, C, 1, 1) / (1, C, 1)
    return None


@torch.no_grad()
def inflate_2d(model3d: nn.Module, state_dict_2d: Mapping[str, Tensor]) -> InflateResult:
    """Copy a 2D ResNet state dict into `model3d` (inflating conv kernels) in place.

    Shape mismatches warn and are listed under `skipped` (source) and `missing` (target).
    mean_weight / var_weight load only into SN layers with the same number of statistics.
    """
    sources = {source_to_2d_name(k): (k, v) for k, v in state_dict_2d.items()
               if isinstance(v, Tensor)}
    result, used = InflateResult(), set()
    for key, target in model3d.state_dict().items():
        if key.startswith(_HEAD_PREFIX):
            continue
        name_2d = target_to_2d_name(key)
        if name_2d not in sources:
            result.missing.append(key)
            continue
        source_key, value = sources[name_2d]
        used.add(source_key)
        fitted = _fit(value, target)
        if fitted is None:
            warnings.warn(f"inflate_2d: shape mismatch for {key}: 3D {tuple(target.shape)} vs "
                          f"2D {source_key} {tuple(value.shape)}; not loaded", stacklevel=2)
            result.skipped.append(source_key)
            result.missing.append(key)
            continue
        target.copy_(fitted)
        result.loaded.append(key)
    result.skipped += [k for k in state_dict_2d if k not in used and k not in result.skipped]
    if not result.loaded:
        warnings.warn("inflate_2d: no key of the 2D state dict matched the model", stacklevel=2)
    return result


def _unwrap(checkpoint: Mapping) -> Mapping[str, Tensor]:
    """The state dict inside a training checkpoint ({'state_dict': ...} / {'model': ...})."""
    while True:
        inner = next((checkpoint[k] for k in ("state_dict", "model")
                      if isinstance(checkpoint.get(k), Mapping)), None)
        if inner is None:
            return checkpoint
        checkpoint = inner


def load_pretrained_2d(model: nn.Module, path: str) -> InflateResult:
    """Load a local 2D ImageNet ResNet checkpoint into `model` with `inflate_2d`; logs a summary
    (the lists at debug level)."""
    checkpoint = torch.load(path, weights_only=True, map_location="cpu")
    result = inflate_2d(model, _unwrap(checkpoint))
    log.info("%s from %s", result.summary(), path)
    for name in ("skipped", "missing"):
        if getattr(result, name):
            log.debug("%s: %s", name, ", ".join(getattr(result, name)))
    return result
