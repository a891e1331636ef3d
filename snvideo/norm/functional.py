"""The arithmetic of Switchable Normalization, separate from the modules that hold its state.

For x of shape (N, C, *S) every statistic SN uses is a function of the per-(n, c) moments over S
(the IN moments): LN and BN moments are their averages over C and over N (law of total variance,
so no E[x^2] - E[x]^2 cancellation between groups). The input-sized tensor therefore meets only
four passes, with (N, C)-sized coefficients:

    forward:  moments:    (mean_in, var_in) over S
              affine:     y  = (x - mean_in) * scale + shift
    backward: grad_sums:  sums over S of dy * (x - mean_in) and of dy
              grad_input: dx = dy * scale + (x - mean_in) * a + b

Each pass computes in float32 (float64 for double input) and rounds once to x's dtype, so
under autocast or with half-precision inputs SN rounds its output once, as BatchNorm does.
The passes come in three sets: EAGER_PASSES (torch ops, tuned for CPU), PLAIN_PASSES (plain
differentiable ops, for torch.compile and as the reference) and triton_sn.TRITON_PASSES (fused
Triton kernels). `SwitchNormFunction` runs a pass set with the chain rule through the (N, C)-sized
mixing written out in `_small_backward` (autograd's per-node cost would dominate small feature
maps). With the Triton kernels and no process group the whole layer is one custom op,
`snvideo::switch_norm`, which torch.compile and DDP see as one node.

The BN-branch moments can be merged over a process group (SyncSwitchNorm): each process's
samples count with their element count, so uneven per-process batches are exact.
"""
from __future__ import annotations

import contextlib
from types import SimpleNamespace
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
_STANDARD_OPS = False  # see standard_ops()


@contextlib.contextmanager
def standard_ops():
    """Within it, SN runs as switch_norm_reference: standard torch ops (mean, var, softmax,
    rsqrt, ...), no custom op, Triton kernel or autograd.Function, so ONNX, torch.export and
    TorchScript see an ordinary graph (snvideo.export)."""
    global _STANDARD_OPS
    previous, _STANDARD_OPS = _STANDARD_OPS, True
    try:
        yield
    finally:
        _STANDARD_OPS = previous


def reduce_dims(x: Tensor) -> tuple[int, ...]:
    """The dims of S for x of shape (N, C, *S)."""
    return tuple(range(2, x.dim()))


