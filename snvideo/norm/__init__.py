"""Normalization layers: Switchable Normalization and the factory every backbone uses."""
from .convert import convert_bn_to_sn
from .factory import NORM_KINDS, build_norm
from .fold import FoldReport, SelectedNorm, fold_for_inference
from .functional import standard_ops, switch_norm, switch_norm_reference
from .stats import recompute_norm_stats
from .sparsestmax import sparsemax, sparsestmax
from .switchnorm import (STAT_NAMES, SharedImportance, SwitchNorm1d, SwitchNorm2d, SwitchNorm3d,
                         is_switch_norm, set_sparsity_radius, sparse_importance_parameters)
from .sync import SyncSwitchNorm, convert_sync_switchnorm

__all__ = [
    "FoldReport", "NORM_KINDS", "STAT_NAMES", "SelectedNorm", "SharedImportance", "SwitchNorm1d", "SwitchNorm2d",
    "SwitchNorm3d", "SyncSwitchNorm", "build_norm", "convert_bn_to_sn", "convert_sync_switchnorm",
    "fold_for_inference", "is_switch_norm", "recompute_norm_stats", "set_sparsity_radius", "sparse_importance_parameters", "sparsemax",
    "sparsestmax",
    "standard_ops", "switch_norm", "switch_norm_reference",
]
