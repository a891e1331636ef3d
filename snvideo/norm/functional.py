"""The arithmetic of Switchable Normalization, separate from the modules that hold its state.

For x of shape (N, C, *S) every statistic SN uses is a function of the per-(n, c) moments over S
(the IN moments): LN and BN moments are their averages over C and over N (law of total variance,
so no E[x^2] - E[x]^2 cancellation between groups). The input-sized tensor therefore meets only

    forward:  (mean_in, var_in) = moments of x over S;   y = x * scale + shift
    backward: sums over S of dy * x and dy;               dx = dy * scale + x * A + B

with (N, C)-sized scale, shift, A and B. `SwitchNormFunction` does exactly that, with the chain
rule through the (N, C)-sized mixing written out in `_small_backward` (autograd's per-node cost
would dominate small feature maps). `switch_norm` picks it in eager mode; under torch.compile, or
when no gradient is needed, the same forward runs as plain ops (`_statistics`), which the
compiler can trace and fuse.

The BN-branch moments can be merged over a process group (SyncSwitchNorm): each process's
samples count with their element count, so uneven per-process batches are exact.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import Tensor

# E[x^2] - E[x]^2 keeps about 7 - log10(mean^2 / var) significant digits in float32: above this
# ratio the exact (slower) variance is used instead.
_CANCELLATION_LIMIT = 100.0
# Backward works on row chunks of about this many elements: temporaries stay in cache and out of
# the allocator's fresh-page path (large CPU allocations are page-faulted on every use).
_CHUNK_ELEMENTS = 1 << 20


def reduce_dims(x: Tensor) -> tuple[int, ...]:
    """The dims of S for x of shape (N, C, *S)."""
    return tuple(range(2, x.dim()))


def _stat_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def instance_moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-(n, c) mean and population variance over S, in float32 (float64 for double input)."""
    if (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and x.is_contiguous()
            and not torch.compiler.is_compiling()):
        # On CPU, torch.var_mean (Welford) runs several times slower than a sum and a norm.
        rows = x.view(x.shape[0], x.shape[1], -1)
        mean = rows.mean(2)
        var = (torch.linalg.vector_norm(rows, dim=2).square() / rows.shape[2]
               - mean.square()).clamp(min=0)
        if not bool((mean.square() > _CANCELLATION_LIMIT * var).any()):
            return mean, var
    var, mean = torch.var_mean(x.to(_stat_dtype(x)), dim=reduce_dims(x), correction=0)
    return mean, var


