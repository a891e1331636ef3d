"""Record what PySlowFast's own X3D computes, for tests/test_x3d.py.

    git clone https://github.com/facebookresearch/SlowFast /tmp/SlowFast   # any recent commit
    python tests/data/pyslowfast/make_x3d_reference.py /tmp/SlowFast [--out tests/data/pyslowfast]

Needs torch, numpy and PyYAML only: the packages PySlowFast imports around its model code
(fvcore, detectron2, pytorchvideo, simplejson, iopath) are replaced by the few stand-ins below,
and its package __init__ files are not run. The stand-in that computes something is
pytorchvideo's Swish, x * sigmoid(x). The model is built from PySlowFast's config defaults
(slowfast/config/defaults.py) merged with its configs/Kinetics/X3D_{XS,S,M,L}.yaml, with
DATA.NUM_FRAMES / TRAIN_CROP_SIZE set to the recorded input, so that its head's fixed-size
average pool covers the whole feature map (ours pools globally).

Writes, at 400 classes:
  x3d_m_keys.json, x3d_l_keys.json  PySlowFast's state-dict keys in order with their shapes
                         (XS, S and M are one network: the script checks that their keys and
                         shapes are the same; every tensor is float32 but num_batches_tracked)
and for XS and M (models in eval mode, every float tensor from seeded_weights.seeded_tensor):
  x3d_{size}_logits.json the input's shape and seed, PySlowFast's commit, and the logits: the
                         head's projection output before its eval-mode softmax
The input is torch.randn(shape, generator=torch.Generator().manual_seed(seed)); it is
regenerated in the test, so no tensor file is shipped.
"""
from __future__ import annotations

import argparse
import copy
import importlib
import json
import logging
import os
import subprocess
import sys
import types

import torch
import yaml
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from seeded_weights import seeded_state  # noqa: E402

SIZES = ("XS", "S", "M", "L")
# size -> (input shape, input seed); small inputs, T and H/W divisible by the strides
RECORDED = {"XS": ((1, 3, 4, 64, 64), 0), "M": ((1, 3, 8, 96, 96), 1)}


