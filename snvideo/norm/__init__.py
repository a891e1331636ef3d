"""Normalization layers: Switchable Normalization and the factory every backbone uses."""
from .convert import convert_bn_to_sn
from .factory import NORM_KINDS, build_norm
from .functional import standard_ops, switch_norm, switch_norm_reference
from .stats import recompute_norm_stats
from .switchnorm import STAT_NAMES, SwitchNorm1d, SwitchNorm2d, SwitchNorm3d, is_switch_norm
from .sync import SyncSwitchNorm, convert_sync_switchnorm

__all__ = [
    "NORM_KINDS", "STAT_NAMES", "SwitchNorm1d", "SwitchNorm2d", "SwitchNorm3d", "SyncSwitchNorm",
    "build_norm", "convert_bn_to_sn", "convert_sync_switchnorm", "is_switch_norm",
    "recompute_norm_stats", "standard_ops", "switch_norm", "switch_norm_reference",
]
