"""fold_for_inference: SN layers that chose one normalizer become that plain layer.

A trained Sparse SN layer mixes with one-hot weights, and so may an SN layer whose softmax
settled: it then computes exactly one of IN, LN, BN. In eval mode

- BN uses the running statistics: a per-channel affine map, folded into the convolution right
  before it (W' = W * s, b' = (b - running_mean) * s + bias, s = weight / sqrt(running_var +
  eps)), the layer becomes nn.Identity; without a convolution feeding it directly, it becomes a
  BatchNorm layer in eval mode;
- IN becomes GroupNorm with one group per channel (affine instance normalization), LN GroupNorm
  with one group; both compute their statistics from the input as SN does;
- means and variances may choose differently (SSN learns the two apart, e.g. LN means with BN
  variances): such a layer becomes `SelectedNorm`, which computes just those two statistics;
- a layer whose mean or variance weights are not one-hot (within `tol`) stays SN, and the
  report says why.

Which convolution feeds which SN layer is read from one probe forward (hooks see the very
tensor a convolution returns arrive at the norm); the probe also checks the folded model
against the original (`FoldReport.max_abs_difference`).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .switchnorm import STAT_NAMES, SwitchNorm1d, SwitchNorm2d, SwitchNorm3d, _SwitchNorm

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BN_FOR = {SwitchNorm1d: nn.BatchNorm1d, SwitchNorm2d: nn.BatchNorm2d,
           SwitchNorm3d: nn.BatchNorm3d}


@dataclass
class FoldedLayer:
    name: str
    became: str  # "BN folded into <conv>", "BatchNorm", "GroupNorm (IN|LN)", "SelectedNorm
    #              (<mean> means, <var> variances)" or "SN"
    why: str = ""  # for a layer left as SN: its weights


@dataclass
class FoldReport:
    layers: list[FoldedLayer] = field(default_factory=list)
    max_abs_difference: float | None = None  # folded vs original logits on the probe
    max_abs_logit: float | None = None

    @property
    def kept(self) -> list[FoldedLayer]:
        return [layer for layer in self.layers if layer.became == "SN"]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for layer in self.layers:
            key = "BN folded into a conv" if layer.became.startswith("BN folded") else layer.became
            out[key] = out.get(key, 0) + 1
        return out

    def __str__(self) -> str:
        parts = ", ".join(f"{n} {what}" for what, n in self.counts().items())
        lines = [f"fold_for_inference: {len(self.layers)} SN layers: {parts or 'none'}"]
        for layer in self.kept:
            lines.append(f"  left as SN: {layer.name}: {layer.why}")
        if self.max_abs_difference is not None:
            lines.append(f"  probe: folded vs original output max |difference| "
                         f"{self.max_abs_difference:.3g} (max |output| {self.max_abs_logit:.3g})")
        return "\n".join(lines)


class SelectedNorm(nn.Module):
    """y = weight * (x - mean) / sqrt(var + eps) + bias with the mean of one statistic and the
    variance of another (IN: per sample and channel, LN: per sample, BN: the running ones):
    an SN layer whose one-hot choices differ, without the mix."""

    def __init__(self, layer: _SwitchNorm, mean_from: str, var_from: str) -> None:
        super().__init__()
        self.mean_from, self.var_from, self.eps = mean_from, var_from, layer.eps
        self.weight = nn.Parameter(layer.weight.detach().clone())
        self.bias = nn.Parameter(layer.bias.detach().clone())
        if "BN" in (mean_from, var_from):
            self.register_buffer("running_mean", layer.running_mean.detach().clone())
            self.register_buffer("running_var", layer.running_var.detach().clone())

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, mean_from={self.mean_from}, var_from={self.var_from}"

    def _moments(self, x: Tensor, which: str) -> tuple[Tensor, Tensor]:
        if which == "BN":
            shape = (1, -1) + (1,) * (x.dim() - 2)
            return self.running_mean.float().view(shape), self.running_var.float().view(shape)
        dims = tuple(range(2 if which == "IN" else 1, x.dim()))
        var, mean = torch.var_mean(x, dims, correction=0, keepdim=True)
        return mean, var

    def forward(self, x: Tensor) -> Tensor:
        squeeze = x.dim() == 2  # (N, C): S has one element
        h = (x.unsqueeze(-1) if squeeze else x).float()
        mean = self._moments(h, self.mean_from)[0]
        var = self._moments(h, self.var_from)[1]
        shape = (1, -1) + (1,) * (h.dim() - 2)
        scale = self.weight.float().view(shape) * torch.rsqrt(var + self.eps)
        y = (h - mean) * scale + self.bias.float().view(shape)
        return (y.squeeze(-1) if squeeze else y).to(x.dtype)


def _choice(layer: _SwitchNorm, tol: float) -> tuple[tuple[str, str] | None, str]:
    """The statistics a layer's means and variances use, or None and why not."""
    with torch.no_grad():
        mean_w, var_w = (w.double().cpu() for w in layer.mixing_weights())
    names = STAT_NAMES[: mean_w.numel()]
    mean_k, var_k = int(mean_w.argmax()), int(var_w.argmax())
    text = (f"means {' / '.join(f'{n} {w:.3f}' for n, w in zip(names, mean_w.tolist()))}, "
            f"variances {' / '.join(f'{n} {w:.3f}' for n, w in zip(names, var_w.tolist()))}")
    if mean_w[mean_k] < 1 - tol or var_w[var_k] < 1 - tol:
        return None, f"{text}: not one-hot within {tol:g}"
    return (names[mean_k], names[var_k]), text


