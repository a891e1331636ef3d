"""X3D: structure against PySlowFast's own model and the published table, every norm kind,
training through train.py, checkpointing and channels_last_3d, PySlowFast checkpoints (names,
shapes, the logits of PySlowFast's own X3D), BN -> SN conversion.

The reference files in tests/data/pyslowfast/ come from PySlowFast's X3D
(make_x3d_reference.py there, which fills its weights with seeded_weights.seeded_tensor)."""
from __future__ import annotations

import copy
import importlib.util
import json
import os

import pytest
import torch
from torch import nn

import train as train_script
from snvideo.config import ModelConfig
from snvideo.engine import builders
from snvideo.engine.checkpoint import load_checkpoint
from snvideo.models import ARCHS, build_model, detect_format, freeze_backbone, load_pretrained
from snvideo.models.info import model_info
from snvideo.models.x3d import X3D_PRESETS, X3DBlock
from snvideo.norm import NORM_KINDS, build_norm, is_switch_norm
from test_models import assert_checkpointing_is_exact
from test_train import write_config as train_config

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "pyslowfast")
_spec = importlib.util.spec_from_file_location("seeded_weights",
                                               os.path.join(DATA, "seeded_weights.py"))
seeded_weights = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(seeded_weights)

ARCH_NAMES = ["x3d_xs", "x3d_s", "x3d_m", "x3d_l"]
# CPU-sized X3D: stem 6 channels, stages 6/12/24/48 (inner 13/27/54/108), depths 1/2/5/3
TINY = {"width_factor": 0.5, "depth_factor": 1.0, "head_width": 64}
TINY_CLIP = (2, 3, 4, 32, 32)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def pyslowfast_keys(arch: str) -> list[tuple[str, tuple[int, ...]]]:
    """PySlowFast's state-dict keys and shapes of this X3D size (400 classes)."""
    name = "x3d_l" if arch == "x3d_l" else "x3d_m"  # XS, S and M are one network
    with open(os.path.join(DATA, f"{name}_keys.json")) as f:
        return [(key, tuple(shape)) for key, shape in json.load(f)["keys"]]


def pyslowfast_state(arch: str) -> dict[str, torch.Tensor]:
    """A PySlowFast X3D state dict: its names and shapes, the seeded deterministic values."""
    return {key: torch.tensor(100) if key.endswith("num_batches_tracked")
            else seeded_weights.seeded_tensor(key, shape) for key, shape in pyslowfast_keys(arch)}


def to_pyslowfast_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {("head.projection." + k[3:] if k.startswith("fc.") else k): v
            for k, v in state.items()}


# --- structure ------------------------------------------------------------------------------------
def test_presets_hold_the_published_inputs():
    inputs = {arch: (p.frames, p.stride, p.train_crop, p.test_crop)
              for arch, p in X3D_PRESETS.items()}
    assert inputs == {"x3d_xs": (4, 12, 160, 182), "x3d_s": (13, 6, 160, 182),
                      "x3d_m": (16, 5, 224, 256), "x3d_l": (16, 5, 312, 356)}
    assert set(ARCH_NAMES) <= set(ARCHS)


@pytest.mark.parametrize("arch", ["x3d_m", "x3d_l"])
def test_names_and_shapes_are_pyslowfasts(arch):
    """Every tensor of PySlowFast's X3D has ours of the same name and shape, in the same order,
    except the classifier (their head.projection is our fc)."""
    with torch.device("meta"):
        model = build_model(arch, 400, norm="bn")
    ours = [(k, tuple(v.shape)) for k, v in to_pyslowfast_names(model.state_dict()).items()]
    assert ours == pyslowfast_keys(arch)


def test_x3d_m_layout():
    with torch.device("meta"):
        model = build_model("x3d_m", 400, norm="bn")
    stem = model.s1.pathway0_stem
    assert (stem.conv_xy.kernel_size, stem.conv_xy.stride) == ((1, 3, 3), (1, 2, 2))
    assert (stem.conv.kernel_size, stem.conv.groups, stem.conv.out_channels) == ((5, 1, 1), 24, 24)
    stages = [model.s2, model.s3, model.s4, model.s5]
    assert [len(s) for s in stages] == [3, 5, 11, 7]
    assert [s[0].branch2.c.out_channels for s in stages] == [24, 48, 96, 192]
    assert [s[0].branch2.b.out_channels for s in stages] == [54, 108, 216, 432]
    for stage in stages:
        for i, block in enumerate(stage):
            b = block.branch2.b
            assert (b.kernel_size, b.groups) == ((3, 3, 3), b.in_channels)  # depthwise 3x3x3
            assert b.stride == ((1, 2, 2) if i == 0 else (1, 1, 1))
            assert hasattr(block.branch2.se, "fc1") == (i % 2 == 0)  # SE in every other block
            assert (block.branch1 is not None) == (i == 0)
    assert [s[0].branch2.se.fc1.out_channels for s in stages] == [8, 8, 16, 32]
    assert isinstance(model.s2[0].branch2.swish, nn.SiLU)
    assert (model.head.conv_5.out_channels, model.head.lin_5.out_channels) == (432, 2048)
    assert model.head.lin_5.bias is None and model.fc.in_features == 2048
    assert [len(getattr(build_model("x3d_l", 10, norm="bn"), f"s{i}")) for i in (2, 3, 4, 5)] \
        == [5, 10, 25, 15]


