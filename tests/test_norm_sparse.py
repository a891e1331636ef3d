"""Sparse SN, shared importance and inference folding.

sparsestmax against its definition (the projection onto the simplex with the ball of the given
radius around its centre cut out, solved here by enumerating the optimality candidates), its
gradient against finite differences, SSN layers against the float64 reference with SN's test
matrix, the one-pair state dict of shared importance, the radius schedule through train.py,
and fold_for_inference on a trained SSN checkpoint (also through test.py and the exporter).
"""
from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from snvideo.config import config_for_checkpoint
from snvideo.engine.builders import build_optimizer, model_from_checkpoint
from snvideo.engine.checkpoint import load_checkpoint
from snvideo.models import build_model
from snvideo.norm import (SwitchNorm3d, SyncSwitchNorm, build_norm, convert_sync_switchnorm,
                          fold_for_inference, set_sparsity_radius, sparse_importance_parameters,
                          sparsemax, sparsestmax)
from snvideo.norm.sparsestmax import one_hot_radius
from test_norm import SHAPES, randomize, reference_sn


def sparsestmax_by_definition(z, radius: float) -> torch.Tensor:
    """argmin ||p - z|| over {p in the simplex, ||p - u|| >= radius}, u the centre, in float64.

    The minimizer lies in the relative interior of some face F. There either the ball does not
    bind (p = the projection of z onto F's affine hull) or p is on the sphere, which meets F's
    hull in a sphere around F's centre: p = the point of that sphere nearest the projection.
    Every such candidate that is feasible is tried; the nearest to z wins. Beyond the vertex
    distance only the vertices remain (the limit sparsestmax reaches)."""
    z = [float(v) for v in z]
    k = len(z)
    radius = min(radius, one_hot_radius(k))
    centre = [1.0 / k] * k

    def dist(a, b):
        return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b)))

    candidates = []
    for size in range(1, k + 1):
        for face in itertools.combinations(range(k), size):
            shift = (sum(z[i] for i in face) - 1) / size
            proj = [z[i] - shift if i in face else 0.0 for i in range(k)]
            candidates.append(proj)
            face_centre = [1.0 / size if i in face else 0.0 for i in range(k)]
            rho_sq = radius ** 2 - dist(face_centre, centre) ** 2
            direction = [a - b for a, b in zip(proj, face_centre)]
            length = math.sqrt(sum(v * v for v in direction))
            if rho_sq >= 0 and length > 1e-12:
                candidates.append([c + math.sqrt(rho_sq) * d / length
                                   for c, d in zip(face_centre, direction)])
    feasible = [p for p in candidates if min(p) >= -1e-12 and dist(p, centre) >= radius - 1e-9]
    return torch.tensor(min(feasible, key=lambda p: dist(p, z)), dtype=torch.float64)


# --- sparsestmax --------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [2, 3])
def test_sparsestmax_equals_its_definition_on_random_inputs(k):
    gen = torch.Generator().manual_seed(k)
    for _ in range(400):
        z = torch.randn(k, generator=gen, dtype=torch.float64) * float(3 * torch.rand(1, generator=gen))
        radius = float(torch.rand(1, generator=gen))
        torch.testing.assert_close(sparsestmax(z, radius), sparsestmax_by_definition(z, radius),
                                   rtol=0, atol=1e-9)


@pytest.mark.parametrize("z,radius", [
    ([0.5, 0.2, 0.1], 0.0),      # radius 0: sparsemax, all three kept
    ([3.0, 0.0, -1.0], 0.2),     # sparsemax already one-hot
    ([0.4, 0.4, -2.0], 0.3),     # sparsemax on an edge, outside the ball
    ([0.4, 0.35, -2.0], 0.6),    # on an edge, pushed along it
    ([0.1, 0.05, 0.0], 0.5),     # pushed out of the simplex, then along a face
    ([1e4, -1e4, 0.0], 0.9),     # large logits
    ([0.2, 0.1, 0.0], one_hot_radius(3)),  # exactly the vertex distance
])
def test_sparsestmax_edge_cases(z, radius):
    z = torch.tensor(z, dtype=torch.float64)
    got = sparsestmax(z, radius)
    torch.testing.assert_close(got, sparsestmax_by_definition(z, radius), rtol=0, atol=1e-9)
    assert got.min() >= 0 and abs(float(got.sum()) - 1) < 1e-12


def test_sparsestmax_at_a_centre_goes_to_the_first_largest_logit():
    got = sparsestmax(torch.ones(3, dtype=torch.float64), 0.3)
    assert float(got[0]) > float(got[1]) == pytest.approx(float(got[2]))
    assert float((got - 1 / 3).norm()) == pytest.approx(0.3)
    for dtype in (torch.float32, torch.bfloat16):  # rounding must not point it off the plane
        assert float(sparsestmax(torch.ones(3, dtype=dtype), 0.3)[0]) > 0.5


