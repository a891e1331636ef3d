"""Start from a 3D checkpoint a user already has: ours, torchvision's, mmaction2's or PySlowFast's.

    result = load_pretrained(model, "i3d_r50_k400.pth")          # format="auto"
    print(result.summary())

Formats and how their names map onto ours (facts from those projects' model code):
- snvideo: train.py checkpoints {"model": state_dict, ...} or a bare state dict of our models.
- torchvision: state dicts of torchvision.models.video r3d_18 / mc3_18 / r2plus1d_18 (plain,
  or {"model": ...} as its reference scripts save): the same names as our VideoResNet.
- mmaction2: {"state_dict": ...} of a Recognizer3D with a ResNet3d / I3D backbone: ConvModules
  `backbone.conv1.{conv,bn}`, `backbone.layerX.Y.convK.{conv,bn}`,
  `backbone.layerX.Y.downsample.{conv,bn}`, classifier `cls_head.fc_cls`.
- pyslowfast: {"model_state": ...} of a ResNet (I3D / Slow): `s1.pathway0_stem.{conv,bn}`,
  `sK.pathway0_resJ.branch2.{a,b,c}` and `{a,b,c}_bn`, `branch1` / `branch1_bn` (shortcut),
  classifier `head.projection`; stage sK is our layer{K-1}. SlowFast and X3D checkpoints have
  the same layout (`s1.pathway0_stem.conv`, `s1_fuse.conv_f2s`, `s5.pathway1_res2.branch2.c`,
  ...): our slowfast_* / x3d_* keep PySlowFast's module names (`checkpoint_names =
  "pyslowfast"`), so their keys map by name, only `head.projection` becoming `fc`.
mmaction2 and PySlowFast ResNet names map onto ResNet3d models (i3d_*, resnet3d_*).

A classifier whose shape differs (another class count) is skipped and reported; a backbone
tensor whose shape differs is skipped with a warning naming it. Files load with
torch.load(weights_only=True); every problem with the file is a one-line PretrainedError.
"""
from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn

from snvideo.norm import is_switch_norm

FORMATS = ("snvideo", "torchvision", "mmaction2", "pyslowfast")
_HEAD_PREFIX = "fc."
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DDP, torch.compile


class PretrainedError(ValueError):
    """A checkpoint that cannot be used: one line naming the file and what is wrong."""


@dataclass
class PretrainedResult:
    """loaded: our keys given checkpoint values. skipped: checkpoint keys not used (no place in
    the model, shape mismatches, the classifier of another class count). missing: our keys
    (params and buffers) that kept their initial values. head_skipped: the classifier keys
    among `skipped`."""

    format: str
    source: str
    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    head_skipped: list[str] = field(default_factory=list)
    shape_mismatches: list[str] = field(default_factory=list)  # "ours: theirs vs ours"

    def summary(self) -> str:
        text = (f"pretrained {self.format} checkpoint {self.source}: {len(self.loaded)} tensors "
                f"loaded, {len(self.skipped)} skipped, {len(self.missing)} missing")
        if self.head_skipped:
            text += " (classifier skipped: shape differs, fc starts fresh)"
        return text


# --- name mappings: checkpoint key -> our key (None: no counterpart) -----------------------------
def strip_wrappers(key: str) -> str:
    """A state-dict key without DDP's `module.` and torch.compile's `_orig_mod.` prefixes."""
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


_MMACTION2_RULES = [
    (re.compile(r"^conv1\.conv\."), "conv1."),
    (re.compile(r"^conv1\.bn\."), "bn1."),
    (re.compile(r"\.conv(\d)\.conv\."), r".conv\1."),
    (re.compile(r"\.conv(\d)\.bn\."), r".bn\1."),
    (re.compile(r"\.downsample\.conv\."), ".downsample.0."),
    (re.compile(r"\.downsample\.bn\."), ".downsample.1."),
]


def mmaction2_to_ours(key: str) -> str | None:
    key = strip_wrappers(key)
    if key.startswith("cls_head.fc_cls."):
        return _HEAD_PREFIX + key[len("cls_head.fc_cls."):]
    if not key.startswith("backbone."):
        return None
    key = key[len("backbone."):]
    for pattern, replacement in _MMACTION2_RULES:
        key = pattern.sub(replacement, key)
    return key


_SLOWFAST_STEM = re.compile(r"^s1\.pathway0_stem\.(conv|bn)\.")
_SLOWFAST_BLOCK = re.compile(r"^s(\d)\.pathway0_res(\d+)\.")
_SLOWFAST_BRANCHES = {"branch1.": "downsample.0.", "branch1_bn.": "downsample.1.",
                      "branch2.a.": "conv1.", "branch2.a_bn.": "bn1.",
                      "branch2.b.": "conv2.", "branch2.b_bn.": "bn2.",
                      "branch2.c.": "conv3.", "branch2.c_bn.": "bn3."}


