"""SN on Triton kernels (the kernels themselves are in _triton_kernels.py).

The input-sized tensor is touched as often as BatchNorm touches it:
  forward:  one read of x for the per-(n, c) moments; one read of x, one write of y
  backward: one read of x and dy for the per-(n, c) sums; one read of x and dy, one write of dx
in its own dtype (fp32, bf16 or fp16; contiguous or channels_last_3d, no copy), with float32
arithmetic rounded once on the way out. The (N, C)-sized mixing and its chain rule are one
small kernel each way, so a layer is four launches forward and three backward (`forward`,
`backward`). `switch_norm_op` runs them as one `torch.library` custom op,
`snvideo::switch_norm` (fake implementation and backward registered), so torch.compile and DDP
see one opaque op. SyncSwitchNorm runs the input-sized passes (TRITON_PASSES) around its
all-reduces, with the mixing in torch (functional.SwitchNormFunction).

triton is imported lazily (it ships with CUDA builds of torch). On CPU tensors the kernels run
only under Triton's interpreter (TRITON_INTERPRET=1 set before triton is imported), which the
test suite uses to check them without a GPU.
"""
from __future__ import annotations

import functools
import importlib.util
import os
from types import SimpleNamespace
from typing import Optional

import torch
from torch import Tensor

_REDUCE_TILE = 2048      # elements per program tile in the reductions
_ELEMENTWISE_TILE = 4096  # ... and in the elementwise passes
_MIX_TILE = 2048          # (N, C) values per tile in the one-program mixing kernels
_TARGET_PROGRAMS = 1024   # enough programs to fill an H100/H200 (132 SMs) several times over
KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_INT32_LIMIT = 2**31 - 1


def triton_available() -> bool:
    """Whether the Triton path can run at all (the package imports)."""
    return importlib.util.find_spec("triton") is not None


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def can_run(x: Tensor) -> bool:
    """Whether the kernels accept x: a CUDA tensor (or any tensor under the interpreter) of a
    kernel dtype, with triton installed."""
    return (x.dtype in KERNEL_DTYPES and triton_available()
            and (x.device.type == "cuda" or interpreter_enabled()))


@functools.lru_cache(maxsize=None)
def _kernels():
    from . import _triton_kernels

    return _triton_kernels


def _next_pow2(v: int) -> int:
    return 1 << max(0, (int(v) - 1).bit_length())


def _rows(x: Tensor) -> Tensor:
    """x as an (N, C, M) view (a copy only for layouts that cannot be viewed so)."""
    flat = x.flatten(2) if x.dim() > 2 else x.unsqueeze(-1)
    if flat.stride(1) != 1 and flat.stride(2) != 1:
        flat = x.contiguous().flatten(2)
    return flat


