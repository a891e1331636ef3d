"""The Triton SN kernels (`kernel="triton"`) against the float64 reference: train and eval, every
gradient, running statistics, no BN branch, N=1, S of one element, channels_last_3d, bf16 and
fp16, the custom op under torch.compile; and AMP rounding once on every path.

Without a GPU the kernels run in Triton's interpreter on CPU tensors (conftest sets
TRITON_INTERPRET=1 before triton is imported), which is slow: the shapes stay tiny."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from snvideo.norm import SwitchNorm1d, SwitchNorm3d, SyncSwitchNorm, build_norm
from snvideo.norm import triton_sn
from snvideo.norm.functional import resolve_kernel
from test_norm import randomize, reference_sn

pytestmark = pytest.mark.triton  # benchmarks/gpu_check.py runs this file on the GPU
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(
    not triton_sn.can_run(torch.empty(1, device=DEVICE)),
    reason="triton is not installed, or no GPU and TRITON_INTERPRET is not set")

CASES = [
    ((3, 5, 2, 3, 4), False),
    ((3, 5, 2, 3, 4), True),      # channels_last_3d
    ((1, 6, 2, 3, 3), False),     # one sample
    ((3, 6, 1, 1, 1), False),     # S of one element
    ((2, 70, 2, 2, 3), True),     # more channels than one channels-last tile
]


def _input(shape, channels_last, dtype=torch.float32, mean=1.5, std=3.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=gen) * std + mean).to(dtype).to(DEVICE)
    return x.contiguous(memory_format=torch.channels_last_3d) if channels_last else x


def _layer(channels, using_bn, training, kernel="triton", cls=SwitchNorm3d, seed=0):
    torch.manual_seed(seed)
    return randomize(cls(channels, using_bn=using_bn, kernel=kernel)).to(DEVICE).train(training)


def _reference_outputs(layer, x, grad_out, training, **importance):
    """float64 output and gradients (x, then each parameter) through the paper's formulas."""
    x64 = x.detach().double().requires_grad_()
    params = [p.detach().double().requires_grad_() for p in
              (layer.mean_weight, layer.var_weight, layer.weight, layer.bias)]
    y = reference_sn(x64, *params, None if training else layer.running_mean,
                     None if training else layer.running_var, **importance)
    y.backward(grad_out.double())
    return y.detach(), [x64.grad] + [p.grad for p in params]


def _check_against_reference(layer, x, grad_out, training, **importance):
    """layer(x) and its gradients (x, then each parameter) equal the float64 reference's;
    returns y."""
    expected, expected_grads = _reference_outputs(layer, x, grad_out, training, **importance)
    y = layer(x)
    y.backward(grad_out)
    torch.testing.assert_close(y.double(), expected, rtol=1e-4, atol=1e-4)
    params = [layer.mean_weight, layer.var_weight, layer.weight, layer.bias]
    for got, want in zip([x.grad] + [p.grad for p in params], expected_grads):
        torch.testing.assert_close(got.double(), want, rtol=1e-3, atol=1e-4)
    return y


@needs_triton
@pytest.mark.parametrize("shape,channels_last", CASES)
@pytest.mark.parametrize("using_bn", [True, False])
@pytest.mark.parametrize("training", [True, False])
def test_triton_matches_float64_reference(shape, channels_last, using_bn, training):
    layer = _layer(shape[1], using_bn, training)
    x = _input(shape, channels_last).requires_grad_()
    grad_out = _input(shape, channels_last, mean=0.0, std=1.0, seed=1)
    y = _check_against_reference(layer, x, grad_out, training)
    assert y.shape == x.shape and y.dtype == x.dtype
    if channels_last:
        assert y.is_contiguous(memory_format=torch.channels_last_3d)


