"""SwitchNorm1d/2d/3d: Switchable Normalization (Luo et al., ICLR 2019) as nn.Modules.

Each layer normalizes with a learned softmax mix of three statistics — IN (per sample and
channel), LN (per sample) and BN (per channel over the batch) — with separate importance
logits for means (`mean_weight`) and variances (`var_weight`), order [IN, LN, BN].
Variances are population variances. `running_mean` / `running_var` track the BN branch; in
eval mode only the BN branch reads them, IN and LN always come from the input.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .functional import KERNELS, switch_norm

STAT_NAMES = ("IN", "LN", "BN")


class _SwitchNorm(nn.Module):
    """Shared implementation; subclasses fix the accepted input ranks."""

    input_ranks: tuple[int, ...] = ()

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 using_moving_average: bool = True, using_bn: bool = True,
                 track_running_stats: bool = True, kernel: str = "auto") -> None:
        """kernel: "auto" (the Triton kernels for CUDA inputs when triton is installed, the eager
        path otherwise), "triton" or "eager"; see snvideo.norm.functional.resolve_kernel.
        momentum=None (or using_moving_average=False, the paper's "batch average") makes the
        running statistics a cumulative average over the batches seen since the last reset,
        as `recompute_norm_stats` uses them. track_running_stats=False leaves them untouched
        in training (they still serve the BN branch in eval)."""
        super().__init__()
        if kernel not in KERNELS:
            raise ValueError(f"{type(self).__name__}: kernel must be one of {', '.join(KERNELS)}, "
                             f"got {kernel!r}")
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
        self.mean_weight = nn.Parameter(torch.ones(num_stats))
        self.var_weight = nn.Parameter(torch.ones(num_stats))
        if using_bn:
            self.register_buffer("running_mean", torch.zeros(num_features))
            self.register_buffer("running_var", torch.ones(num_features))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    # --- state ---------------------------------------------------------------------------
    def reset_running_stats(self) -> None:
        if self.using_bn:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()
            self._batches_seen = 0

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"using_bn={self.using_bn}, using_moving_average={self.using_moving_average}, "
                f"kernel={self.kernel!r}")

    def importance(self) -> dict[str, dict[str, float]]:
        """Softmax importance of each statistic, for means and for variances."""
        names = STAT_NAMES[: self.mean_weight.numel()]
        mean_w = F.softmax(self.mean_weight.detach().float(), 0).tolist()
        var_w = F.softmax(self.var_weight.detach().float(), 0).tolist()
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
        y = switch_norm(x, self.mean_weight, self.var_weight, self.weight, self.bias,
                        self.running_mean if use_running else None,
                        self.running_var if use_running else None,
                        training=self.training, momentum=momentum, eps=self.eps,
                        process_group=self._process_group(), kernel=self.kernel)
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
