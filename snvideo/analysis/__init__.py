"""Analysis of trained models: learned Switchable Normalization importance weights.

The names below are imported lazily so that `python -m snvideo.analysis.sn_weights` runs
the module once, without runpy's "found in sys.modules" warning.
"""
from __future__ import annotations

__all__ = ["format_table", "load_state_dict", "plot_importance", "sn_importance"]


def __getattr__(name: str):
    if name in __all__:
        from . import sn_weights

        return getattr(sn_weights, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