@needs_triton
@pytest.mark.parametrize("shape,channels_last", CASES[:2])
@pytest.mark.parametrize("training", [True, False])
def test_triton_ssn_matches_float64_reference(shape, channels_last, training):
    """Sparse SN on the kernels: the given (sparsestmax) weights skip the kernels' softmax and
    its backward; the gradient reaches the logits through sparsestmax."""
    from snvideo.norm import sparsestmax

    torch.manual_seed(0)
    layer = randomize(SwitchNorm3d(shape[1], kernel="triton", importance="sparsestmax"))
    layer = layer.to(DEVICE).train(training)
    layer.set_radius(0.3)
    x = _input(shape, channels_last).requires_grad_()
    grad_out = _input(shape, channels_last, mean=0.0, std=1.0, seed=1)
    _check_against_reference(layer, x, grad_out, training,
                             importance=lambda logits: sparsestmax(logits, 0.3))


@needs_triton
def test_triton_switchnorm1d_on_n_c_input():
    layer = _layer(5, True, True, cls=SwitchNorm1d)
    x = _input((8, 5), False)
    expected = reference_sn(x.unsqueeze(-1), layer.mean_weight, layer.var_weight, layer.weight,
                            layer.bias).squeeze(-1)
    torch.testing.assert_close(layer(x).double(), expected, rtol=1e-4, atol=1e-4)


@needs_triton
@pytest.mark.parametrize("momentum", [0.1, None])
def test_triton_running_stats_equal_eager(momentum):
    triton_layer = _layer(6, True, True)
    eager_layer = _layer(6, True, True, kernel="eager")
    for layer in (triton_layer, eager_layer):
        layer.momentum = momentum
        for seed in range(2):
            layer(_input((3, 6, 2, 3, 3), False, seed=seed))
    torch.testing.assert_close(triton_layer.running_mean, eager_layer.running_mean)
    torch.testing.assert_close(triton_layer.running_var, eager_layer.running_var)
    assert int(triton_layer.num_batches_tracked) == 2


@needs_triton
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_triton_half_precision_rounds_once(dtype, channels_last):
    """Half inputs: the output is the float64 result rounded once (within 2x the rounding floor),
    and the gradients are close to float64's."""
    layer = _layer(5, True, True)
    x = _input((3, 5, 2, 3, 4), channels_last, dtype=dtype, mean=20.0, std=1.0).requires_grad_()
    grad_out = _input((3, 5, 2, 3, 4), channels_last, dtype=dtype, mean=0.0, std=1.0, seed=1)
    expected, expected_grads = _reference_outputs(layer, x, grad_out, True)
    y = layer(x)
    assert y.dtype == dtype
    _assert_rounded_once(y, expected, dtype)
    y.backward(grad_out)
    assert x.grad.dtype == dtype
    _assert_rounded_once(x.grad, expected_grads[0], dtype, factor=4.0)


def _assert_rounded_once(got, exact, dtype, factor=2.0):
    floor = (exact.to(dtype).double() - exact).abs()
    err = (got.double() - exact).abs()
    assert err.max() <= factor * floor.max() + 1e-12, (err.max(), floor.max())
    assert err.mean() <= factor * floor.mean() + 1e-12, (err.mean(), floor.mean())


@pytest.mark.parametrize("kernel", ["eager", pytest.param("triton", marks=needs_triton)])
@pytest.mark.parametrize("mean,std", [(0.0, 1.0), (30.0, 1.0), (3.0, 0.1)])
def test_autocast_output_rounds_once(kernel, mean, std):
    """Under bf16 autocast SN's output error stays within 2x the bf16 rounding floor of the
    exact result, with mean/std up to 30 (eager CPU and Triton paths, with and without grad)."""
    layer = _layer(6, True, True, kernel=kernel)
    conv = nn.Conv3d(6, 6, 1, bias=False).to(DEVICE)
    nn.init.eye_(conv.weight.view(6, 6))
    x = _input((4, 6, 2, 5, 5), False, mean=mean, std=std)
    for requires_grad in (False, True):
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            h = conv(x.requires_grad_(requires_grad))   # the input SN sees: bf16, as in a model
            y = layer(h)
        assert h.dtype == torch.bfloat16 and y.dtype == torch.bfloat16
        exact = reference_sn(h.detach().double(), layer.mean_weight, layer.var_weight,
                             layer.weight, layer.bias)
        _assert_rounded_once(y.detach(), exact, torch.bfloat16)


