"""Triton kernels for SN's four passes over the input-sized tensor (see triton_sn.py).

Every kernel sees x as an (N, C, M) array with arbitrary strides, so contiguous (N, C, *S) and
channels_last_3d (N, *S, C) inputs run without a copy; tiles are (BLOCK_C, BLOCK_M). All sums
accumulate in float32, around a per-(n, c) shift (the row's first element in `moments`, the
row's mean afterwards), so large means cost no digits. Element offsets are computed in 64 bits
when the tensor spans 2^31 elements or more (INDEX_64), and the elementwise passes run on a
one-axis grid (CUDA allows 2^31 - 1 programs on axis 0 but only 65535 on the others). This
module imports triton at import time: import it only through triton_sn.py, which does so
lazily.
"""
import triton
import triton.language as tl


@triton.jit
def _round(v, dtype: tl.constexpr, HW_CAST: tl.constexpr):
    """float32 -> the output dtype, rounding to nearest even, NaN and Inf kept. On a GPU
    (HW_CAST) that is the hardware conversion. Triton's interpreter truncates bfloat16 casts,
    so there bfloat16 is rounded by hand: add half an ulp (ties to even) to the bits, except
    for NaN, whose quiet bit is set instead (the carry would turn 0x7FFFFFFF into -0.0)."""
    if HW_CAST or dtype != tl.bfloat16:
        return v.to(dtype)
    else:
        bits = v.to(tl.uint32, bitcast=True)
        is_nan = (bits & 0x7FFFFFFF) > 0x7F800000
        bits = tl.where(is_nan, bits | 0x00400000, bits + 0x7FFF + ((bits >> 16) & 1))
        return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def _index(v, INDEX_64: tl.constexpr):
    """v (program ids, aranges) widened to 64 bits when offsets may pass 2^31 - 1."""
    if INDEX_64:
        return v.to(tl.int64)
    else:
        return v


@triton.jit
def _elementwise_block(C, M, BLOCK_C: tl.constexpr, BLOCK_M: tl.constexpr, INDEX_64: tl.constexpr):
    """(n, channels, positions) of this program's tile on the folded one-axis grid: programs
    run channel block by channel block within a sample, position blocks innermost."""
    pid = _index(tl.program_id(0), INDEX_64)
    m_blocks = tl.cdiv(M, BLOCK_M)
    c_blocks = tl.cdiv(C, BLOCK_C)
    ms = (pid % m_blocks) * BLOCK_M + tl.arange(0, BLOCK_M)
    nc_block = pid // m_blocks
    n = nc_block // c_blocks
    cs = (nc_block % c_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    return n, cs, ms


@triton.jit
def _offsets(n, cs, ms, stride_n, stride_c, stride_m, INDEX_64: tl.constexpr):
    """Element offsets (BLOCK_C, BLOCK_M) of sample n's channels cs at positions ms."""
    n, cs, ms = _index(n, INDEX_64), _index(cs, INDEX_64), _index(ms, INDEX_64)
    return n * stride_n + cs[:, None] * stride_c + ms[None, :] * stride_m


@triton.jit
def _moments_kernel(x_ptr, shift_ptr, s1_ptr, s2_ptr, N, C, M, chunk, stride_n, stride_c,
                    stride_m, BLOCK_C: tl.constexpr, BLOCK_M: tl.constexpr,
                    INDEX_64: tl.constexpr):
    """Partial sums over split `program_id(2)` of M of d = x - shift and d^2, shift = the
    row's first element (shifted sums: no E[x^2] - E[x]^2 cancellation): one read of x."""
    n = tl.program_id(0)
    cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    split = tl.program_id(2)
    c_ok = cs < C
    first = _index(n, INDEX_64) * stride_n + _index(cs, INDEX_64) * stride_c
    shift = tl.load(x_ptr + first, mask=c_ok, other=0.0).to(tl.float32)
    s1 = tl.zeros((BLOCK_C, BLOCK_M), tl.float32)
    s2 = tl.zeros((BLOCK_C, BLOCK_M), tl.float32)
    stop = tl.minimum(split * chunk + chunk, M)
    for start in range(split * chunk, stop, BLOCK_M):
        ms = start + tl.arange(0, BLOCK_M)
        ok = c_ok[:, None] & (ms < stop)[None, :]
        offsets = _offsets(n, cs, ms, stride_n, stride_c, stride_m, INDEX_64)
        v = tl.load(x_ptr + offsets, mask=ok, other=0.0).to(tl.float32)
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
                   stride_m, BLOCK_C: tl.constexpr, BLOCK_M: tl.constexpr,
                   INDEX_64: tl.constexpr, HW_CAST: tl.constexpr):
    """y = (x - center) * scale + shift with (N, C) coefficients, computed in float32 and
    rounded once to y's dtype: one read of x, one write of y (same strides as x)."""
    n, cs, ms = _elementwise_block(C, M, BLOCK_C, BLOCK_M, INDEX_64)
    c_ok = cs < C
    ok = c_ok[:, None] & (ms < M)[None, :]
    center = tl.load(center_ptr + n * C + cs, mask=c_ok, other=0.0)
    scale = tl.load(scale_ptr + n * C + cs, mask=c_ok, other=0.0)
    shift = tl.load(shift_ptr + n * C + cs, mask=c_ok, other=0.0)
    offsets = _offsets(n, cs, ms, stride_n, stride_c, stride_m, INDEX_64)
    v = tl.load(x_ptr + offsets, mask=ok, other=0.0).to(tl.float32)
    y = (v - center[:, None]) * scale[:, None] + shift[:, None]
    tl.store(y_ptr + offsets, _round(y, y_ptr.dtype.element_ty, HW_CAST), mask=ok)


