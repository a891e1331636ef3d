"""Triton kernels for SN's four passes over the input-sized tensor (see triton_sn.py).

Every kernel sees x as an (N, C, M) array with arbitrary strides, so contiguous (N, C, *S) and
channels_last_3d (N, *S, C) inputs run without a copy; tiles are (BLOCK_C, BLOCK_M). All sums
accumulate in float32, around a per-(n, c) shift (the row's first element in `moments`, the
row's mean afterwards), so large means cost no digits. This module imports triton at import
time: import it only through triton_sn.py, which does so lazily.
"""
import triton
import triton.language as tl


@triton.jit
def _round(v, dtype: tl.constexpr):
    """float32 -> the output dtype, rounding to nearest even. bfloat16 is rounded by hand: the
    plain cast may truncate (Triton's interpreter does)."""
    if dtype == tl.bfloat16:
        bits = v.to(tl.uint32, bitcast=True)
        bits = bits + 0x7FFF + ((bits >> 16) & 1)
        return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return v.to(dtype)


@triton.jit
def _moments_kernel(x_ptr, shift_ptr, s1_ptr, s2_ptr, N, C, M, chunk, stride_n, stride_c,
                    stride_m, BLOCK_C: tl.constexpr, BLOCK_M: tl.constexpr):
    """Partial sums over split `program_id(2)` of M of d = x - shift and d^2, shift = the
    row's first element (shifted sums: no E[x^2] - E[x]^2 cancellation): one read of x."""
    n = tl.program_id(0)
    cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    split = tl.program_id(2)
    c_ok = cs < C
    row = x_ptr + n * stride_n + cs * stride_c
    shift = tl.load(row, mask=c_ok, other=0.0).to(tl.float32)
    s1 = tl.zeros((BLOCK_C, BLOCK_M), tl.float32)
    s2 = tl.zeros((BLOCK_C, BLOCK_M), tl.float32)
    stop = tl.minimum(split * chunk + chunk, M)
    for start in range(split * chunk, stop, BLOCK_M):
        ms = start + tl.arange(0, BLOCK_M)
        ok = c_ok[:, None] & (ms < stop)[None, :]
        v = tl.load(row[:, None] + ms[None, :] * stride_m, mask=ok, other=0.0).to(tl.float32)
        d = tl.where(ok, v - shift[:, None], 0.0)
        s1 += d
        s2 += d * d
    out = (split * N + n) * C + cs
    tl.store(s1_ptr + out, tl.sum(s1, 1), mask=c_ok)
    tl.store(s2_ptr + out, tl.sum(s2, 1), mask=c_ok)
    if split == 0:
        tl.store(shift_ptr + n * C + cs, shift, mask=c_ok)


@triton.jit
def _affine_kernel(x_ptr, y_ptr, center_ptr, scale_ptr, shift_ptr, C, M, stride_n, stride_c,
                   stride_m, BLOCK_C: tl.constexpr, BLOCK_M: tl.constexpr):
    """y = (x - center) * scale + shift with (N, C) coefficients, computed in float32 and
    rounded once to y's dtype: one read of x, one write of y (same strides as x)."""
    n = tl.program_id(0) // tl.cdiv(C, BLOCK_C)
    cs = (tl.program_id(0) % tl.cdiv(C, BLOCK_C)) * BLOCK_C + tl.arange(0, BLOCK_C)
    ms = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    c_ok = cs < C
    ok = c_ok[:, None] & (ms < M)[None, :]
    center = tl.load(center_ptr + n * C + cs, mask=c_ok, other=0.0)
    scale = tl.load(scale_ptr + n * C + cs, mask=c_ok, other=0.0)
    shift = tl.load(shift_ptr + n * C + cs, mask=c_ok, other=0.0)
    offsets = n * stride_n + cs[:, None] * stride_c + ms[None, :] * stride_m
    v = tl.load(x_ptr + offsets, mask=ok, other=0.0).to(tl.float32)
    y = (v - center[:, None]) * scale[:, None] + shift[:, None]
    tl.store(y_ptr + offsets, _round(y, y_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _grad_sums_kernel(dy_ptr, x_ptr, center_ptr, dot_ptr, sum_ptr, N, C, M, chunk, stride_n,
                      stride_c, stride_m, BLOCK_C: tl.constexpr, BLOCK_M: tl.constexpr):
    """Partial sums over split `program_id(2)` of M of dy * (x - center) and of dy: one read
    of x and of dy (dy has x's strides)."""
    n = tl.program_id(0)
    cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    split = tl.program_id(2)
    c_ok = cs < C
    center = tl.load(center_ptr + n * C + cs, mask=c_ok, other=0.0)
    base = n * stride_n + cs * stride_c
    s_dot = tl.zeros((BLOCK_C, BLOCK_M), tl.float32)
    s_sum = tl.zeros((BLOCK_C, BLOCK_M), tl.float32)
    stop = tl.minimum(split * chunk + chunk, M)
    for start in range(split * chunk, stop, BLOCK_M):
        ms = start + tl.arange(0, BLOCK_M)
        ok = c_ok[:, None] & (ms < stop)[None, :]
        offsets = base[:, None] + ms[None, :] * stride_m
        g = tl.load(dy_ptr + offsets, mask=ok, other=0.0).to(tl.float32)
        v = tl.load(x_ptr + offsets, mask=ok, other=0.0).to(tl.float32)
        s_dot += g * tl.where(ok, v - center[:, None], 0.0)
        s_sum += g
    out = (split * N + n) * C + cs
    tl.store(dot_ptr + out, tl.sum(s_dot, 1), mask=c_ok)
    tl.store(sum_ptr + out, tl.sum(s_sum, 1), mask=c_ok)


@triton.jit
def _grad_input_kernel(dy_ptr, x_ptr, dx_ptr, center_ptr, scale_ptr, a_ptr, b_ptr, C, M,
                       stride_n, stride_c, stride_m, BLOCK_C: tl.constexpr,
                       BLOCK_M: tl.constexpr):
    """dx = dy * scale + (x - center) * a + b, in float32, rounded once: one read of x and dy,
    one write of dx."""
    n = tl.program_id(0) // tl.cdiv(C, BLOCK_C)
    cs = (tl.program_id(0) % tl.cdiv(C, BLOCK_C)) * BLOCK_C + tl.arange(0, BLOCK_C)
    ms = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    c_ok = cs < C
    ok = c_ok[:, None] & (ms < M)[None, :]
    center = tl.load(center_ptr + n * C + cs, mask=c_ok, other=0.0)
    scale = tl.load(scale_ptr + n * C + cs, mask=c_ok, other=0.0)
    a = tl.load(a_ptr + n * C + cs, mask=c_ok, other=0.0)
    b = tl.load(b_ptr + n * C + cs, mask=c_ok, other=0.0)
    offsets = n * stride_n + cs[:, None] * stride_c + ms[None, :] * stride_m
    g = tl.load(dy_ptr + offsets, mask=ok, other=0.0).to(tl.float32)
    v = tl.load(x_ptr + offsets, mask=ok, other=0.0).to(tl.float32)
    dx = g * scale[:, None] + (v - center[:, None]) * a[:, None] + b[:, None]
    tl.store(dx_ptr + offsets, _round(dx, dx_ptr.dtype.element_ty), mask=ok)