def _stat_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


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
    (per_sample / total elements).

    One collective: every process gathers every process's element count, mean and sum of
    squared deviations from its own mean, and merges them the way Chan et al. merge partial
    variances (the spread of the process means is measured around the merged mean), so the
    variance stays free of cancellation without a second round trip. The gather is
    autograd-aware, for the compiled path."""
    if not _synced(group):
        mean_bn, var_bn, deviation = group_moments(mean_in, var_in, dim=0)
        return mean_bn, var_bn, deviation, 1.0 / mean_in.shape[0]
    count = per_sample * mean_in.shape[0]
    local_mean = mean_in.mean(0)
    local_dev = mean_in - local_mean
    local_m2 = torch.addcmul(var_in, local_dev, local_dev).sum(0) * per_sample
    row = torch.cat([mean_in.new_full((1,), float(count)), local_mean, local_m2])
    rows = torch.stack(dist_fn.all_gather(row, group=group))    # (world, 1 + 2C)
    counts, means, m2s = rows[:, :1], rows[:, 1:1 + mean_in.shape[1]], rows[:, 1 + mean_in.shape[1]:]
    total = counts.sum()
    mean_bn = ((counts * means).sum(0) / total).unsqueeze(0)
    spread = means - mean_bn
    var_bn = ((m2s.sum(0) + (counts * spread * spread).sum(0)) / total).unsqueeze(0)
    return mean_bn, var_bn, mean_in - mean_bn, per_sample / total


class _Stats(NamedTuple):
    """What the forward computes on (N, C)-sized tensors; the backward reuses it."""
    mean_in: Tensor
    stats: Tensor               # (2, K, N, C): means then variances of IN, LN[, BN]
    weights: Tensor             # (2, K): the mixing weights of the means and the variances
    softmax: bool               # weights = softmax(logits) (SN), or given (SSN's sparsestmax)
    dev_ln: Tensor              # mean_in - LN mean
    dev_bn: Tensor | None       # mean_in - BN mean; None unless BN uses batch moments
    bn_sample_weight: Tensor | float | None  # d(BN moments) / d(one sample's moments)
    batch_mean: Tensor | None   # (C,) BN-branch batch moments, for the running statistics
    batch_var: Tensor | None
    mean: Tensor                # mixed (N, C) statistics
    rstd: Tensor
    scale: Tensor               # y = (x - mean_in) * scale + shift
    shift: Tensor


def _mix(mean_in: Tensor, var_in: Tensor, mean_weight: Tensor, var_weight: Tensor,
         weight: Tensor, bias: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
         use_batch_stats: bool, eps: float, per_sample: int, group=None,
         softmax: bool = True) -> _Stats:
    """SN's forward on (N, C)-sized tensors, from the IN moments. The BN branch uses batch
    moments when `use_batch_stats` (or without running statistics), else the running ones.
    softmax=False: mean_weight / var_weight are the mixing weights themselves (SSN).
    Few, batched ops: on small feature maps their count, not their size, sets the cost."""
    dtype = mean_in.dtype
    mean_ln, var_ln, dev_ln = group_moments(mean_in, var_in, dim=1)
    means, variances = [mean_in, mean_ln], [var_in, var_ln]
    dev_bn = bn_sample_weight = batch_mean = batch_var = None
    if mean_weight.numel() == 3:
        if use_batch_stats or running_mean is None:
            mean_bn, var_bn, dev_bn, bn_sample_weight = batch_moments(mean_in, var_in,
                                                                      per_sample, group)
            batch_mean, batch_var = mean_bn.view(-1), var_bn.view(-1)
        else:
            mean_bn = running_mean.to(dtype).view(1, -1)
            var_bn = running_var.to(dtype).view(1, -1)
        means.append(mean_bn)
        variances.append(var_bn)
    n, c = mean_in.shape
    k = len(means)
    stats = torch.stack(torch.broadcast_tensors(*means, *variances)).view(2, k, n, c)
    weights = torch.stack([mean_weight, var_weight]).to(dtype)
    if softmax:
        weights = torch.softmax(weights, 1)
    mean, var = torch.bmm(weights.unsqueeze(1), stats.view(2, k, n * c)).view(2, n, c)
    rstd = torch.rsqrt(var + eps)
    scale = weight.to(dtype) * rstd
    shift = torch.addcmul(bias.to(dtype), mean_in - mean, scale)
    return _Stats(mean_in, stats, weights, softmax, dev_ln, dev_bn, bn_sample_weight, batch_mean,
                  batch_var, mean, rstd, scale, shift)


def _update_running(running_mean: Tensor | None, running_var: Tensor | None, s: _Stats,
                    momentum: float) -> None:
    if running_mean is None or s.batch_mean is None:
        return
    with torch.no_grad():
        running_mean.lerp_(s.batch_mean.detach().to(running_mean.dtype), momentum)
        running_var.lerp_(s.batch_var.detach().to(running_var.dtype), momentum)


def _expand(t: Tensor, ndim: int) -> Tensor:
    """(N, C) -> (N, C, 1, ..., 1) for broadcasting against an ndim-dimensional input."""
    return t.reshape(t.shape + (1,) * (ndim - 2))


def _is_half(x: Tensor) -> bool:
    return x.dtype in (torch.float16, torch.bfloat16)


# --- passes as plain differentiable ops (torch.compile traces and fuses them) -------------------
def _plain_moments(x: Tensor) -> tuple[Tensor, Tensor]:
    var, mean = torch.var_mean(x.to(_stat_dtype(x)), dim=reduce_dims(x), correction=0)
    return mean, var


def _plain_affine(x: Tensor, center: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    nd = x.dim()
    y = (x.to(center.dtype) - _expand(center, nd)) * _expand(scale, nd) + _expand(shift, nd)
    return y.to(x.dtype)


PLAIN_PASSES = SimpleNamespace(moments=_plain_moments, affine=_plain_affine)


# --- eager passes: chunked, in-place where it pays on CPU --------------------------------------
def _chunkable(*tensors: Tensor) -> bool:
    x = tensors[-1]
    return (x.device.type == "cpu" and all(t.is_contiguous() and t.dtype == x.dtype
                                           for t in tensors)
            and x.dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16))


_WORKSPACES: dict[tuple[int, torch.dtype, torch.device], Tensor] = {}
# Half-precision inputs are converted to float32 in chunks of about this many elements (128 KB),
# so that the conversions and the float32 arithmetic stay in cache.
_HALF_CHUNK_ELEMENTS = 1 << 19


def _workspace(like: Tensor, dtype: torch.dtype | None = None, slot: int = 0) -> Tensor:
    """A scratch tensor shaped like `like` (in `dtype`), kept between calls (grow-only, at most
    one chunk per slot): a fresh multi-MB CPU allocation is page-faulted on every touch, which
    cost as much as the arithmetic it holds."""
    dtype = dtype or like.dtype
    key = (slot, dtype, like.device)
    buffer = _WORKSPACES.get(key)
    if buffer is None or buffer.numel() < like.numel():
        buffer = _WORKSPACES[key] = torch.empty(like.numel(), dtype=dtype, device=like.device)
    return buffer[: like.numel()].view(like.shape)


def _row_chunks(t: Tensor, elements: int = _CHUNK_ELEMENTS) -> tuple[Tensor, list[slice]]:
    rows = t.view(t.shape[0] * t.shape[1], -1)
    step = max(1, elements // max(1, rows.shape[1]))
    return rows, [slice(i, i + step) for i in range(0, rows.shape[0], step)]


def _as_float(rows: Tensor, slot: int = 0) -> Tensor:
    """A float32 copy of a chunk of half-precision rows, in a kept workspace."""
    return _workspace(rows, torch.float32, slot).copy_(rows)


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
    if _chunkable(x) and _is_half(x):  # exact two-pass moments per cached float32 chunk
        rows, chunks = _row_chunks(x, _HALF_CHUNK_ELEMENTS)
        mean = rows.new_empty(rows.shape[0], dtype=torch.float32)
        var = torch.empty_like(mean)
        for part in chunks:
            f = _as_float(rows[part])
            torch.mean(f, 1, out=mean[part])
            f.sub_(mean[part, None])
            torch.linalg.vector_norm(f, dim=1, out=var[part])
        return mean.view(x.shape[:2]), var.square_().div_(rows.shape[1]).view(x.shape[:2])
    return _plain_moments(x)


def _eager_affine(x: Tensor, center: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """(x - center) * scale + shift. float32/64: x * scale + (shift - center * scale), mul + add_
    (faster on CPU than a broadcasting addcmul); half: per chunk in float32, rounded once."""
    if not _is_half(x):
        nd = x.dim()
        shift = torch.addcmul(shift, center, scale, value=-1)
        return torch.mul(x, _expand(scale, nd).to(x.dtype)).add_(_expand(shift, nd).to(x.dtype))
    if not _chunkable(x):
        return _plain_affine(x, center, scale, shift)
    y = torch.empty_like(x)
    y_rows, chunks = _row_chunks(y, _HALF_CHUNK_ELEMENTS)
    x_rows = x.view_as(y_rows)
    scale = scale.reshape(-1, 1)
    shift = torch.addcmul(shift, center, scale.view_as(center), value=-1).reshape(-1, 1)
    for part in chunks:
        y_rows[part] = _as_float(x_rows[part]).mul_(scale[part]).add_(shift[part])
    return y


def _eager_grad_sums(grad_y: Tensor, x: Tensor, center: Tensor) -> tuple[Tensor, Tensor]:
    """Per-(n, c) sums over S of grad_y * (x - center) and of grad_y, in float32 (float64 for
    double)."""
    n, c = x.shape[:2]
    acc = _stat_dtype(x)
    if not _chunkable(grad_y, x):
        dims = reduce_dims(x)
        centered = x.to(acc) - _expand(center, x.dim())
        return (grad_y.to(acc) * centered).sum(dims), grad_y.sum(dims, dtype=acc)
    half = _is_half(x)
    g_rows, chunks = _row_chunks(grad_y, _HALF_CHUNK_ELEMENTS if half else _CHUNK_ELEMENTS)
    x_rows = x.view_as(g_rows)
    dot = g_rows.new_empty(g_rows.shape[0], dtype=acc)
    total = torch.empty_like(dot)
    if half:
        center_rows = center.reshape(-1, 1)
        for part in chunks:
            g = _as_float(g_rows[part])
            torch.sum(g, 1, out=total[part])
            centered = _as_float(x_rows[part], slot=1).sub_(center_rows[part])
            torch.sum(centered.mul_(g), 1, out=dot[part])
        return dot.view(n, c), total.view(n, c)
    buffer = _workspace(g_rows[chunks[0]])
    for part in chunks:
        g = g_rows[part]
        torch.sum(torch.mul(g, x_rows[part], out=buffer[: g.shape[0]]), 1, out=dot[part])
        torch.sum(g, 1, out=total[part])
    dot = dot.view(n, c)
    total = total.view(n, c)
    return dot.sub_(center * total), total  # sum dy * x - center * sum dy


def _eager_grad_input(grad_y: Tensor, x: Tensor, center: Tensor, scale: Tensor, a: Tensor,
                      b: Tensor) -> Tensor:
    """grad_y * scale + (x - center) * a + b with (N, C) coefficients."""
    if not _chunkable(grad_y, x):
        nd = x.dim()
        acc = center.dtype
        dx = (grad_y.to(acc) * _expand(scale, nd) + (x.to(acc) - _expand(center, nd))
              * _expand(a, nd) + _expand(b, nd))
        return dx.to(x.dtype)
    grad_x = torch.empty_like(x)
    half = _is_half(x)
    out_rows, chunks = _row_chunks(grad_x, _HALF_CHUNK_ELEMENTS if half else _CHUNK_ELEMENTS)
    g_rows, x_rows = grad_y.view_as(out_rows), x.view_as(out_rows)
    if half:
        b = torch.addcmul(b, center, a, value=-1).reshape(-1, 1)  # x * a + (b - center * a)
        a, scale = a.reshape(-1, 1), scale.reshape(-1, 1)
        for part in chunks:
            dx = _as_float(x_rows[part]).mul_(a[part]).add_(b[part])
            out_rows[part] = dx.addcmul_(_as_float(g_rows[part], slot=1), scale[part])
        return grad_x
    b = torch.addcmul(b, center, a, value=-1)  # x * a + (b - center * a)
    a, b, scale = (t.reshape(-1, 1).to(x.dtype) for t in (a, b, scale))
    for part in chunks:
        out = out_rows[part]
        torch.mul(x_rows[part], a[part], out=out).add_(b[part]).addcmul_(g_rows[part], scale[part])
    return grad_x


EAGER_PASSES = SimpleNamespace(moments=instance_moments, affine=_eager_affine,
                               grad_sums=_eager_grad_sums, grad_input=_eager_grad_input)


# --- composition ------------------------------------------------------------------------------
def _forward(passes, x: Tensor, mean_weight: Tensor, var_weight: Tensor, weight: Tensor,
             bias: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
             training: bool, momentum: float, eps: float, group, softmax: bool = True
             ) -> tuple[Tensor, _Stats]:
    mean_in, var_in = passes.moments(x)
    s = _mix(mean_in, var_in, mean_weight, var_weight, weight, bias, running_mean, running_var,
             training, eps, x[0, 0].numel(), group, softmax)
    if training:
        _update_running(running_mean, running_var, s, momentum)
    return passes.affine(x, mean_in, s.scale, s.shift), s


def _backward(passes, grad_y: Tensor, x: Tensor, s: _Stats, group, needs_input_grad: bool
              ) -> tuple[Tensor | None, ...]:
    """Gradients of x and of mean_weight, var_weight, weight, bias (float32)."""
    grad_dot, grad_sum = passes.grad_sums(grad_y, x, s.mean_in)
    grad_mean_in, grad_var_in, *param_grads = _small_backward(s, grad_dot, grad_sum, group)
    grad_x = None
    if needs_input_grad:
        count = x[0, 0].numel()
        a = grad_var_in * (2.0 / count)       # d var_in / dx = 2 (x - mean_in) / M
        grad_x = passes.grad_input(grad_y, x, s.mean_in, s.scale, a, grad_mean_in / count)
    return (grad_x, *param_grads)


def _no_autocast(x: Tensor):
    """SN sets its own precision (float32 statistics, one rounding): autocast stays out."""
    return torch.autocast(x.device.type, enabled=False)


KERNELS = ("auto", "triton", "eager")


def resolve_kernel(kernel: str, x: Tensor) -> str:
    """'triton' or 'eager' for this input. auto: Triton for CUDA tensors of a kernel dtype when
    triton is installed, else eager. float64 always runs eager (the kernels accumulate in
    float32)."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
    if kernel == "eager" or x.dtype == torch.float64:
        return "eager"
    from . import triton_sn

    if kernel == "auto":
        return "triton" if x.device.type == "cuda" and triton_sn.can_run(x) else "eager"
    if not triton_sn.can_run(x):
        why = ("triton is not installed" if not triton_sn.triton_available() else
               f"got a {x.device.type} {x.dtype} tensor: the kernels need CUDA (or "
               "TRITON_INTERPRET=1 set before triton is imported) and float32/bfloat16/float16")
        raise RuntimeError(f"SwitchNorm kernel='triton': {why}")
    return "triton"


