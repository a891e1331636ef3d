"""CUDA checks (pytest marker `cuda`; skipped without a GPU; benchmarks/gpu_check.py runs them):
Triton vs eager vs float64 at realistic shapes, fp16 + GradScaler and bf16 training steps,
channels_last_3d, an nccl single-process group with SyncSwitchNorm, compile + checkpointing
with the Triton op, recompute_norm_stats free of host syncs, uint8 views and training batches normalized on the GPU.

This module imports nothing that needs a video decoder: the GPU machine may have none."""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from snvideo.models import build_model
from snvideo.norm import SwitchNorm3d, SyncSwitchNorm, convert_sync_switchnorm, recompute_norm_stats
from snvideo.norm import triton_sn

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
DEVICE = "cuda"
CLIP = (2, 3, 8, 32, 32)
needs_triton = pytest.mark.skipif(not triton_sn.triton_available(), reason="triton not installed")


@pytest.fixture(autouse=True)
def no_tf32():
    """Full fp32 convolutions and matmuls: TF32 would blur the fp32 comparisons below."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _randomized(layer: SwitchNorm3d, seed: int = 0) -> SwitchNorm3d:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (layer.mean_weight, layer.var_weight, layer.weight, layer.bias):
            p.copy_(torch.randn(p.shape, generator=gen))
    return layer


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12))


@needs_triton
@pytest.mark.parametrize("shape", [(4, 64, 4, 14, 14), (2, 256, 2, 7, 7), (8, 32, 8, 28, 28)])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_and_eager_match_float64_on_cuda(shape, channels_last, dtype):
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(shape, generator=gen) * 3 + 2).to(DEVICE)
    grad = torch.randn(shape, generator=gen).to(DEVICE)
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    reference = _randomized(SwitchNorm3d(shape[1], kernel="eager")).to(DEVICE).double()
    x64 = x.double().requires_grad_()
    y64 = reference(x64)
    y64.backward(grad.double())
    tolerance = 1e-4 if dtype == torch.float32 else 2e-2
    for kernel in ("eager", "triton"):
        layer = _randomized(SwitchNorm3d(shape[1], kernel=kernel)).to(DEVICE)
        xk = x.to(dtype).contiguous(memory_format=fmt).clone().requires_grad_()
        y = layer(xk)
        assert y.dtype == dtype
        y.backward(grad.to(dtype).contiguous(memory_format=fmt))
        assert _relative_error(y, y64) < tolerance, kernel
        assert _relative_error(xk.grad, x64.grad) < tolerance * 10, kernel
        for name in ("mean_weight", "var_weight", "weight", "bias"):
            got, want = getattr(layer, name).grad, getattr(reference, name).grad
            assert _relative_error(got, want) < tolerance * 10, (kernel, name)
        torch.testing.assert_close(layer.running_mean.double(), reference.running_mean,
                                   rtol=tolerance, atol=tolerance)
        torch.testing.assert_close(layer.running_var.double(), reference.running_var,
                                   rtol=tolerance, atol=tolerance)


def _train_steps(model, amp: str, steps: int = 8) -> list[float]:
    """`steps` updates; with fp16 the scaler skips the first few (its initial scale 2**16
    overflows the gradients), as in any fp16 run, then updates."""
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(amp)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == "fp16")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    clips = torch.randn(CLIP, generator=gen).to(DEVICE)
    labels = torch.tensor([1, 3], device=DEVICE)
    losses = []
    for _ in range(steps):
        with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = F.cross_entropy(model(clips).float(), labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss))
    if amp == "fp16":
        assert 0 < scaler.get_scale() < float("inf")
    return losses


@pytest.mark.parametrize("norm", ["sn", "bn"])
def test_fp16_gradscaler_and_bf16_training_steps(norm):
    torch.manual_seed(0)
    start = build_model("resnet3d_10", 5, norm=norm, dropout=0.0).state_dict()
    results = {}
    for amp in ("off", "fp16", "bf16"):
        model = build_model("resnet3d_10", 5, norm=norm, dropout=0.0).to(DEVICE)
        model.load_state_dict(start)
        results[amp] = _train_steps(model, amp)
        assert all(torch.isfinite(p).all() for p in model.parameters()), amp
        assert not torch.equal(model.fc.weight.detach().cpu(), start["fc.weight"]), amp
    for amp in ("fp16", "bf16"):
        assert results[amp][0] == pytest.approx(results["off"][0], rel=0.05), amp


def test_channels_last_3d_model_matches_contiguous():
    torch.manual_seed(0)
    plain = build_model("resnet3d_10", 5, norm="sn", dropout=0.0).to(DEVICE)
    cl = build_model("resnet3d_10", 5, norm="sn", dropout=0.0).to(DEVICE)
    cl.load_state_dict(plain.state_dict())
    cl.to(memory_format=torch.channels_last_3d)
    x = torch.randn(CLIP, device=DEVICE)
    out_plain = plain(x)
    out_cl = cl(x.contiguous(memory_format=torch.channels_last_3d))
    out_plain.square().sum().backward()
    out_cl.square().sum().backward()
    torch.testing.assert_close(out_cl, out_plain, rtol=1e-3, atol=1e-3)
    for (name, p), q in zip(plain.named_parameters(), cl.parameters()):
        assert _relative_error(q.grad, p.grad) < 1e-2, name


def test_nccl_single_process_group_with_syncswitchnorm(tmp_path):
    if not dist.is_nccl_available():
        pytest.skip("nccl not available")
    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'pg'}", rank=0,
                            world_size=1)
    try:
        torch.manual_seed(0)
        local = _randomized(SwitchNorm3d(16)).to(DEVICE)
        synced = convert_sync_switchnorm(_randomized(SwitchNorm3d(16)))
        assert isinstance(synced, SyncSwitchNorm)
        synced.to(DEVICE)
        x = (torch.randn(4, 16, 2, 6, 6, device=DEVICE) * 2 + 1)
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        y1, y2 = local(x1), synced(x2)
        grad = torch.randn_like(y1)
        y1.backward(grad)
        y2.backward(grad)
        torch.testing.assert_close(y2, y1, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(synced.running_var, local.running_var)
        bn = nn.SyncBatchNorm(16).to(DEVICE)
        assert bn(x).shape == x.shape
        dist.all_reduce(torch.ones(1, device=DEVICE))
    finally:
        dist.destroy_process_group()


def test_compiled_checkpoint_stages_on_cuda():
    torch.manual_seed(0)
    plain = build_model("resnet3d_10", 5, norm="sn", dropout=0.0).to(DEVICE)
    checkpointed = build_model("resnet3d_10", 5, norm="sn", dropout=0.0,
                               checkpoint_stages=True).to(DEVICE)
    checkpointed.load_state_dict(plain.state_dict())
    compiled = torch.compile(checkpointed, backend="aot_eager")
    x = torch.randn(CLIP, device=DEVICE)
    for _ in range(2):
        a = plain(x)
        a.square().sum().backward()
        b = compiled(x)
        b.square().sum().backward()
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters()):
        assert _relative_error(q.grad, p.grad) < 1e-3, name
    assert int(checkpointed.layer2[0].bn1.num_batches_tracked) == 2


def test_recompute_norm_stats_makes_no_host_sync_on_cuda():
    model = nn.Sequential(nn.Conv3d(3, 8, 1), SwitchNorm3d(8), nn.Conv3d(8, 8, 1),
                          nn.BatchNorm3d(8), SwitchNorm3d(8, using_moving_average=False)).to(DEVICE)
    batches = [torch.randn(2, 3, 2, 8, 8, device=DEVICE) * (i + 1) for i in range(3)]
    model(batches[0])  # first-call set-up (cuDNN handles, Triton compilation) out of the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        used = recompute_norm_stats(model, batches, num_batches=3)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert used == 3
    with torch.no_grad():
        feats = [model[0](b) for b in batches]
    expected = torch.stack([f.mean((0, 2, 3, 4)) for f in feats]).mean(0)
    torch.testing.assert_close(model[1].running_mean, expected, rtol=1e-4, atol=1e-5)


def test_uint8_views_normalized_on_the_gpu_under_bf16_and_channels_last():
    pytest.importorskip("av")  # snvideo.data imports PyAV
    from snvideo.data.transforms import normalize_views
    from snvideo.evaluation import predict_views

    torch.manual_seed(0)
    model = build_model("resnet3d_10", 5, norm="sn", dropout=0.0).eval()
    views = torch.randint(0, 256, (6, 3, 8, 32, 32), dtype=torch.uint8)
    expected = predict_views(model, normalize_views(views), 4, "prob", "cpu")
    model.to(DEVICE)
    torch.testing.assert_close(predict_views(model, views, 4, "prob", DEVICE), expected,
                               rtol=1e-4, atol=1e-4)
    model.to(memory_format=torch.channels_last_3d)
    fast = predict_views(model, views, 4, "prob", DEVICE, amp="bf16", channels_last=True)
    torch.testing.assert_close(fast, expected, rtol=0, atol=0.02)


def test_uint8_training_batches_normalized_on_the_gpu():
    """What train.py does with collate_clips' channels_last_3d uint8 batch: pinned, moved,
    normalized on the GPU; equal to the CPU float pipeline within float32 rounding."""
    pytest.importorskip("av")  # snvideo.data imports PyAV
    from snvideo.data.datasets import collate_clips
    from snvideo.data.transforms import normalize_views
    from snvideo.engine.batches import to_model_input

    frames = torch.randint(0, 256, (3, 8, 3, 32, 32), dtype=torch.uint8)  # items (T, C, H, W)
    items = [(f.contiguous(memory_format=torch.channels_last).permute(1, 0, 2, 3), 0)
             for f in frames]
    batch, _ = collate_clips(items)
    expected = normalize_views(batch.contiguous(), (0.4, 0.5, 0.6), (0.2, 0.3, 0.25))
    transform = type("T", (), {"mean": (0.4, 0.5, 0.6), "std": (0.2, 0.3, 0.25)})()
    for channels_last in (False, True):
        got = to_model_input(batch.pin_memory(), torch.device(DEVICE), transform, channels_last)
        assert got.dtype == torch.float32 and got.device.type == "cuda"
        torch.testing.assert_close(got.cpu(), expected, rtol=1e-6, atol=1e-6)


def test_cudnn_benchmark_helper():
    from snvideo.engine.distributed import enable_cudnn_benchmark

    before = torch.backends.cudnn.benchmark
    try:
        assert enable_cudnn_benchmark("cpu") is False
        assert enable_cudnn_benchmark(torch.device(DEVICE)) is True
        assert torch.backends.cudnn.benchmark is True
    finally:
        torch.backends.cudnn.benchmark = before