def _module(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module
    return module


class _CfgNode(dict):
    """fvcore's CfgNode as far as PySlowFast's defaults.py and model code use it."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        self[name] = value

    def clone(self):
        return copy.deepcopy(self)


class _Swish(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x)


class _Unavailable(nn.Module):
    def __init__(self, *args, **kwargs):
        raise RuntimeError("not available in this reference build")


def install_stand_ins(source: str) -> None:
    """Make `import slowfast.models.video_model_builder` work from a source checkout without
    PySlowFast's dependencies or its package __init__ files."""
    root = os.path.join(source, "slowfast")
    for package in ("slowfast", "slowfast.models", "slowfast.utils", "slowfast.config"):
        path = os.path.join(root, *package.split(".")[1:])
        _module(package, __path__=[path])
    _module("slowfast.utils.logging", get_logger=logging.getLogger)
    _module("slowfast.models.build",
            MODEL_REGISTRY=types.SimpleNamespace(register=lambda *a, **k: (lambda cls: cls)))
    for name in ("fvcore", "fvcore.nn", "fvcore.common", "detectron2", "pytorchvideo",
                 "pytorchvideo.layers"):
        _module(name, __path__=[])
    _module("fvcore.common.config", CfgNode=_CfgNode)
    _module("fvcore.nn.weight_init",  # the init is overwritten by the seeded weights anyway
            c2_msra_fill=lambda m: nn.init.kaiming_normal_(m.weight, mode="fan_out"),
            c2_xavier_fill=lambda m: nn.init.xavier_uniform_(m.weight))
    _module("detectron2.layers", ROIAlign=_Unavailable)
    _module("pytorchvideo.layers.batch_norm", NaiveSyncBatchNorm1d=_Unavailable,
            NaiveSyncBatchNorm3d=_Unavailable)
    _module("pytorchvideo.layers.swish", Swish=_Swish)


def _merge(cfg: _CfgNode, update: dict) -> None:
    for key, value in update.items():
        if isinstance(value, dict):
            _merge(cfg[key], value)
        else:
            cfg[key] = value


def build_x3d(source: str, size: str, frames: int | None = None,
              crop: int | None = None) -> nn.Module:
    defaults = importlib.import_module("slowfast.config.defaults")
    builder = importlib.import_module("slowfast.models.video_model_builder")
    cfg = defaults.get_cfg()
    with open(os.path.join(source, "configs", "Kinetics", f"X3D_{size}.yaml")) as f:
        _merge(cfg, yaml.safe_load(f))
    cfg.NUM_GPUS = 0
    if frames is not None:
        cfg.DATA.NUM_FRAMES, cfg.DATA.TRAIN_CROP_SIZE = frames, crop
    assert cfg.MODEL.ARCH == "x3d" and cfg.MODEL.NUM_CLASSES == 400
    return builder.X3D(cfg)


def key_list(model: nn.Module) -> list[list]:
    state = model.state_dict()
    assert all(value.dtype == (torch.int64 if key.endswith(".num_batches_tracked")
                               else torch.float32) for key, value in state.items())
    return [[key, list(value.shape)] for key, value in state.items()]


def reference_logits(model: nn.Module, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """The projection's output (before the eval-mode softmax) for the seeded input."""
    model.load_state_dict(seeded_state(model.state_dict()), strict=True)
    model.eval()
    captured = []
    handle = model.head.projection.register_forward_hook(lambda m, i, out: captured.append(out))
    clip = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        model([clip])
    handle.remove()
    (out,) = captured
    assert out.shape[1:4] == (1, 1, 1), f"the head pooled to {tuple(out.shape)}, not one window"
    return out.flatten(1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", help="a PySlowFast source checkout (its root folder)")
    parser.add_argument("--out", default=HERE)
    parser.add_argument("--commit", help="PySlowFast's commit, where source is not a git clone")
    args = parser.parse_args(argv)
    install_stand_ins(args.source)
    os.makedirs(args.out, exist_ok=True)
    commit = args.commit
    try:
        commit = commit or subprocess.run(["git", "-C", args.source, "rev-parse", "HEAD"],
                                capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "(commit unknown)"
    torch.manual_seed(0)
    keys_of = {size: key_list(build_x3d(args.source, size)) for size in SIZES}
    assert keys_of["XS"] == keys_of["S"] == keys_of["M"] != keys_of["L"]
    for size, sizes in (("M", "XS, S, M"), ("L", "L")):
        with open(os.path.join(args.out, f"x3d_{size.lower()}_keys.json"), "w") as f:
            json.dump({"source": f"PySlowFast {commit}, X3D_{size}.yaml, 400 classes",
                       "archs": sizes, "keys": keys_of[size]}, f, separators=(",", ":"))
    for size in SIZES:
        name, keys = f"x3d_{size.lower()}", keys_of[size]
        if size not in RECORDED:
            continue
        shape, seed = RECORDED[size]
        model = build_x3d(args.source, size, frames=shape[2], crop=shape[3])
        assert key_list(model) == keys  # the input size does not change the parameters
        logits = reference_logits(model, shape, seed)
        with open(os.path.join(args.out, f"{name}_logits.json"), "w") as f:
            json.dump({"source": f"PySlowFast {commit}, X3D_{size}.yaml, 400 classes, eval",
                       "input_shape": list(shape), "input_seed": seed,
                       "logits": [[float(f"{v:.9g}") for v in row] for row in logits.tolist()]},
                      f, separators=(",", ":"))
        print(f"{name}: {len(keys)} keys; logits {tuple(logits.shape)}, "
              f"|max| {logits.abs().max():.4f}")


if __name__ == "__main__":
    main()
