"""Export a trained checkpoint for deployment: ONNX, torch.export or TorchScript.

    python -m snvideo.export CHECKPOINT --format onnx|exported|torchscript --out FILE
                             [--fold] [--preprocess] [--dynamic-thw] [--video CLIP]
                             [--config CFG] [key=value ...]

SN has no operator in any runtime: while exporting, every SN layer runs as standard torch ops
(`snvideo.norm.standard_ops`), eval mode, the BN branch from the running statistics. The batch
dimension is dynamic; --dynamic-thw makes frames, height and width dynamic too (else they are
the config's data.clip_len and data.crop_size). --preprocess puts the normalization in the
graph: the input is then uint8 (N, 3, T, H, W), decoded frames as they come.

Beside FILE: FILE.labels.txt (one class name per line) and FILE.json (the expected input:
frames, frame interval, crop, short side, mean/std, dtype, layout; the classes). The exported
file is run once against PyTorch's eval output, on random clips and, with --video, on a real
one, and the largest difference is printed (onnxruntime for ONNX, when installed: the `deploy`
extra, `pip install -e ".[deploy]"`, which also brings onnx and onnxscript).

Exit status: 0 exported; 2 a bad argument, config or checkpoint, a missing package, or a model
that cannot be exported (one line naming the layer).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

import torch
from torch import nn

FORMATS = ("onnx", "exported", "torchscript")
DEFAULT_OPSET = 18


class Preprocessed(nn.Module):
    """uint8 clips (N, 3, T, H, W) -> the model's logits: x / 255, minus mean, over std, in the
    graph (the same float32 arithmetic as transforms.normalize_views)."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.model = model
        self.register_buffer("scale", (1.0 / (255.0 * torch.tensor(std))).view(1, 3, 1, 1, 1))
        self.register_buffer("offset", (torch.tensor(mean) / torch.tensor(std)).view(1, 3, 1, 1, 1))

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.model(clips.float() * self.scale - self.offset)


class ExportError(Exception):
    """The model cannot be exported; the message names the layer."""


def export_model(net: nn.Module, example: torch.Tensor, fmt: str, out: str,
                 dynamic_thw: bool = False, opset: int = DEFAULT_OPSET) -> None:
    """Write `net` (eval mode) traced on `example` to `out` in format `fmt`; the batch is
    dynamic, and T, H, W with `dynamic_thw`. ExportError names the first layer that fails."""
    from snvideo.norm import standard_ops

    if example.shape[0] == 1:  # torch.export fixes dimensions traced at size 1: trace at 2
        example = torch.cat([example, example])
    try:
        with standard_ops(), torch.no_grad():
            _export(net, example, fmt, out, dynamic_thw, opset)
    except ImportError:
        raise
    except Exception as err:  # noqa: BLE001 - any exporter failure is reported by layer
        layer = failing_layer(net, example, fmt)
        where = f"layer {layer[0]!r} ({layer[1]})" if layer else "the model"
        raise ExportError(f"cannot export {where} to {fmt}: {_one_line(err)}") from err


def _export(net: nn.Module, example: torch.Tensor, fmt: str, out: str, dynamic_thw: bool,
            opset: int) -> None:
    if fmt == "torchscript":
        torch.jit.save(torch.jit.trace(net, (example,), check_trace=False), out)
        return
    dims = [torch.export.Dim("batch", min=1, max=4096)]
    if dynamic_thw:
        dims += [None, torch.export.Dim("frames", min=1, max=4096),
                 torch.export.Dim("height", min=8, max=4096), torch.export.Dim("width", min=8, max=4096)]
    dynamic = ({i: d for i, d in zip((0, 1, 2, 3, 4), dims) if d is not None},)
    if fmt == "exported":
        torch.export.save(torch.export.export(net, (example,), dynamic_shapes=dynamic), out)
        return
    import onnxscript  # noqa: F401 - torch.onnx's exporter needs it; a clear ImportError first

    torch.onnx.export(net, (example,), out, dynamo=True, opset_version=opset,
                      dynamic_shapes=dynamic, input_names=["clips"], output_names=["logits"],
                      external_data=False)


