"""SwitchNorm1d/2d/3d: Switchable Normalization (Luo et al., ICLR 2019) as nn.Modules.

Each layer normalizes with a learned softmax mix of three statistics — IN (per sample and
channel), LN (per sample) and BN (per channel over the batch) — with separate importance
logits for means (`mean_weight`) and variances (`var_weight`), order [IN, LN, BN].
Variances are population variances. `running_mean` / `running_var` track the BN branch; in
eval mode only the BN branch reads them, IN and LN always come from the input.

Two variants, both constructor arguments (and norm kinds of build_norm):
- importance="sparsestmax" (kind `ssn`): Sparse SN (Shao et al., CVPR 2019). The mixing weights
  are sparsestmax(logits, radius) instead of softmax(logits); `radius` (a buffer) follows the
  training schedule `set_sparsity_radius` sets, 0 -> 1, and ends one-hot: each layer then
  computes exactly one of IN, LN, BN and folds into a plain layer (snvideo.norm.fold).
- shared_importance=SharedImportance: the layer has no importance logits of its own and mixes
  with the one pair every layer of the network shares (the control of "Do Normalization Layers
  in a Deep ConvNet Really Need to Be Distinct?": layers that cannot choose differently).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .functional import KERNELS, switch_norm
from .sparsestmax import sparsestmax

STAT_NAMES = ("IN", "LN", "BN")
IMPORTANCE_FUNCTIONS = ("softmax", "sparsestmax")


class SharedImportance(nn.Module):
    """One pair of importance logits (means, variances) for all SN layers of a network. The
    model registers it once (build_model: `norm_importance`), so its state dict and its
    optimizer hold the pair once; each layer only keeps a reference."""

    def __init__(self, num_stats: int = 3) -> None:
        super().__init__()
        self.mean_weight = nn.Parameter(torch.ones(num_stats))
        self.var_weight = nn.Parameter(torch.ones(num_stats))


class _SwitchNorm(nn.Module):
    """Shared implementation; subclasses fix the accepted input ranks."""

    input_ranks: tuple[int, ...] = ()

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 using_moving_average: bool = True, using_bn: bool = True,
                 track_running_stats: bool = True, kernel: str = "auto",
                 importance: str = "softmax",
                 shared_importance: SharedImportance | None = None) -> None:
        """kernel: "auto" (the Triton kernels for CUDA inputs when triton is installed, the eager
        path otherwise), "triton" or "eager"; see snvideo.norm.functional.resolve_kernel.
        momentum=None (or using_moving_average=False, the paper's "batch average") makes the
        running statistics a cumulative average over the batches seen since the last reset,
        as `recompute_norm_stats` uses them. track_running_stats=False leaves them untouched
        in training (they still serve the BN branch in eval). importance / shared_importance:
        see the module docstring."""
        super().__init__()
        if kernel not in KERNELS:
            raise ValueError(f"{type(self).__name__}: kernel must be one of {', '.join(KERNELS)}, "
                             f"got {kernel!r}")
        if importance not in IMPORTANCE_FUNCTIONS:
            raise ValueError(f"{type(self).__name__}: importance must be one of "
                             f"{', '.join(IMPORTANCE_FUNCTIONS)}, got {importance!r}")
        if shared_importance is not None and not isinstance(shared_importance, SharedImportance):
            raise ValueError(f"{type(self).__name__}: shared_importance=true needs a model to share "
                             "one pair across its layers: use build_model(..., norm_kwargs="
                             "{'shared_importance': True})")
        self.importance_function = importance
        self.num_features = num_features
        self.kernel = kernel
        self._batches_seen: int | None = None  # host copy of num_batches_tracked, see _momentum
        self.eps = eps
        self.momentum = momentum if using_moving_average else None
        self.using_moving_average = using_moving_average
        self.using_bn = using_bn
        self.track_running_stats = track_running_stats
        num_stats = 3 if using_bn else 2
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        if shared_importance is None:
            self.mean_weight = nn.Parameter(torch.ones(num_stats))
            self.var_weight = nn.Parameter(torch.ones(num_stats))
            self._shared = None
        else:
            if shared_importance.mean_weight.numel() != num_stats:
                raise ValueError(f"{type(self).__name__}: the shared importance has "
                                 f"{shared_importance.mean_weight.numel()} statistics, this layer "
                                 f"{num_stats} (using_bn={using_bn})")
            self._shared = (shared_importance,)  # a tuple: not registered as a submodule
        if importance == "sparsestmax":
            self.register_buffer("radius", torch.zeros(()))
            self._radius: float | None = 0.0  # host copy: no sync per forward
        if using_bn:
            self.register_buffer("running_mean", torch.zeros(num_features))
            self.register_buffer("running_var", torch.ones(num_features))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def __getattr__(self, name: str):
        if name in ("mean_weight", "var_weight"):
            shared = self.__dict__.get("_shared")
            if shared is not None:
                return getattr(shared[0], name)
        return super().__getattr__(name)

    @property
    def shared_importance(self) -> SharedImportance | None:
        return None if self._shared is None else self._shared[0]

    # --- state ---------------------------------------------------------------------------
    def reset_running_stats(self) -> None:
        if self.using_bn:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()
            self._batches_seen = 0

    def extra_repr(self) -> str:
        text = (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"using_bn={self.using_bn}, using_moving_average={self.using_moving_average}, "
                f"kernel={self.kernel!r}")
        if self.importance_function != "softmax":
            text += f", importance={self.importance_function!r}"
        return text + (", shared_importance=True" if self._shared is not None else "")

    # --- importance ------------------------------------------------------------------------
    def set_radius(self, radius: float) -> None:
        """Sparse SN: the sparsestmax radius of the following forwards (set_sparsity_radius)."""
        self.radius.fill_(radius)
        self._radius = float(radius)

    def _current_radius(self) -> float:
        if self._radius is None:  # after a state-dict load: read the buffer once
            self._radius = float(self.radius)
        return self._radius

    def mixing_weights(self) -> tuple[Tensor, Tensor]:
        """The weights of [IN, LN(, BN)] for means and for variances, differentiable."""
        if self.importance_function == "sparsestmax":
            # compiled: the buffer, so that a new radius each step is no new graph
            radius = self.radius if torch.compiler.is_compiling() else self._current_radius()
            return sparsestmax(self.mean_weight, radius), sparsestmax(self.var_weight, radius)
        return F.softmax(self.mean_weight, 0), F.softmax(self.var_weight, 0)

    def importance(self) -> dict[str, dict[str, float]]:
        """Importance (mixing weight) of each statistic, for means and for variances."""
        names = STAT_NAMES[: self.mean_weight.numel()]
        with torch.no_grad():
            mean_w, var_w = (w.float().tolist() for w in self.mixing_weights())
        return {"mean": dict(zip(names, mean_w)), "var": dict(zip(names, var_w))}

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # The official SN code stores weight/bias as (1, C, 1, 1[, 1]) and running stats as
        # (1, C, 1), and has no num_batches_tracked: reshape and fill in.
        for name in ("weight", "bias", "running_mean", "running_var"):
            key = prefix + name
            value = state_dict.get(key)
            if value is not None and value.dim() > 1 and value.numel() == self.num_features:
                state_dict[key] = value.reshape(self.num_features)
        self._batches_seen = None
        if self.importance_function == "sparsestmax":
            self._radius = None
        key = prefix + "num_batches_tracked"
        if self.using_bn and key not in state_dict and prefix + "running_mean" in state_dict:
            state_dict[key] = torch.tensor(0, dtype=torch.long)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def _check_input(self, x: Tensor) -> None:
        if x.dim() not in self.input_ranks:
            raise ValueError(f"{type(self).__name__} expects a {' or '.join(map(str, self.input_ranks))}D "
                             f"input, got shape {tuple(x.shape)}")
        if x.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__}({self.num_features}) got {x.shape[1]} channels "
                             f"(input shape {tuple(x.shape)})")

    def _momentum(self) -> float:
        """Counts the batch; returns the factor of this batch in the running statistics."""
        self.num_batches_tracked.add_(1)
        if self.momentum is None:  # cumulative average since the last reset
            # counted on the host too: reading the buffer every batch would sync with the GPU
            self._batches_seen = (int(self.num_batches_tracked) if self._batches_seen is None
                                  else self._batches_seen + 1)
            return 1.0 / self._batches_seen
        return self.momentum

    def _process_group(self):
        return None

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        squeeze = x.dim() == 2  # SwitchNorm1d on (N, C): S has one element
        if squeeze:
            x = x.unsqueeze(-1)
        update = self.training and self.track_running_stats and self.using_bn
        momentum = self._momentum() if update else 0.0
        use_running = self.using_bn and (update or not self.training)
        if self.importance_function == "softmax":  # the kernels apply the softmax
            mean_weight, var_weight, softmax = self.mean_weight, self.var_weight, True
        else:  # (K,)-sized work here; the input-sized passes are SN's
            (mean_weight, var_weight), softmax = self.mixing_weights(), False
        y = switch_norm(x, mean_weight, var_weight, self.weight, self.bias,
                        self.running_mean if use_running else None,
                        self.running_var if use_running else None,
                        training=self.training, momentum=momentum, eps=self.eps,
                        process_group=self._process_group(), kernel=self.kernel,
                        softmax=softmax)
        return y.squeeze(-1) if squeeze else y


class SwitchNorm1d(_SwitchNorm):
    """SN for (N, C) or (N, C, L) inputs."""

    input_ranks = (2, 3)


class SwitchNorm2d(_SwitchNorm):
    """SN for (N, C, H, W) inputs."""

    input_ranks = (4,)


class SwitchNorm3d(_SwitchNorm):
    """SN for (N, C, T, H, W) inputs."""

    input_ranks = (5,)


def is_switch_norm(module: nn.Module) -> bool:
    return isinstance(module, _SwitchNorm)


def set_sparsity_radius(model: nn.Module, progress: float) -> int:
    """Sparse SN's schedule: every sparsestmax layer of `model` gets radius `progress`, the
    fraction of training done (iteration / total iterations, 0 -> 1), as the SSN code sets it
    before each iteration. Returns the number of layers set."""
    count = 0
    for m in model.modules():
        if isinstance(m, _SwitchNorm) and m.importance_function == "sparsestmax":
            m.set_radius(progress)
            count += 1
    return count


def sparse_importance_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The importance logits of `model`'s sparsestmax layers, each once. Near the simplex
    centre sparsestmax's radial push multiplies their gradient by radius / distance, so the
    training step clips their joint gradient norm to 1, as the SSN code does."""
    seen: dict[int, nn.Parameter] = {}
    for m in model.modules():
        if isinstance(m, _SwitchNorm) and m.importance_function == "sparsestmax":
            for p in (m.mean_weight, m.var_weight):
                seen.setdefault(id(p), p)
    return list(seen.values())
