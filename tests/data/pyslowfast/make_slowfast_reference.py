"""Record PySlowFast's own SlowFast outputs for tests/test_slowfast.py.

    python tests/data/pyslowfast/make_slowfast_reference.py /path/to/SlowFast
    PYSLOWFAST_COMMIT=<sha> python ... /path/to/exported/SlowFast   # a tree without .git

Needs a checkout of https://github.com/facebookresearch/SlowFast (any commit with
slowfast/models/video_model_builder.py; these files were made from its main branch, commit in
slowfast_reference.json), torch, torchvision, numpy, scipy and Pillow. PySlowFast's other
dependencies (fvcore, detectron2, pytorchvideo, simplejson, iopath, cv2) are not needed: the
few names the model and pack_pathway_output import from them are stubbed below, and the
config is a plain namespace holding the keys the SlowFast builder reads, set as
configs/Kinetics/SLOWFAST_{8x8,4x16}_R50.yaml and c2/SLOWFAST_8x8_R101_101_101.yaml set them
(defaults.py for the rest).

Writes beside this script:
- slowfast_state_shapes.json: PySlowFast state-dict key -> shape of SlowFast R50 8x8, R50 4x16
  (stored as 8x8's with the shapes that differ: the lateral convs) and R101 8x8, 400 classes,
  in PySlowFast's order.
- slowfast_reference.json: for R50 8x8 and 4x16 with every float tensor from
  seeded_weights.seeded_state (this folder), the eval-mode output (head activation "none": the
  projection's logits, no softmax) for a seeded 1x3x32x64x64 clip split into pathways by
  PySlowFast's own pack_pathway_output.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from seeded_weights import seeded_state  # noqa: E402

INPUT, INPUT_SEED = (1, 3, 32, 64, 64), 0  # the clip: torch.randn(INPUT) from this seed
CROP = INPUT[-1]  # PySlowFast's head pools a TRAIN_CROP_SIZE / 32 window: all of res5 here


def config(depth: int, alpha: int, fusion_kernel: int, frames: int) -> types.SimpleNamespace:
    """The keys PySlowFast's SlowFast, its head and pack_pathway_output read."""
    n = types.SimpleNamespace
    return n(
        MODEL=n(ARCH="slowfast", MODEL_NAME="SlowFast", NUM_CLASSES=400, DROPOUT_RATE=0.5,
                HEAD_ACT="none", FC_INIT_STD=0.01, DETACH_FINAL_FC=False,
                SINGLE_PATHWAY_ARCH=["2d", "c2d", "i3d", "slow", "x3d", "mvit", "maskmvit"],
                MULTI_PATHWAY_ARCH=["slowfast"]),
        SLOWFAST=n(ALPHA=alpha, BETA_INV=8, FUSION_CONV_CHANNEL_RATIO=2,
                   FUSION_KERNEL_SZ=fusion_kernel),
        RESNET=n(ZERO_INIT_FINAL_BN=True, ZERO_INIT_FINAL_CONV=False, WIDTH_PER_GROUP=64,
                 NUM_GROUPS=1, DEPTH=depth, TRANS_FUNC="bottleneck_transform", STRIDE_1X1=False,
                 INPLACE_RELU=True,
                 NUM_BLOCK_TEMP_KERNEL=[[3, 3], [4, 4], [23 if depth == 101 else 6] * 2, [3, 3]],
                 SPATIAL_STRIDES=[[1, 1], [2, 2], [2, 2], [2, 2]],
                 SPATIAL_DILATIONS=[[1, 1], [1, 1], [1, 1], [1, 1]]),
        NONLOCAL=n(LOCATION=[[[], []]] * 4, GROUP=[[1, 1]] * 4, INSTANTIATION="dot_product",
                   POOL=[[[1, 2, 2], [1, 2, 2]]] * 4),
        DATA=n(NUM_FRAMES=frames, TRAIN_CROP_SIZE=CROP, INPUT_CHANNEL_NUM=[3, 3],
               REVERSE_INPUT_CHANNEL=False),
        BN=n(NORM_TYPE="batchnorm"),
        DETECTION=n(ENABLE=False),
        MULTIGRID=n(SHORT_CYCLE=False),
        CONTRASTIVE=n(NUM_MLP_LAYERS=1, PREDICTOR_DEPTHS=[]),
    )