def group_moments(mean: Tensor, var: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """Moments of the union of equally sized groups, from each group's mean and variance."""
    group_mean = mean.mean(dim, keepdim=True)
    group_var = (var + (mean - group_mean).square()).mean(dim, keepdim=True)
    return group_mean, group_var


def _synced(group) -> bool:
    return group is not None and dist.is_available() and dist.is_initialized() \
        and dist.get_world_size(group) > 1


def batch_moments(mean_in: Tensor, var_in: Tensor, per_sample: int, group=None
                  ) -> tuple[Tensor, Tensor, Tensor]:
    """BN-branch moments (1, C) over the samples of all processes in `group` (None: local),
    and each local sample's weight in them (per_sample / total elements). Two all-reduces keep
    the variance free of cancellation. They are autograd-aware, for the compiled path."""
    if not _synced(group):
        mean_bn, var_bn = group_moments(mean_in, var_in, dim=0)
        return mean_bn, var_bn, mean_in.new_tensor(1.0 / mean_in.shape[0])
    local = torch.cat([mean_in.sum(0) * per_sample,
                       mean_in.new_full((1,), float(per_sample * mean_in.shape[0]))])
    sums = dist_fn.all_reduce(local, group=group)
    total = sums[-1]
    mean_bn = (sums[:-1] / total).unsqueeze(0)
    sq_dev = (var_in + (mean_in - mean_bn).square()).sum(0) * per_sample
    var_bn = (dist_fn.all_reduce(sq_dev, group=group) / total).unsqueeze(0)
    return mean_bn, var_bn, per_sample / total


class _Stats(NamedTuple):
    """Everything the forward computes on (N, C)-sized tensors; the backward reuses it."""
    mean_in: Tensor
    var_in: Tensor
    mean_ln: Tensor
    var_ln: Tensor
    mean_bn: Tensor | None      # (1, C), batch (training) or running (eval)
    var_bn: Tensor | None
    bn_sample_weight: Tensor | None  # d(batch moments)/d(sample moments); None in eval
    mean_w: Tensor              # softmax of the importance logits
    var_w: Tensor
    mean: Tensor                # mixed (N, C) statistics
    rstd: Tensor
    scale: Tensor               # y = x * scale + shift
    shift: Tensor


def _statistics(x: Tensor, mean_weight: Tensor, var_weight: Tensor, weight: Tensor,
                bias: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
                training: bool, momentum: float, eps: float, group) -> _Stats:
    """SN's forward on (N, C)-sized tensors; updates the running statistics in training."""
    mean_in, var_in = instance_moments(x)
    dtype = mean_in.dtype
    mean_ln, var_ln = group_moments(mean_in, var_in, dim=1)
    means, variances = [mean_in, mean_ln], [var_in, var_ln]
    mean_bn = var_bn = bn_sample_weight = None
    if mean_weight.numel() == 3:
        if training or running_mean is None:
            per_sample = x[0, 0].numel()
            mean_bn, var_bn, bn_sample_weight = batch_moments(mean_in, var_in, per_sample, group)
            if training and running_mean is not None:
                with torch.no_grad():
                    running_mean.lerp_(mean_bn.detach().reshape(-1).to(running_mean.dtype), momentum)
                    running_var.lerp_(var_bn.detach().reshape(-1).to(running_var.dtype), momentum)
        else:
            mean_bn = running_mean.to(dtype).unsqueeze(0)
            var_bn = running_var.to(dtype).unsqueeze(0)
        means.append(mean_bn)
        variances.append(var_bn)
    mean_w = torch.softmax(mean_weight.to(dtype), 0)
    var_w = torch.softmax(var_weight.to(dtype), 0)
    mean = sum(w * m for w, m in zip(mean_w, means))
    var = sum(w * v for w, v in zip(var_w, variances))
    rstd = torch.rsqrt(var + eps)
    scale = weight.to(dtype) * rstd
    shift = bias.to(dtype) - mean * scale
    return _Stats(mean_in, var_in, mean_ln, var_ln, mean_bn, var_bn, bn_sample_weight,
                  mean_w, var_w, mean, rstd, scale, shift)


def _expand(t: Tensor, ndim: int) -> Tensor:
    """(N, C) -> (N, C, 1, ..., 1) for broadcasting against an ndim-dimensional input."""
    return t.reshape(t.shape + (1,) * (ndim - 2))


def _affine(x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """x * scale + shift with (N, C) scale and shift, in x's dtype. (mul + add_ is faster on
    CPU than a broadcasting addcmul.)"""
    nd = x.dim()
    return torch.mul(x, _expand(scale, nd).to(x.dtype)).add_(_expand(shift, nd).to(x.dtype))


def switch_norm(x: Tensor, mean_weight: Tensor, var_weight: Tensor, weight: Tensor, bias: Tensor,
                running_mean: Tensor | None, running_var: Tensor | None, training: bool,
                momentum: float = 0.1, eps: float = 1e-5, process_group=None) -> Tensor:
    """Switchable Normalization of x (N, C, *S), in the manner of F.batch_norm.

    mean_weight / var_weight hold 3 logits [IN, LN, BN] or 2 [IN, LN] (no BN branch). In
    training (or when running_mean is None) the BN branch uses batch moments — merged over
    `process_group` when given — and updates running_mean / running_var in place when they are
    given; otherwise it uses them.
    """
    params = (mean_weight, var_weight, weight, bias)
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params))
    if torch.compiler.is_compiling() or not needs_grad:
        stats = _statistics(x, *params, running_mean, running_var, training, momentum, eps,
                            process_group)
        return _affine(x, stats.scale, stats.shift)
    return SwitchNormFunction.apply(x, *params, running_mean, running_var, training, momentum,
                                    eps, process_group)


class SwitchNormFunction(torch.autograd.Function):
    """Eager SN with an analytic backward. Saves x (as BatchNorm does) and (N, C) tensors."""

    @staticmethod
    def forward(ctx, x, mean_weight, var_weight, weight, bias, running_mean, running_var,
                training, momentum, eps, group):  # type: ignore[override]
        stats = _statistics(x, mean_weight, var_weight, weight, bias, running_mean, running_var,
                            training, momentum, eps, group)
        ctx.save_for_backward(x, weight)
        ctx.stats, ctx.group = stats, group
        return _affine(x, stats.scale, stats.shift)

    @staticmethod
    def backward(ctx, grad_y):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        stats = ctx.stats
        grad_scale, grad_shift = _grad_sums(grad_y, x)
        g = _small_backward(stats, weight, grad_scale, grad_shift, ctx.group)
        grad_x = None
        if ctx.needs_input_grad[0]:
            count = x[0, 0].numel()
            a = g["var_in"] * (2.0 / count)                  # d var_in / dx = 2 (x - mean) / M
            b = g["mean_in"] / count - stats.mean_in * a     # d mean_in / dx = 1 / M
            grad_x = _grad_input(grad_y, x, stats.scale, a, b)
        return (grad_x, g["mean_weight"], g["var_weight"], g["weight"], g["bias"],
                None, None, None, None, None, None)


def _softmax_backward(w: Tensor, grad_w: Tensor) -> Tensor:
    return w * (grad_w - (w * grad_w).sum())


