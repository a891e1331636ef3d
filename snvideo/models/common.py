"""Pieces every backbone family shares: norm construction, block checkpointing, weight init."""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterable, Iterator, Mapping

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from snvideo.norm import SharedImportance, build_norm, is_switch_norm

# A function from a channel count to a fresh 3D norm layer.
NormFactory = Callable[[int], nn.Module]


class NormBuildError(ValueError):
    """A norm layer could not be built from the norm kind and kwargs a model was given."""


def norm_factory(norm: str, norm_kwargs: Mapping[str, Any] | None = None) -> NormFactory:
    """Bind a norm kind and its constructor kwargs once; blocks only pass the channel count.
    A kind or kwargs the layer refuses raise NormBuildError (the message says which layer).

    `shared_importance: true` (SN kinds) makes one SharedImportance pair for every layer the
    factory builds; it is the factory's `shared_importance` attribute, which build_model
    registers on the model as `norm_importance`."""
    kwargs = dict(norm_kwargs or {})
    shared = kwargs.pop("shared_importance", False)
    if shared not in (True, False):
        raise NormBuildError(f"shared_importance must be true or false, got {shared!r}")
    if shared:
        kwargs["shared_importance"] = SharedImportance(3 if kwargs.get("using_bn", True) else 2)

    def make(num_features: int) -> nn.Module:
        try:
            return build_norm(norm, num_features, dim=3, **kwargs)
        except (TypeError, ValueError) as e:
            raise NormBuildError(f"{e} (a {norm} layer of {num_features} channels)") from None

    make.shared_importance = kwargs.get("shared_importance")  # type: ignore[attr-defined]
    return make


def run_stage(stage: nn.Sequential, x: Tensor, checkpointed: bool) -> Tensor:
    """Run one residual stage; with `checkpointed`, each of its blocks is checkpointed.

    Per block (as mmaction2's `with_cp`), not per stage: backward then holds the block inputs
    plus one block's recomputed activations, instead of a whole stage's, for the same single
    extra forward pass. The recompute leaves the norms' running statistics as the forward left
    them, so they are updated exactly once per step, as without checkpointing.

    Under torch.compile, dynamo does not accept `context_fn`; it turns each checkpoint into a
    tagged region that the partitioner recomputes in the backward graph, where the buffer
    updates are not replayed (functionalization applies them once, in the forward graph), so
    plain checkpointing keeps the same guarantee there.
    """
    if not (checkpointed and stage.training and torch.is_grad_enabled()):
        return stage(x)  # as a module: its hooks run
    return run_blocks(stage, x, True)


def run_blocks(blocks: Iterable[nn.Module], x: Tensor, checkpointed: bool) -> Tensor:
    """`x` through `blocks` in turn; with `checkpointed` (and grad enabled), each block
    checkpointed as `run_stage` describes. For stages that are not one nn.Sequential (a
    pathway's blocks of a multi-pathway stage); the caller passes its own training mode."""
    if not (checkpointed and torch.is_grad_enabled()):
        for block in blocks:
            x = block(x)
        return x
    compiling = torch.compiler.is_compiling()
    for block in blocks:
        if compiling:
            x = checkpoint(block, x, use_reentrant=False)
        else:
            x = checkpoint(block, x, use_reentrant=False,
                           context_fn=lambda block=block: (contextlib.nullcontext(),
                                                           restored_buffers(block)))
    return x


@contextlib.contextmanager
def restored_buffers(module: nn.Module) -> Iterator[None]:
    """Run the block, then put every buffer of `module` back as it was.

    Not switching off `track_running_stats`: that switches BatchNorm to its no-running-stats path,
    which saves fewer tensors for backward than the original forward did, and non-reentrant
    checkpointing rejects the recompute ("A different number of tensors was saved"). Restoring
    keeps the recompute on the very same code path.
    """
    saved = [(b, b.clone()) for b in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal (fan_out, relu) convs, norm weight 1 / bias 0, classifier N(0, 0.01).

    SN's mean_weight/var_weight keep their own init (ones: equal importance at the start).
    This is also torchvision's video-ResNet scheme.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)
        elif _is_norm(m):
            if getattr(m, "weight", None) is not None:
                nn.init.ones_(m.weight)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)


def zero_init_last_norms(model: nn.Module) -> int:
    """Zero the affine weight of each residual block's last norm (the SN code's `last_gamma`):
    every block then starts as the identity. Returns the number of norms zeroed."""
    count = 0
    for m in model.modules():
        last = getattr(m, "last_norm", None)
        if isinstance(last, nn.Module) and getattr(last, "weight", None) is not None:
            nn.init.zeros_(last.weight)
            count += 1
    return count


def _is_norm(m: nn.Module) -> bool:
    return isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm)) or is_switch_norm(m)

