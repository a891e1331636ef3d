"""2D -> 3D weight inflation from torchvision and official-SN ImageNet ResNet checkpoints."""
from __future__ import annotations

import logging
import re

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from snvideo.models import build_model, inflate_2d, load_pretrained_2d


@pytest.fixture(scope="module")
def resnet50_2d() -> dict[str, torch.Tensor]:
    """A torchvision resnet50 state dict with random weights and non-trivial BN statistics."""
    torch.manual_seed(0)
    model = torchvision.models.resnet50()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.num_batches_tracked.fill_(1234)
    return model.state_dict()


def _official_sn_checkpoint(state_2d: dict[str, torch.Tensor]) -> dict:
    """The 2D weights as the official SN release stores them: sn1/sn2/sn3 names, (1, C, 1, 1)
    affine terms, (1, C, 1) running stats, mean/var_weight, no num_batches_tracked,
    DataParallel prefix, wrapped in {'state_dict': ...}."""
    torch.manual_seed(1)
    official = {}
    for key, value in state_2d.items():
        module, _, name = key.rpartition(".")
        sn_module = re.sub(r"(^|\.)bn(\d)$", r"\1sn\2", module)
        if sn_module == module and not module.endswith("downsample.1"):  # not a norm
            official[f"module.{key}"] = value
        elif name in ("weight", "bias"):
            official[f"module.{sn_module}.{name}"] = value.reshape(1, -1, 1, 1)
            official.setdefault(f"module.{sn_module}.mean_weight", torch.randn(3))
            official.setdefault(f"module.{sn_module}.var_weight", torch.randn(3))
        elif name in ("running_mean", "running_var"):
            official[f"module.{sn_module}.{name}"] = value.reshape(1, -1, 1)
    return {"state_dict": official, "epoch": 100}


@pytest.mark.parametrize("arch", ["i3d_r50", "resnet3d_50"])
def test_inflated_kernels_sum_over_time_to_the_2d_kernels(arch, resnet50_2d):
    model = build_model(arch, 400, norm="bn")
    fc_before = model.fc.weight.clone()
    result = inflate_2d(model, resnet50_2d)
    state_3d = model.state_dict()
    for key, value_2d in resnet50_2d.items():
        if key.startswith("fc."):
            continue
        value_3d = state_3d[key]
        if value_3d.dim() == 5:
            torch.testing.assert_close(value_3d.sum(2), value_2d)
            assert torch.equal(value_3d, value_3d[:, :, :1].expand_as(value_3d))  # repeated
        else:  # norm weight/bias/running stats/num_batches_tracked: copied as they are
            assert torch.equal(value_3d, value_2d), key
    assert sorted(result.skipped) == ["fc.bias", "fc.weight"]
    assert torch.equal(model.fc.weight, fc_before)
    assert result.missing == []
    assert set(result.loaded) == {k for k in state_3d if not k.startswith("fc.")}


def test_constant_clip_through_inflated_conv1_equals_2d_conv1(resnet50_2d):
    model = build_model("i3d_r50", 10, norm="bn", conv1_stride_t=1)
    inflate_2d(model, resnet50_2d)
    frame = torch.randn(1, 3, 32, 32)
    clip = frame.unsqueeze(2).expand(1, 3, 9, 32, 32)
    out_3d = model.conv1(clip)
    out_2d = F.conv2d(frame, resnet50_2d["conv1.weight"], stride=2, padding=3)
    pad_t = model.conv1.padding[0]
    for t in range(pad_t, 9 - pad_t):  # every frame whose temporal window is inside the clip
        torch.testing.assert_close(out_3d[:, :, t], out_2d, rtol=1e-4, atol=1e-4)