@triton.jit
def _grad_sums_kernel(dy_ptr, x_ptr, center_ptr, dot_ptr, sum_ptr, N, C, M, chunk,
                      g_stride_n, g_stride_c, g_stride_m, stride_n, stride_c, stride_m,
                      BLOCK_C: tl.constexpr, BLOCK_M: tl.constexpr, INDEX_64: tl.constexpr):
    """Partial sums over split `program_id(2)` of M of dy * (x - center) and of dy: one read
    of x and of dy (each with its own strides)."""
    n = tl.program_id(0)
    cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    split = tl.program_id(2)
    c_ok = cs < C
    center = tl.load(center_ptr + n * C + cs, mask=c_ok, other=0.0)
    s_dot = tl.zeros((BLOCK_C, BLOCK_M), tl.float32)
    s_sum = tl.zeros((BLOCK_C, BLOCK_M), tl.float32)
    stop = tl.minimum(split * chunk + chunk, M)
    for start in range(split * chunk, stop, BLOCK_M):
        ms = start + tl.arange(0, BLOCK_M)
        ok = c_ok[:, None] & (ms < stop)[None, :]
        g_offsets = _offsets(n, cs, ms, g_stride_n, g_stride_c, g_stride_m, INDEX_64)
        offsets = _offsets(n, cs, ms, stride_n, stride_c, stride_m, INDEX_64)
        g = tl.load(dy_ptr + g_offsets, mask=ok, other=0.0).to(tl.float32)
        v = tl.load(x_ptr + offsets, mask=ok, other=0.0).to(tl.float32)
        s_dot += g * tl.where(ok, v - center[:, None], 0.0)
        s_sum += g
    out = (split * N + n) * C + cs
    tl.store(dot_ptr + out, tl.sum(s_dot, 1), mask=c_ok)
    tl.store(sum_ptr + out, tl.sum(s_sum, 1), mask=c_ok)