def _conv_feeding(model: nn.Module, layers: dict[str, _SwitchNorm], probe: Tensor
                  ) -> dict[str, str]:
    """SN layer name -> name of the convolution whose output is that layer's input."""
    conv_names = {id(m): name for name, m in model.named_modules() if isinstance(m, _CONVS)}
    produced: dict[int, tuple[str, Tensor]] = {}  # id(output) -> conv (output kept alive)
    feeds: dict[str, str] = {}
    handles = []
    for name, m in model.named_modules():
        if id(m) in conv_names:
            handles.append(m.register_forward_hook(
                lambda mod, inp, out, name=name: produced.__setitem__(id(out), (name, out))))
    for name, layer in layers.items():
        def before(mod, inp, name=name):
            found = produced.get(id(inp[0]))
            if found is not None and found[1] is inp[0]:
                feeds.setdefault(name, found[0])
        handles.append(layer.register_forward_pre_hook(before))
    try:
        with torch.no_grad():
            model(probe)
    finally:
        for h in handles:
            h.remove()
    return feeds


@torch.no_grad()
def _fold_into_conv(conv: nn.Module, layer: _SwitchNorm) -> None:
    scale = layer.weight.float() * torch.rsqrt(layer.running_var.float() + layer.eps)
    shape = (-1,) + (1,) * (conv.weight.dim() - 1)
    bias = conv.bias.float() if conv.bias is not None else torch.zeros_like(scale)
    new_bias = (bias - layer.running_mean.float()) * scale + layer.bias.float()
    conv.weight.copy_((conv.weight.float() * scale.view(shape)).to(conv.weight.dtype))
    if conv.bias is None:
        conv.bias = nn.Parameter(new_bias.to(conv.weight.dtype))
    else:
        conv.bias.copy_(new_bias.to(conv.bias.dtype))


@torch.no_grad()
def _plain_layer(layer: _SwitchNorm, stat: str) -> nn.Module:
    c = layer.num_features
    if stat == "BN":
        bn_type = _BN_FOR.get(type(layer), nn.BatchNorm3d)
        if type(layer) not in _BN_FOR:  # SyncSwitchNorm takes any rank: so does SyncBatchNorm
            bn_type = nn.SyncBatchNorm
        new = bn_type(c, eps=layer.eps)
        new.running_mean.copy_(layer.running_mean)
        new.running_var.copy_(layer.running_var)
    else:
        new = nn.GroupNorm(c if stat == "IN" else 1, c, eps=layer.eps)
    new.weight.copy_(layer.weight)
    new.bias.copy_(layer.bias)
    return new.to(layer.weight.device).eval()


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def fold_for_inference(model: nn.Module, tol: float = 1e-3, probe: Tensor | None = None
                       ) -> tuple[nn.Module, FoldReport]:
    """Replace, in place, each SN layer whose choice is one-hot within `tol` by the layer it
    selected (see the module docstring); returns the model, in eval mode, and the report.
    `probe`: an input for the forward that finds the conv before each layer (default one
    3x16x64x64 clip)."""
    model.eval()
    layers = {name: m for name, m in model.named_modules() if isinstance(m, _SwitchNorm)}
    report = FoldReport()
    if not layers:
        return model, report
    device = next(iter(layers.values())).weight.device
    if probe is None:
        probe = torch.randn(1, 3, 16, 64, 64, generator=torch.Generator().manual_seed(0))
    probe = probe.to(device)
    original = copy.deepcopy(model)
    feeds = _conv_feeding(model, layers, probe)
    for name, layer in layers.items():
        choice, why = _choice(layer, tol)
        if choice is None:
            report.layers.append(FoldedLayer(name, "SN", why))
            continue
        stat, var_stat = choice
        conv_name = feeds.get(name)
        if stat != var_stat:
            _set(model, name, SelectedNorm(layer, stat, var_stat))
            report.layers.append(FoldedLayer(name, f"SelectedNorm ({stat} means, {var_stat} "
                                                   "variances)"))
        elif stat == "BN" and conv_name is not None:
            _fold_into_conv(model.get_submodule(conv_name), layer)
            _set(model, name, nn.Identity())
            report.layers.append(FoldedLayer(name, f"BN folded into {conv_name}"))
        else:
            _set(model, name, _plain_layer(layer, stat))
            report.layers.append(FoldedLayer(name, "BatchNorm" if stat == "BN"
                                             else f"GroupNorm ({stat})"))
    with torch.no_grad():
        want, got = original(probe), model(probe)
    report.max_abs_difference = float((want.float() - got.float()).abs().max())
    report.max_abs_logit = float(want.float().abs().max())
    return model, report
