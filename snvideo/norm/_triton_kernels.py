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
def _store_partials(a_ptr, b_ptr, total_a_ptr, total_b_ptr, counter_ptr, a, b, n, cs, c_ok, N, C):
    """Store this split's sums a, b of (n, channels cs); the last split of them to finish adds
    all splits up, in split order (the same result every run), into the (N, C) totals and
    re-arms its counter for the next launch. So the mixing reads N x C values, not
    splits x N x C, and no program waits for another."""
    split = tl.program_id(2)
    splits = tl.num_programs(2)
    out = (split * N + n) * C + cs
    tl.store(a_ptr + out, a, mask=c_ok)
    tl.store(b_ptr + out, b, mask=c_ok)
    tl.debug_barrier()  # all of this program's stores are issued before it counts itself
    counter = counter_ptr + n * tl.num_programs(1) + tl.program_id(1)
    finished = tl.atomic_add(counter, 1)  # acq_rel: the other splits' stores are visible
    if finished == splits - 1:
        total_a = tl.zeros(a.shape, tl.float32)
        total_b = tl.zeros(b.shape, tl.float32)
        for other in range(0, splits):
            at = (other * N + n) * C + cs
            total_a += tl.load(a_ptr + at, mask=c_ok, other=0.0, cache_modifier=".cg")
            total_b += tl.load(b_ptr + at, mask=c_ok, other=0.0, cache_modifier=".cg")
        tl.store(total_a_ptr + n * C + cs, total_a, mask=c_ok)
        tl.store(total_b_ptr + n * C + cs, total_b, mask=c_ok)
        tl.atomic_xchg(counter, 0)


