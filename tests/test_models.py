"""Backbones: shapes, architecture facts, torchvision equivalence, norms, init, checkpointing."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from snvideo.models import ARCHS, build_model
from snvideo.models.info import main as info_main
from snvideo.models.info import model_info
from snvideo.norm import NORM_KINDS, SwitchNorm3d, is_switch_norm

SMALL_CLIP = (2, 3, 8, 32, 32)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _blocks(model: nn.Module, stage: int) -> list[nn.Module]:
    return list(getattr(model, f"layer{stage}"))


def test_unknown_arch_is_a_value_error_listing_the_valid_archs():
    with pytest.raises(ValueError, match="valid archs: r3d_18, mc3_18, r2plus1d_18, resnet3d_10.*i3d_r101"):
        build_model("i3d_r152", 10)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_every_arch_maps_a_small_clip_to_logits(arch):
    model = build_model(arch, num_classes=7, norm="bn").eval()
    with torch.no_grad():
        logits = model(torch.randn(*SMALL_CLIP))
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()
    assert isinstance(model.fc, nn.Linear) and model.fc.out_features == 7
    assert isinstance(model.dropout, nn.Dropout) and model.dropout.p == 0.5


def test_parameter_counts_at_400_classes_with_bn():
    counts = {arch: _params(build_model(arch, 400, norm="bn")) for arch in ARCHS}
    assert counts["i3d_r50"] == 28_043_472        # mmaction2 metafile: 28043472 (28.04M)
    assert abs(counts["i3d_r50"] - 28.0e6) <= 0.1e6
    assert counts["r3d_18"] == 33_371_472          # torchvision R3D_18_Weights num_params
    assert counts["r3d_18"] == _params(torchvision.models.video.r3d_18())
    expected_millions = {"resnet3d_10": 14.60, "resnet3d_18": 33.41, "resnet3d_34": 63.72,
                         "resnet3d_50": 47.02, "resnet3d_101": 86.06, "i3d_r101": 51.75}
    for arch, millions in expected_millions.items():
        assert counts[arch] / 1e6 == pytest.approx(millions, abs=0.01), arch


@pytest.mark.parametrize("arch, depths, block", [
    ("resnet3d_10", [1, 1, 1, 1], "BasicBlock"), ("resnet3d_18", [2, 2, 2, 2], "BasicBlock"),
    ("resnet3d_34", [3, 4, 6, 3], "BasicBlock"), ("resnet3d_50", [3, 4, 6, 3], "Bottleneck"),
    ("resnet3d_101", [3, 4, 23, 3], "Bottleneck"), ("i3d_r50", [3, 4, 6, 3], "Bottleneck"),
    ("i3d_r101", [3, 4, 23, 3], "Bottleneck"), ("r3d_18", [2, 2, 2, 2], "VideoBasicBlock"),
])
def test_stage_depths_and_block_types(arch, depths, block):
    model = build_model(arch, 10, norm="bn")
    assert [len(_blocks(model, s)) for s in (1, 2, 3, 4)] == depths
    assert {type(b).__name__ for s in (1, 2, 3, 4) for b in _blocks(model, s)} == {block}


def test_hara_resnet3d_layout():
    model = build_model("resnet3d_50", 10, norm="bn")
    assert (model.conv1.kernel_size, model.conv1.stride, model.conv1.padding) == \
        ((7, 7, 7), (1, 2, 2), (3, 3, 3))
    assert (model.maxpool.kernel_size, model.maxpool.stride) == ((3, 3, 3), (2, 2, 2))
    block = _blocks(model, 2)[0]
    assert block.conv2.kernel_size == (3, 3, 3) and block.conv2.stride == (2, 2, 2)
    assert block.downsample[0].kernel_size == (1, 1, 1) and block.downsample[0].stride == (2, 2, 2)
    basic = _blocks(build_model("resnet3d_18", 10, norm="bn"), 3)[0]
    assert basic.conv1.kernel_size == (3, 3, 3) and basic.conv1.stride == (2, 2, 2)
    assert isinstance(build_model("resnet3d_18", 10, no_max_pool=True).maxpool, nn.Identity)


def test_widen_factor_scales_the_hara_widths():
    model = build_model("resnet3d_10", 5, norm="sn", widen_factor=0.25, no_max_pool=True)
    assert model.conv1.out_channels == 16
    assert [model.layer1[0].conv1.out_channels, model.layer4[0].conv2.out_channels] == [16, 128]
    assert model.fc.in_features == 128
    assert model(torch.randn(*SMALL_CLIP)).shape == (2, 5)


def test_i3d_layout_follows_mmaction2_i3d_r50():
    model = build_model("i3d_r50", 10, norm="bn")
    assert (model.conv1.kernel_size, model.conv1.stride, model.conv1.padding) == \
        ((5, 7, 7), (2, 2, 2), (2, 3, 3))
    assert (model.maxpool.kernel_size, model.maxpool.stride) == ((1, 3, 3), (2, 2, 2))
    assert (model.pool2.kernel_size, model.pool2.stride) == ((2, 1, 1), (2, 1, 1))
    inflated = [[int(b.conv1.kernel_size == (3, 1, 1)) for b in _blocks(model, s)]
                for s in (1, 2, 3, 4)]
    assert inflated == [[1, 1, 1], [1, 0, 1, 0], [1, 0, 1, 0, 1, 0], [0, 1, 0]]
    block = _blocks(model, 3)[0]
    assert (block.conv1.padding, block.conv2.kernel_size, block.conv2.stride) == \
        ((1, 0, 0), (1, 3, 3), (1, 2, 2))
    assert block.downsample[0].stride == (1, 2, 2)
    res4 = [int(b.conv1.kernel_size[0] == 3) for b in _blocks(build_model("i3d_r101", 10), 3)]
    assert res4 == [1, 0] * 11 + [1]
    custom = build_model("i3d_r50", 10, conv1_stride_t=1, pool1_stride_t=1, pool2=False)
    assert custom.conv1.stride == (1, 2, 2) and custom.maxpool.stride == (1, 2, 2)
    assert isinstance(custom.pool2, nn.Identity)


def test_i3d_takes_32_frames_down_to_4_at_res5():
    model = build_model("i3d_r50", 10, norm="bn").eval()
    shapes = []
    model.layer4.register_forward_hook(lambda m, i, out: shapes.append(out.shape))
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32, 32))
    assert shapes == [(1, 2048, 4, 1, 1)]


def test_r3d_18_loads_torchvision_weights_strictly_and_matches_outputs():
    torch.manual_seed(0)
    reference = torchvision.models.video.r3d_18(num_classes=11)
    with torch.no_grad():  # non-trivial norm statistics and affine terms
        for m in reference.modules():
            if isinstance(m, nn.BatchNorm3d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    ours = build_model("r3d_18", 11, norm="bn")
    ours.load_state_dict(reference.state_dict(), strict=True)
    assert list(ours.state_dict()) == list(reference.state_dict())
    reference.eval(), ours.eval()
    clip = torch.randn(*SMALL_CLIP)
    with torch.no_grad():
        torch.testing.assert_close(ours(clip), reference(clip), rtol=0, atol=0)


@pytest.mark.parametrize("norm", NORM_KINDS)
def test_every_norm_kind_builds_and_trains(norm):
    model = build_model("i3d_r50", 5, norm=norm).train()
    logits = model(torch.randn(2, 3, 8, 64, 64))  # 64 px: IN needs > 1 element at res5
    logits.sum().backward()
    assert logits.shape == (2, 5)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    expected = {"bn": nn.BatchNorm3d, "syncbn": nn.SyncBatchNorm, "gn": nn.GroupNorm,
                "in": nn.InstanceNorm3d, "ln": nn.GroupNorm, "sn": SwitchNorm3d,
                "ssn": SwitchNorm3d}
    if norm in expected:
        assert isinstance(model.bn1, expected[norm]) and isinstance(model.layer4[2].bn3,
                                                                    expected[norm])
    else:
        assert type(model.bn1).__name__ == "SyncSwitchNorm"
    if is_switch_norm(model.bn1):
        sparse = norm in ("ssn", "syncssn")
        assert (model.bn1.importance_function == "sparsestmax") == sparse


def test_norm_kwargs_reach_every_norm_layer():
    gn = build_model("resnet3d_18", 5, norm="gn", norm_kwargs={"num_groups": 16})
    groups = {m.num_groups for m in gn.modules() if isinstance(m, nn.GroupNorm)}
    assert groups == {16}
    sn = build_model("i3d_r50", 5, norm="sn", norm_kwargs={"using_bn": False})
    layers = [m for m in sn.modules() if is_switch_norm(m)]
    assert len(layers) == 53 and all(m.mean_weight.numel() == 2 for m in layers)


def test_init_scheme():
    torch.manual_seed(0)
    model = build_model("i3d_r50", 400, norm="sn")
    conv = model.layer3[0].conv3  # kaiming normal, fan_out = 1024 * 1 -> std sqrt(2 / 1024)
    assert conv.weight.std().item() == pytest.approx((2 / 1024) ** 0.5, rel=0.05)
    assert model.fc.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert not model.fc.bias.any()
    norms = [m for m in model.modules() if is_switch_norm(m)]
    assert all(bool((m.weight == 1).all() and (m.bias == 0).all()) for m in norms)
    assert all(bool((m.mean_weight == 1).all() and (m.var_weight == 1).all()) for m in norms)


@pytest.mark.parametrize("arch, norm", [("i3d_r50", "sn"), ("resnet3d_18", "bn"),
                                        ("r3d_18", "gn")])
def test_zero_init_last_norm_makes_every_block_start_as_identity(arch, norm):
    model = build_model(arch, 5, norm=norm, zero_init_last_norm=True).eval()
    blocks = [b for s in (1, 2, 3, 4) for b in _blocks(model, s)]
    assert all(not b.last_norm.weight.any() for b in blocks)
    stem_norm = model.stem[1] if arch == "r3d_18" else model.bn1
    assert bool((stem_norm.weight == 1).all())
    block = blocks[1]  # no downsample: output = relu(input)
    in_channels = next(block.parameters()).shape[1]
    x = torch.randn(2, in_channels, 2, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(block(x), torch.relu(x))


def _train_step(model: nn.Module, clip: torch.Tensor) -> tuple[torch.Tensor, int]:
    saved = 0

    def pack(t):
        nonlocal saved
        saved += 1
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = model(clip)
    logits.square().sum().backward()
    return logits.detach(), saved


def assert_checkpointing_is_exact(plain: nn.Module, checkpointed: nn.Module,
                                  clip: torch.Tensor) -> None:
    """Two training steps of `checkpointed` (built with checkpoint_stages=True, given plain's
    weights here) equal plain's exactly: outputs, gradients, buffers; and fewer tensors were
    saved for backward."""
    checkpointed.load_state_dict(plain.state_dict())
    for _ in range(2):
        out_plain, saved_plain = _train_step(plain, clip)
        out_ckpt, saved_ckpt = _train_step(checkpointed, clip)
        torch.testing.assert_close(out_ckpt, out_plain, rtol=0, atol=0)
    assert saved_ckpt < saved_plain / 2  # the stages' activations were not kept
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=0, atol=0, msg=name)
    for (name, a), b in zip(plain.state_dict().items(), checkpointed.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("norm", ["bn", "sn"])
def test_checkpoint_stages_gives_identical_outputs_grads_and_running_stats(norm):
    torch.manual_seed(0)
    plain = build_model("i3d_r50", 5, norm=norm, dropout=0.0)
    checkpointed = build_model("i3d_r50", 5, norm=norm, dropout=0.0, checkpoint_stages=True)
    assert_checkpointing_is_exact(plain, checkpointed, torch.randn(*SMALL_CLIP))
    assert checkpointed.layer2[0].bn1.num_batches_tracked.item() == 2


@pytest.mark.parametrize("norm", ["bn", "sn"])
def test_compiled_checkpoint_stages_matches_eager_and_updates_stats_once(norm):
    """torch.compile (aot_eager) + checkpoint_stages: dynamo rejects checkpoint's context_fn,
    so the compiled path checkpoints without it; outputs, gradients and running statistics
    still equal the eager model without checkpointing."""
    torch.manual_seed(0)
    plain = build_model("resnet3d_10", 5, norm=norm, dropout=0.0)
    checkpointed = build_model("resnet3d_10", 5, norm=norm, dropout=0.0, checkpoint_stages=True)
    checkpointed.load_state_dict(plain.state_dict())
    compiled = torch.compile(checkpointed, backend="aot_eager")
    clip = torch.randn(*SMALL_CLIP)
    for _ in range(2):
        out_plain = plain(clip)
        out_plain.square().sum().backward()
        out_compiled = compiled(clip)
        out_compiled.square().sum().backward()
        torch.testing.assert_close(out_compiled, out_plain, rtol=1e-4, atol=1e-5)
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-4, msg=name)
    for (name, a), b in zip(plain.state_dict().items(), checkpointed.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)
    assert checkpointed.layer2[0].bn1.num_batches_tracked.item() == 2


def test_info_counts_params_and_flops():
    i3d = model_info("i3d_r50", (3, 32, 224, 224), 400, norm="bn")
    assert i3d.params == 28_043_472
    assert i3d.gmacs == pytest.approx(33.13, abs=0.01)
    r3d = model_info("r3d_18", (3, 16, 112, 112), 400, norm="bn")
    assert r3d.gmacs == pytest.approx(40.70, abs=0.01)  # torchvision's published GFLOPS


def test_info_cli_prints_params_and_both_flop_conventions(capsys):
    info_main(["--arch", "resnet3d_10", "--norm", "sn", "--input", "3,8,64,64",
               "--num-classes", "10"])
    out = capsys.readouterr().out
    assert "parameters:" in out and "GFLOPs (multiply-adds" in out and "raw FLOPs" in out