def stub_modules(root: str) -> None:
    """Packages PySlowFast imports but this script does not need, as minimal stand-ins; the
    slowfast packages themselves without their __init__ (which import everything)."""
    def module(name: str, **attrs) -> types.ModuleType:
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        sys.modules[name] = mod
        return mod

    class Registry:
        def __init__(self, name):
            self.items = {}

        def register(self):
            def add(cls):
                self.items[cls.__name__] = cls
                return cls
            return add

    class Unused(nn.Module):
        pass

    import logging
    module("fvcore"), module("fvcore.common"), module("fvcore.nn")
    module("fvcore.common.registry", Registry=Registry)
    module("fvcore.nn.weight_init", c2_msra_fill=lambda m: None, c2_xavier_fill=lambda m: None)
    module("detectron2"), module("detectron2.layers", ROIAlign=Unused)
    module("pytorchvideo"), module("pytorchvideo.layers")
    module("pytorchvideo.layers.batch_norm", NaiveSyncBatchNorm1d=Unused,
           NaiveSyncBatchNorm3d=Unused)
    module("pytorchvideo.layers.swish", Swish=Unused)
    module("cv2")
    for package in ("slowfast", "slowfast.models", "slowfast.utils", "slowfast.datasets"):
        module(package, __path__=[os.path.join(root, *package.split("."))])
    module("slowfast.utils.logging", get_logger=logging.getLogger)
    module("slowfast.utils.env", pathmgr=None)
    sys.path.insert(0, root)


def build(cfg: types.SimpleNamespace) -> nn.Module:
    from slowfast.models.video_model_builder import SlowFast
    return SlowFast(cfg)


def seeded(model: nn.Module) -> nn.Module:
    model.load_state_dict(seeded_state(model.state_dict()))
    return model.eval()


def main(root: str) -> None:
    stub_modules(root)
    from slowfast.datasets.utils import pack_pathway_output

    commit = os.environ.get("PYSLOWFAST_COMMIT") or subprocess.run(
        ["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    variants = {"slowfast_r50_8x8": (50, 4, 7), "slowfast_r50_4x16": (50, 8, 5),
                "slowfast_r101_8x8": (101, 4, 5)}
    shapes, logits = {}, {}
    clip = torch.randn(INPUT, generator=torch.Generator().manual_seed(INPUT_SEED))
    for name, (depth, alpha, kernel) in variants.items():
        cfg = config(depth, alpha, kernel, frames=clip.shape[2])
        model = build(cfg)
        shapes[name] = {k: list(v.shape) for k, v in model.state_dict().items()}
        if name == "slowfast_r50_4x16":  # as 8x8 but the lateral convs: stored as a difference
            base = shapes["slowfast_r50_8x8"]
            assert list(base) == list(shapes[name])
            shapes[name] = {"same_as": "slowfast_r50_8x8", "except": {
                k: v for k, v in shapes[name].items() if v != base[k]}}
        if depth == 101:
            continue
        seeded(model)
        inputs = [torch.stack(p) for p in zip(*(pack_pathway_output(cfg, c) for c in clip))]
        with torch.no_grad():
            out = model(inputs)
        logits[name] = {"alpha": alpha, "fusion_kernel": kernel,
                        "slow_frames": inputs[0].shape[2], "fast_frames": inputs[1].shape[2],
                        "logits": [float(f"{v:.7g}") for v in out[0].tolist()]}
        print(name, "logits", tuple(out.shape), "max |logit|", out.abs().max().item())
    with open(os.path.join(HERE, "slowfast_state_shapes.json"), "w") as f:
        json.dump(shapes, f, separators=(",", ":"))
    with open(os.path.join(HERE, "slowfast_reference.json"), "w") as f:
        json.dump({"pyslowfast_commit": commit, "input": list(INPUT), "input_seed": INPUT_SEED,
                   "models": logits}, f, indent=1)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__.split("\n\n")[1])
    main(sys.argv[1])