@triton.jit
def _moments_kernel(x_ptr, shift_ptr, s1_ptr, s2_ptr, t1_ptr, t2_ptr, counter_ptr, N, C, M,
                    chunk, stride_n, stride_c, stride_m, BLOCK_C: tl.constexpr,
                    BLOCK_M: tl.constexpr, INDEX_64: tl.constexpr):
    """Sums over split `program_id(2)` of M of d = x - shift and d^2, shift = the row's first
    element (shifted sums: no E[x^2] - E[x]^2 cancellation): one read of x. The (N, C)
    totals t1, t2 come from the last split to finish (`_store_partials`)."""
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
    if split == 0:
        tl.store(shift_ptr + n * C + cs, shift, mask=c_ok)
    _store_partials(s1_ptr, s2_ptr, t1_ptr, t2_ptr, counter_ptr, tl.sum(s1, 1), tl.sum(s2, 1),
                    n, cs, c_ok, N, C)


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
def _grad_sums_kernel(dy_ptr, x_ptr, center_ptr, dot_ptr, sum_ptr, t_dot_ptr, t_sum_ptr,
                      counter_ptr, N, C, M, chunk, g_stride_n, g_stride_c, g_stride_m, stride_n,
                      stride_c, stride_m, BLOCK_C: tl.constexpr, BLOCK_M: tl.constexpr,
                      INDEX_64: tl.constexpr):
    """Sums over split `program_id(2)` of M of dy * (x - center) and of dy: one read of x and
    of dy (each with its own strides); the (N, C) totals as in _moments_kernel."""
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
    _store_partials(dot_ptr, sum_ptr, t_dot_ptr, t_sum_ptr, counter_ptr, tl.sum(s_dot, 1),
                    tl.sum(s_sum, 1), n, cs, c_ok, N, C)


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
# One program walks the (N, C) values in [BLOCK_N, BLOCK_C] tiles: LN needs sums over C (per
# sample), BN sums over N (per channel), so each kernel makes passes in both orders, with a
# barrier between passes that read what an earlier one stored. (N, C) is small (a few thousand
# values, the splits already summed), so one program costs microseconds, against the ~20-30
# launches of the same math in torch ops.
@triton.jit
def _softmax3(logits_ptr, K: tl.constexpr, SOFTMAX: tl.constexpr):
    """Softmax of K (2 or 3) logits as three scalars (the third 0 when K == 2); without
    SOFTMAX the K values are the weights already (Sparse SN's sparsestmax output)."""
    l0 = tl.load(logits_ptr).to(tl.float32)
    l1 = tl.load(logits_ptr + 1).to(tl.float32)
    if not SOFTMAX:
        if K == 3:
            return l0, l1, tl.load(logits_ptr + 2).to(tl.float32)
        return l0, l1, 0.0
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
def _tile(n0, c0, N, C, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """The tile at (n0, c0): samples, channels, their masks, the tile mask and (n, c) offsets."""
    ns = n0 + tl.arange(0, BLOCK_N)
    cs = c0 + tl.arange(0, BLOCK_C)
    n_ok = ns < N
    c_ok = cs < C
    return ns, cs, n_ok, c_ok, n_ok[:, None] & c_ok[None, :], ns[:, None] * C + cs[None, :]


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
def _mix_forward_kernel(shift_ptr, t1_ptr, t2_ptr, mean_logits_ptr, var_logits_ptr, weight_ptr,
                        bias_ptr, running_mean_ptr, running_var_ptr, nc_ptr, ln_ptr, bn_ptr,
                        N, C, M, eps, momentum, K: tl.constexpr, USE_BATCH: tl.constexpr,
                        UPDATE_RUNNING: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_C: tl.constexpr, SOFTMAX: tl.constexpr):
    """IN moments from the moments kernel's totals, LN and BN moments, the softmax mix, and
    the affine coefficients. Writes nc (6, N, C): mean_in, var_in, the mixed mean, rstd, scale
    and shift (y = (x - mean_in) * scale + shift); ln (2, N): LN mean, variance; bn (2, C): the
    BN branch's mean and variance (batch or running; untouched without a BN branch). With
    UPDATE_RUNNING the running statistics move towards the batch ones by `momentum`, as
    torch.lerp does it (no separate launches for them)."""
    NC = N * C
    # pass 1, sample by sample: IN moments (kept in nc) and LN moments around each sample's
    # first value (the raw first element of channel 0)
    for n0 in range(0, N, BLOCK_N):
        ns = n0 + tl.arange(0, BLOCK_N)
        n_ok = ns < N
        ln_shift = tl.load(shift_ptr + ns * C, mask=n_ok, other=0.0)
        ln_d1 = tl.zeros((BLOCK_N,), tl.float32)
        ln_d2 = tl.zeros((BLOCK_N,), tl.float32)
        ln_v = tl.zeros((BLOCK_N,), tl.float32)
        for c0 in range(0, C, BLOCK_C):
            ns, cs, n_ok, c_ok, ok, idx = _tile(n0, c0, N, C, BLOCK_N, BLOCK_C)
            d1 = tl.load(t1_ptr + idx, mask=ok, other=0.0) / M
            mean_in = tl.load(shift_ptr + idx, mask=ok, other=0.0) + d1
            var_in = tl.maximum(tl.load(t2_ptr + idx, mask=ok, other=0.0) / M - d1 * d1, 0.0)
            tl.store(nc_ptr + idx, mean_in, mask=ok)
            tl.store(nc_ptr + NC + idx, var_in, mask=ok)
            d = tl.where(ok, mean_in - ln_shift[:, None], 0.0)
            ln_d1 += tl.sum(d, 1)
            ln_d2 += tl.sum(d * d, 1)
            ln_v += tl.sum(tl.where(ok, var_in, 0.0), 1)
        ln_m1 = ln_d1 / C
        tl.store(ln_ptr + ns, ln_shift + ln_m1, mask=n_ok)
        tl.store(ln_ptr + N + ns, tl.maximum(ln_v / C + ln_d2 / C - ln_m1 * ln_m1, 0.0), mask=n_ok)
    tl.debug_barrier()
    # pass 2, channel by channel: the BN branch's moments (over samples), running statistics
    if K == 3:
        for c0 in range(0, C, BLOCK_C):
            cs = c0 + tl.arange(0, BLOCK_C)
            c_ok = cs < C
            if USE_BATCH:
                total = tl.zeros((BLOCK_C,), tl.float32)
                for n0 in range(0, N, BLOCK_N):
                    ns, cs, n_ok, c_ok, ok, idx = _tile(n0, c0, N, C, BLOCK_N, BLOCK_C)
                    total += tl.sum(tl.load(nc_ptr + idx, mask=ok, other=0.0), 0)
                mean_bn = total / N
                spread = tl.zeros((BLOCK_C,), tl.float32)
                for n0 in range(0, N, BLOCK_N):
                    ns, cs, n_ok, c_ok, ok, idx = _tile(n0, c0, N, C, BLOCK_N, BLOCK_C)
                    dev = tl.where(ok, tl.load(nc_ptr + idx, mask=ok, other=0.0) - mean_bn[None, :], 0.0)
                    spread += tl.sum(tl.load(nc_ptr + NC + idx, mask=ok, other=0.0) + dev * dev, 0)
                var_bn = spread / N
                if UPDATE_RUNNING:
                    _lerp_store(running_mean_ptr + cs, mean_bn, momentum, c_ok)
                    _lerp_store(running_var_ptr + cs, var_bn, momentum, c_ok)
            else:
                mean_bn = tl.load(running_mean_ptr + cs, mask=c_ok, other=0.0).to(tl.float32)
                var_bn = tl.load(running_var_ptr + cs, mask=c_ok, other=1.0).to(tl.float32)
            tl.store(bn_ptr + cs, mean_bn, mask=c_ok)
            tl.store(bn_ptr + C + cs, var_bn, mask=c_ok)
    tl.debug_barrier()
    # pass 3: the mix and the affine coefficients
    wm0, wm1, wm2 = _softmax3(mean_logits_ptr, K, SOFTMAX)
    wv0, wv1, wv2 = _softmax3(var_logits_ptr, K, SOFTMAX)
    for n0 in range(0, N, BLOCK_N):
        for c0 in range(0, C, BLOCK_C):
            ns, cs, n_ok, c_ok, ok, idx = _tile(n0, c0, N, C, BLOCK_N, BLOCK_C)
            mean_in = tl.load(nc_ptr + idx, mask=ok, other=0.0)
            mean = wm0 * mean_in + wm1 * tl.load(ln_ptr + ns, mask=n_ok, other=0.0)[:, None]
            var = wv0 * tl.load(nc_ptr + NC + idx, mask=ok, other=0.0) \
                + wv1 * tl.load(ln_ptr + N + ns, mask=n_ok, other=0.0)[:, None]
            if K == 3:
                mean += wm2 * tl.load(bn_ptr + cs, mask=c_ok, other=0.0)[None, :]
                var += wv2 * tl.load(bn_ptr + C + cs, mask=c_ok, other=0.0)[None, :]
            rstd = 1.0 / tl.sqrt(var + eps)
            scale = tl.load(weight_ptr + cs, mask=c_ok, other=0.0).to(tl.float32)[None, :] * rstd
            shift = tl.load(bias_ptr + cs, mask=c_ok, other=0.0).to(tl.float32)[None, :] \
                + (mean_in - mean) * scale
            tl.store(nc_ptr + 2 * NC + idx, mean, mask=ok)
            tl.store(nc_ptr + 3 * NC + idx, rstd, mask=ok)
            tl.store(nc_ptr + 4 * NC + idx, scale, mask=ok)
            tl.store(nc_ptr + 5 * NC + idx, shift, mask=ok)


@triton.jit
def _mix_grads(dot_ptr, sum_ptr, nc_ptr, idx, ok, NC):
    """Per (n, c): d loss / d mixed mean (gm) and variance (gv), d scale, the dy sum, rstd and
    mean_in; all 0 outside the tile mask (masked loads read 0)."""
    g_dot = tl.load(dot_ptr + idx, mask=ok, other=0.0)
    g_sum = tl.load(sum_ptr + idx, mask=ok, other=0.0)
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
                         grad_mean_logits_ptr, grad_var_logits_ptr, scratch_ptr, N, C, M,
                         K: tl.constexpr, USE_BATCH: tl.constexpr, BLOCK_N: tl.constexpr,
                         BLOCK_C: tl.constexpr, SOFTMAX: tl.constexpr):
    """The chain rule through the mixing, from the grad-sums kernel's (N, C) totals to the
    coefficients a, b of dx = dy * scale + (x - mean_in) * a + b and the parameter gradients.
    scratch (2 N + 2 C floats) holds the per-sample LN and per-channel BN gradient sums."""
    NC = N * C
    # pass 1, sample by sample: LN sums (over channels) and d loss / d softmax weight k, as
    # sums over (n, c) of statistic_k * g
    acc_m0 = 0.0
    acc_m1 = 0.0
    acc_m2 = 0.0
    acc_v0 = 0.0
    acc_v1 = 0.0
    acc_v2 = 0.0
    for n0 in range(0, N, BLOCK_N):
        ns = n0 + tl.arange(0, BLOCK_N)
        n_ok = ns < N
        ln_gm = tl.zeros((BLOCK_N,), tl.float32)
        ln_gv = tl.zeros((BLOCK_N,), tl.float32)
        for c0 in range(0, C, BLOCK_C):
            ns, cs, n_ok, c_ok, ok, idx = _tile(n0, c0, N, C, BLOCK_N, BLOCK_C)
            gm, gv, _, _, _, mean_in = _mix_grads(dot_ptr, sum_ptr, nc_ptr, idx, ok, NC)
            ln_gm += tl.sum(gm, 1)
            ln_gv += tl.sum(gv, 1)
            acc_m0 += tl.sum(tl.sum(mean_in * gm, 1), 0)
            acc_v0 += tl.sum(tl.sum(tl.load(nc_ptr + NC + idx, mask=ok, other=0.0) * gv, 1), 0)
            if K == 3:
                acc_m2 += tl.sum(tl.sum(tl.load(bn_ptr + cs, mask=c_ok, other=0.0)[None, :] * gm, 1), 0)
                acc_v2 += tl.sum(tl.sum(tl.load(bn_ptr + C + cs, mask=c_ok, other=0.0)[None, :] * gv, 1), 0)
        acc_m1 += tl.sum(tl.load(ln_ptr + ns, mask=n_ok, other=0.0) * ln_gm, 0)
        acc_v1 += tl.sum(tl.load(ln_ptr + N + ns, mask=n_ok, other=0.0) * ln_gv, 0)
        tl.store(scratch_ptr + ns, ln_gm, mask=n_ok)
        tl.store(scratch_ptr + N + ns, ln_gv, mask=n_ok)
    # pass 2, channel by channel: weight and bias gradients, BN sums (over samples)
    for c0 in range(0, C, BLOCK_C):
        cs = c0 + tl.arange(0, BLOCK_C)
        c_ok = cs < C
        g_bias = tl.zeros((BLOCK_C,), tl.float32)
        g_weight = tl.zeros((BLOCK_C,), tl.float32)
        bn_gm = tl.zeros((BLOCK_C,), tl.float32)
        bn_gv = tl.zeros((BLOCK_C,), tl.float32)
        for n0 in range(0, N, BLOCK_N):
            ns, cs, n_ok, c_ok, ok, idx = _tile(n0, c0, N, C, BLOCK_N, BLOCK_C)
            gm, gv, grad_scale, g_sum, rstd, _ = _mix_grads(dot_ptr, sum_ptr, nc_ptr, idx, ok, NC)
            g_bias += tl.sum(g_sum, 0)
            g_weight += tl.sum(grad_scale * rstd, 0)
            bn_gm += tl.sum(gm, 0)
            bn_gv += tl.sum(gv, 0)
        tl.store(grad_bias_ptr + cs, g_bias.to(grad_bias_ptr.dtype.element_ty), mask=c_ok)
        tl.store(grad_weight_ptr + cs, g_weight.to(grad_weight_ptr.dtype.element_ty), mask=c_ok)
        tl.store(scratch_ptr + 2 * N + cs, bn_gm, mask=c_ok)
        tl.store(scratch_ptr + 2 * N + C + cs, bn_gv, mask=c_ok)
    wm0, wm1, wm2 = _softmax3(mean_logits_ptr, K, SOFTMAX)
    wv0, wv1, wv2 = _softmax3(var_logits_ptr, K, SOFTMAX)
    # d weight_k = acc_k; through the softmax: d logit_k = w_k * (acc_k - sum_j w_j acc_j)
    g_m0, g_m1, g_m2, g_v0, g_v1, g_v2 = acc_m0, acc_m1, acc_m2, acc_v0, acc_v1, acc_v2
    if SOFTMAX:
        dot_m = wm0 * acc_m0 + wm1 * acc_m1 + wm2 * acc_m2
        dot_v = wv0 * acc_v0 + wv1 * acc_v1 + wv2 * acc_v2
        g_m0, g_m1, g_m2 = wm0 * (acc_m0 - dot_m), wm1 * (acc_m1 - dot_m), wm2 * (acc_m2 - dot_m)
        g_v0, g_v1, g_v2 = wv0 * (acc_v0 - dot_v), wv1 * (acc_v1 - dot_v), wv2 * (acc_v2 - dot_v)
    dtype = grad_mean_logits_ptr.dtype.element_ty
    tl.store(grad_mean_logits_ptr, g_m0.to(dtype))
    tl.store(grad_mean_logits_ptr + 1, g_m1.to(dtype))
    tl.store(grad_var_logits_ptr, g_v0.to(dtype))
    tl.store(grad_var_logits_ptr + 1, g_v1.to(dtype))
    if K == 3:
        tl.store(grad_mean_logits_ptr + 2, g_m2.to(dtype))
        tl.store(grad_var_logits_ptr + 2, g_v2.to(dtype))
    tl.debug_barrier()
    # pass 3: back to the IN moments, directly, through LN (sums over C), through BN (over N)
    for n0 in range(0, N, BLOCK_N):
        for c0 in range(0, C, BLOCK_C):
            ns, cs, n_ok, c_ok, ok, idx = _tile(n0, c0, N, C, BLOCK_N, BLOCK_C)
            gm, gv, _, _, _, mean_in = _mix_grads(dot_ptr, sum_ptr, nc_ptr, idx, ok, NC)
            g_ln_m = tl.load(scratch_ptr + ns, mask=n_ok, other=0.0) * (wm1 / C)
            g_ln_v = tl.load(scratch_ptr + N + ns, mask=n_ok, other=0.0) * (wv1 / C)
            mean_ln = tl.load(ln_ptr + ns, mask=n_ok, other=0.0)
            g_in_m = wm0 * gm + g_ln_m[:, None] + 2.0 * (mean_in - mean_ln[:, None]) * g_ln_v[:, None]
            g_in_v = wv0 * gv + g_ln_v[:, None]
            if K == 3:
                if USE_BATCH:
                    mean_bn = tl.load(bn_ptr + cs, mask=c_ok, other=0.0)
                    g_bn_m = tl.load(scratch_ptr + 2 * N + cs, mask=c_ok, other=0.0) * (wm2 / N)
                    g_bn_v = tl.load(scratch_ptr + 2 * N + C + cs, mask=c_ok, other=0.0) * (wv2 / N)
                    g_in_m += g_bn_m[None, :] + 2.0 * (mean_in - mean_bn[None, :]) * g_bn_v[None, :]
                    g_in_v += g_bn_v[None, :]
            tl.store(a_ptr + idx, g_in_v * (2.0 / M), mask=ok)
            tl.store(b_ptr + idx, g_in_m / M, mask=ok)