def pyslowfast_to_ours(key: str) -> str | None:
    key = strip_wrappers(key)
    if key.startswith("head.projection."):
        return _HEAD_PREFIX + key[len("head.projection."):]
    stem = _SLOWFAST_STEM.match(key)
    if stem:
        return ("conv1." if stem.group(1) == "conv" else "bn1.") + key[stem.end():]
    block = _SLOWFAST_BLOCK.match(key)
    if not block or not 2 <= int(block.group(1)) <= 5:
        return None
    rest = key[block.end():]
    for theirs, ours in _SLOWFAST_BRANCHES.items():
        if rest.startswith(theirs):
            return f"layer{int(block.group(1)) - 1}.{block.group(2)}.{ours}{rest[len(theirs):]}"
    return None


def pyslowfast_same_names(key: str) -> str | None:
    """PySlowFast key -> ours for models built with PySlowFast's module names (SlowFast, X3D)."""
    key = strip_wrappers(key)
    if key.startswith("head.projection."):
        return _HEAD_PREFIX + key[len("head.projection."):]
    return key


_TO_OURS: dict[str, Callable[[str], str | None]] = {
    "snvideo": strip_wrappers, "torchvision": strip_wrappers,
    "mmaction2": mmaction2_to_ours, "pyslowfast": pyslowfast_to_ours,
}


# --- reading and recognising checkpoints ---------------------------------------------------------
def read_checkpoint(path: str) -> Mapping:
    """torch.load(path, weights_only=True), with a one-line PretrainedError for every failure."""
    if not os.path.isfile(path):
        raise PretrainedError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch.load fails in many ways on a non-checkpoint
        text = str(e)
        reason = text.split("WeightsUnpickler error:", 1)[-1].strip().splitlines()[0] \
            if "WeightsUnpickler error:" in text else ""
        if reason.startswith("Unsupported global"):  # a real pickle with non-tensor objects
            raise PretrainedError(
                f"{path}: holds Python objects that weights_only=True loading refuses ({reason}); "
                "if you trust the file, re-save only its state dict with torch.save") from None
        reason = reason or " ".join(text.split()) or type(e).__name__
        raise PretrainedError(f"{path}: not a PyTorch checkpoint ({reason[:120]})") from None
    if not isinstance(checkpoint, Mapping):
        raise PretrainedError(f"{path}: not a checkpoint (holds a {type(checkpoint).__name__}, "
                              "expected a dict of tensors)")
    return checkpoint


def _tensors(mapping) -> dict[str, Tensor] | None:
    """`mapping` if it is a state dict (a mapping holding tensors), else None."""
    if not isinstance(mapping, Mapping):
        return None
    tensors = {k: v for k, v in mapping.items() if isinstance(k, str) and isinstance(v, Tensor)}
    return tensors or None


def _candidates(checkpoint: Mapping) -> dict[str, dict[str, Tensor]]:
    """The state dicts a checkpoint holds, by where: 'model_state', 'state_dict', 'model', ''."""
    found = {}
    for where in ("model_state", "state_dict", "model"):
        inner = _tensors(checkpoint.get(where))
        if inner:
            found[where] = inner
    plain = _tensors(checkpoint)
    if plain:
        found[""] = plain
    return found


def _has_prefix(state: Mapping[str, Tensor], *prefixes: str) -> bool:
    return any(strip_wrappers(k).startswith(prefixes) for k in state)


def _state_for(fmt: str, found: dict[str, dict[str, Tensor]]) -> dict[str, Tensor] | None:
    """The state dict of `found` that has format `fmt`'s layout, or None."""
    for where, state in found.items():
        if fmt == "pyslowfast" and where in ("model_state", "") \
                and _has_prefix(state, "s1.pathway0_stem.", "s2.pathway0_res"):
            return state
        if fmt == "mmaction2" and where in ("state_dict", "") \
                and _has_prefix(state, "backbone.", "cls_head."):
            return state
        if fmt == "torchvision" and where in ("", "model") and _has_prefix(state, "stem.0."):
            return state
        # ours: train.py's {"model": ...} (SlowFast / X3D with PySlowFast's names too), or a
        # bare state dict with none of the other projects' names
        if fmt == "snvideo" and (where == "model" and not _has_prefix(state, "backbone.")
                                 or where == "" and not _has_prefix(
                                     state, "backbone.", "s1.pathway0_stem.", "s2.pathway0_res")):
            return state
    return None