def failing_layer(net: nn.Module, example: torch.Tensor, fmt: str) -> tuple[str, str] | None:
    """(name, type) of the first leaf layer, in forward order, that the exporter refuses on
    the input it gets in an eager forward; None if every leaf exports on its own."""
    from snvideo.norm import standard_ops

    inputs: dict[str, tuple] = {}
    hooks = [module.register_forward_pre_hook(lambda m, args, name=name: inputs.setdefault(name, args))
             for name, module in net.named_modules() if not list(module.children())]
    try:
        with standard_ops(), torch.no_grad():
            net(example)
    except Exception:  # noqa: BLE001 - the eager forward itself fails: report where it got to
        pass
    finally:
        for hook in hooks:
            hook.remove()
    modules = dict(net.named_modules())
    for name, args in inputs.items():
        try:
            with standard_ops(), torch.no_grad():
                if fmt == "torchscript":
                    torch.jit.trace(modules[name], args, check_trace=False)
                else:
                    torch.export.export(modules[name], args)
        except Exception:  # noqa: BLE001 - this is the one
            return name, type(modules[name]).__name__
    return None


def run_exported(fmt: str, path: str, clips: torch.Tensor) -> torch.Tensor | None:
    """Logits of the exported file on `clips`; None for ONNX without onnxruntime."""
    if fmt == "torchscript":
        return torch.jit.load(path)(clips)
    if fmt == "exported":
        return torch.export.load(path).module()(clips)
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: clips.numpy()})[0])


