"""Starting from 3D checkpoints: torchvision-exact mc3_18 / r2plus1d_18, load_pretrained for our,
torchvision, mmaction2 and PySlowFast checkpoints, BN -> SN conversion, freezing, and the
fine-tuning keys of train.py."""
from __future__ import annotations

import argparse
import copy
import os
import warnings

import pytest
import torch
import torchvision
import yaml
from torch import nn

import train as train_script
from snvideo.config import load_config
from snvideo.engine import builders
from snvideo.engine.checkpoint import load_checkpoint
from snvideo.models import (PretrainedError, build_model, detect_format, freeze_backbone,
                            load_pretrained)
from snvideo.norm import SwitchNorm3d, SyncSwitchNorm, convert_bn_to_sn, is_switch_norm

TINY = {"arch": "resnet3d_10", "dropout": 0.0,
        "arch_kwargs": {"widen_factor": 0.125, "no_max_pool": True}}


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial affine terms and running statistics in every BatchNorm."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm3d):
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.num_batches_tracked.fill_(77)
    return model


def random_like(state: dict[str, torch.Tensor], seed: int = 1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in state.items():
        if value.is_floating_point():
            out[key] = torch.randn(value.shape, generator=gen)
        else:
            out[key] = torch.randint(0, 1000, value.shape, generator=gen, dtype=value.dtype)
    return out


# --- torchvision architectures ------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["r3d_18", "mc3_18", "r2plus1d_18"])
def test_torchvision_state_dict_loads_strictly_and_outputs_match(arch):
    torch.manual_seed(0)
    reference = randomize_norms(getattr(torchvision.models.video, arch)()).eval()
    ours = build_model(arch, 400, norm="bn").eval()
    assert [k for k in ours.state_dict()] == [k for k in reference.state_dict()]
    ours.load_state_dict(reference.state_dict(), strict=True)
    clip = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(clip), reference(clip), rtol=1e-5, atol=1e-6)
    fresh = build_model(arch, 400, norm="bn")
    result = load_pretrained(fresh, reference.state_dict())
    assert result.format == "torchvision" and not result.missing and not result.skipped


@pytest.mark.parametrize("arch", ["mc3_18", "r2plus1d_18"])
@pytest.mark.parametrize("norm", ["sn", "ln"])
def test_new_archs_take_any_norm(arch, norm):
    model = build_model(arch, 7, norm=norm)
    assert model(torch.randn(2, 3, 4, 32, 32)).shape == (2, 7)
    kinds = {type(m) for m in model.modules() if isinstance(m, (nn.GroupNorm, SwitchNorm3d))}
    assert kinds == {SwitchNorm3d if norm == "sn" else nn.GroupNorm}


# --- replicas of other projects' checkpoints ----------------------------------------------------
def mmaction2_names(model) -> dict[str, str]:
    """mmaction2 Recognizer3D(ResNet3d, I3DHead) key -> our key, built from mmaction2's module
    structure (ConvModule .conv / .bn), for every tensor of our ResNet3d."""
    names = {}
    suffixes = {"conv": ["weight"],
                "bn": ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]}
    for kind, ours in (("conv", "conv1"), ("bn", "bn1")):
        for s in suffixes[kind]:
            names[f"backbone.conv1.{kind}.{s}"] = f"{ours}.{s}"
    for i in range(1, 5):
        for j, block in enumerate(getattr(model, f"layer{i}")):
            for k in (1, 2, 3):
                for kind, ours in (("conv", f"conv{k}"), ("bn", f"bn{k}")):
                    for s in suffixes[kind]:
                        names[f"backbone.layer{i}.{j}.conv{k}.{kind}.{s}"] = \
                            f"layer{i}.{j}.{ours}.{s}"
            if block.downsample is not None:
                for kind, index in (("conv", 0), ("bn", 1)):
                    for s in suffixes[kind]:
                        names[f"backbone.layer{i}.{j}.downsample.{kind}.{s}"] = \
                            f"layer{i}.{j}.downsample.{index}.{s}"
    names["cls_head.fc_cls.weight"], names["cls_head.fc_cls.bias"] = "fc.weight", "fc.bias"
    return names