@needs_triton
def test_custom_op_under_compile_matches_eager():
    torch.manual_seed(8)
    model = nn.Sequential(nn.Conv3d(3, 6, 3, padding=1),
                          randomize(SwitchNorm3d(6, kernel="triton")), nn.ReLU()).to(DEVICE)
    x = _input((2, 3, 2, 4, 4), False)
    eager_out = model(x)
    eager_out.sum().backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    out = compiled(x)
    out.sum().backward()
    torch.testing.assert_close(out, eager_out, rtol=1e-4, atol=1e-5)
    for want, p in zip(eager_grads, model.parameters()):
        torch.testing.assert_close(p.grad, want, rtol=1e-4, atol=1e-5)


@needs_triton
def test_custom_op_registration_passes_opcheck():
    layer = _layer(4, True, True)
    x = _input((2, 4, 1, 2, 3), False).requires_grad_()
    # the ops carry no autograd formula (snvideo::switch_norm mutates the running statistics;
    # triton_sn._SwitchNormTriton differentiates): checked without gradients here, and under
    # compile with them in test_custom_op_under_compile_matches_eager
    tests = ("test_schema", "test_faketensor", "test_aot_dispatch_dynamic")
    params = [p.detach() for p in (layer.mean_weight, layer.var_weight, layer.weight, layer.bias)]
    for with_running in (False, True):
        for softmax in (True, False):  # softmax=False: Sparse SN's given weights
            running = (layer.running_mean.clone(), layer.running_var.clone()) if with_running \
                else (None, None)
            weights = params[:2] if softmax else [torch.softmax(w, 0) for w in params[:2]]
            args = (x.detach(), *weights, *params[2:], *running, True, 1e-5, 0.1, softmax)
            torch.library.opcheck(torch.ops.snvideo.switch_norm.default, args, test_utils=tests)
    _, nc, ln, bn = torch.ops.snvideo.switch_norm(*args)
    for input_grad in (True, False):
        grad_args = (torch.randn_like(x), x.detach(), nc, ln, bn, *params, True, input_grad, True)
        torch.library.opcheck(torch.ops.snvideo.switch_norm_backward.default, grad_args,
                              test_utils=("test_schema", "test_faketensor"))


def test_kernel_choice():
    cpu = torch.zeros(2, 3, 1, 1, 1)
    assert resolve_kernel("eager", cpu) == "eager"
    assert resolve_kernel("auto", cpu) == "eager"               # auto: Triton only on CUDA
    assert resolve_kernel("auto", cpu.double()) == "eager"
    assert build_norm("sn", 8, kernel="eager").kernel == "eager"
    assert SyncSwitchNorm(8, kernel="triton").kernel == "triton"
    with pytest.raises(ValueError, match="kernel must be one of"):
        SwitchNorm3d(4, kernel="cuda")
    if not triton_sn.can_run(cpu):
        with pytest.raises(RuntimeError, match="kernel='triton'"):
            SwitchNorm3d(3, kernel="triton")(cpu)


# --- what the interpreter cannot show by itself: NaN bits, 64-bit offsets, grid limits --------
if triton_sn.triton_available() and triton_sn.can_run(torch.empty(1, device=DEVICE)):
    import triton
    import triton.language as tl

    from snvideo.norm import _triton_kernels as K

    @triton.jit
    def _round_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr, HW_CAST: tl.constexpr):
        i = tl.arange(0, BLOCK)
        v = tl.load(x_ptr + i, mask=i < n)
        tl.store(y_ptr + i, K._round(v, y_ptr.dtype.element_ty, HW_CAST), mask=i < n)

    @triton.jit
    def _offsets_kernel(out_ptr, n, stride_n, stride_c, stride_m, BLOCK_C: tl.constexpr,
                        BLOCK_M: tl.constexpr, INDEX_64: tl.constexpr):
        cs = tl.arange(0, BLOCK_C)
        ms = tl.arange(0, BLOCK_M)
        offsets = K._offsets(n, cs, ms, stride_n, stride_c, stride_m, INDEX_64)
        tl.store(out_ptr + cs[:, None] * BLOCK_M + ms[None, :], offsets)

