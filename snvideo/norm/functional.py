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
        sq_mean = torch.linalg.vector_norm(rows, dim=2).square() / rows.shape[2]
        var = torch.addcmul(sq_mean, mean, mean, value=-1).clamp(min=0)
        # mean^2 > limit * var  <=>  E[x^2] > (1 + limit) * var
        if not bool(torch.gt(sq_mean, var * (1 + _CANCELLATION_LIMIT)).any()):
            return mean, var
    var, mean = torch.var_mean(x.to(_stat_dtype(x)), dim=reduce_dims(x), correction=0)
    return mean, var


def group_moments(mean: Tensor, var: Tensor, dim: int) -> tuple[Tensor, Tensor, Tensor]:
    """Moments of the union of equally sized groups from each group's mean and variance, and
    each group's deviation from the union's mean (the backward needs it)."""
    group_mean = mean.mean(dim, keepdim=True)
    deviation = mean - group_mean
    group_var = torch.addcmul(var, deviation, deviation).mean(dim, keepdim=True)
    return group_mean, group_var, deviation


def _synced(group) -> bool:
    return group is not None and dist.is_available() and dist.is_initialized() \
        and dist.get_world_size(group) > 1


def batch_moments(mean_in: Tensor, var_in: Tensor, per_sample: int, group=None
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor | float]:
    """BN-branch moments (1, C) over the samples of all processes in `group` (None: local),
    each local sample's deviation from them, and each local sample's weight in them
    (per_sample / total elements). Two all-reduces keep the variance free of cancellation;
    they are autograd-aware, for the compiled path."""
    if not _synced(group):
        mean_bn, var_bn, deviation = group_moments(mean_in, var_in, dim=0)
        return mean_bn, var_bn, deviation, 1.0 / mean_in.shape[0]
    local = torch.cat([mean_in.sum(0) * per_sample,
                       mean_in.new_full((1,), float(per_sample * mean_in.shape[0]))])
    sums = dist_fn.all_reduce(local, group=group)
    total = sums[-1]
    mean_bn = (sums[:-1] / total).unsqueeze(0)
    deviation = mean_in - mean_bn
    sq_dev = torch.addcmul(var_in, deviation, deviation).sum(0) * per_sample
    var_bn = (dist_fn.all_reduce(sq_dev, group=group) / total).unsqueeze(0)
    return mean_bn, var_bn, deviation, per_sample / total


class _Stats(NamedTuple):
    """What the forward computes on (N, C)-sized tensors; the backward reuses it."""
    mean_in: Tensor
    stats: Tensor               # (2, K, N, C): means then variances of IN, LN[, BN]
    weights: Tensor             # (2, K): softmax of the mean and variance importance logits
    dev_ln: Tensor              # mean_in - LN mean
    dev_bn: Tensor | None       # mean_in - BN mean; None unless BN uses batch moments
    bn_sample_weight: Tensor | float | None  # d(BN moments) / d(one sample's moments)
    mean: Tensor                # mixed (N, C) statistics
    rstd: Tensor
    scale: Tensor               # y = x * scale + shift
    shift: Tensor


def _statistics(x: Tensor, mean_weight: Tensor, var_weight: Tensor, weight: Tensor,
                bias: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
                training: bool, momentum: float, eps: float, group) -> _Stats:
    """SN's forward on (N, C)-sized tensors; updates the running statistics in training.
    Few, batched ops: on small feature maps their count, not their size, sets the cost."""
    mean_in, var_in = instance_moments(x)
    dtype = mean_in.dtype
    mean_ln, var_ln, dev_ln = group_moments(mean_in, var_in, dim=1)
    means, variances = [mean_in, mean_ln], [var_in, var_ln]
    dev_bn = bn_sample_weight = None
    if mean_weight.numel() == 3:
        if training or running_mean is None:
            mean_bn, var_bn, dev_bn, bn_sample_weight = batch_moments(
                mean_in, var_in, x[0, 0].numel(), group)
            if training and running_mean is not None:
                with torch.no_grad():
                    running_mean.lerp_(mean_bn.detach().view(-1).to(running_mean.dtype), momentum)
                    running_var.lerp_(var_bn.detach().view(-1).to(running_var.dtype), momentum)
        else:
            mean_bn = running_mean.to(dtype).view(1, -1)
            var_bn = running_var.to(dtype).view(1, -1)
        means.append(mean_bn)
        variances.append(var_bn)
    n, c = mean_in.shape
    k = len(means)
    stats = torch.stack(torch.broadcast_tensors(*means, *variances)).view(2, k, n, c)
    weights = torch.softmax(torch.stack([mean_weight, var_weight]).to(dtype), 1)
    mean, var = torch.bmm(weights.unsqueeze(1), stats.view(2, k, n * c)).view(2, n, c)
    rstd = torch.rsqrt(var + eps)
    scale = weight.to(dtype) * rstd
    shift = torch.addcmul(bias.to(dtype), mean, scale, value=-1)
    return _Stats(mean_in, stats, weights, dev_ln, dev_bn, bn_sample_weight, mean, rstd, scale,
                  shift)


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
        return switch_norm_reference(x, *params, running_mean, running_var, training, momentum,
                                     eps, process_group)
    return SwitchNormFunction.apply(x, *params, running_mean, running_var, training, momentum,
                                    eps, process_group)