@triton.jit
def _grad_input_kernel(dy_ptr, x_ptr, dx_ptr, center_ptr, scale_ptr, a_ptr, b_ptr,
                       g_stride_n, g_stride_c, g_stride_m, C, M, stride_n, stride_c, stride_m,
                       BLOCK_C: tl.constexpr, BLOCK_M: tl.constexpr, INDEX_64: tl.constexpr,
                       HW_CAST: tl.constexpr):
    """dx = dy * scale + (x - center) * a + b, in float32, rounded once: one read of x and dy
    (its own strides), one write of dx (x's strides)."""
    n, cs, ms = _elementwise_block(C, M, BLOCK_C, BLOCK_M, INDEX_64)
    c_ok = cs < C
    ok = c_ok[:, None] & (ms < M)[None, :]
    center = tl.load(center_ptr + n * C + cs, mask=c_ok, other=0.0)
    scale = tl.load(scale_ptr + n * C + cs, mask=c_ok, other=0.0)
    a = tl.load(a_ptr + n * C + cs, mask=c_ok, other=0.0)
    b = tl.load(b_ptr + n * C + cs, mask=c_ok, other=0.0)
    offsets = _offsets(n, cs, ms, stride_n, stride_c, stride_m, INDEX_64)
    g_offsets = _offsets(n, cs, ms, g_stride_n, g_stride_c, g_stride_m, INDEX_64)
    g = tl.load(dy_ptr + g_offsets, mask=ok, other=0.0).to(tl.float32)
    v = tl.load(x_ptr + offsets, mask=ok, other=0.0).to(tl.float32)
    dx = g * scale[:, None] + (v - center[:, None]) * a[:, None] + b[:, None]
    tl.store(dx_ptr + offsets, _round(dx, dx_ptr.dtype.element_ty, HW_CAST), mask=ok)


# --- the (N, C)-sized mixing, one program each way ---------------------------------------------
# One program holds every sample of a channel block ([BLOCK_N, BLOCK_C] tiles) and walks the
# channel blocks: LN needs sums over C, BN sums over N. (N, C) is small (a few thousand values),
# so one program costs microseconds, against the ~20-30 launches of the same math in torch ops.
@triton.jit
def _softmax3(logits_ptr, K: tl.constexpr):
    """Softmax of K (2 or 3) logits as three scalars (the third 0 when K == 2)."""
    l0 = tl.load(logits_ptr).to(tl.float32)
    l1 = tl.load(logits_ptr + 1).to(tl.float32)
    if K == 3:
        l2 = tl.load(logits_ptr + 2).to(tl.float32)
        top = tl.maximum(tl.maximum(l0, l1), l2)
        e0, e1, e2 = tl.exp(l0 - top), tl.exp(l1 - top), tl.exp(l2 - top)
    else:
        top = tl.maximum(l0, l1)
        e0, e1, e2 = tl.exp(l0 - top), tl.exp(l1 - top), 0.0
    total = e0 + e1 + e2
    return e0 / total, e1 / total, e2 / total


@triton.jit
def _tile(c0, ns, n_ok, C, BLOCK_C: tl.constexpr):
    """The channel block starting at c0: channels, their mask, the tile mask and (n, c) offsets."""
    cs = c0 + tl.arange(0, BLOCK_C)
    c_ok = cs < C
    return cs, c_ok, n_ok[:, None] & c_ok[None, :], ns[:, None] * C + cs[None, :]


@triton.jit
def _partial_moments(shift_ptr, s1_ptr, s2_ptr, idx, ok, NC, SPLITS, M):
    """The IN moments of a tile from the moments kernel's partial sums."""
    s1 = tl.zeros(idx.shape, tl.float32)
    s2 = tl.zeros(idx.shape, tl.float32)
    for split in range(0, SPLITS):
        s1 += tl.load(s1_ptr + split * NC + idx, mask=ok, other=0.0)
        s2 += tl.load(s2_ptr + split * NC + idx, mask=ok, other=0.0)
    d1 = s1 / M
    mean_in = tl.load(shift_ptr + idx, mask=ok, other=0.0) + d1
    var_in = tl.maximum(s2 / M - d1 * d1, 0.0)
    return mean_in, var_in