def test_bn_weights_into_an_sn_model_leave_the_importance_weights_missing(resnet50_2d):
    model = build_model("i3d_r101", 400, norm="sn")
    result = inflate_2d(model, resnet50_2d)  # resnet50 into r101: layer3.6.. stay missing
    assert torch.equal(model.layer1[0].bn2.running_var, resnet50_2d["layer1.0.bn2.running_var"])
    assert torch.equal(model.bn1.weight, resnet50_2d["bn1.weight"])
    assert "layer1.0.bn1.mean_weight" in result.missing
    assert "layer3.22.conv2.weight" in result.missing and "layer3.5.conv2.weight" in result.loaded
    assert all(k.startswith("layer3.") or k.endswith(("mean_weight", "var_weight"))
               for k in result.missing)


def test_official_sn_checkpoint_loads_from_file(resnet50_2d, tmp_path, caplog):
    checkpoint = _official_sn_checkpoint(resnet50_2d)
    path = tmp_path / "resnetv1sn50.pth"
    torch.save(checkpoint, path)
    model = build_model("i3d_r50", 400, norm="sn")
    with caplog.at_level(logging.INFO, logger="snvideo.models.inflate"):
        result = load_pretrained_2d(model, str(path))
    assert "loaded" in caplog.text and str(path) in caplog.text
    official = checkpoint["state_dict"]
    assert torch.equal(model.layer2[0].bn3.weight, official["module.layer2.0.sn3.weight"].flatten())
    assert torch.equal(model.bn1.running_mean, official["module.sn1.running_mean"].flatten())
    assert torch.equal(model.layer2[0].downsample[1].mean_weight,
                       official["module.layer2.0.downsample.1.mean_weight"])
    assert torch.equal(model.layer4[2].bn2.var_weight, official["module.layer4.2.sn2.var_weight"])
    # the release has no num_batches_tracked: those counters are all that is missing
    assert result.missing and all(k.endswith("num_batches_tracked") for k in result.missing)
    assert sorted(result.skipped) == ["module.fc.bias", "module.fc.weight"]


def test_official_sn_importance_weights_are_skipped_for_a_bn_target(resnet50_2d):
    official = _official_sn_checkpoint(resnet50_2d)["state_dict"]
    model = build_model("resnet3d_50", 400, norm="bn")
    result = inflate_2d(model, official)
    assert torch.equal(model.layer1[1].bn1.bias, official["module.layer1.1.sn1.bias"].flatten())
    assert "module.layer1.1.sn1.mean_weight" in result.skipped
    assert all(k.endswith("num_batches_tracked") for k in result.missing)


def test_a_wrong_shape_warns_and_is_listed(resnet50_2d):
    broken = dict(resnet50_2d)
    broken["layer2.1.conv2.weight"] = torch.randn(128, 64, 3, 3)
    model = build_model("i3d_r50", 400, norm="bn")
    before = model.layer2[1].conv2.weight.clone()
    with pytest.warns(UserWarning, match="shape mismatch for layer2.1.conv2.weight"):
        result = inflate_2d(model, broken)
    assert "layer2.1.conv2.weight" in result.skipped
    assert result.missing == ["layer2.1.conv2.weight"]
    assert torch.equal(model.layer2[1].conv2.weight, before)


def test_r3d_18_takes_resnet18_weights_through_its_name_mapping():
    torch.manual_seed(0)
    state_2d = torchvision.models.resnet18().state_dict()
    model = build_model("r3d_18", 400, norm="bn")
    result = inflate_2d(model, state_2d)
    assert result.missing == []
    torch.testing.assert_close(model.stem[0].weight.sum(2), state_2d["conv1.weight"])
    torch.testing.assert_close(model.layer2[0].conv1[0].weight.sum(2),
                               state_2d["layer2.0.conv1.weight"])
    assert torch.equal(model.layer2[0].conv2[1].running_mean, state_2d["layer2.0.bn2.running_mean"])


def test_unrelated_state_dict_warns_and_leaves_everything_missing():
    model = build_model("resnet3d_10", 10, norm="bn")
    with pytest.warns(UserWarning, match="no key"):
        result = inflate_2d(model, {"encoder.weight": torch.zeros(3)})
    assert result.loaded == [] and result.skipped == ["encoder.weight"]
    assert len(result.missing) == len([k for k in model.state_dict() if not k.startswith("fc.")])