def test_sparsestmax_gradient_matches_finite_differences():
    gen = torch.Generator().manual_seed(3)
    for radius in (0.0, 0.2, 0.45, 0.7):
        for _ in range(5):
            z = (torch.randn(4, 3, generator=gen, dtype=torch.float64) * 0.5).requires_grad_()
            assert torch.autograd.gradcheck(lambda t: sparsestmax(t, radius), (z,))


def test_radius_zero_is_sparsemax_and_the_largest_radius_is_one_hot():
    """As the SSN paper defines it: sparsemax (a dense mix for close logits) at radius 0, one-hot
    from the vertex distance sqrt((K-1)/K) on, the end of the 0 -> 1 schedule."""
    z = torch.tensor([[0.5, 0.2, 0.1], [0.3, 0.3, 0.2], [1.0, 1.0, 1.0]])
    dense = sparsestmax(z, 0.0)
    torch.testing.assert_close(dense, sparsemax(z))
    assert (dense > 0).all()  # not one-hot: close logits share the weight, as softmax does
    for radius in (one_hot_radius(3), 1.0):
        out = sparsestmax(z, radius)
        assert ((out == 0) | (out == 1)).all() and (out.sum(-1) == 1).all()
    largest = [float(sparsestmax(z[0], r).max()) for r in torch.linspace(0, 1, 21).tolist()]
    assert largest == sorted(largest)  # the mix only sharpens as the radius grows


# --- SSN layers ---------------------------------------------------------------------------------
def reference_ssn(layer, x, training):
    radius = float(layer.radius)
    return reference_sn(x.unsqueeze(-1) if x.dim() == 2 else x, layer.mean_weight,
                        layer.var_weight, layer.weight, layer.bias,
                        None if training else layer.running_mean,
                        None if training else layer.running_var,
                        importance=lambda logits: sparsestmax(logits.double(), radius))


@pytest.mark.parametrize("cls,shape", SHAPES)
@pytest.mark.parametrize("using_bn", [True, False])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("radius", [0.25, 1.0])
def test_ssn_matches_float64_reference(cls, shape, using_bn, training, radius):
    torch.manual_seed(0)
    layer = randomize(cls(shape[1], using_bn=using_bn, importance="sparsestmax")).train(training)
    layer.set_radius(radius)
    x = torch.randn(shape) * 3 + 1.5
    expected = reference_ssn(layer, x, training)
    expected = expected.squeeze(-1) if x.dim() == 2 else expected
    for requires_grad in (False, True):
        got = layer(x.clone().requires_grad_(requires_grad))
        torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("training", [True, False])
def test_ssn_gradcheck(training):
    torch.manual_seed(1)
    layer = randomize(SwitchNorm3d(3, importance="sparsestmax")).double().train(training)
    layer.track_running_stats = False
    layer.set_radius(0.3)
    x = torch.randn(3, 3, 2, 3, 2, dtype=torch.double, requires_grad=True)
    params = (layer.mean_weight, layer.var_weight, layer.weight, layer.bias)
    assert torch.autograd.gradcheck(lambda x, *p: layer(x), (x, *params))


def test_ssn_kinds_record_the_radius_and_load_it():
    layer = build_norm("ssn", 8)
    assert layer.importance_function == "sparsestmax" and "importance='sparsestmax'" in repr(layer)
    layer.set_radius(0.6)
    other = build_norm("ssn", 8)
    other.load_state_dict(layer.state_dict())
    assert other._current_radius() == pytest.approx(0.6)
    sync = build_norm("syncssn", 8)
    assert isinstance(sync, SyncSwitchNorm) and sync.importance_function == "sparsestmax"


def test_sync_ssn_without_process_group_equals_ssn():
    torch.manual_seed(7)
    layer = randomize(SwitchNorm3d(6, importance="sparsestmax"))
    layer.set_radius(0.4)
    x = torch.randn(3, 6, 2, 4, 4)
    expected = layer(x)
    converted = convert_sync_switchnorm(nn.Sequential(layer))[0]
    assert isinstance(converted, SyncSwitchNorm) and converted.importance_function == "sparsestmax"
    torch.testing.assert_close(converted(x), expected)


def test_ssn_compiles_without_a_graph_per_radius():
    torch.manual_seed(8)
    model = nn.Sequential(nn.Conv3d(3, 4, 1), randomize(SwitchNorm3d(4, importance="sparsestmax")))
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    x = torch.randn(2, 3, 2, 4, 4)
    for radius in (0.1, 0.2, 0.3):
        set_sparsity_radius(model, radius)
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-5)
    torch._dynamo.reset()


