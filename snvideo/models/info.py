"""Parameters and FLOPs of one clip through a model.

    python -m snvideo.models.info --arch i3d_r50 --norm sn --input 3,32,224,224 [--num-classes 400]

FLOPs come from torch.utils.flop_counter.FlopCounterMode, which counts convolutions and matrix
products only (2 FLOPs per multiply-add; norms, activations and pools are not counted).
"GFLOPs (multiply-adds)" = counted FLOPs / 2, the number mmaction2 / PySlowFast tables call
GFLOPs; e.g. i3d_r50 at 3x32x256x256 gives ~43.3 there vs mmaction2's 43.56 (which also
counts norm/activation element ops).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from snvideo.norm import NORM_KINDS

from . import ARCHS, build_model


@dataclass(frozen=True)
class ModelInfo:
    params: int
    flops: int  # counted FLOPs of one clip (2 per multiply-add)

    @property
    def gmacs(self) -> float:
        return self.flops / 2e9


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def model_info(arch: str, input_shape: tuple[int, int, int, int], num_classes: int = 400,
               norm: str = "bn", norm_kwargs: dict | None = None, **arch_kwargs) -> ModelInfo:
    """Parameters and one-clip inference FLOPs; computed on the meta device (no memory, no
    arithmetic), falling back to CPU if some op has no meta kernel."""
    for device in ("meta", "cpu"):
        try:
            with torch.device(device):
                model = build_model(arch, num_classes, norm=norm, norm_kwargs=norm_kwargs,
                                    **arch_kwargs).eval()
                clip = torch.zeros(1, *input_shape)
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                model(clip)
            return ModelInfo(count_params(model), counter.get_total_flops())
        except (NotImplementedError, RuntimeError):
            if device == "cpu":
                raise
    raise AssertionError("unreachable")


def _shape(text: str) -> tuple[int, int, int, int]:
    parts = tuple(int(v) for v in text.split(","))
    if len(parts) != 4:
        raise argparse.ArgumentTypeError("--input is C,T,H,W, e.g. 3,32,224,224")
    return parts  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", required=True, choices=list(ARCHS))
    parser.add_argument("--norm", default="sn", choices=NORM_KINDS)
    parser.add_argument("--input", type=_shape, default=(3, 32, 224, 224), help="C,T,H,W")
    parser.add_argument("--num-classes", type=int, default=400)
    args = parser.parse_args(argv)
    info = model_info(args.arch, args.input, args.num_classes, args.norm)
    print(f"arch: {args.arch}  norm: {args.norm}  input: 1x{'x'.join(map(str, args.input))}  "
          f"classes: {args.num_classes}")
    print(f"parameters: {info.params:,} ({info.params / 1e6:.2f}M)")
    print(f"GFLOPs (multiply-adds, as mmaction2/SlowFast report): {info.gmacs:.2f}")
    print(f"raw FLOPs (2 per multiply-add, convs + matmuls): {info.flops:,} "
          f"({info.flops / 1e9:.2f} G)")


if __name__ == "__main__":
    main()