def pyslowfast_names(model) -> dict[str, str]:
    """PySlowFast ResNet (I3D) key -> our key: s1.pathway0_stem, sK.pathway0_resJ.branch1 /
    branch2.{a,b,c}(_bn), head.projection."""
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    names = {"s1.pathway0_stem.conv.weight": "conv1.weight"}
    names.update({f"s1.pathway0_stem.bn.{s}": f"bn1.{s}" for s in bn})
    for stage in range(2, 6):
        for j, block in enumerate(getattr(model, f"layer{stage - 1}")):
            prefix, ours = f"s{stage}.pathway0_res{j}", f"layer{stage - 1}.{j}"
            for letter, k in (("a", 1), ("b", 2), ("c", 3)):
                names[f"{prefix}.branch2.{letter}.weight"] = f"{ours}.conv{k}.weight"
                names.update({f"{prefix}.branch2.{letter}_bn.{s}": f"{ours}.bn{k}.{s}"
                              for s in bn})
            if block.downsample is not None:
                names[f"{prefix}.branch1.weight"] = f"{ours}.downsample.0.weight"
                names.update({f"{prefix}.branch1_bn.{s}": f"{ours}.downsample.1.{s}" for s in bn})
    names["head.projection.weight"], names["head.projection.bias"] = "fc.weight", "fc.bias"
    return names


@pytest.fixture(scope="module")
def i3d_bn():
    return build_model("i3d_r50", 400, norm="bn")


def _replica(model, names: dict[str, str], seed: int = 1) -> dict[str, torch.Tensor]:
    ours = model.state_dict()
    assert set(names.values()) == set(ours), "replica must cover every tensor of the model"
    values = random_like({theirs: ours[key] for theirs, key in names.items()}, seed)
    return values


@pytest.mark.parametrize("fmt, wrap, names_of", [
    ("mmaction2", lambda sd: {"meta": {"epoch": 100}, "state_dict": sd}, mmaction2_names),
    ("pyslowfast", lambda sd: {"epoch": 196, "model_state": sd, "cfg": "MODEL:\n  ARCH: i3d\n"},
     pyslowfast_names),
])
def test_every_tensor_lands_at_its_place(fmt, wrap, names_of, i3d_bn):
    names = names_of(i3d_bn)
    replica = _replica(i3d_bn, names)
    extra = "data_preprocessor.mean" if fmt == "mmaction2" else "s3.pathway0_nonlocal1.g.weight"
    replica[extra] = torch.zeros(3)
    model = copy.deepcopy(i3d_bn)
    result = load_pretrained(model, wrap(replica))
    assert result.format == fmt
    state = model.state_dict()
    for theirs, ours in names.items():
        assert torch.equal(state[ours], replica[theirs]), f"{theirs} -> {ours}"
    assert result.skipped == [extra] and not result.missing
    assert len(result.loaded) == len(state)


@pytest.mark.parametrize("fmt, wrap, names_of, head", [
    ("mmaction2", lambda sd: {"state_dict": sd}, mmaction2_names, "cls_head.fc_cls."),
    ("pyslowfast", lambda sd: {"model_state": sd}, pyslowfast_names, "head.projection."),
])
def test_head_of_another_class_count_is_skipped(fmt, wrap, names_of, head, i3d_bn):
    replica = _replica(i3d_bn, names_of(i3d_bn))  # 400 classes
    model = build_model("i3d_r50", 10, norm="bn")
    fc_before = model.fc.weight.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a different head is reported, not warned about
        result = load_pretrained(model, wrap(replica), format=fmt)
    assert sorted(result.head_skipped) == [head + "bias", head + "weight"]
    assert sorted(result.missing) == ["fc.bias", "fc.weight"]
    assert torch.equal(model.fc.weight, fc_before)
    assert "classifier skipped" in result.summary() and len(result.summary().splitlines()) == 1
    assert torch.equal(model.conv1.weight, replica[next(k for k in replica if "conv" in k)])


def test_backbone_shape_mismatch_is_skipped_with_a_warning_naming_it(i3d_bn):
    replica = _replica(i3d_bn, mmaction2_names(i3d_bn))
    replica["backbone.layer2.0.conv1.conv.weight"] = torch.randn(128, 256, 1, 1, 1)  # 3x1x1 ours
    model = build_model("i3d_r50", 400, norm="bn")
    before = model.layer2[0].conv1.weight.clone()
    with pytest.warns(UserWarning, match=r"layer2\.0\.conv1\.weight"):
        result = load_pretrained(model, {"state_dict": replica})
    assert result.skipped == ["backbone.layer2.0.conv1.conv.weight"]
    assert result.missing == ["layer2.0.conv1.weight"]
    assert torch.equal(model.layer2[0].conv1.weight, before)
    assert torch.equal(model.layer2[0].bn1.weight, replica["backbone.layer2.0.conv1.bn.weight"])