def switch_norm(x: Tensor, mean_weight: Tensor, var_weight: Tensor, weight: Tensor, bias: Tensor,
                running_mean: Tensor | None, running_var: Tensor | None, training: bool,
                momentum: float = 0.1, eps: float = 1e-5, process_group=None,
                kernel: str = "auto", softmax: bool = True) -> Tensor:
    """Switchable Normalization of x (N, C, *S), in the manner of F.batch_norm.

    mean_weight / var_weight hold 3 logits [IN, LN, BN] or 2 [IN, LN] (no BN branch), whose
    softmax mixes the statistics; with softmax=False they are the mixing weights themselves
    (Sparse SN computes them with sparsestmax: (K,)-sized work, outside the kernels). In
    training (or when running_mean is None) the BN branch uses batch moments — merged over
    `process_group` when given — and updates running_mean / running_var in place when they are
    given; otherwise it uses them. kernel: "auto" | "triton" | "eager" (see resolve_kernel).
    The output has x's dtype, computed in float32 and rounded once (autocast does not apply).
    """
    params = (mean_weight, var_weight, weight, bias)
    if _STANDARD_OPS:  # an exporter is tracing: plain torch ops every runtime knows
        return switch_norm_reference(x, *params, running_mean, running_var, training, momentum,
                                     eps, process_group, softmax)
    with _no_autocast(x):
        path = resolve_kernel(kernel, x)
        if path == "triton" and not _synced(process_group):
            from .triton_sn import switch_norm_op

            return switch_norm_op(x, *params, running_mean, running_var, training, momentum, eps,
                                  softmax)
        if torch.compiler.is_compiling():
            return switch_norm_reference(x, *params, running_mean, running_var, training,
                                         momentum, eps, process_group, softmax)
        if path == "triton":
            from .triton_sn import TRITON_PASSES as passes
        else:
            passes = EAGER_PASSES
        needs_grad = torch.is_grad_enabled() and (x.requires_grad
                                                  or any(p.requires_grad for p in params))
        if not needs_grad:
            with torch.no_grad():
                return _forward(passes, x, *params, running_mean, running_var, training,
                                momentum, eps, process_group, softmax)[0]
        return SwitchNormFunction.apply(x, *params, running_mean, running_var, training,
                                        momentum, eps, process_group, passes, softmax)