@triton.jit
def _mix_forward_kernel(shift_ptr, s1_ptr, s2_ptr, mean_logits_ptr, var_logits_ptr, weight_ptr,
                        bias_ptr, running_mean_ptr, running_var_ptr, nc_ptr, ln_ptr, bn_ptr,
                        N, C, SPLITS, M, eps, momentum, K: tl.constexpr, USE_BATCH: tl.constexpr,
                        UPDATE_RUNNING: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_C: tl.constexpr):
    """IN moments from the partial sums, LN and BN moments, the softmax mix, and the affine
    coefficients. Writes nc (6, N, C): mean_in, var_in, the mixed mean, rstd, scale and shift
    (y = (x - mean_in) * scale + shift); ln (2, N): LN mean, variance; bn (2, C): the BN
    branch's mean and variance (batch or running; untouched without a BN branch). With
    UPDATE_RUNNING the running statistics move towards the batch ones by `momentum`, as
    torch.lerp does it (no separate launches for them)."""
    NC = N * C
    ns = tl.arange(0, BLOCK_N)
    n_ok = ns < N
    # LN moments around each sample's first value (the raw first element of channel 0)
    ln_shift = tl.load(shift_ptr + ns * C, mask=n_ok, other=0.0)
    ln_d1 = tl.zeros((BLOCK_N,), tl.float32)
    ln_d2 = tl.zeros((BLOCK_N,), tl.float32)
    ln_v = tl.zeros((BLOCK_N,), tl.float32)
    for c0 in range(0, C, BLOCK_C):
        cs, c_ok, ok, idx = _tile(c0, ns, n_ok, C, BLOCK_C)
        mean_in, var_in = _partial_moments(shift_ptr, s1_ptr, s2_ptr, idx, ok, NC, SPLITS, M)
        d = tl.where(ok, mean_in - ln_shift[:, None], 0.0)
        ln_d1 += tl.sum(d, 1)
        ln_d2 += tl.sum(d * d, 1)
        ln_v += tl.sum(tl.where(ok, var_in, 0.0), 1)
    ln_m1 = ln_d1 / C
    mean_ln = ln_shift + ln_m1
    var_ln = tl.maximum(ln_v / C + ln_d2 / C - ln_m1 * ln_m1, 0.0)
    tl.store(ln_ptr + ns, mean_ln, mask=n_ok)
    tl.store(ln_ptr + N + ns, var_ln, mask=n_ok)
    wm0, wm1, wm2 = _softmax3(mean_logits_ptr, K)
    wv0, wv1, wv2 = _softmax3(var_logits_ptr, K)
    for c0 in range(0, C, BLOCK_C):
        cs, c_ok, ok, idx = _tile(c0, ns, n_ok, C, BLOCK_C)
        mean_in, var_in = _partial_moments(shift_ptr, s1_ptr, s2_ptr, idx, ok, NC, SPLITS, M)
        mean = wm0 * mean_in + wm1 * mean_ln[:, None]
        var = wv0 * var_in + wv1 * var_ln[:, None]
        if K == 3:
            if USE_BATCH:
                mean_bn = tl.sum(tl.where(ok, mean_in, 0.0), 0) / N
                dev = tl.where(ok, mean_in - mean_bn[None, :], 0.0)
                var_bn = tl.sum(tl.where(ok, var_in, 0.0) + dev * dev, 0) / N
            else:
                mean_bn = tl.load(running_mean_ptr + cs, mask=c_ok, other=0.0).to(tl.float32)
                var_bn = tl.load(running_var_ptr + cs, mask=c_ok, other=1.0).to(tl.float32)
            tl.store(bn_ptr + cs, mean_bn, mask=c_ok)
            tl.store(bn_ptr + C + cs, var_bn, mask=c_ok)
            if UPDATE_RUNNING:
                _lerp_store(running_mean_ptr + cs, mean_bn, momentum, c_ok)
                _lerp_store(running_var_ptr + cs, var_bn, momentum, c_ok)
            mean += wm2 * mean_bn[None, :]
            var += wv2 * var_bn[None, :]
        rstd = 1.0 / tl.sqrt(var + eps)
        scale = tl.load(weight_ptr + cs, mask=c_ok, other=0.0).to(tl.float32)[None, :] * rstd
        shift = tl.load(bias_ptr + cs, mask=c_ok, other=0.0).to(tl.float32)[None, :] \
            + (mean_in - mean) * scale
        tl.store(nc_ptr + idx, mean_in, mask=ok)
        tl.store(nc_ptr + NC + idx, var_in, mask=ok)
        tl.store(nc_ptr + 2 * NC + idx, mean, mask=ok)
        tl.store(nc_ptr + 3 * NC + idx, rstd, mask=ok)
        tl.store(nc_ptr + 4 * NC + idx, scale, mask=ok)
        tl.store(nc_ptr + 5 * NC + idx, shift, mask=ok)