def test_our_sn_checkpoint_round_trip_from_a_file(tmp_path):
    source = build_model("resnet3d_10", 5, norm="sn", widen_factor=0.25)
    state = random_like(source.state_dict())
    path = tmp_path / "epoch_3.pt"
    torch.save({"model": state, "epoch": 3, "config": {"model": {"arch": "resnet3d_10"}},
                "classes": ["a", "b", "c", "d", "e"], "best_top1": 50.0}, path)
    model = build_model("resnet3d_10", 5, norm="sn", widen_factor=0.25)
    result = load_pretrained(model, path)
    assert result.format == "snvideo" and not result.skipped and not result.missing
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert str(path) in result.summary()


def test_bn_checkpoint_into_sn_model_warns_about_the_mix():
    bn = build_model("resnet3d_10", 5, norm="bn", widen_factor=0.25)
    sn = build_model("resnet3d_10", 5, norm="sn", widen_factor=0.25)
    with pytest.warns(UserWarning, match="no SN importance logits"):
        result = load_pretrained(sn, {"model": bn.state_dict()})
    assert all(k.endswith(("mean_weight", "var_weight")) for k in result.missing)


# --- bad input ------------------------------------------------------------------------------------
def _one_line_error(source, match, model=None, **kwargs):
    model = model or build_model("resnet3d_10", 5, norm="bn", widen_factor=0.25)
    with pytest.raises(PretrainedError) as info:
        load_pretrained(model, source, **kwargs)
    message = str(info.value)
    assert len(message.splitlines()) == 1, message
    assert match in message, message
    return message


