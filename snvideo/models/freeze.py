"""Fine-tuning controls: freeze the stem and the first stages, keep norm statistics fixed.

`freeze_backbone(model, frozen_stages=K)` stops updates of the stem and layer1..K (K = 0: the
stem only, -1: nothing) and keeps their norms in eval mode, so their running statistics stay
as loaded; `freeze_norm_stats=True` keeps every norm of the model in eval mode during training
(mmaction2's `norm_eval`: the usual choice when fine-tuning with one or two clips per GPU).
Our models call `keep_frozen_norms_in_eval` from their `train()`, so `model.train()` (also
through DDP and torch.compile wrappers) leaves those norms in eval mode.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from .common import _is_norm

NUM_STAGES = 4


def stem_and_stages(model: nn.Module) -> list[list[nn.Module]]:
    """[[stem modules], [layer1], ..., [layer4]] of a ResNet3d or VideoResNet."""
    stem = [model.stem] if hasattr(model, "stem") else [model.conv1, model.bn1]
    return [stem] + [[getattr(model, f"layer{i + 1}")] for i in range(NUM_STAGES)]


def frozen_norms(model: nn.Module) -> list[nn.Module]:
    """The norm layers that `model.train()` must leave in eval mode."""
    if getattr(model, "freeze_norm_stats", False):
        return [m for m in model.modules() if _is_norm(m)]
    frozen = getattr(model, "frozen_stages", -1)
    if frozen < 0:
        return []
    return [m for part in stem_and_stages(model)[: frozen + 1] for module in part
            for m in module.modules() if _is_norm(m)]


def keep_frozen_norms_in_eval(model: nn.Module) -> None:
    for norm in frozen_norms(model):
        norm.eval()


@dataclass
class FreezeResult:
    """frozen_parts: 'stem', 'layer1', ...; frozen_params: their parameter names;
    norms_in_eval: how many norm layers stay in eval mode during training."""

    frozen_parts: list[str] = field(default_factory=list)
    frozen_params: list[str] = field(default_factory=list)
    norms_in_eval: int = 0

    def summary(self) -> str:
        parts = ", ".join(self.frozen_parts) or "nothing"
        return (f"frozen: {parts} ({len(self.frozen_params)} parameter tensors); "
                f"{self.norms_in_eval} norm layers keep their statistics (eval mode)")


def freeze_backbone(model: nn.Module, frozen_stages: int = -1,
                    freeze_norm_stats: bool = False) -> FreezeResult:
    """Freeze the stem and layer1..frozen_stages in place (see the module docstring)."""
    if not -1 <= frozen_stages <= NUM_STAGES:
        raise ValueError(f"frozen_stages must be -1..{NUM_STAGES}, got {frozen_stages}")
    model.frozen_stages = frozen_stages
    model.freeze_norm_stats = freeze_norm_stats
    parts = stem_and_stages(model)[: frozen_stages + 1]
    frozen_ids = {id(p) for part in parts for module in part for p in module.parameters()}
    result = FreezeResult(frozen_parts=["stem", *[f"layer{i}" for i in range(1, len(parts))]])
    for name, param in model.named_parameters():
        if id(param) in frozen_ids:
            param.requires_grad_(False)
            result.frozen_params.append(name)
    if model.training:
        keep_frozen_norms_in_eval(model)
    result.norms_in_eval = len(frozen_norms(model))
    return result