def detect_format(checkpoint: Mapping) -> str:
    """The format of a loaded checkpoint, from its layout and key names; PretrainedError if
    none fits. (torchvision and snvideo share names: a bare state dict with torchvision's
    `stem.0.` names is called torchvision, one inside {"model": ...} snvideo.)"""
    found = _candidates(checkpoint)
    if "model" in found and "" not in found and _state_for("snvideo", found):
        return "snvideo"
    for fmt in ("pyslowfast", "mmaction2", "torchvision", "snvideo"):
        if _state_for(fmt, found) is not None:
            return fmt
    raise PretrainedError("cannot tell the checkpoint format from its keys "
                          f"({', '.join(list(checkpoint)[:4])}, ...); pass one of "
                          f"{', '.join(FORMATS)}")


def _two_d_conv1(state: Mapping[str, Tensor]) -> bool:
    weight = state.get("conv1.weight")
    return isinstance(weight, Tensor) and weight.dim() == 4


# --- loading -----------------------------------------------------------------------------------
def load_pretrained(model: nn.Module, source: str | os.PathLike | Mapping,
                    format: str = "auto") -> PretrainedResult:  # noqa: A002 - the issue's name
    """Copy a 3D checkpoint (a path or an already loaded dict) into `model` in place.

    `format`: auto | snvideo | torchvision | mmaction2 | pyslowfast (see the module docstring);
    `auto` detects it and the result's `format` says which it chose. Returns the lists of
    loaded / skipped / missing names; raises PretrainedError (one line) for a file that is not
    a checkpoint, a checkpoint not in `format`, or one of which no backbone tensor fits the
    model (then the model is left unchanged).
    """
    if format != "auto" and format not in FORMATS:
        raise PretrainedError(f"unknown checkpoint format {format!r}; valid: auto, "
                              f"{', '.join(FORMATS)}")
    if isinstance(source, Mapping):
        name, checkpoint = "<dict>", source
    else:
        name = os.fspath(source)
        checkpoint = read_checkpoint(name)
    try:
        detected = detect_format(checkpoint)
    except PretrainedError as e:
        if format == "auto":
            raise PretrainedError(f"{name}: {e}") from None
        detected = None
    fmt = detected if format == "auto" else format
    state = _state_for(fmt, _candidates(checkpoint))
    if state is None:
        looks = f"; it looks like a {detected} checkpoint" if detected else ""
        raise PretrainedError(f"{name}: not a {fmt} checkpoint{looks}")
    if _two_d_conv1({strip_wrappers(k): v for k, v in state.items()}):
        raise PretrainedError(f"{name}: a 2D checkpoint (conv1.weight is 4D); inflate it with "
                              "load_pretrained_2d / model.pretrained2d")
    to_ours = _TO_OURS[fmt]
    if fmt == "pyslowfast" and getattr(model, "checkpoint_names", None) == "pyslowfast":
        to_ours = pyslowfast_same_names
    with torch.no_grad():
        return _copy_into(model, state, to_ours, PretrainedResult(fmt, name))


def _copy_into(model: nn.Module, state: Mapping[str, Tensor], to_ours: Callable[[str], str | None],
               result: PretrainedResult) -> PretrainedResult:
    """Match names and shapes first; copy only when some backbone tensor (other than the
    scalar num_batches_tracked, whose shape always fits) fits."""
    targets = model.state_dict()
    matched: list[tuple[str, Tensor]] = []
    backbone_mismatches = []
    for source_key, value in state.items():
        key = to_ours(source_key)
        if key is None or key not in targets:
            result.skipped.append(source_key)
            continue
        target = targets[key]
        if value.shape != target.shape:
            result.skipped.append(source_key)
            result.shape_mismatches.append(f"{key}: {tuple(value.shape)} vs {tuple(target.shape)}")
            if key.startswith(_HEAD_PREFIX):
                result.head_skipped.append(source_key)
            else:
                backbone_mismatches.append((key, source_key, value, target))
            continue
        matched.append((key, value))
    if not any(not key.startswith(_HEAD_PREFIX) and value.dim() > 0 for key, value in matched):
        raise PretrainedError(f"{result.source}: no backbone tensor of this {result.format} "
                              f"checkpoint fits the model ({type(model).__name__}); is it for "
                              "another architecture?")
    for key, source_key, value, target in backbone_mismatches:
        warnings.warn(f"load_pretrained: {key} not loaded: checkpoint {source_key} has shape "
                      f"{tuple(value.shape)}, the model {tuple(target.shape)}", stacklevel=3)
    for key, value in matched:
        targets[key].copy_(value)
        result.loaded.append(key)
    loaded = set(result.loaded)
    result.missing = [k for k in targets if k not in loaded]
    sn_layers = any(is_switch_norm(m) for m in model.modules())
    if sn_layers and not any(k.endswith((".mean_weight", ".var_weight")) for k in loaded):
        warnings.warn(f"load_pretrained: {result.source} has no SN importance logits (a BN "
                      "checkpoint?): the SN layers keep their initial equal IN/LN/BN mix; "
                      "convert_bn_to_sn after loading into a BN model reproduces the BN model",
                      stacklevel=3)
    return result