def test_stage_outputs_of_x3d_m_at_its_test_input():
    p = X3D_PRESETS["x3d_m"]
    shapes = []
    with torch.device("meta"):
        model = build_model("x3d_m", 400, norm="bn").eval()
        for stage in (model.s1, model.s2, model.s3, model.s4, model.s5):
            stage[-1].register_forward_hook(lambda m, i, out: shapes.append(tuple(out.shape)))
        features = model.forward_features(torch.zeros(1, 3, p.frames, p.test_crop, p.test_crop))
        logits = model(torch.zeros(2, 3, p.frames, p.test_crop, p.test_crop))
    assert shapes[:5] == [(1, 24, 16, 128, 128), (1, 24, 16, 64, 64), (1, 48, 16, 32, 32),
                          (1, 96, 16, 16, 16), (1, 192, 16, 8, 8)]
    assert tuple(features.shape) == (1, 2048) and tuple(logits.shape) == (2, 400)


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_output_shapes(arch):
    model = build_model(arch, 7, norm="bn").eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 4, 32, 32))
        features = model.forward_features(torch.randn(2, 3, 4, 32, 32))
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()
    assert features.shape == (2, 2048) and model.num_features == 2048
    assert isinstance(model.fc, nn.Linear) and model.fc.out_features == 7
    assert isinstance(model.dropout, nn.Dropout) and model.dropout.p == 0.5


# Published (PySlowFast / PyTorchVideo model zoo): parameters at 400 classes, GFLOPs per view.
TABLE = {"x3d_xs": (3.79e6, 0.91), "x3d_s": (3.79e6, 2.96), "x3d_m": (3.79e6, 6.72),
         "x3d_l": (6.15e6, 26.64)}


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_parameters_and_flops_match_the_table(arch):
    """Parameters within 0.5% of the table and equal to PySlowFast's. GFLOPs: the zoo counts
    with fvcore at the 3-crop test input (frames x test_crop^2): conv and linear multiply-adds,
    X3D's depthwise convs and SE included, plus 5 per element of each norm layer (fvcore's
    estimate for a norm with affine terms); model_info counts the multiply-adds only."""
    table_params, table_gflops = TABLE[arch]
    p = X3D_PRESETS[arch]
    shape = (3, p.frames, p.test_crop, p.test_crop)
    info = model_info(arch, shape, 400, norm="bn")
    assert abs(info.params - table_params) <= 0.005 * table_params
    params = sum(s.numel() for s in (torch.empty(shape_, device="meta")
                                     for key, shape_ in pyslowfast_keys(arch)
                                     if not key.endswith(("running_mean", "running_var",
                                                          "num_batches_tracked"))))
    assert info.params == params
    normalized = []
    with torch.device("meta"):
        model = build_model(arch, 400, norm="bn").eval()
        for m in model.modules():
            if isinstance(m, nn.BatchNorm3d):
                m.register_forward_hook(lambda m, i, out: normalized.append(out.numel()))
        model(torch.zeros(1, *shape))
    zoo_gflops = info.gmacs + 5 * sum(normalized) / 1e9
    assert zoo_gflops == pytest.approx(table_gflops, rel=0.01)
    assert info.gmacs < 0.93 * table_gflops  # the norms are ~8% of X3D's count


# --- norms ------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm", NORM_KINDS)
def test_every_norm_kind_builds_and_trains(norm):
    torch.manual_seed(0)
    model = build_model("x3d_xs", 5, norm=norm, **TINY).train()
    logits = model(torch.randn(*TINY_CLIP))
    logits.square().sum().backward()
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    norm_type = type(build_norm(norm, 8, dim=3))
    bn_twin = build_model("x3d_xs", 5, norm="bn", **TINY)
    norms = [m for m in model.modules() if type(m) is norm_type]
    assert len(norms) == sum(isinstance(m, nn.BatchNorm3d) for m in bn_twin.modules()) == 39
    assert norm == "bn" or not any(isinstance(m, nn.BatchNorm3d) for m in model.modules())
    assert not any(type(m) is norm_type for m in model.s2[0].branch2.se.modules())  # SE: none


