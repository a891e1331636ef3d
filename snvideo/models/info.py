"""Parameters and FLOPs of one clip through a model.

    python -m snvideo.models.info --arch i3d_r50 --norm sn --input 3,32,224,224 [--num-classes 400]
        [--arch-kwargs '{"alpha": 8, "fusion_kernel": 5}']

FLOPs come from torch.utils.flop_counter.FlopCounterMode, which counts convolutions and matrix
products only (2 FLOPs per multiply-add; norms, activations and pools are not counted).
"GFLOPs (multiply-adds)" = counted FLOPs / 2, the number mmaction2 / PySlowFast tables call
GFLOPs; e.g. i3d_r50 at 3x32x256x256 gives ~43.3 there vs mmaction2's 43.56 (which also
counts norm/activation element ops).

The PySlowFast / PyTorchVideo model zoos count with fvcore: conv and linear multiply-adds plus
5 per output element of every norm layer ("zoo GFLOPs", printed too; ModelInfo.zoo_gflops), for
one test view: frames x the 256 test crop for SlowFast (3x32x256x256). There slowfast_r50 gives
66.60 zoo GFLOPs (zoo: 66.60 in its SSv2 / Charades rows; its Kinetics row's 65.71 is our
multiply-adds alone, 65.71); 4x16 (--arch-kwargs '{"alpha": 8, "fusion_kernel": 5}') 36.69
(zoo 36.69; 36.10 multiply-adds, the SlowFast paper's 36.1); slowfast_r101 with fusion_kernel 5
127.20 (zoo 127.20). Multi-pathway models take the one clip of --input and count both pathways
(the Slow pathway's frames are taken inside the model) and the laterals.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from snvideo.norm import NORM_KINDS

from . import ARCHS, build_model
from .common import _is_norm


@dataclass(frozen=True)
class ModelInfo:
    params: int
    flops: int  # counted FLOPs of one clip (2 per multiply-add)
    norm_elements: int = 0  # output elements of every norm layer for that clip

    @property
    def gmacs(self) -> float:
        return self.flops / 2e9

    @property
    def zoo_gflops(self) -> float:
        """GFLOPs as the PySlowFast / PyTorchVideo zoos count them (see the module docstring)."""
        return (self.flops / 2 + 5 * self.norm_elements) / 1e9


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
            normalized = []
            for m in model.modules():
                if _is_norm(m):
                    m.register_forward_hook(lambda m, i, out: normalized.append(out.numel()))
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                model(clip)
            return ModelInfo(count_params(model), counter.get_total_flops(), sum(normalized))
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
    parser.add_argument("--arch-kwargs", type=json.loads, default={},
                        help='build_model keyword arguments as JSON, e.g. \'{"alpha": 8}\'')
    args = parser.parse_args(argv)
    info = model_info(args.arch, args.input, args.num_classes, args.norm, **args.arch_kwargs)
    print(f"arch: {args.arch}  norm: {args.norm}  input: 1x{'x'.join(map(str, args.input))}  "
          f"classes: {args.num_classes}")
    print(f"parameters: {info.params:,} ({info.params / 1e6:.2f}M)")
    print(f"GFLOPs (multiply-adds, as mmaction2/SlowFast report): {info.gmacs:.2f}")
    print(f"raw FLOPs (2 per multiply-add, convs + matmuls): {info.flops:,} "
          f"({info.flops / 1e9:.2f} G)")
    print(f"zoo GFLOPs (PySlowFast / PyTorchVideo, fvcore: + 5 per normalized element): "
          f"{info.zoo_gflops:.2f}")


if __name__ == "__main__":
    main()
