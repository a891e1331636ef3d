"""build_norm: the one place where a normalization kind becomes a layer.

Every backbone builds its norms through this function, so swapping BN for SN is one config word.
"""
from __future__ import annotations

from torch import nn

from .switchnorm import SwitchNorm1d, SwitchNorm2d, SwitchNorm3d
from .sync import SyncSwitchNorm

NORM_KINDS = ("bn", "syncbn", "gn", "in", "ln", "sn", "syncsn", "ssn", "syncssn")

_BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_IN = {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}
_SN = {1: SwitchNorm1d, 2: SwitchNorm2d, 3: SwitchNorm3d}


def build_norm(kind: str, num_features: int, dim: int = 3, **kwargs) -> nn.Module:
    """A normalization layer for `num_features` channels of a `dim`-D (1, 2 or 3) feature map.

    kinds: bn, syncbn, gn (num_groups; by default 32, or the largest divisor of the channel
    count below 32 where 32 does not divide it), in (affine, per-sample statistics in eval
    too), ln (GroupNorm with one group: statistics over C and S per sample), sn, syncsn, ssn and
    syncssn (Sparse SN: sparsestmax importance). Extra kwargs go to the layer's constructor
    (eps, momentum, using_bn, ...; shared_importance takes the SharedImportance module a model
    shares, see snvideo.models.common.norm_factory).
    """
    if kind not in NORM_KINDS:
        raise ValueError(f"unknown norm kind {kind!r}; valid kinds: {', '.join(NORM_KINDS)}")
    if dim not in (1, 2, 3):
        raise ValueError(f"norm dim must be 1, 2 or 3, got {dim!r}")
    if kind == "bn":
        return _BN[dim](num_features, **kwargs)
    if kind == "syncbn":
        return nn.SyncBatchNorm(num_features, **kwargs)
    if kind == "gn":
        if "num_groups" in kwargs:
            num_groups = kwargs.pop("num_groups")
        else:  # the default adapts to narrow layers (a 0.25-wide ResNet's 16-channel stem)
            num_groups = max(g for g in range(1, 33) if num_features % g == 0)
        if not isinstance(num_groups, int) or num_groups < 1 or num_features % num_groups:
            raise ValueError(f"gn: num_groups={num_groups} does not divide {num_features} channels")
        return nn.GroupNorm(num_groups, num_features, **kwargs)
    if kind == "in":
        kwargs.setdefault("affine", True)
        return _IN[dim](num_features, **kwargs)
    if kind == "ln":
        return nn.GroupNorm(1, num_features, **kwargs)
    if kind in ("ssn", "syncssn"):
        kwargs["importance"] = "sparsestmax"
    if kind in ("sn", "ssn"):
        return _SN[dim](num_features, **kwargs)
    return SyncSwitchNorm(num_features, **kwargs)