def test_group_norm_groups_follow_the_default_rule():
    with torch.device("meta"):
        model = build_model("x3d_m", 400, norm="gn")
    groups = {m.num_channels: m.num_groups for m in model.modules()
              if isinstance(m, nn.GroupNorm)}
    assert groups == {24: 24, 54: 27, 48: 24, 108: 27, 96: 32, 216: 27, 192: 32, 432: 27}


# --- training -----------------------------------------------------------------------------------
def write_config(tmp_path, data_root) -> str:
    """test_train's tiny config with a tiny x3d_xs."""
    return train_config(tmp_path, data_root,
                        model={"arch": "x3d_xs", "norm": "sn", "arch_kwargs": TINY},
                        data={"crop_size": 32}, test={"num_clips": 1})


def test_training_step_through_train_py(tmp_path, tiny_data):
    start = build_model("x3d_xs", 3, norm="sn", dropout=0.0, **TINY).state_dict()
    assert train_script.main(["--config", write_config(tmp_path, tiny_data)]) == 0
    ckpt = load_checkpoint(str(tmp_path / "work" / "latest.pt"))
    state = ckpt["model"]
    assert ckpt["epoch"] == 1 and set(state) == set(start)
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    for key in ("s1.pathway0_stem.conv_xy.weight", "s3.pathway0_res0.branch2.se.fc1.weight",
                "head.lin_5.weight", "fc.weight", "s5.pathway0_res2.branch2.c_bn.mean_weight"):
        assert not torch.equal(state[key], start[key]), f"{key} was not trained"
    model = build_model("x3d_xs", 3, norm="sn", **TINY)
    result = load_pretrained(model, str(tmp_path / "work" / "latest.pt"))
    assert result.format == "snvideo" and not result.missing and not result.skipped


@pytest.mark.parametrize("norm", ["bn", "sn"])
def test_checkpoint_stages_gives_identical_outputs_grads_and_running_stats(norm):
    torch.manual_seed(0)
    plain = build_model("x3d_xs", 5, norm=norm, dropout=0.0, **TINY)
    checkpointed = build_model("x3d_xs", 5, norm=norm, dropout=0.0, checkpoint_stages=True,
                               **TINY)
    clip = torch.randn(*TINY_CLIP)
    assert_checkpointing_is_exact(plain, checkpointed, clip)
    assert checkpointed.s3[0].branch2.a_bn.num_batches_tracked.item() == 2


def test_channels_last_3d_matches_contiguous():
    torch.manual_seed(0)
    plain = build_model("x3d_xs", 5, norm="sn", dropout=0.0, **TINY)
    cl = copy.deepcopy(plain).to(memory_format=torch.channels_last_3d)
    assert cl.s2[0].branch2.a.weight.is_contiguous(memory_format=torch.channels_last_3d)
    clip = torch.randn(*TINY_CLIP)
    out_plain = plain(clip)
    out_cl = cl(clip.contiguous(memory_format=torch.channels_last_3d))
    out_plain.square().sum().backward()
    out_cl.square().sum().backward()
    torch.testing.assert_close(out_cl, out_plain, rtol=1e-4, atol=1e-5)
    for (name, p), q in zip(plain.named_parameters(), cl.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-4, msg=name)


def test_zero_init_last_norm_and_freeze_backbone():
    model = build_model("x3d_xs", 5, norm="sn", zero_init_last_norm=True, **TINY)
    blocks = [m for m in model.modules() if isinstance(m, X3DBlock)]
    assert len(blocks) == 11 and all(not b.branch2.c_bn.weight.any() for b in blocks)
    assert bool((model.head.conv_5_bn.weight == 1).all())
    result = freeze_backbone(model, frozen_stages=1)
    assert result.frozen_parts == ["stem", "layer1"]
    assert all(not p.requires_grad for p in [*model.s1.parameters(), *model.s2.parameters()])
    assert all(p.requires_grad for p in model.s3.parameters())
    model.train()
    assert not model.s2[0].branch2.a_bn.training and model.s3[0].branch2.a_bn.training


# --- PySlowFast checkpoints ------------------------------------------------------------------------
def test_detect_format_recognises_x3d_checkpoints():
    names = {"s1.pathway0_stem.conv_xy.weight": torch.zeros(1),
             "s2.pathway0_res0.branch2.a.weight": torch.zeros(1),
             "head.projection.weight": torch.zeros(1)}
    assert detect_format({"model_state": names, "epoch": 300}) == "pyslowfast"
    assert detect_format(names) == "pyslowfast"