def test_bad_files_give_one_line_errors_naming_them(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n" * 10)
    assert str(text) in _one_line_error(text, "not a PyTorch checkpoint")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    assert str(empty) in _one_line_error(empty, "not a PyTorch checkpoint")
    _one_line_error(tmp_path / "missing.pt", "not found")
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    assert str(tensor) in _one_line_error(tensor, "holds a Tensor")
    pickled = tmp_path / "reference_ckpt.pth"
    torch.save({"model": {}, "args": argparse.Namespace(lr=0.1)}, pickled)
    assert str(pickled) in _one_line_error(pickled, "weights_only=True")
    junk = tmp_path / "junk.pt"
    torch.save({"weights": [1, 2, 3], "note": "x"}, junk)
    assert str(junk) in _one_line_error(junk, "cannot tell the checkpoint format")


def test_wrong_formats_give_one_line_errors(i3d_bn):
    mm = {"state_dict": _replica(i3d_bn, mmaction2_names(i3d_bn))}
    model = copy.deepcopy(i3d_bn)
    message = _one_line_error(mm, "not a torchvision checkpoint", model, format="torchvision")
    assert "looks like a mmaction2" in message
    _one_line_error(mm, "not a pyslowfast checkpoint", model, format="pyslowfast")
    _one_line_error(mm, "unknown checkpoint format", model, format="caffe2")
    tv = torchvision.models.video.r3d_18().state_dict()
    _one_line_error(tv, "no backbone tensor of this torchvision checkpoint fits", model)
    resnet50_2d = torchvision.models.resnet18().state_dict()
    _one_line_error(resnet50_2d, "2D checkpoint", build_model("resnet3d_18", 5, norm="bn"))


def test_detect_format():
    sd = {"stem.0.weight": torch.zeros(1)}
    assert detect_format(sd) == "torchvision"
    assert detect_format({"model": {"conv1.weight": torch.zeros(1)}, "epoch": 1}) == "snvideo"
    assert detect_format({"state_dict": {"backbone.conv1.conv.weight": torch.zeros(1)}}) == \
        "mmaction2"
    assert detect_format({"model_state": {"s1.pathway0_stem.conv.weight": torch.zeros(1)}}) == \
        "pyslowfast"


# --- BN -> SN conversion --------------------------------------------------------------------------
def _relative(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("arch, kwargs, shape", [
    ("i3d_r50", {}, (2, 3, 8, 64, 64)),
    ("r2plus1d_18", {}, (2, 3, 4, 48, 48)),
])
def test_converted_model_computes_what_the_bn_model_computed(arch, kwargs, shape):
    torch.manual_seed(0)
    bn = build_model(arch, 10, norm="bn", dropout=0.0, **kwargs)
    bn.train()
    with torch.no_grad():  # realistic running statistics
        for _ in range(2):
            bn(torch.randn(shape) + 0.3)
    randomize_norms_affine(bn)
    sn = convert_bn_to_sn(copy.deepcopy(bn))
    assert not any(isinstance(m, nn.BatchNorm3d) for m in sn.modules())
    assert sum(map(is_switch_norm, sn.modules())) == \
        sum(isinstance(m, nn.BatchNorm3d) for m in bn.modules())
    clip = torch.randn(shape) + 0.3
    with torch.no_grad():
        eval_error = _relative(sn.eval()(clip), bn.eval()(clip))
        train_error = _relative(sn.train()(clip), bn.train()(clip))
    assert eval_error < 1e-2
    assert train_error < 2e-2  # measured: 6e-3 (i3d_r50 at 2x8x64x64), 6e-5 (r2plus1d_18)


def randomize_norms_affine(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm3d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)


def test_conversion_carries_every_bn_tensor_and_sync_layers():
    bn = randomize_norms(nn.Sequential(nn.BatchNorm3d(4), nn.SyncBatchNorm(6, momentum=None)))
    sn = convert_bn_to_sn(copy.deepcopy(bn), bn_logit=10.0)
    assert type(sn[0]) is SwitchNorm3d and type(sn[1]) is SyncSwitchNorm
    assert sn[1].momentum is None
    for old, new in zip(bn, sn):
        for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            assert torch.equal(getattr(new, name), getattr(old, name)), name
        weights = new.importance()
        assert weights["mean"]["BN"] > 0.9999 and weights["var"]["BN"] > 0.9999
    # and it learns its own mix from there: the importance logits get gradients
    sn[0].train()(torch.randn(2, 4, 3, 5, 5) * 2 + 1).square().mean().backward()
    assert sn[0].mean_weight.grad.abs().sum() > 0 and sn[0].var_weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="no running statistics"):
        convert_bn_to_sn(nn.BatchNorm3d(3, track_running_stats=False))


# --- freezing -----------------------------------------------------------------------------------
def test_freeze_backbone_stops_updates_and_keeps_statistics():
    model = build_model("resnet3d_10", 5, norm="sn", widen_factor=0.25, dropout=0.0)
    result = freeze_backbone(model, frozen_stages=1)
    assert result.frozen_parts == ["stem", "layer1"]
    assert all(not p.requires_grad for p in [*model.conv1.parameters(), *model.bn1.parameters(),
                                              *model.layer1.parameters()])
    assert all(p.requires_grad for p in model.layer2.parameters())
    model.train()
    assert not model.bn1.training and not model.layer1[0].bn1.training
    assert model.layer2[0].bn1.training
    stats = model.bn1.running_mean.clone()
    model(torch.randn(2, 3, 4, 32, 32))
    assert torch.equal(model.bn1.running_mean, stats)
    freeze_backbone(model, frozen_stages=-1, freeze_norm_stats=True)
    model.train()
    assert not any(m.training for m in model.modules() if is_switch_norm(m))
    assert model.training and model.layer2.training
    with pytest.raises(ValueError, match="frozen_stages"):
        freeze_backbone(model, frozen_stages=5)


def test_frozen_layers_stay_frozen_through_sync_conversion():
    from snvideo.norm import convert_sync_switchnorm

    model = build_model("resnet3d_10", 5, norm="sn", widen_factor=0.25)
    freeze_backbone(model, frozen_stages=0)
    convert_sync_switchnorm(model)
    assert type(model.bn1) is SyncSwitchNorm and not model.bn1.weight.requires_grad
    assert model.layer1[0].bn1.weight.requires_grad
    model.train()
    assert not model.bn1.training and model.layer1[0].bn1.training


def test_backbone_lr_mult_in_the_optimizer_groups():
    cfg = load_config(None, ["train.lr=0.1", "train.backbone_lr_mult=0.1"])
    model = build_model("resnet3d_10", 5, norm="sn", widen_factor=0.25)
    freeze_backbone(model, frozen_stages=0)
    optimizer = builders.build_optimizer(model, cfg)
    lrs = {group["name"]: [] for group in optimizer.param_groups}
    for group in optimizer.param_groups:
        lrs[group["name"]].append(group["lr"])
    assert lrs["head"] == [0.1] and lrs["backbone"] == [pytest.approx(0.01)] * 2  # decay, norms
    assert optimizer.param_groups[0]["name"] == "head"
    grouped = [id(p) for g in optimizer.param_groups for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(grouped) == sorted(trainable) and len(set(grouped)) == len(grouped)
    head = [p for g in optimizer.param_groups if g["name"] == "head" for p in g["params"]]
    assert {id(p) for p in head} == {id(model.fc.weight), id(model.fc.bias)}


# --- train.py -----------------------------------------------------------------------------------
def write_config(tmp_path, data_root, model: dict, train: dict | None = None) -> str:
    cfg = {
        "work_dir": str(tmp_path / "work"),
        "model": {**TINY, **model},
        "data": {"root": str(data_root / "videos"),
                 "train_ann": str(data_root / "annotations" / "train.csv"),
                 "val_ann": str(data_root / "annotations" / "val.csv"),
                 "clip_len": 4, "frame_interval": 2, "batch_size": 4, "num_workers": 0,
                 "short_side": 32, "crop_size": 28},
        "train": {"epochs": 1, "lr": 0.05, "log_interval": 1, "clip_grad": None, **(train or {})},
        "test": {"num_clips": 1, "num_crops": 1, "num_workers": 0},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _bn_checkpoint(path, num_classes=5):
    model = randomize_norms(build_model(TINY["arch"], num_classes, norm="bn", dropout=0.0,
                                        **TINY["arch_kwargs"]))
    torch.save({"model": model.state_dict(), "epoch": 10}, path)
    return model.state_dict()


def test_train_converts_freezes_and_reports(tmp_path, tiny_data, capsys):
    pretrained = _bn_checkpoint(tmp_path / "bn.pt")  # 5 classes, the data has 3
    cfg = write_config(tmp_path, tiny_data,
                       model={"norm": "sn", "pretrained": str(tmp_path / "bn.pt"),
                              "pretrained_bn_to_sn": True, "pretrained_bn_logit": 6.0,
                              "frozen_stages": 1},
                       train={"backbone_lr_mult": 0.5, "epochs": 2})
    assert train_script.main(["--config", cfg]) == 0
    out = capsys.readouterr().out
    assert "pretrained snvideo checkpoint" in out and "skipped: fc.weight, fc.bias" in out
    assert "converted 12 BatchNorm layers" in out and "BN importance 0.99507" in out
    assert "frozen: stem, layer1" in out
    ckpt = load_checkpoint(str(tmp_path / "work" / "latest.pt"))
    state = ckpt["model"]
    for key, value in pretrained.items():
        if key.startswith(("conv1.", "bn1.", "layer1.")):
            assert torch.equal(state[key], value), f"frozen {key} changed"
    assert state["bn1.mean_weight"].tolist() == [0.0, 0.0, 6.0]  # frozen: as converted
    assert not torch.equal(state["layer2.0.conv1.weight"], pretrained["layer2.0.conv1.weight"])
    assert not torch.equal(state["layer2.0.bn1.running_mean"],
                           pretrained["layer2.0.bn1.running_mean"])
    groups = {g["name"]: g["initial_lr"] for g in ckpt["optimizer"]["param_groups"]}
    assert groups == {"head": 0.05, "backbone": pytest.approx(0.025)}


def test_train_freeze_norm_stats_keeps_every_statistic(tmp_path, tiny_data):
    pretrained = _bn_checkpoint(tmp_path / "bn.pt", num_classes=3)
    cfg = write_config(tmp_path, tiny_data,
                       model={"norm": "bn", "pretrained": str(tmp_path / "bn.pt"),
                              "pretrained_format": "snvideo", "freeze_norm_stats": True})
    assert train_script.main(["--config", cfg]) == 0
    state = load_checkpoint(str(tmp_path / "work" / "latest.pt"))["model"]
    for key, value in pretrained.items():
        if key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert torch.equal(state[key], value), key
    assert not torch.equal(state["layer1.0.conv1.weight"], pretrained["layer1.0.conv1.weight"])


@pytest.mark.parametrize("model, train, match", [
    ({"pretrained": "PLACEHOLDER/missing.pt"}, {}, "model.pretrained: not found"),
    ({"pretrained": "PLACEHOLDER/notes.txt"}, {}, "not a PyTorch checkpoint"),
    ({"pretrained_bn_to_sn": True}, {}, "needs model.pretrained"),
    ({"frozen_stages": 7}, {}, "model.frozen_stages"),
    ({"pretrained_format": "caffe"}, {}, "model.pretrained_format must be one of"),
    ({}, {"backbone_lr_mult": -1}, "train.backbone_lr_mult"),
    ({"freeze_norm_stats": True}, {"sn_batch_average": True}, "sn_batch_average"),
])
def test_train_config_errors_exit_2_with_one_line(model, train, match, tmp_path, tiny_data,
                                                  capsys):
    (tmp_path / "notes.txt").write_text("hello\n")
    model = {k: v.replace("PLACEHOLDER", str(tmp_path)) if isinstance(v, str) else v
             for k, v in model.items()}
    cfg = write_config(tmp_path, tiny_data, model={"norm": "sn", **model}, train=train)
    assert train_script.main(["--config", cfg]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err, err
    assert not os.path.exists(tmp_path / "work" / "latest.pt")