# float32 bit patterns: GPU NaNs (0x7FFFFFFF, 0xFFFFFFFF), a signalling-style NaN whose top 16
# bits alone would read as Inf, the interpreter's NaN, +-Inf, and two bfloat16 ties
CRAFTED = [0x7FFFFFFF, 0xFFFFFFFF, 0x7F800001, 0x7FC00000, 0x7F800000, 0xFF800000, 0x3F808000,
           0x3F818000]


@needs_triton
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_rounding_keeps_nan_and_inf_from_crafted_bits(dtype):
    """The hand rounding (the interpreter's) and the hardware cast (a GPU's) both keep NaN as
    NaN and Inf as Inf, and round ties to even, as torch's own conversion does."""
    x = torch.tensor(CRAFTED, dtype=torch.int64).to(torch.int32).view(torch.float32).to(DEVICE)
    y = torch.empty(len(CRAFTED), dtype=dtype, device=DEVICE)
    _round_kernel[(1,)](x, y, len(CRAFTED), BLOCK=8, HW_CAST=not triton_sn.interpreter_enabled())
    want = x.to(dtype)
    assert torch.isnan(y[:4]).all() and torch.equal(y[4:6], want[4:6]) and torch.isinf(y[4:6]).all()
    assert torch.equal(y[6:], want[6:])  # ties to even


@needs_triton
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_nan_and_inf_reach_y_and_dx(dtype):
    """A NaN or Inf in x comes out of the layer as NaN (not a finite number), in y and dx, so
    the non-finite guard sees it."""
    layer = _layer(4, True, True)
    x = _input((2, 4, 1, 3, 3), False, dtype=dtype).requires_grad_(False)
    x[0, 1, 0, 1, 1] = float("nan")
    x[1, 2, 0, 0, 0] = float("inf")
    x.requires_grad_()
    y = layer(x)
    assert torch.isnan(y[0, 1]).all() and torch.isnan(y[1, 2]).all()  # the rows' moments are NaN
    y.backward(torch.ones_like(y))
    assert torch.isnan(x.grad[0, 1]).all() and not torch.isfinite(x.grad[1, 2]).any()


@needs_triton
def test_offsets_pass_two_to_the_31_in_64_bits():
    """Offsets computed for strides that put elements past 2^31 (no 8 GB tensor needed: the
    kernel only computes them): 64-bit when asked, the exact integers."""
    stride_n, stride_c, stride_m = 3 * 2**30, 2**20, 2**11
    out = torch.empty((4, 8), dtype=torch.int64, device=DEVICE)
    _offsets_kernel[(1,)](out, 1, stride_n, stride_c, stride_m, BLOCK_C=4, BLOCK_M=8, INDEX_64=True)
    want = torch.tensor([[stride_n + c * stride_c + m * stride_m for m in range(8)] for c in range(4)])
    assert torch.equal(out.cpu(), want) and want.max() > 2**31


def test_index_width_and_grid_follow_the_tensor_size():
    """64-bit offsets from 2^31 elements on (shapes on the meta device: nothing allocated), and a
    one-axis grid within CUDA's 2^31 - 1 for channels-last layers up to M = 10^8."""
    def rows(n, c, m, channels_last):
        strides = (c * m, 1, c) if channels_last else (c * m, m, 1)
        return torch.empty_strided((n, c, m), strides, device="meta", dtype=torch.bfloat16)

    assert not triton_sn.needs_index_64(rows(8, 64, 16 * 56 * 56, True))
    assert triton_sn.needs_index_64(rows(8, 64, 2**22 + 1, True))
    assert triton_sn.needs_index_64(rows(1, 1, 2**31, False))
    for m in (1, 4_194_305, 10**7, 10**8):
        for channels_last in (False, True):
            r = rows(8, 64, m, channels_last)
            block_c, block_m = triton_sn._tiles(r, triton_sn._ELEMENTWISE_TILE)
            grid = triton_sn.elementwise_grid(8, 64, m, block_c, block_m)
            assert len(grid) == 1 and grid[0] <= 2**31 - 1
            assert grid[0] * block_c * block_m >= 8 * 64 * m  # every element has a program