def _tiles(rows: Tensor, tile: int) -> tuple[int, int]:
    """(BLOCK_C, BLOCK_M): long along M for contiguous rows, along C for channels-last."""
    c, m = rows.shape[1], rows.shape[2]
    if rows.stride(2) == 1 or c == 1:
        block_m = min(tile, _next_pow2(m))
        block_c = min(_next_pow2(c), max(1, tile // block_m))
    else:
        block_c = min(_next_pow2(c), 64)
        block_m = min(_next_pow2(m), max(1, tile // block_c))
    return block_c, block_m


def _split(n: int, c_blocks: int, m: int, block_m: int) -> tuple[int, int]:
    """How many programs share a row, and the (BLOCK_M-aligned) length each one sums."""
    splits = max(1, min(-(-_TARGET_PROGRAMS // (n * c_blocks)), -(-m // block_m)))
    chunk = -(-(-(-m // splits)) // block_m) * block_m
    return -(-m // chunk), chunk


def _partial_sums(kernel, rows: Tensor, *inputs: Tensor, firsts: bool = False
                  ) -> tuple[Tensor, ...]:
    """Launch a reduction kernel over (N, C, M) rows. Returns its two (splits, N, C) float32
    partial sums, after the (N, C) row firsts when `firsts` (the moments kernel writes them)."""
    n, c, m = rows.shape
    block_c, block_m = _tiles(rows, _REDUCE_TILE)
    c_blocks = -(-c // block_c)
    splits, chunk = _split(n, c_blocks, m, block_m)
    s1 = rows.new_empty((splits, n, c), dtype=torch.float32)
    outputs = ([rows.new_empty((n, c), dtype=torch.float32)] if firsts else []) \
        + [s1, torch.empty_like(s1)]
    kernel[(n, c_blocks, splits)](*inputs, *outputs, n, c, m, chunk, *rows.stride(),
                                  BLOCK_C=block_c, BLOCK_M=block_m, INDEX_64=needs_index_64(rows))
    return tuple(outputs)


def moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-(n, c) mean and population variance over S, float32, one read of x."""
    rows = _rows(x)
    m = rows.shape[2]
    shift, s1, s2 = _partial_sums(_kernels()._moments_kernel, rows, rows, firsts=True)
    d1 = s1.sum(0) / m
    return shift + d1, torch.addcmul(s2.sum(0) / m, d1, d1, value=-1).clamp_(min=0)


def needs_index_64(rows: Tensor) -> bool:
    """Whether an element offset of `rows` can pass 2^31 - 1 (then the kernels compute
    offsets in 64 bits; below that, 32-bit arithmetic is faster)."""
    return sum((size - 1) * stride for size, stride in zip(rows.shape, rows.stride())) >= _INT32_LIMIT


def elementwise_grid(n: int, c: int, m: int, block_c: int, block_m: int) -> tuple[int]:
    """One grid axis for every (n, channel block, position block) tile: axis 0 takes 2^31 - 1
    programs, the others only 65535, which a channels-last layer passes at M > 4.19M."""
    programs = n * -(-c // block_c) * -(-m // block_m)
    if programs > _INT32_LIMIT:
        raise ValueError(f"SwitchNorm input too large for one launch: {programs} tiles")
    return (programs,)


def _launch_elementwise(kernel, rows: Tensor, *args) -> None:
    n, c, m = rows.shape
    block_c, block_m = _tiles(rows, _ELEMENTWISE_TILE)
    kernel[elementwise_grid(n, c, m, block_c, block_m)](
        *args, c, m, *rows.stride(), BLOCK_C=block_c, BLOCK_M=block_m,
        INDEX_64=needs_index_64(rows), HW_CAST=not interpreter_enabled())


def affine(x: Tensor, center: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """(x - center) * scale + shift with (N, C) float32 coefficients, in x's dtype and layout."""
    rows = _rows(x)
    y = torch.empty_like(rows)  # keeps the row strides: contiguous or channels-last
    _launch_elementwise(_kernels()._affine_kernel, rows, rows, y, _f32(center), _f32(scale),
                        _f32(shift))
    return _restore(y, x)


def _grad_partials(grad_y: Tensor, rows: Tensor, center: Tensor) -> tuple[Tensor, ...]:
    """(splits, N, C) partial sums of grad_y * (x - center) and of grad_y."""
    return _partial_sums(_kernels()._grad_sums_kernel, rows, _matching(grad_y, rows), rows,
                         _f32(center))


def grad_sums(grad_y: Tensor, x: Tensor, center: Tensor) -> tuple[Tensor, Tensor]:
    """Per-(n, c) sums over S of grad_y * (x - center) and of grad_y, float32: one read each."""
    dot, total = _grad_partials(grad_y, _rows(x), center)
    return dot.sum(0), total.sum(0)


def grad_input(grad_y: Tensor, x: Tensor, center: Tensor, scale: Tensor, a: Tensor,
               b: Tensor) -> Tensor:
    """grad_y * scale + (x - center) * a + b with (N, C) coefficients, in x's dtype."""
    rows = _rows(x)
    g_rows = _matching(grad_y, rows)
    dx = torch.empty_like(rows)
    _launch_elementwise(_kernels()._grad_input_kernel, rows, g_rows, rows, dx, _f32(center),
                        _f32(scale), _f32(a), _f32(b))
    return _restore(dx, x)


def _f32(t: Tensor) -> Tensor:
    return t.to(torch.float32).contiguous()


def _matching(grad: Tensor, rows: Tensor) -> Tensor:
    """grad as an (N, C, M) view with the strides of `rows` (copied into them if needed)."""
    g = _rows(grad.to(rows.dtype))
    if g.stride() != rows.stride():
        g = torch.empty_like(rows).copy_(g)
    return g


def _restore(rows_out: Tensor, x: Tensor) -> Tensor:
    """An (N, C, M) result back in x's shape (a view: empty_like kept the row strides)."""
    if x.dim() == 2:
        return rows_out.squeeze(-1)
    return rows_out.unflatten(2, x.shape[2:])


# --- the fused layer: four input-sized passes and two one-program (N, C) kernels --------------
def _mix_tiles(n: int, c: int) -> tuple[int, int]:
    block_n = _next_pow2(n)
    return block_n, min(_next_pow2(c), max(1, _MIX_TILE // block_n))


def forward(x: Tensor, mean_weight: Tensor, var_weight: Tensor, weight: Tensor, bias: Tensor,
            running_mean: Tensor | None, running_var: Tensor | None, use_batch_stats: bool,
            eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """SN's forward in four launches: y and, for the backward, nc (6, N, C) = mean_in, var_in,
    mixed mean, rstd, scale, shift; ln (2, N); bn (2, C) (see _mix_forward_kernel). The BN
    branch uses batch moments when `use_batch_stats` or without running statistics."""
    rows = _rows(x)
    n, c, m = rows.shape
    shift, s1, s2 = _partial_sums(_kernels()._moments_kernel, rows, rows, firsts=True)
    nc = rows.new_empty((6, n, c), dtype=torch.float32)
    ln = rows.new_empty((2, n), dtype=torch.float32)
    bn = rows.new_zeros((2, c), dtype=torch.float32)
    use_batch = use_batch_stats or running_mean is None
    block_n, block_c = _mix_tiles(n, c)
    _kernels()._mix_forward_kernel[(1,)](
        shift, s1, s2, mean_weight, var_weight, weight, bias,
        running_mean if running_mean is not None else bn,
        running_var if running_var is not None else bn, nc, ln, bn, n, c, s1.shape[0], m, eps,
        K=mean_weight.numel(), USE_BATCH=use_batch, BLOCK_N=block_n, BLOCK_C=block_c,
        num_warps=8)
    return affine(x, nc[0], nc[4], nc[5]), nc, ln, bn


def backward(grad_y: Tensor, x: Tensor, nc: Tensor, ln: Tensor, bn: Tensor,
             mean_weight: Tensor, var_weight: Tensor, use_batch_stats: bool
             ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of x, mean_weight, var_weight, weight and bias (float32) in three launches."""
    rows = _rows(x)
    n, c, m = rows.shape
    k = mean_weight.numel()
    dot, total = _grad_partials(grad_y, rows, nc[0])
    a, b = torch.empty_like(nc[:2])
    grad_weight = rows.new_empty(c, dtype=torch.float32)
    grad_bias = torch.empty_like(grad_weight)
    grad_logits = rows.new_empty(2 * k, dtype=torch.float32)
    block_n, block_c = _mix_tiles(n, c)
    _kernels()._mix_backward_kernel[(1,)](
        dot, total, nc, ln, bn, mean_weight, var_weight, a, b, grad_weight, grad_bias,
        grad_logits, n, c, dot.shape[0], m, K=k, USE_BATCH=use_batch_stats,
        BLOCK_N=block_n, BLOCK_C=block_c, num_warps=8)
    grad_x = grad_input(grad_y, x, nc[0], nc[4], a, b)
    return grad_x, grad_logits[:k], grad_logits[k:], grad_weight, grad_bias


TRITON_PASSES = SimpleNamespace(moments=moments, affine=affine, grad_sums=grad_sums,
                                grad_input=grad_input)


# --- the layer as one custom op -----------------------------------------------------------------
@torch.library.custom_op("snvideo::switch_norm", mutates_args=())
def _switch_norm_fwd_op(x: Tensor, mean_weight: Tensor, var_weight: Tensor, weight: Tensor,
                        bias: Tensor, running_mean: Optional[Tensor],
                        running_var: Optional[Tensor], use_batch_stats: bool, eps: float
                        ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """y and the (N, C)-sized statistics the backward and the running statistics need
    (triton_sn.forward)."""
    return forward(x, mean_weight, var_weight, weight, bias, running_mean, running_var,
                             use_batch_stats, eps)


@_switch_norm_fwd_op.register_fake
def _(x, mean_weight, var_weight, weight, bias, running_mean, running_var, use_batch_stats, eps):
    n, c = x.shape[:2]
    return (torch.empty_like(x), x.new_empty((6, n, c), dtype=torch.float32),
            x.new_empty((2, n), dtype=torch.float32), x.new_empty((2, c), dtype=torch.float32))


@torch.library.custom_op("snvideo::switch_norm_backward", mutates_args=())
def _switch_norm_bwd_op(grad_y: Tensor, x: Tensor, nc: Tensor, ln: Tensor, bn: Tensor,
                        mean_weight: Tensor, var_weight: Tensor, weight: Tensor, bias: Tensor,
                        use_batch_stats: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    grad_x, *grads = backward(grad_y, x, nc, ln, bn, mean_weight, var_weight,
                                        use_batch_stats)
    params = (mean_weight, var_weight, weight, bias)
    return (grad_x, *(g.to(p.dtype, copy=True) for g, p in zip(grads, params)))  # no aliases


@_switch_norm_bwd_op.register_fake
def _(grad_y, x, nc, ln, bn, mean_weight, var_weight, weight, bias, use_batch_stats):
    return (torch.empty_like(x), torch.empty_like(mean_weight), torch.empty_like(var_weight),
            torch.empty_like(weight), torch.empty_like(bias))


def _setup_context(ctx, inputs, output):
    x, mean_weight, var_weight, weight, bias, running_mean, _, use_batch, _ = inputs
    _, nc, ln, bn = output
    ctx.save_for_backward(x, nc, ln, bn, mean_weight, var_weight, weight, bias)
    ctx.use_batch = use_batch or running_mean is None


def _op_backward(ctx, grad_y, *unused):
    grads = torch.ops.snvideo.switch_norm_backward(grad_y, *ctx.saved_tensors, ctx.use_batch)
    return (*grads, None, None, None, None)


_switch_norm_fwd_op.register_autograd(_op_backward, setup_context=_setup_context)


def switch_norm_op(x: Tensor, mean_weight: Tensor, var_weight: Tensor, weight: Tensor,
                    bias: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
                    training: bool, momentum: float, eps: float) -> Tensor:
    """The Triton path through the custom op; running statistics are updated here, outside it
    (the op itself is functional)."""
    use_batch = training or running_mean is None
    y, _, _, bn = torch.ops.snvideo.switch_norm(
        x, mean_weight, var_weight, weight, bias, None if use_batch else running_mean,
        None if use_batch else running_var, use_batch, eps)
    if training and running_mean is not None and mean_weight.numel() == 3:
        with torch.no_grad():
            running_mean.lerp_(bn[0].to(running_mean.dtype), momentum)
            running_var.lerp_(bn[1].to(running_var.dtype), momentum)
    return y