def _small_backward(s: _Stats, weight: Tensor, grad_scale: Tensor, grad_shift: Tensor,
                    group) -> dict[str, Tensor]:
    """Chain rule from d scale, d shift (N, C) to the parameters and the IN moments."""
    grad_bias = grad_shift.sum(0)
    grad_mean = -s.scale * grad_shift                    # shift = bias - mean * scale
    grad_scale = grad_scale - s.mean * grad_shift        # scale also enters through shift
    grad_weight = (grad_scale * s.rstd).sum(0)           # scale = weight * rstd
    grad_var = grad_scale * weight.to(s.rstd.dtype) * (-0.5) * s.rstd.pow(3)

    means = [s.mean_in, s.mean_ln, s.mean_bn][: s.mean_w.numel()]
    variances = [s.var_in, s.var_ln, s.var_bn][: s.var_w.numel()]
    grad_mean_w = torch.stack([(grad_mean * m).sum() for m in means])
    grad_var_w = torch.stack([(grad_var * v).sum() for v in variances])

    grad_mean_in = s.mean_w[0] * grad_mean
    grad_var_in = s.var_w[0] * grad_var
    # LN moments: per sample over C.
    g_mean_ln = s.mean_w[1] * grad_mean.sum(1, keepdim=True)
    g_var_ln = s.var_w[1] * grad_var.sum(1, keepdim=True)
    channels = grad_mean.shape[1]
    grad_mean_in = grad_mean_in + (g_mean_ln + 2 * (s.mean_in - s.mean_ln) * g_var_ln) / channels
    grad_var_in = grad_var_in + g_var_ln / channels
    # BN moments: per channel over the (possibly all-reduced) batch; none in eval.
    if s.bn_sample_weight is not None:
        g_bn = torch.cat([s.mean_w[2] * grad_mean.sum(0), s.var_w[2] * grad_var.sum(0)])
        if _synced(group):
            dist.all_reduce(g_bn, group=group)
        g_mean_bn, g_var_bn = g_bn.view(2, 1, -1)
        w = s.bn_sample_weight
        grad_mean_in = grad_mean_in + w * (g_mean_bn + 2 * (s.mean_in - s.mean_bn) * g_var_bn)
        grad_var_in = grad_var_in + w * g_var_bn
    return {"mean_in": grad_mean_in, "var_in": grad_var_in, "bias": grad_bias,
            "weight": grad_weight, "mean_weight": _softmax_backward(s.mean_w, grad_mean_w),
            "var_weight": _softmax_backward(s.var_w, grad_var_w)}


def _chunkable(grad_y: Tensor, x: Tensor) -> bool:
    return (x.device.type == "cpu" and x.is_contiguous() and grad_y.is_contiguous()
            and grad_y.dtype == x.dtype and x.dtype in (torch.float32, torch.float64))


def _row_chunks(t: Tensor) -> tuple[Tensor, list[slice]]:
    rows = t.view(t.shape[0] * t.shape[1], -1)
    step = max(1, _CHUNK_ELEMENTS // max(1, rows.shape[1]))
    return rows, [slice(i, i + step) for i in range(0, rows.shape[0], step)]


def _grad_sums(grad_y: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-(n, c) sums over S of grad_y * x and of grad_y, in float32 (float64 for double)."""
    n, c = x.shape[:2]
    if not _chunkable(grad_y, x):
        acc, dims = _stat_dtype(x), reduce_dims(x)
        return (grad_y * x).sum(dims, dtype=acc), grad_y.sum(dims, dtype=acc)
    g_rows, chunks = _row_chunks(grad_y)
    x_rows = x.view_as(g_rows)
    dot, total = g_rows.new_empty(g_rows.shape[0]), g_rows.new_empty(g_rows.shape[0])
    buffer = torch.empty_like(g_rows[chunks[0]])
    for rows in chunks:
        g = g_rows[rows]
        torch.sum(torch.mul(g, x_rows[rows], out=buffer[: g.shape[0]]), 1, out=dot[rows])
        torch.sum(g, 1, out=total[rows])
    return dot.view(n, c), total.view(n, c)


def _grad_input(grad_y: Tensor, x: Tensor, scale: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """grad_y * scale + x * a + b with (N, C) coefficients."""
    if not _chunkable(grad_y, x):
        return _affine(x, a, b).addcmul_(grad_y, _expand(scale, x.dim()).to(x.dtype))
    grad_x = torch.empty_like(x)
    out_rows, chunks = _row_chunks(grad_x)
    g_rows, x_rows = grad_y.view_as(out_rows), x.view_as(out_rows)
    a, b, scale = (t.reshape(-1, 1).to(x.dtype) for t in (a, b, scale))
    for rows in chunks:
        out = out_rows[rows]
        torch.mul(x_rows[rows], a[rows], out=out).add_(b[rows]).addcmul_(g_rows[rows], scale[rows])
    return grad_x


def switch_norm_reference(x: Tensor, mean_weight: Tensor, var_weight: Tensor, weight: Tensor,
                          bias: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
                          training: bool, momentum: float = 0.1, eps: float = 1e-5,
                          process_group=None) -> Tensor:
    """`switch_norm` with autograd through plain tensor ops (no custom backward)."""
    stats = _statistics(x, mean_weight, var_weight, weight, bias, running_mean, running_var,
                        training, momentum, eps, process_group)
    return _affine(x, stats.scale, stats.shift)