@needs_triton
def test_64_bit_offsets_give_the_same_results(monkeypatch):
    """The 64-bit index path compiles and computes what the 32-bit one does."""
    layer = _layer(5, True, True)
    x = _input((3, 5, 2, 3, 4), True).requires_grad_()
    y32 = layer(x)
    (g32,) = torch.autograd.grad(y32.square().sum(), x)
    monkeypatch.setattr(triton_sn, "needs_index_64", lambda *rows: True)
    for plan in (triton_sn._reduce_plan, triton_sn._elementwise_plan):  # plans are cached per shape
        plan.cache_clear()
    y64 = layer(x)
    assert triton_sn._elementwise_plan(tuple(triton_sn._rows(x).shape), triton_sn._rows(x).stride(), ())[3]
    (g64,) = torch.autograd.grad(y64.square().sum(), x)
    assert torch.equal(y32, y64) and torch.equal(g32, g64)
    for plan in (triton_sn._reduce_plan, triton_sn._elementwise_plan):
        plan.cache_clear()


# --- device ops per layer and step ----------------------------------------------------------
class _DeviceOps(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the aten ops that launch device work (not views, metadata or allocations),
    looking inside snvideo's custom ops too."""

    FREE = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "view",
            "_unsafe_view", "as_strided", "select", "slice", "unsqueeze", "squeeze", "permute",
            "expand", "t", "detach", "alias", "unflatten", "_reshape_alias", "lift_fresh",
            "split", "unbind", "flatten", "reshape", "clone_view"}

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        namespace, name = func.namespace, func._schema.name.split("::")[-1]
        if namespace == "snvideo":  # count what the custom op does inside: run its Python body
            body = {"switch_norm": triton_sn._switch_norm_fwd_op,
                    "switch_norm_backward": triton_sn._switch_norm_bwd_op}[name]._init_fn
            with self:
                return body(*args, **(kwargs or {}))
        if name not in self.FREE:
            self.ops.append(name)
        return func(*args, **(kwargs or {}))


@pytest.fixture
def launches(monkeypatch):
    """Counts Triton kernel launches by name."""
    from snvideo.norm import _triton_kernels

    counted: list[str] = []

    class Counting:
        def __init__(self, name, kernel):
            self.name, self.kernel = name, kernel

        def __getitem__(self, grid):
            launch = self.kernel[grid]

            def run(*args, **kwargs):
                counted.append(self.name)
                # one launch; the interpreter's own tensor traffic is not the layer's
                with torch.utils._python_dispatch._disable_current_modes():
                    return launch(*args, **kwargs)
            return run

    for name in dir(_triton_kernels):
        if name.endswith("_kernel"):
            monkeypatch.setattr(_triton_kernels, name, Counting(name, getattr(_triton_kernels, name)))
    return counted


@needs_triton
@pytest.mark.parametrize("x_grad", [True, False])
def test_device_ops_per_layer_and_step(launches, x_grad):
    """Forward: three launches (moments, mixing with the running statistics, affine) and the
    batch counter; backward: three launches (two when x needs no gradient) and nothing else —
    no zero-filled gradients for the statistics outputs, no copies of parameter gradients, no
    cleared buffers (the reductions' counters re-arm themselves)."""
    layer = _layer(6, True, True)
    x = _input((2, 6, 2, 3, 3), True).requires_grad_(x_grad)
    grad_out = _input((2, 6, 2, 3, 3), True, mean=0.0, std=1.0, seed=1)
    layer(x.detach())  # a first step allocates the reductions' counters, once per device
    launches.clear()
    running = layer.running_mean.clone()
    with _DeviceOps() as ops:
        y = layer(x)
    assert launches == ["_moments_kernel", "_mix_forward_kernel", "_affine_kernel"]
    assert ops.ops == ["add_"], ops.ops  # num_batches_tracked
    assert not torch.equal(layer.running_mean, running)  # moved by the mixing kernel
    launches.clear()
    with _DeviceOps() as ops:
        y.backward(grad_out)
    expected = ["_grad_sums_kernel", "_mix_backward_kernel"] + (["_grad_input_kernel"] if x_grad else [])
    assert launches == expected
    assert ops.ops == [], ops.ops
    assert (x.grad is not None) == x_grad and layer.weight.grad is not None