@pytest.mark.parametrize("arch", ["x3d_m", "x3d_l"])
def test_replica_checkpoint_loads_every_tensor(arch):
    gen = torch.Generator().manual_seed(0)
    replica = {key: torch.randint(0, 1000, shape, generator=gen) if key.endswith("tracked")
               else torch.randn(shape, generator=gen) for key, shape in pyslowfast_keys(arch)}
    model = build_model(arch, 400, norm="bn")
    result = load_pretrained(model, {"model_state": replica, "epoch": 300, "cfg": "X3D"})
    assert result.format == "pyslowfast"
    assert not result.missing and not result.skipped and len(result.loaded) == len(replica)
    state = to_pyslowfast_names(model.state_dict())
    assert all(torch.equal(state[key], value) for key, value in replica.items())

    other = build_model(arch, 10, norm="bn")
    result = load_pretrained(other, {"model_state": replica}, format="pyslowfast")
    assert sorted(result.head_skipped) == ["head.projection.bias", "head.projection.weight"]
    assert sorted(result.skipped) == sorted(result.head_skipped)
    assert sorted(result.missing) == ["fc.bias", "fc.weight"]
    assert torch.equal(other.head.lin_5.weight, replica["head.lin_5.weight"])


@pytest.mark.parametrize("arch", ["x3d_xs", "x3d_m"])
def test_logits_equal_pyslowfasts_own_model(arch):
    """The same seeded weights in PySlowFast's X3D and ours: the same eval logits."""
    with open(os.path.join(DATA, f"{arch}_logits.json")) as f:
        reference = json.load(f)
    model = build_model(arch, 400, norm="bn").eval()
    result = load_pretrained(model, {"model_state": pyslowfast_state(arch)})
    assert result.format == "pyslowfast" and not result.missing and not result.skipped
    clip = torch.randn(reference["input_shape"],
                       generator=torch.Generator().manual_seed(reference["input_seed"]))
    with torch.no_grad():
        logits = model(clip)
    expected = torch.tensor(reference["logits"])
    assert expected.abs().max() > 0.5  # activations of order 1, not saturated or vanishing
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_eval_outputs_identical_across_a_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    source = build_model("x3d_xs", 5, norm="sn")
    source.load_state_dict(seeded_weights.seeded_state(source.state_dict()))
    path = tmp_path / "epoch_1.pt"
    torch.save({"model": source.state_dict(), "epoch": 1}, path)
    loaded = build_model("x3d_xs", 5, norm="sn")
    result = load_pretrained(loaded, str(path))
    assert result.format == "snvideo" and not result.missing and not result.skipped
    clip = torch.randn(2, 3, 4, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(clip), source.eval()(clip), rtol=0, atol=0)


def test_pretrained_bn_to_sn_keeps_the_bn_models_logits(tmp_path):
    """A BN X3D checkpoint with PySlowFast's names, loaded with pretrained_bn_to_sn: every norm
    becomes SN and the eval logits stay those of the BN model."""
    torch.manual_seed(0)
    bn = build_model("x3d_xs", 400, norm="bn", dropout=0.0)
    bn.load_state_dict(seeded_weights.seeded_state(bn.state_dict()))
    bn.train()
    with torch.no_grad():  # running statistics of the data the model sees
        for _ in range(3):
            bn(torch.randn(2, 3, 4, 64, 64) + 0.3)
    path = tmp_path / "x3d_xs_bn.pyth"
    torch.save({"model_state": to_pyslowfast_names(bn.state_dict()), "epoch": 300}, path)
    cfg = ModelConfig(arch="x3d_xs", norm="sn", dropout=0.0, pretrained=str(path),
                      pretrained_bn_to_sn=True, pretrained_bn_logit=10.0)
    logs = []
    sn = builders.finetune_model(builders.model_from_config(cfg, 400), cfg, 400, logs.append)
    assert "pretrained pyslowfast checkpoint" in logs[0] and "0 missing" in logs[0]
    assert not any(isinstance(m, nn.BatchNorm3d) for m in sn.modules())
    assert sum(map(is_switch_norm, sn.modules())) == \
        sum(isinstance(m, nn.BatchNorm3d) for m in bn.modules())
    clip = torch.randn(2, 3, 4, 64, 64) + 0.3
    with torch.no_grad():
        expected, got = bn.eval()(clip), sn.eval()(clip)
    assert float((got - expected).norm() / expected.norm()) < 1e-4  # measured 6e-5