@triton.jit
def _lerp_store(ptr, end, weight, mask):
    """*ptr = lerp(*ptr, end, weight) in float32, rounded to *ptr's dtype: torch.lerp's two
    formulas (the one that keeps the larger end exact)."""
    start = tl.load(ptr, mask=mask, other=0.0).to(tl.float32)
    if weight < 0.5:
        value = start + weight * (end - start)
    else:
        value = end - (end - start) * (1.0 - weight)
    tl.store(ptr, value.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _mix_grads(dot_ptr, sum_ptr, nc_ptr, idx, ok, NC, SPLITS):
    """Per (n, c): d loss / d mixed mean (gm) and variance (gv), d scale, the dy sum, rstd and
    mean_in; all 0 outside the tile mask (masked loads read 0)."""
    g_dot = tl.zeros(idx.shape, tl.float32)
    g_sum = tl.zeros(idx.shape, tl.float32)
    for split in range(0, SPLITS):
        g_dot += tl.load(dot_ptr + split * NC + idx, mask=ok, other=0.0)
        g_sum += tl.load(sum_ptr + split * NC + idx, mask=ok, other=0.0)
    mean_in = tl.load(nc_ptr + idx, mask=ok, other=0.0)
    mean = tl.load(nc_ptr + 2 * NC + idx, mask=ok, other=0.0)
    rstd = tl.load(nc_ptr + 3 * NC + idx, mask=ok, other=0.0)
    scale = tl.load(nc_ptr + 4 * NC + idx, mask=ok, other=0.0)
    grad_scale = g_dot + (mean_in - mean) * g_sum      # y = x * scale + bias - mean * scale
    gm = -scale * g_sum
    gv = -0.5 * grad_scale * scale * rstd * rstd
    return gm, gv, grad_scale, g_sum, rstd, mean_in


@triton.jit
def _mix_backward_kernel(dot_ptr, sum_ptr, nc_ptr, ln_ptr, bn_ptr, mean_logits_ptr,
                         var_logits_ptr, a_ptr, b_ptr, grad_weight_ptr, grad_bias_ptr,
                         grad_mean_logits_ptr, grad_var_logits_ptr, N, C, SPLITS, M, K: tl.constexpr,
                         USE_BATCH: tl.constexpr, BLOCK_N: tl.constexpr,
                         BLOCK_C: tl.constexpr):
    """The chain rule through the mixing, from the grad-sums kernel's partial sums to the
    coefficients a, b of dx = dy * scale + (x - mean_in) * a + b and the parameter gradients."""
    NC = N * C
    ns = tl.arange(0, BLOCK_N)
    n_ok = ns < N
    mean_ln = tl.load(ln_ptr + ns, mask=n_ok, other=0.0)
    var_ln = tl.load(ln_ptr + N + ns, mask=n_ok, other=0.0)
    ln_gm = tl.zeros((BLOCK_N,), tl.float32)
    ln_gv = tl.zeros((BLOCK_N,), tl.float32)
    # d loss / d (softmax weight k), accumulated as sums over (n, c) of statistic_k * g
    acc_m0 = tl.zeros((BLOCK_N,), tl.float32)
    acc_m1 = tl.zeros((BLOCK_N,), tl.float32)
    acc_m2 = tl.zeros((BLOCK_N,), tl.float32)
    acc_v0 = tl.zeros((BLOCK_N,), tl.float32)
    acc_v1 = tl.zeros((BLOCK_N,), tl.float32)
    acc_v2 = tl.zeros((BLOCK_N,), tl.float32)
    for c0 in range(0, C, BLOCK_C):
        cs, c_ok, ok, idx = _tile(c0, ns, n_ok, C, BLOCK_C)
        gm, gv, grad_scale, g_sum, rstd, mean_in = _mix_grads(dot_ptr, sum_ptr, nc_ptr, idx,
                                                              ok, NC, SPLITS)
        tl.store(grad_bias_ptr + cs, tl.sum(g_sum, 0).to(grad_bias_ptr.dtype.element_ty), mask=c_ok)
        tl.store(grad_weight_ptr + cs, tl.sum(grad_scale * rstd, 0).to(grad_weight_ptr.dtype.element_ty),
                 mask=c_ok)
        ln_gm += tl.sum(gm, 1)
        ln_gv += tl.sum(gv, 1)
        var_in = tl.load(nc_ptr + NC + idx, mask=ok, other=0.0)
        acc_m0 += tl.sum(mean_in * gm, 1)
        acc_v0 += tl.sum(var_in * gv, 1)
        if K == 3:
            mean_bn = tl.load(bn_ptr + cs, mask=c_ok, other=0.0)
            var_bn = tl.load(bn_ptr + C + cs, mask=c_ok, other=0.0)
            acc_m2 += tl.sum(mean_bn[None, :] * gm, 1)
            acc_v2 += tl.sum(var_bn[None, :] * gv, 1)
    acc_m1 = mean_ln * ln_gm
    acc_v1 = var_ln * ln_gv
    wm0, wm1, wm2 = _softmax3(mean_logits_ptr, K)
    wv0, wv1, wv2 = _softmax3(var_logits_ptr, K)
    # softmax backward: d logit_k = w_k * (g_k - sum_j w_j g_j)
    gm0, gm1, gm2 = tl.sum(acc_m0, 0), tl.sum(acc_m1, 0), tl.sum(acc_m2, 0)
    gv0, gv1, gv2 = tl.sum(acc_v0, 0), tl.sum(acc_v1, 0), tl.sum(acc_v2, 0)
    dot_m = wm0 * gm0 + wm1 * gm1 + wm2 * gm2
    dot_v = wv0 * gv0 + wv1 * gv1 + wv2 * gv2
    dtype = grad_mean_logits_ptr.dtype.element_ty
    tl.store(grad_mean_logits_ptr, (wm0 * (gm0 - dot_m)).to(dtype))
    tl.store(grad_mean_logits_ptr + 1, (wm1 * (gm1 - dot_m)).to(dtype))
    tl.store(grad_var_logits_ptr, (wv0 * (gv0 - dot_v)).to(dtype))
    tl.store(grad_var_logits_ptr + 1, (wv1 * (gv1 - dot_v)).to(dtype))
    if K == 3:
        tl.store(grad_mean_logits_ptr + 2, (wm2 * (gm2 - dot_m)).to(dtype))
        tl.store(grad_var_logits_ptr + 2, (wv2 * (gv2 - dot_v)).to(dtype))
    # back to the IN moments: directly, through LN (sums over C), through BN (sums over N)
    g_ln_m = ln_gm * (wm1 / C)
    g_ln_v = ln_gv * (wv1 / C)
    for c0 in range(0, C, BLOCK_C):
        cs, c_ok, ok, idx = _tile(c0, ns, n_ok, C, BLOCK_C)
        gm, gv, _, _, _, mean_in = _mix_grads(dot_ptr, sum_ptr, nc_ptr, idx, ok, NC, SPLITS)
        g_in_m = wm0 * gm + g_ln_m[:, None] + 2.0 * (mean_in - mean_ln[:, None]) * g_ln_v[:, None]
        g_in_v = wv0 * gv + g_ln_v[:, None]
        if K == 3:
            if USE_BATCH:
                mean_bn = tl.load(bn_ptr + cs, mask=c_ok, other=0.0)
                g_bn_m = tl.sum(gm, 0) * (wm2 / N)
                g_bn_v = tl.sum(gv, 0) * (wv2 / N)
                g_in_m += g_bn_m[None, :] + 2.0 * (mean_in - mean_bn[None, :]) * g_bn_v[None, :]
                g_in_v += g_bn_v[None, :]
        tl.store(a_ptr + idx, g_in_v * (2.0 / M), mask=ok)
        tl.store(b_ptr + idx, g_in_m / M, mask=ok)