# --- tile and warp choices for the elementwise passes, tuned on the GPU -------------------------
def _elementwise_configs() -> list:
    """(BLOCK_C, BLOCK_M) x warps to try: long along M for contiguous rows, along C for
    channels-last ones (`prune_layout` keeps the family that fits the layout). The launcher's
    own choice (4096 elements, triton_sn._tiles) is among them."""
    contiguous = [(1, 4096), (1, 2048), (1, 8192), (2, 2048), (4, 1024)]
    channels_last = [(64, 64), (32, 128), (64, 128), (16, 256), (128, 32)]
    return [triton.Config({"BLOCK_C": c, "BLOCK_M": m}, num_warps=w)
            for c, m in contiguous + channels_last for w in (4, 8)]


def prune_layout(configs, named_args, **kwargs):
    """The configs that suit the rows' layout and size: contiguous rows (stride_m == 1, or one
    channel) tile along M, channels-last rows along C; no tile much larger than the rows."""
    c, m = named_args["C"], named_args["M"]
    along_m = named_args["stride_m"] == 1 or c == 1
    kept = [cfg for cfg in configs
            if (cfg.kwargs["BLOCK_C"] <= 4) == along_m
            and cfg.kwargs["BLOCK_C"] <= max(1, triton.next_power_of_2(c))
            and cfg.kwargs["BLOCK_M"] <= max(16, triton.next_power_of_2(m))]
    return kept or configs[:1]


def tuned(kernel):
    """`kernel` autotuned over _elementwise_configs, cached per (C, M, layout, index width):
    the first call of a shape class on a GPU times the candidates, later calls reuse the pick."""
    return triton.autotune(configs=_elementwise_configs(),
                           key=["C", "M", "stride_c", "stride_m", "INDEX_64"],
                           prune_configs_by={"early_config_prune": prune_layout})(kernel)


_affine_kernel_tuned = tuned(_affine_kernel)
_grad_input_kernel_tuned = tuned(_grad_input_kernel)