@needs_triton
def test_a_gradient_with_other_strides_is_not_copied(launches):
    """An expanded gradient (y.sum().backward()) and a contiguous one into a channels-last
    layer are read with their own strides: the same gradients as a matching layout, no copy."""
    layer = _layer(5, True, True)
    x = _input((2, 5, 2, 3, 3), True).requires_grad_()
    for grad_out in (torch.ones(2, 5, 2, 3, 3, device=DEVICE).expand(2, 5, 2, 3, 3),
                     _input((2, 5, 2, 3, 3), False, mean=0.0, std=1.0, seed=1)):
        want = torch.autograd.grad(layer(x), x, grad_out.contiguous(memory_format=torch.channels_last_3d))[0]
        y = layer(x)
        with _DeviceOps() as ops:
            (got,) = torch.autograd.grad(y, x, grad_out)
        assert ops.ops == [], ops.ops
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@needs_triton
@pytest.mark.parametrize("shape,channels_last,cls", [
    ((2, 3, 4, 32, 32), False, SwitchNorm3d),   # rows longer than a tile: several splits each
    ((2, 3, 4, 32, 32), True, SwitchNorm3d),
    ((130, 5, 3), False, SwitchNorm1d),          # more samples than one mixing tile holds
])
def test_splits_summed_by_the_last_program_and_samples_in_blocks(shape, channels_last, cls):
    """The reductions' splits are added up by whichever finishes last, and the mixing walks
    the samples in blocks: still the float64 result, and the counters are back at zero."""
    layer = _layer(shape[1], True, True, cls=cls)
    x = _input(shape, channels_last).requires_grad_()
    rows = triton_sn._rows(x)
    block_c, block_m = triton_sn._tiles(rows, triton_sn._REDUCE_TILE)
    splits, _ = triton_sn._split(shape[0], -(-shape[1] // block_c), rows.shape[2], block_m)
    assert splits > 1 or shape[0] > triton_sn._MIX_BLOCK_N
    grad_out = _input(shape, channels_last, mean=0.0, std=1.0, seed=1)
    _check_against_reference(layer, x, grad_out, True)
    assert triton_sn._COUNTERS[x.device].count_nonzero() == 0


@needs_triton
def test_autotune_candidates_follow_the_layout_and_include_the_fixed_tiles():
    """On a GPU the elementwise passes try tiles of the layout's family (long along M for
    contiguous rows, along C for channels-last), always including the interpreter's tiles."""
    configs = K._elementwise_configs()
    for shape, channels_last in (((8, 64, 16 * 56 * 56), False), ((8, 64, 16 * 56 * 56), True),
                                 ((2, 2048, 4 * 7 * 7), True), ((2, 3, 5), False)):
        n, c, m = shape
        strides = (c * m, 1, c) if channels_last else (c * m, m, 1)
        rows = torch.empty_strided(shape, strides, device="meta")
        kept = K.prune_layout(configs, {"C": c, "M": m, "stride_c": strides[1], "stride_m": strides[2]})
        along_m = not channels_last or c == 1
        assert kept and all((cfg.kwargs["BLOCK_C"] <= 4) == along_m for cfg in kept)
        fixed = triton_sn._tiles(rows, triton_sn._ELEMENTWISE_TILE)
        if fixed[0] * fixed[1] == triton_sn._ELEMENTWISE_TILE:  # a full tile: a candidate
            assert any((cfg.kwargs["BLOCK_C"], cfg.kwargs["BLOCK_M"]) == fixed for cfg in kept), (shape, fixed)