def input_spec(cfg, preprocess: bool, dynamic_thw: bool, fmt: str, classes: list[str]) -> dict:
    """What a deployment feeds the exported model, written beside it as JSON."""
    from snvideo.data import IMAGENET_MEAN, IMAGENET_STD

    d = cfg.data
    return {
        "format": fmt, "layout": "NCTHW",
        "dtype": "uint8" if preprocess else "float32",
        "shape": ["batch", 3, "frames" if dynamic_thw else d.clip_len,
                  "height" if dynamic_thw else d.crop_size, "width" if dynamic_thw else d.crop_size],
        "frames": d.clip_len, "frame_interval": d.frame_interval, "crop_size": d.crop_size,
        "short_side": d.short_side, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
        "normalization": ("in the graph: uint8 RGB in" if preprocess else
                          "by the caller: (x / 255 - mean) / std, float32 RGB"),
        "num_classes": len(classes), "classes": classes,
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m snvideo.export", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="checkpoint written by train.py")
    p.add_argument("--format", required=True, choices=FORMATS, dest="fmt")
    p.add_argument("--out", required=True, help="the exported file (.pt2 for --format exported)")
    p.add_argument("--fold", action="store_true", help="first replace SN / SSN layers whose "
                   "choice is one-hot by the plain layer they chose (BN folded into the conv "
                   "before it; snvideo.norm.fold_for_inference) and print what stayed SN")
    p.add_argument("--preprocess", action="store_true",
                   help="uint8 (N, 3, T, H, W) input, normalization inside the graph")
    p.add_argument("--dynamic-thw", action="store_true",
                   help="frames, height and width dynamic too (default: the config's)")
    p.add_argument("--video", help="also compare on a real clip of this video")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (>= 17)")
    p.add_argument("--config", help="YAML config (default: the checkpoint's config)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    try:
        return _run(args)
    except (ExportError, _UsageError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


class _UsageError(Exception):
    pass


def _run(args: argparse.Namespace) -> int:
    from snvideo.config import ConfigError, config_for_checkpoint
    from snvideo.engine.builders import class_names, model_from_checkpoint
    from snvideo.engine.checkpoint import load_checkpoint

    if args.opset < 17:
        raise _UsageError(f"--opset {args.opset}: SN needs opset 17 or later")
    if args.fmt == "exported" and not args.out.endswith(".pt2"):
        raise _UsageError(f"--out {args.out}: torch.export archives end in .pt2")
    if not os.path.isfile(args.checkpoint):
        raise _UsageError(f"checkpoint not found: {args.checkpoint}")
    try:
        checkpoint = load_checkpoint(args.checkpoint)
        cfg = config_for_checkpoint(args.config, args.overrides, checkpoint, args.checkpoint)
        names = class_names(checkpoint, args.checkpoint)
        model = model_from_checkpoint(cfg, checkpoint, names).eval()
    except ConfigError as err:
        raise _UsageError(" ".join(str(err).split())) from None
    except Exception as err:  # noqa: BLE001 - an unreadable checkpoint
        raise _UsageError(f"cannot read checkpoint {args.checkpoint}: {_one_line(err)}") from None
    names = names or [str(i) for i in range(model.fc.out_features)]
    d = cfg.data
    shape = (2, 3, d.clip_len, d.crop_size, d.crop_size)
    if args.fold:
        from snvideo.norm import fold_for_inference

        model, report = fold_for_inference(model, probe=torch.randn(shape))
        print(report)
    if args.preprocess:
        from snvideo.data import IMAGENET_MEAN, IMAGENET_STD

        net = Preprocessed(model, IMAGENET_MEAN, IMAGENET_STD).eval()
        example = torch.randint(0, 256, shape, dtype=torch.uint8)
    else:
        net = model
        example = torch.randn(shape)
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    try:
        export_model(net, example, args.fmt, args.out, args.dynamic_thw, args.opset)
    except ImportError as err:
        raise _UsageError(f"--format {args.fmt} needs {err.name or 'a package'}: "
                          "pip install -e \".[deploy]\"") from None
    from snvideo.atomic import atomic_write_text

    atomic_write_text(args.out + ".labels.txt", "".join(f"{n}\n" for n in names))
    atomic_write_text(args.out + ".json", json.dumps(
        input_spec(cfg, args.preprocess, args.dynamic_thw, args.fmt, names), indent=2) + "\n")
    print(f"exported {args.out} ({args.fmt}), with {args.out}.json and {args.out}.labels.txt")
    verify(net, args, cfg, shape)
    return 0


def verify(net: nn.Module, args: argparse.Namespace, cfg, shape: tuple) -> None:
    """Print the largest difference between the exported file and PyTorch eval."""
    generator = torch.Generator().manual_seed(0)
    batch = (3,) + tuple(shape[1:])  # another batch size than the traced one: it is dynamic
    random = (torch.randint(0, 256, batch, generator=generator, dtype=torch.uint8)
              if args.preprocess else torch.randn(batch, generator=generator))
    checks = [("random clips, batch 3", random)]
    if args.video:
        checks.append(("a clip of " + args.video, _real_clip(args.video, cfg, args.preprocess)))
    for label, clips in checks:
        got = run_exported(args.fmt, args.out, clips)
        if got is None:
            print(f"not verified: onnxruntime is not installed (pip install -e \".[deploy]\")")
            return
        with torch.no_grad():
            want = net(clips)
        diff = (got - want).abs().max().item()
        scale = want.abs().max().item()
        print(f"max |exported - PyTorch eval| on {label}: {diff:.3g} (logits up to {scale:.3g})")


def _real_clip(video: str, cfg, preprocess: bool) -> torch.Tensor:
    """The video's center view of its middle clip, as the exported model takes it."""
    from snvideo.data import VideoReadError, load_test_views, normalize_views

    d = cfg.data
    try:
        views, _ = load_test_views(video, 1, d.clip_len, d.frame_interval, d.short_side,
                                   d.crop_size, 1, normalize=False, rotation=d.rotation)
    except VideoReadError as err:
        raise _UsageError(str(err)) from None
    views = views[:1].contiguous()
    return views if preprocess else normalize_views(views)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text[:300]


if __name__ == "__main__":
    sys.exit(main())