# --- shared importance --------------------------------------------------------------------------
def test_shared_importance_is_one_pair_in_state_dict_and_optimizer():
    model = build_model("resnet3d_10", 4, norm="sn", norm_kwargs={"shared_importance": True},
                        widen_factor=0.125)
    keys = [k for k in model.state_dict() if k.endswith(("mean_weight", "var_weight"))]
    assert keys == ["norm_importance.mean_weight", "norm_importance.var_weight"]
    layers = [m for m in model.modules() if isinstance(m, SwitchNorm3d)]
    assert len(layers) > 5 and all(m.mean_weight is model.norm_importance.mean_weight
                                   for m in layers)
    from snvideo.config import Config

    optimizer = build_optimizer(model, Config())
    in_optimizer = [p for g in optimizer.param_groups for p in g["params"]
                    if p.shape == (3,)]
    assert len(in_optimizer) == 2
    model(torch.randn(2, 3, 4, 16, 16)).sum().backward()
    assert model.norm_importance.mean_weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="needs a model"):
        build_norm("sn", 8, shared_importance=True)


def test_shared_importance_moves_with_the_model_and_survives_a_copy():
    import copy

    model = build_model("resnet3d_10", 4, norm="ssn", norm_kwargs={"shared_importance": True},
                        widen_factor=0.125).double()
    twin = copy.deepcopy(model)
    layer = next(m for m in twin.modules() if isinstance(m, SwitchNorm3d))
    assert layer.mean_weight is twin.norm_importance.mean_weight
    assert layer.mean_weight.dtype == torch.float64
    assert len(sparse_importance_parameters(twin)) == 2


# --- the radius schedule and folding on a trained SSN checkpoint -----------------------------------
@pytest.fixture(scope="module")
def trained_ssn(tmp_path_factory, tiny_data):
    """A tiny SSN model trained by train.py for two epochs: its radius ends near 1."""
    import train as train_script
    from test_train import write_config

    tmp = tmp_path_factory.mktemp("ssn")
    cfg = write_config(tmp, tiny_data, model={"norm": "ssn"}, train={"epochs": 2},
                       test={"after_train": False})
    assert train_script.main(["--config", cfg]) == 0
    return tmp / "work" / "latest.pt", cfg


def test_training_raises_the_radius_to_the_end_of_the_schedule(trained_ssn):
    path, _ = trained_ssn
    checkpoint = load_checkpoint(str(path))
    assert checkpoint["config"]["model"]["norm"] == "ssn"
    radii = {float(v) for k, v in checkpoint["model"].items() if k.endswith(".radius")}
    assert len(radii) == 1 and 0.8 < radii.pop() < 1.0  # (last step / all steps)


def _model_and_clips(path):
    checkpoint = load_checkpoint(str(path))
    cfg = config_for_checkpoint(None, [], checkpoint, str(path))
    model = model_from_checkpoint(cfg, checkpoint).eval()
    clips = torch.randn(3, 3, cfg.data.clip_len, cfg.data.crop_size, cfg.data.crop_size,
                        generator=torch.Generator().manual_seed(0))
    return model, clips


def test_folded_ssn_gives_the_unfolded_logits(trained_ssn):
    model, clips = _model_and_clips(trained_ssn[0])
    with torch.no_grad():
        want = model(clips)
    folded, report = fold_for_inference(model, probe=clips[:1])
    assert not any(isinstance(m, SwitchNorm3d) for m in folded.modules())
    assert not report.kept and report.counts()
    with torch.no_grad():
        got = folded(clips)
    scale = want.abs().max()
    assert float((got - want).abs().max() / scale) < 1e-4
    assert report.max_abs_difference / report.max_abs_logit < 1e-4


def test_a_mixed_layer_is_left_as_sn_and_reported(trained_ssn):
    model, clips = _model_and_clips(trained_ssn[0])
    mixed = next(m for m in model.modules() if isinstance(m, SwitchNorm3d))
    with torch.no_grad():
        mixed.mean_weight.copy_(torch.tensor([0.3, 0.2, 0.1]))
    mixed.set_radius(0.0)  # sparsemax of close logits: a real mix
    with torch.no_grad():
        want = model(clips)
    folded, report = fold_for_inference(model)
    assert len(report.kept) == 1 and "not one-hot" in report.kept[0].why
    assert report.kept[0].name == "bn1" and "left as SN: bn1" in str(report)
    assert isinstance(folded.bn1, SwitchNorm3d)
    with torch.no_grad():
        torch.testing.assert_close(folded(clips), want, rtol=1e-4, atol=1e-5)


def test_test_py_and_export_fold(trained_ssn, tmp_path, capsys):
    import test as test_script
    from snvideo import export

    path, _ = trained_ssn
    assert test_script.main(["--checkpoint", str(path), "--fold"]) == 0
    out = capsys.readouterr().out
    assert "fold_for_inference:" in out and "top-1" in out.lower()
    assert export.main([str(path), "--format", "exported", "--out", str(tmp_path / "m.pt2"),
                        "--fold"]) == 0
    assert "fold_for_inference:" in capsys.readouterr().out