class SwitchNormFunction(torch.autograd.Function):
    """SN over a pass set with an analytic backward. Saves x (as BatchNorm does) and (N, C)
    tensors."""

    @staticmethod
    def forward(ctx, x, mean_weight, var_weight, weight, bias, running_mean, running_var,
                training, momentum, eps, group, passes, softmax):  # type: ignore[override]
        y, stats = _forward(passes, x, mean_weight, var_weight, weight, bias, running_mean,
                            running_var, training, momentum, eps, group, softmax)
        ctx.save_for_backward(x)
        ctx.stats, ctx.group, ctx.passes = stats, group, passes
        ctx.param_dtypes = (mean_weight.dtype, var_weight.dtype, weight.dtype, bias.dtype)
        return y

    @staticmethod
    def backward(ctx, grad_y):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        grad_x, *param_grads = _backward(ctx.passes, grad_y, x, ctx.stats, ctx.group,
                                         ctx.needs_input_grad[0])
        param_grads = [g.to(dtype) for g, dtype in zip(param_grads, ctx.param_dtypes)]
        return (grad_x, *param_grads, None, None, None, None, None, None, None, None)


_SIGNS = {}  # (dtype, device) -> tensor [-1, -0.5]: d mean and d var factors


def _small_backward(s: _Stats, grad_dot: Tensor, grad_sum: Tensor, group
                    ) -> tuple[Tensor, ...]:
    """Chain rule from the sums over S of dy * (x - mean_in) and of dy, (N, C), to the IN
    moments and the parameters: returns grad_mean_in, grad_var_in, grad_mean_weight,
    grad_var_weight, grad_weight, grad_bias."""
    grad_bias = grad_sum.sum(0)
    # y = x * scale + bias - mean * scale: d scale = sum dy * (x - mean)
    grad_scale = torch.addcmul(grad_dot, s.mean_in - s.mean, grad_sum)
    grad_weight = (grad_scale * s.rstd).sum(0)                            # scale = weight * rstd
    # d mean = -scale * d shift;  d var = -0.5 * d scale * weight * rstd^3
    key = (s.scale.dtype, s.scale.device)
    if key not in _SIGNS:
        _SIGNS[key] = torch.tensor([-1.0, -0.5], dtype=key[0], device=key[1]).view(2, 1, 1)
    grad_mixed = torch.stack([s.scale * grad_sum, grad_scale * s.scale * s.rstd.square()])
    grad_mixed = grad_mixed * _SIGNS[key]                                 # (2, N, C)
    n, c = grad_sum.shape
    k = s.weights.shape[1]
    # (a multiply and a sum: bmm with one output column is several times slower on CPU)
    grad_w = (s.stats.view(2, k, n * c) * grad_mixed.view(2, 1, n * c)).sum(2)
    if s.softmax:
        grad_logits = s.weights * (grad_w - (s.weights * grad_w).sum(1, keepdim=True))
    else:  # the weights were given: their gradient goes on to whatever made them
        grad_logits = grad_w
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


def switch_norm_reference(x: Tensor, mean_weight: Tensor, var_weight: Tensor, weight: Tensor,
                          bias: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
                          training: bool, momentum: float = 0.1, eps: float = 1e-5,
                          process_group=None, softmax: bool = True) -> Tensor:
    """`switch_norm` with autograd through plain tensor ops (no custom backward)."""
    with _no_autocast(x):
        return _forward(PLAIN_PASSES, x, mean_weight, var_weight, weight, bias, running_mean,
                        running_var, training, momentum, eps, process_group, softmax)[0]
