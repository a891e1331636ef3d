"""SN on Triton kernels (the kernels themselves are in _triton_kernels.py).

The input-sized tensor is touched as often as BatchNorm touches it:
  forward:  one read of x for the per-(n, c) moments; one read of x, one write of y
  backward: one read of x and dy for the per-(n, c) sums; one read of x and dy, one write of dx
in its own dtype (fp32, bf16 or fp16; contiguous or channels_last_3d, no copy), with float32
arithmetic rounded once on the way out. The (N, C)-sized mixing and its chain rule are one
small kernel each way, which also moves the running statistics, so a layer is three launches
forward and three backward (`forward`, `backward`), and no other device op: the statistics
outputs get no materialized gradients, parameter gradients are written in their own dtype.
`switch_norm_op` runs each direction as one `torch.library` custom op, `snvideo::switch_norm`
(which updates the running statistics in place) and `snvideo::switch_norm_backward`, with fake
implementations, under an autograd.Function, so torch.compile and DDP see one opaque op each
way. SyncSwitchNorm runs the input-sized passes (TRITON_PASSES) around its
collective, with the mixing in torch (functional.SwitchNormFunction).

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
_MIX_BLOCK_N = 64         # samples per tile there (larger batches are walked in blocks)
_PROGRAMS_PER_SM = 4      # reduction programs per SM: enough to hide memory latency
_COUNTERS: dict = {}      # per device: the reductions' completion counters (_counters)
_AUTOTUNE = True          # GPU: autotune the elementwise passes' tiles (False: the fixed tiles)
EAGER_BODIES = True       # eager mode calls the ops' bodies directly (benchmarks/bench_host_overhead.py)
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


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 132  # the interpreter: as an H100, so CPU tests see the GPU's splits


def _split(n: int, c_blocks: int, m: int, block_m: int,
           device: torch.device = torch.device("cpu")) -> tuple[int, int]:
    """How many programs share a row, and the (BLOCK_M-aligned) length each one sums: enough
    programs for every SM to hold a few, no more (each split's sums are added up again)."""
    target = _PROGRAMS_PER_SM * _sm_count(device)
    splits = max(1, min(-(-target // (n * c_blocks)), -(-m // block_m)))
    chunk = -(-(-(-m // splits)) // block_m) * block_m
    return -(-m // chunk), chunk


def _counters(device: torch.device, count: int) -> Tensor:
    """The reductions' completion counters (one per (n, channel block)): zeros, and left at
    zero by every launch (the last split re-arms its counter), so they are allocated and
    cleared once per device, not per launch."""
    counters = _COUNTERS.get(device)
    if counters is None or counters.numel() < count:
        counters = torch.zeros(max(count, 4096), dtype=torch.int32, device=device)
        _COUNTERS[device] = counters
    return counters


@functools.lru_cache(maxsize=1024)
def _reduce_plan(shape: tuple, strides: tuple, g_strides: tuple, device: torch.device
                 ) -> tuple[int, int, int, int, int, bool]:
    """(BLOCK_C, BLOCK_M, channel blocks, splits, chunk, INDEX_64) of a reduction over rows of
    this shape and these strides: computed once per layer shape, not per step (host time)."""
    n, c, m = shape
    block_c, block_m = _tiles(torch.empty_strided(shape, strides, device="meta"), _REDUCE_TILE)
    c_blocks = -(-c // block_c)
    splits, chunk = _split(n, c_blocks, m, block_m, device)
    return block_c, block_m, c_blocks, splits, chunk, _index_64(shape, strides, g_strides)


def _index_64(shape: tuple, strides: tuple, g_strides: tuple) -> bool:
    """needs_index_64 for rows of `shape` with x's `strides` and, when given, the gradient's."""
    return needs_index_64(*(torch.empty_strided(shape, s, device="meta")
                            for s in (strides, g_strides) if s))


def _reduce(kernel, rows: Tensor, *inputs: Tensor, firsts: bool = False,
            grad_rows: Tensor | None = None) -> tuple[Tensor, ...]:
    """Launch a reduction kernel over (N, C, M) rows. Returns its two (N, C) float32 totals,
    after the (N, C) row firsts when `firsts` (the moments kernel writes them).
    `grad_rows`: the gradient, whose strides the kernel takes before those of `rows`."""
    n, c, m = rows.shape
    g_strides = () if grad_rows is None else grad_rows.stride()
    block_c, block_m, c_blocks, splits, chunk, big = _reduce_plan(
        tuple(rows.shape), rows.stride(), g_strides, rows.device)
    # one allocation for the partial sums, the totals and the row firsts
    work = rows.new_empty((2 * splits + 2 + int(firsts), n, c), dtype=torch.float32)
    outputs = ([work[-1]] if firsts else []) + [work[:splits], work[splits:2 * splits],
                                                work[2 * splits], work[2 * splits + 1],
                                                _counters(rows.device, n * c_blocks)]
    kernel[(n, c_blocks, splits)](*inputs, *outputs, n, c, m, chunk, *g_strides, *rows.stride(),
                                  BLOCK_C=block_c, BLOCK_M=block_m, INDEX_64=big)
    return (*outputs[:-5], work[2 * splits], work[2 * splits + 1])


def moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-(n, c) mean and population variance over S, float32, one read of x."""
    rows = _rows(x)
    m = rows.shape[2]
    shift, s1, s2 = _reduce(_kernels()._moments_kernel, rows, rows, firsts=True)
    d1 = s1 / m
    return shift + d1, torch.addcmul(s2 / m, d1, d1, value=-1).clamp_(min=0)


def needs_index_64(*tensors: Tensor) -> bool:
    """Whether an element offset of any of `tensors` can pass 2^31 - 1 (then the kernels
    compute offsets in 64 bits; below that, 32-bit arithmetic is faster)."""
    return any(sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride())) >= _INT32_LIMIT
               for t in tensors)


def elementwise_grid(n: int, c: int, m: int, block_c: int, block_m: int) -> tuple[int]:
    """One grid axis for every (n, channel block, position block) tile: axis 0 takes 2^31 - 1
    programs, the others only 65535, which a channels-last layer passes at M > 4.19M."""
    programs = n * -(-c // block_c) * -(-m // block_m)
    if programs > _INT32_LIMIT:
        raise ValueError(f"SwitchNorm input too large for one launch: {programs} tiles")
    return (programs,)


@functools.lru_cache(maxsize=1024)
def _elementwise_plan(shape: tuple, strides: tuple, g_strides: tuple
                      ) -> tuple[int, int, tuple[int], bool, bool]:
    """(BLOCK_C, BLOCK_M, grid, INDEX_64, interpreted) of an elementwise pass, once per shape."""
    block_c, block_m = _tiles(torch.empty_strided(shape, strides, device="meta"), _ELEMENTWISE_TILE)
    return (block_c, block_m, elementwise_grid(*shape, block_c, block_m),
            _index_64(shape, strides, g_strides), interpreter_enabled())


def _launch_elementwise(name: str, rows: Tensor, *args, grad_rows: Tensor | None = None) -> None:
    """Launch elementwise kernel `name` over rows: on a GPU its autotuned version (tiles and
    warps picked per shape class, _triton_kernels.tuned); in the interpreter, which cannot time
    candidates, with the tiles of _tiles."""
    n, c, m = rows.shape
    g_strides = () if grad_rows is None else grad_rows.stride()
    block_c, block_m, grid, big, interpreted = _elementwise_plan(tuple(rows.shape), rows.stride(),
                                                                 g_strides)
    if interpreted or not _AUTOTUNE:
        getattr(_kernels(), name)[grid](
            *args, *g_strides, c, m, *rows.stride(), BLOCK_C=block_c, BLOCK_M=block_m,
            INDEX_64=big, HW_CAST=not interpreted)
        return
    getattr(_kernels(), f"{name}_tuned")[
        lambda meta: elementwise_grid(n, c, m, meta["BLOCK_C"], meta["BLOCK_M"])](
        *args, *g_strides, c, m, *rows.stride(), INDEX_64=big, HW_CAST=True)


def affine(x: Tensor, center: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """(x - center) * scale + shift with (N, C) float32 coefficients, in x's dtype and layout."""
    rows = _rows(x)
    y = torch.empty_like(rows)  # keeps the row strides: contiguous or channels-last
    _launch_elementwise("_affine_kernel", rows, rows, y, _f32(center), _f32(scale), _f32(shift))
    return _restore(y, x)


def _grad_totals(grad_y: Tensor, rows: Tensor, center: Tensor) -> tuple[Tensor, ...]:
    """(N, C) sums of grad_y * (x - center) and of grad_y."""
    g_rows = _grad_rows(grad_y, rows)
    return _reduce(_kernels()._grad_sums_kernel, rows, g_rows, rows, _f32(center),
                   grad_rows=g_rows)


def grad_sums(grad_y: Tensor, x: Tensor, center: Tensor) -> tuple[Tensor, Tensor]:
    """Per-(n, c) sums over S of grad_y * (x - center) and of grad_y, float32: one read each."""
    return _grad_totals(grad_y, _rows(x), center)


def grad_input(grad_y: Tensor, x: Tensor, center: Tensor, scale: Tensor, a: Tensor,
               b: Tensor) -> Tensor:
    """grad_y * scale + (x - center) * a + b with (N, C) coefficients, in x's dtype."""
    rows = _rows(x)
    g_rows = _grad_rows(grad_y, rows)
    dx = torch.empty_like(rows)
    _launch_elementwise("_grad_input_kernel", rows, g_rows, rows, dx, _f32(center), _f32(scale),
                        _f32(a), _f32(b), grad_rows=g_rows)
    return _restore(dx, x)


def _f32(t: Tensor) -> Tensor:
    if t.dtype == torch.float32 and t.is_contiguous():
        return t  # the usual case: no dispatch at all
    return t.to(torch.float32).contiguous()


def _grad_rows(grad: Tensor, rows: Tensor) -> Tensor:
    """grad as (N, C, M) rows with whatever strides it has (the kernels take them apart from
    x's: an expanded or differently laid out gradient is not copied); cast to x's dtype if
    it differs."""
    grad = grad if grad.dtype == rows.dtype else grad.to(rows.dtype)
    return grad.reshape(rows.shape)


def _restore(rows_out: Tensor, x: Tensor) -> Tensor:
    """An (N, C, M) result back in x's shape (a view: empty_like kept the row strides)."""
    if x.dim() == 2:
        return rows_out.squeeze(-1)
    return rows_out.unflatten(2, x.shape[2:])


# --- the fused layer: four input-sized passes and two one-program (N, C) kernels --------------
def _mix_tiles(n: int, c: int) -> tuple[int, int]:
    """(BLOCK_N, BLOCK_C) of the mixing kernels' tiles: at most _MIX_TILE values, samples in
    blocks of at most _MIX_BLOCK_N (the kernels loop over sample blocks)."""
    block_n = min(_next_pow2(n), _MIX_BLOCK_N)
    return block_n, min(_next_pow2(c), max(1, _MIX_TILE // block_n))


def forward(x: Tensor, mean_weight: Tensor, var_weight: Tensor, weight: Tensor, bias: Tensor,
            running_mean: Tensor | None, running_var: Tensor | None, use_batch_stats: bool,
            eps: float, momentum: float = 0.0, softmax: bool = True
            ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """SN's forward in three launches: y and, for the backward, nc (6, N, C) = mean_in, var_in,
    mixed mean, rstd, scale, shift; ln (2, N); bn (2, C) (see _mix_forward_kernel). The BN
    branch uses batch moments when `use_batch_stats` or without running statistics; with both,
    the mixing kernel also moves the running statistics by `momentum`."""
    rows = _rows(x)
    n, c, m = rows.shape
    shift, t1, t2 = _reduce(_kernels()._moments_kernel, rows, rows, firsts=True)
    nc = rows.new_empty((6, n, c), dtype=torch.float32)
    ln = rows.new_empty((2, n), dtype=torch.float32)
    bn = rows.new_empty((2, c), dtype=torch.float32)  # written when there is a BN branch
    k = mean_weight.numel()
    use_batch = use_batch_stats or running_mean is None
    block_n, block_c = _mix_tiles(n, c)
    _kernels()._mix_forward_kernel[(1,)](
        shift, t1, t2, mean_weight, var_weight, weight, bias,
        running_mean if running_mean is not None else bn,
        running_var if running_var is not None else bn, nc, ln, bn, n, c, m, eps,
        float(momentum), K=k, USE_BATCH=use_batch,
        UPDATE_RUNNING=use_batch_stats and running_mean is not None and k == 3,
        BLOCK_N=block_n, BLOCK_C=block_c, SOFTMAX=softmax, num_warps=8)
    return affine(x, nc[0], nc[4], nc[5]), nc, ln, bn


def backward(grad_y: Tensor, x: Tensor, nc: Tensor, ln: Tensor, bn: Tensor,
             mean_weight: Tensor, var_weight: Tensor, weight: Tensor, bias: Tensor,
             use_batch_stats: bool, input_grad: bool = True, softmax: bool = True
             ) -> tuple[Tensor | None, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of x (None unless `input_grad`), mean_weight, var_weight, weight and bias
    (each in its parameter's dtype) in three launches (two without the input gradient)."""
    rows = _rows(x)
    n, c, m = rows.shape
    k = mean_weight.numel()
    dot, total = _grad_totals(grad_y, rows, nc[0])
    a, b = torch.empty_like(nc[:2])
    scratch = rows.new_empty(2 * (n + c), dtype=torch.float32)
    grads = [torch.empty_like(p) for p in (mean_weight, var_weight, weight, bias)]
    block_n, block_c = _mix_tiles(n, c)
    _kernels()._mix_backward_kernel[(1,)](
        dot, total, nc, ln, bn, mean_weight, var_weight, a, b, grads[2], grads[3], grads[0],
        grads[1], scratch, n, c, m, K=k, USE_BATCH=use_batch_stats,
        BLOCK_N=block_n, BLOCK_C=block_c, SOFTMAX=softmax, num_warps=8)
    grad_x = grad_input(grad_y, x, nc[0], nc[4], a, b) if input_grad else None
    return (grad_x, *grads)


TRITON_PASSES = SimpleNamespace(moments=moments, affine=affine, grad_sums=grad_sums,
                                grad_input=grad_input)


# --- the layer as one custom op -----------------------------------------------------------------
@torch.library.custom_op("snvideo::switch_norm", mutates_args=("running_mean", "running_var"))
def _switch_norm_fwd_op(x: Tensor, mean_weight: Tensor, var_weight: Tensor, weight: Tensor,
                        bias: Tensor, running_mean: Optional[Tensor],
                        running_var: Optional[Tensor], use_batch_stats: bool, eps: float,
                        momentum: float, softmax: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """y and the (N, C)-sized statistics the backward needs (triton_sn.forward); in training
    the running statistics are updated in place by the same launch."""
    return forward(x, mean_weight, var_weight, weight, bias, running_mean, running_var,
                   use_batch_stats, eps, momentum, softmax)


@_switch_norm_fwd_op.register_fake
def _(x, mean_weight, var_weight, weight, bias, running_mean, running_var, use_batch_stats, eps,
      momentum, softmax):
    n, c = x.shape[:2]
    return (torch.empty_like(x), x.new_empty((6, n, c), dtype=torch.float32),
            x.new_empty((2, n), dtype=torch.float32), x.new_empty((2, c), dtype=torch.float32))


@torch.library.custom_op("snvideo::switch_norm_backward", mutates_args=())
def _switch_norm_bwd_op(grad_y: Tensor, x: Tensor, nc: Tensor, ln: Tensor, bn: Tensor,
                        mean_weight: Tensor, var_weight: Tensor, weight: Tensor, bias: Tensor,
                        use_batch_stats: bool, input_grad: bool, softmax: bool
                        ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The gradients; without `input_grad` the first is an empty placeholder (its kernel is
    not launched)."""
    grad_x, *grads = backward(grad_y, x, nc, ln, bn, mean_weight, var_weight, weight, bias,
                              use_batch_stats, input_grad, softmax)
    return (grad_x if grad_x is not None else x.new_empty(0), *grads)


@_switch_norm_bwd_op.register_fake
def _(grad_y, x, nc, ln, bn, mean_weight, var_weight, weight, bias, use_batch_stats, input_grad,
      softmax):
    return (torch.empty_like(x) if input_grad else x.new_empty(0), torch.empty_like(mean_weight),
            torch.empty_like(var_weight), torch.empty_like(weight), torch.empty_like(bias))


def _through_ops() -> bool:
    """Whether to call the custom ops (torch.compile must see them) rather than their bodies."""
    return torch.compiler.is_compiling() or not EAGER_BODIES


class _SwitchNormTriton(torch.autograd.Function):
    """Autograd around the two ops (a mutating op cannot carry a registered autograd formula).
    The statistics outputs get no gradient, so none is materialized; gradients nobody needs
    are not computed (`needs_input_grad`)."""

    @staticmethod
    def forward(ctx, x, mean_weight, var_weight, weight, bias, running_mean, running_var,
                use_batch, eps, momentum, softmax):
        # the custom op for torch.compile to see; in eager mode its body, called directly:
        # the op's dispatch would add host time to every layer of every step
        op = torch.ops.snvideo.switch_norm if _through_ops() else forward
        y, nc, ln, bn = op(x, mean_weight, var_weight, weight, bias, running_mean, running_var,
                           use_batch, eps, momentum, softmax)
        ctx.save_for_backward(x, nc, ln, bn, mean_weight, var_weight, weight, bias)
        ctx.use_batch = use_batch or running_mean is None
        ctx.softmax = softmax
        ctx.set_materialize_grads(False)
        ctx.mark_non_differentiable(nc, ln, bn)
        return y, nc, ln, bn

    @staticmethod
    def backward(ctx, grad_y, *unused):  # type: ignore[override]
        needs = ctx.needs_input_grad
        if grad_y is None or not any(needs[:5]):
            return (None,) * 11
        if _through_ops():
            grads = torch.ops.snvideo.switch_norm_backward(grad_y, *ctx.saved_tensors,
                                                           ctx.use_batch, needs[0], ctx.softmax)
        else:
            grads = backward(grad_y, *ctx.saved_tensors, ctx.use_batch, needs[0], ctx.softmax)
        return (*(g if need else None for g, need in zip(grads, needs[:5])),) + (None,) * 6


def switch_norm_op(x: Tensor, mean_weight: Tensor, var_weight: Tensor, weight: Tensor,
                    bias: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
                    training: bool, momentum: float, eps: float, softmax: bool = True) -> Tensor:
    """The Triton path through the custom op: three launches forward (the running statistics
    are updated by the mixing kernel), three backward."""
    use_batch = training or running_mean is None
    y, _, _, _ = _SwitchNormTriton.apply(x, mean_weight, var_weight, weight, bias, running_mean,
                                         running_var, use_batch, eps,
                                         float(momentum) if training else 0.0, softmax)
    return y
