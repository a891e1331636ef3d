"""Switchable Normalization: agreement with the paper's formulas, gradients, running statistics,
batch-average recomputation, official checkpoints, the factory, and the compiled path."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from snvideo.norm import (NORM_KINDS, SwitchNorm1d, SwitchNorm2d, SwitchNorm3d, SyncSwitchNorm,
                          build_norm, convert_sync_switchnorm, recompute_norm_stats)
from snvideo.norm.functional import switch_norm_reference


def reference_sn(x, mean_logits, var_logits, weight, bias, running_mean=None, running_var=None,
                 eps=1e-5, importance=lambda logits: torch.softmax(logits.double(), 0)):
    """SN written directly from the paper's equations, in float64. BN statistics come from the
    batch unless running statistics are given (eval mode). `importance` maps logits to mixing
    weights (softmax; Sparse SN passes sparsestmax)."""
    x = x.double()
    s_dims = tuple(range(2, x.dim()))
    mean_in = x.mean(s_dims, keepdim=True)
    var_in = x.var(s_dims, unbiased=False, keepdim=True)
    ln_dims = tuple(range(1, x.dim()))
    mean_ln = x.mean(ln_dims, keepdim=True)
    var_ln = x.var(ln_dims, unbiased=False, keepdim=True)
    means, variances = [mean_in, mean_ln], [var_in, var_ln]
    if mean_logits.numel() == 3:
        shape = (1, -1) + (1,) * len(s_dims)
        if running_mean is None:
            bn_dims = (0,) + s_dims
            means.append(x.mean(bn_dims, keepdim=True))
            variances.append(x.var(bn_dims, unbiased=False, keepdim=True))
        else:
            means.append(running_mean.double().reshape(shape))
            variances.append(running_var.double().reshape(shape))
    wm = importance(mean_logits.double())
    wv = importance(var_logits.double())
    mean = sum(w * m for w, m in zip(wm, means))
    var = sum(w * v for w, v in zip(wv, variances))
    shape = (1, -1) + (1,) * len(s_dims)
    return weight.double().reshape(shape) * (x - mean) / torch.sqrt(var + eps) \
        + bias.double().reshape(shape)


def randomize(layer):
    with torch.no_grad():
        layer.mean_weight.normal_()
        layer.var_weight.normal_()
        layer.weight.normal_()
        layer.bias.normal_()
        if layer.running_mean is not None:
            layer.running_mean.normal_()
            layer.running_var.uniform_(0.5, 2.0)
    return layer


SHAPES = [
    (SwitchNorm3d, (4, 6, 3, 5, 7)),
    (SwitchNorm3d, (1, 6, 2, 3, 3)),     # one sample
    (SwitchNorm3d, (3, 6, 1, 1, 1)),     # S of one element
    (SwitchNorm2d, (5, 4, 6, 6)),
    (SwitchNorm1d, (8, 5, 7)),
    (SwitchNorm1d, (8, 5)),              # (N, C)
]


@pytest.mark.parametrize("cls,shape", SHAPES)
@pytest.mark.parametrize("using_bn", [True, False])
@pytest.mark.parametrize("training", [True, False])
def test_matches_float64_reference(cls, shape, using_bn, training):
    torch.manual_seed(0)
    layer = randomize(cls(shape[1], using_bn=using_bn)).train(training)
    x = torch.randn(shape) * 3 + 1.5
    expected = reference_sn(x.unsqueeze(-1) if x.dim() == 2 else x, layer.mean_weight,
                            layer.var_weight, layer.weight, layer.bias,
                            None if training else layer.running_mean,
                            None if training else layer.running_var)
    expected = expected.squeeze(-1) if x.dim() == 2 else expected
    for requires_grad in (False, True):  # plain-op path and the autograd.Function path
        got = layer(x.clone().requires_grad_(requires_grad))
        assert got.shape == x.shape
        torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("using_bn", [True, False])
def test_gradcheck(training, using_bn):
    torch.manual_seed(1)
    layer = randomize(SwitchNorm3d(3, using_bn=using_bn)).double().train(training)
    layer.track_running_stats = False  # keep the function pure across gradcheck's calls
    x = torch.randn(3, 3, 2, 3, 2, dtype=torch.double, requires_grad=True)
    params = (layer.mean_weight, layer.var_weight, layer.weight, layer.bias)

    def fn(x, *p):
        return layer(x)

    assert torch.autograd.gradcheck(fn, (x, *params))


def test_gradients_match_autograd_through_reference():
    torch.manual_seed(2)
    layer = randomize(SwitchNorm3d(16)).train()
    x = torch.randn(4, 16, 4, 9, 9, requires_grad=True)
    grad_out = torch.randn_like(x)
    layer(x).backward(grad_out)
    fused = [x.grad.clone()] + [p.grad.clone() for p in layer.parameters()]
    x.grad = None
    layer.zero_grad()
    switch_norm_reference(x, layer.mean_weight, layer.var_weight, layer.weight, layer.bias,
                          None, None, True).backward(grad_out)
    plain = [x.grad] + [p.grad for p in layer.parameters()]
    for a, b in zip(fused, plain):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_large_mean_offset_keeps_variance_accurate():
    torch.manual_seed(3)
    layer = SwitchNorm3d(4)
    x = 1e4 + torch.randn(2, 4, 4, 8, 8)
    expected = reference_sn(x, layer.mean_weight, layer.var_weight, layer.weight, layer.bias)
    torch.testing.assert_close(layer(x).double(), expected, rtol=1e-3, atol=2e-3)


def test_bfloat16_input():
    torch.manual_seed(4)
    layer = randomize(SwitchNorm3d(8))
    x = torch.randn(2, 8, 2, 6, 6)
    out = layer(x.bfloat16().requires_grad_())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), layer(x), rtol=0.05, atol=0.05)
    out.float().sum().backward()


def test_running_stats_follow_pytorch_momentum_convention():
    torch.manual_seed(5)
    layer = SwitchNorm3d(3, momentum=0.1)
    x = torch.randn(4, 3, 2, 4, 4) * 2 + 1
    layer(x)
    batch_mean = x.mean((0, 2, 3, 4))
    batch_var = x.var((0, 2, 3, 4), unbiased=False)  # population, as used in training
    torch.testing.assert_close(layer.running_mean, 0.1 * batch_mean)
    torch.testing.assert_close(layer.running_var, 0.9 + 0.1 * batch_var)
    assert int(layer.num_batches_tracked) == 1
    layer.eval()
    layer(x)
    assert int(layer.num_batches_tracked) == 1  # eval leaves the statistics alone


def test_batch_average_mode_is_cumulative():
    layer = SwitchNorm3d(2, using_moving_average=False)
    batches = [torch.randn(3, 2, 2, 3, 3) + i for i in range(3)]
    for b in batches:
        layer(b)
    expected = torch.stack([b.mean((0, 2, 3, 4)) for b in batches]).mean(0)
    torch.testing.assert_close(layer.running_mean, expected)


def test_recompute_norm_stats_is_plain_average_and_restores_mode():
    torch.manual_seed(6)
    model = nn.Sequential(nn.Conv3d(3, 4, 1), SwitchNorm3d(4), nn.Conv3d(4, 4, 1),
                          nn.BatchNorm3d(4)).eval()
    sn, bn = model[1], model[3]
    batches = [(torch.randn(2, 3, 2, 4, 4) * (i + 1), torch.tensor([0, 1])) for i in range(5)]
    used = recompute_norm_stats(model, batches, num_batches=4)
    assert used == 4
    assert not model.training and not sn.training
    assert sn.momentum == 0.1 and bn.momentum == 0.1
    with torch.no_grad():
        feats = [model[0](b[0]) for b in batches[:4]]
        expected_mean = torch.stack([f.mean((0, 2, 3, 4)) for f in feats]).mean(0)
        expected_var = torch.stack([f.var((0, 2, 3, 4), unbiased=False) for f in feats]).mean(0)
    torch.testing.assert_close(sn.running_mean, expected_mean)
    torch.testing.assert_close(sn.running_var, expected_var)
    # BatchNorm keeps its own convention (unbiased batch variance), averaged the same way.
    with torch.no_grad():
        bn_in = [model[2](sn.train()(f)) for f in feats]
    sn.eval()
    torch.testing.assert_close(bn.running_mean, torch.stack([f.mean((0, 2, 3, 4)) for f in bn_in]).mean(0),
                               rtol=1e-4, atol=1e-5)


def test_loads_official_state_dict_shapes():
    c = 5
    official = {
        "weight": torch.randn(1, c, 1, 1, 1), "bias": torch.randn(1, c, 1, 1, 1),
        "mean_weight": torch.randn(3), "var_weight": torch.randn(3),
        "running_mean": torch.randn(1, c, 1), "running_var": torch.rand(1, c, 1) + 0.5,
    }
    layer = SwitchNorm3d(c)
    layer.load_state_dict(official, strict=True)
    assert torch.equal(layer.weight, official["weight"].reshape(c))
    assert torch.equal(layer.running_var, official["running_var"].reshape(c))
    layer2d = SwitchNorm2d(c)
    layer2d.load_state_dict({**official, "weight": torch.ones(1, c, 1, 1),
                             "bias": torch.zeros(1, c, 1, 1)}, strict=True)
    assert layer2d.weight.shape == (c,)


def test_rejects_wrong_rank_and_channels():
    with pytest.raises(ValueError, match="5D"):
        SwitchNorm3d(4)(torch.randn(2, 4, 3, 3))
    with pytest.raises(ValueError, match="channels"):
        SwitchNorm3d(4)(torch.randn(2, 3, 1, 3, 3))


def test_sync_switchnorm_without_process_group_equals_switchnorm():
    torch.manual_seed(7)
    layer = randomize(SwitchNorm3d(6))
    model = nn.Sequential(nn.Identity(), layer)
    x = torch.randn(3, 6, 2, 4, 4)
    expected = layer(x)
    converted = convert_sync_switchnorm(model)
    assert isinstance(converted[1], SyncSwitchNorm)
    torch.testing.assert_close(converted[1].weight, layer.weight)
    torch.testing.assert_close(converted[1](x), expected)


@pytest.mark.parametrize("kind", NORM_KINDS)
@pytest.mark.parametrize("dim", [1, 2, 3])
def test_factory_builds_every_kind(kind, dim):
    layer = build_norm(kind, 32, dim=dim)
    x = torch.randn((2, 32) + (3,) * dim)
    if kind == "syncbn":
        assert isinstance(layer, nn.SyncBatchNorm)
        layer.eval()  # SyncBatchNorm needs a process group to train
    out = layer(x)
    assert out.shape == x.shape


def test_factory_errors():
    with pytest.raises(ValueError, match="valid kinds: bn, syncbn, gn, in, ln, sn, syncsn, ssn, syncssn"):
        build_norm("batchnorm", 8)
    with pytest.raises(ValueError, match="num_groups"):
        build_norm("gn", 10, num_groups=4)
    assert build_norm("gn", 64).num_groups == 32
    assert build_norm("gn", 64, num_groups=8).num_groups == 8
    assert build_norm("sn", 8, using_bn=False).mean_weight.shape == (2,)


def test_compiled_model_matches_eager():
    torch.manual_seed(8)
    model = nn.Sequential(nn.Conv3d(3, 8, 3, padding=1), randomize(SwitchNorm3d(8)), nn.ReLU())
    x = torch.randn(2, 3, 3, 6, 6)
    eager_model = model
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    eager_out = eager_model(x)
    eager_out.sum().backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled_out = compiled(x)
    compiled_out.sum().backward()
    torch.testing.assert_close(compiled_out, eager_out, rtol=1e-4, atol=1e-5)
    for a, p in zip(eager_grads, model.parameters()):
        torch.testing.assert_close(p.grad, a, rtol=1e-4, atol=1e-5)
