"""convert_bn_to_sn: continue a BatchNorm model with Switchable Normalization.

Each BatchNorm becomes an SN layer carrying the BN's weight, bias, running statistics, eps and
momentum. Its importance logits start at (IN, LN, BN) = (0, 0, bn_logit) for means and for
variances: softmax gives BN the weight e^L / (e^L + 2) (L = 6: 0.9950, L = 8: 0.99933,
L = 10: 0.99991), so the converted model computes what the BN model computed, up to the small
IN/LN share, and learns its own mix from there. A larger L reproduces BN more closely but
starts the IN/LN logits where their gradient is small (it scales with their weight, about
2 e^-L), so they move away from BN more slowly.

Eval mode: BN normalizes with its running statistics; SN with the same running statistics for
its BN share and the input's own IN/LN statistics for the rest. Train mode: both use the batch
statistics for the BN share. (BN keeps an unbiased running variance, SN a biased one: the
running variance continues with SN's convention after conversion.)
"""
from __future__ import annotations

import torch
from torch import nn

from .switchnorm import SwitchNorm1d, SwitchNorm2d, SwitchNorm3d, _SwitchNorm
from .sync import SyncSwitchNorm

DEFAULT_BN_LOGIT = 10.0

_SN_FOR_BN = {nn.BatchNorm1d: SwitchNorm1d, nn.BatchNorm2d: SwitchNorm2d,
              nn.BatchNorm3d: SwitchNorm3d, nn.SyncBatchNorm: SyncSwitchNorm}


@torch.no_grad()
def switch_norm_from_bn(bn: nn.modules.batchnorm._BatchNorm,
                        bn_logit: float = DEFAULT_BN_LOGIT) -> _SwitchNorm:
    """One SN layer computing (nearly) what `bn` computes; see the module docstring."""
    if bn.running_mean is None:
        raise ValueError(f"{type(bn).__name__}({bn.num_features}) has no running statistics "
                         "(track_running_stats=False): nothing to carry over to SN")
    sn_type = next(sn for bn_type, sn in _SN_FOR_BN.items() if type(bn) is bn_type)
    extra = {"process_group": bn.process_group} if sn_type is SyncSwitchNorm else {}
    sn = sn_type(bn.num_features, eps=bn.eps, momentum=bn.momentum, **extra)
    ref = bn.running_mean
    sn.to(device=ref.device, dtype=ref.dtype)
    if bn.affine:
        sn.weight.copy_(bn.weight)
        sn.bias.copy_(bn.bias)
    sn.running_mean.copy_(bn.running_mean)
    sn.running_var.copy_(bn.running_var)
    sn.num_batches_tracked.copy_(bn.num_batches_tracked)
    logits = torch.tensor([0.0, 0.0, bn_logit])
    sn.mean_weight.copy_(logits)
    sn.var_weight.copy_(logits)
    sn.train(bn.training)
    return sn


def convert_bn_to_sn(model: nn.Module, bn_logit: float = DEFAULT_BN_LOGIT) -> nn.Module:
    """Replace every BatchNorm1d/2d/3d in `model` by SwitchNorm1d/2d/3d and every SyncBatchNorm
    by a SyncSwitchNorm (same process group), in place. Returns the model (a new layer if
    `model` itself is a BatchNorm)."""
    if type(model) in _SN_FOR_BN:
        return switch_norm_from_bn(model, bn_logit)
    for name, child in model.named_children():
        converted = convert_bn_to_sn(child, bn_logit)
        if converted is not child:
            setattr(model, name, converted)
    return model