class SwitchNormFunction(torch.autograd.Function):
    """Eager SN with an analytic backward. Saves x (as BatchNorm does) and (N, C) tensors."""

    @staticmethod
    def forward(ctx, x, mean_weight, var_weight, weight, bias, running_mean, running_var,
                training, momentum, eps, group):  # type: ignore[override]
        stats = _statistics(x, mean_weight, var_weight, weight, bias, running_mean, running_var,
                            training, momentum, eps, group)
        ctx.save_for_backward(x)
        ctx.stats, ctx.group = stats, group
        ctx.param_dtypes = (mean_weight.dtype, var_weight.dtype, weight.dtype, bias.dtype)
        return _affine(x, stats.scale, stats.shift)

    @staticmethod
    def backward(ctx, grad_y):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        s = ctx.stats
        grad_scale, grad_shift = _grad_sums(grad_y, x)
        grad_mean_in, grad_var_in, *param_grads = _small_backward(s, grad_scale, grad_shift,
                                                                  ctx.group)
        grad_x = None
        if ctx.needs_input_grad[0]:
            count = x[0, 0].numel()
            a = grad_var_in * (2.0 / count)                             # d var_in/dx = 2(x - mean)/M
            b = torch.addcmul(grad_mean_in / count, s.mean_in, a, value=-1)  # d mean_in/dx = 1/M
            grad_x = _grad_input(grad_y, x, s.scale, a, b)
        param_grads = [g.to(dtype) for g, dtype in zip(param_grads, ctx.param_dtypes)]
        return (grad_x, *param_grads, None, None, None, None, None, None)


_SIGNS = {}  # (dtype, device) -> tensor [-1, -0.5]: d mean and d var factors


def _small_backward(s: _Stats, grad_scale: Tensor, grad_shift: Tensor, group
                    ) -> tuple[Tensor, ...]:
    """Chain rule from d scale, d shift (N, C) to the IN moments and the parameters:
    returns grad_mean_in, grad_var_in, grad_mean_weight, grad_var_weight, grad_weight,
    grad_bias."""
    grad_bias = grad_shift.sum(0)
    grad_scale = torch.addcmul(grad_scale, s.mean, grad_shift, value=-1)  # shift = bias - mean*scale
    grad_weight = (grad_scale * s.rstd).sum(0)                            # scale = weight * rstd
    # d mean = -scale * d shift;  d var = -0.5 * d scale * weight * rstd^3
    key = (s.scale.dtype, s.scale.device)
    if key not in _SIGNS:
        _SIGNS[key] = torch.tensor([-1.0, -0.5], dtype=key[0], device=key[1]).view(2, 1, 1)
    grad_mixed = torch.stack([s.scale * grad_shift, grad_scale * s.scale * s.rstd.square()])
    grad_mixed = grad_mixed * _SIGNS[key]                                 # (2, N, C)
    n, c = grad_shift.shape
    k = s.weights.shape[1]
    grad_w = torch.bmm(s.stats.view(2, k, n * c), grad_mixed.view(2, n * c, 1)).view(2, k)
    grad_logits = s.weights * (grad_w - (s.weights * grad_w).sum(1, keepdim=True))
    # Back to the IN moments: directly, through the LN moments (over C), the BN moments (over N).
    w = s.weights.view(2, k, 1, 1)
    grad_in = grad_mixed * w[:, 0]
    g_ln = grad_mixed.sum(2, keepdim=True) * (w[:, 1] / c)
    grad_in += g_ln
    grad_in[0].addcmul_(s.dev_ln, g_ln[1], value=2)
    if s.dev_bn is not None:
        g_bn = grad_mixed.sum(1, keepdim=True) * w[:, 2]
        if _synced(group):
            dist.all_reduce(g_bn, group=group)
        g_bn = g_bn * s.bn_sample_weight
        grad_in += g_bn
        grad_in[0].addcmul_(s.dev_bn, g_bn[1], value=2)
    return grad_in[0], grad_in[1], grad_logits[0], grad_logits[1], grad_weight, grad_bias


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
