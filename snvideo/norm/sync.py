"""SyncSwitchNorm: SN whose BN branch uses the batch of all processes.

Only the BN-branch moments cross processes (IN and LN are per sample). They are merged with
each process's element count as weight, so uneven per-process batches give the same result as
one process holding the concatenated batch; the forward makes one collective, an all-gather
of each process's count, mean and sum of squared deviations (functional.batch_moments).
Gradients flow through the merge: the eager backward all-reduces the BN-moment gradients
(snvideo.norm.functional), and the compiled path uses the autograd-aware gather
(torch.distributed.nn).
"""
from __future__ import annotations

import torch.distributed as dist
from torch import nn

from .switchnorm import SwitchNorm1d, SwitchNorm2d, SwitchNorm3d, _SwitchNorm


class SyncSwitchNorm(_SwitchNorm):
    """SN with the BN branch synchronized over `process_group` (default: the world).

    Accepts 2D to 5D inputs, like nn.SyncBatchNorm. Without an initialized process group (or
    with a single process) it behaves exactly like SwitchNorm{1,2,3}d.
    """

    input_ranks = (2, 3, 4, 5)

    def __init__(self, num_features: int, *args, process_group=None, **kwargs) -> None:
        super().__init__(num_features, *args, **kwargs)
        self.process_group = process_group

    def _process_group(self):
        if dist.is_available() and dist.is_initialized():
            return self.process_group or dist.group.WORLD
        return None


def convert_sync_switchnorm(module: nn.Module, process_group=None) -> nn.Module:
    """Replace every SwitchNorm1d/2d/3d in `module` by a SyncSwitchNorm with the same
    parameters and buffers (like nn.SyncBatchNorm.convert_sync_batchnorm). Returns the module
    (a new one if `module` itself is an SN layer)."""
    if isinstance(module, (SwitchNorm1d, SwitchNorm2d, SwitchNorm3d)):
        sync = SyncSwitchNorm(module.num_features, eps=module.eps, momentum=module.momentum,
                              using_moving_average=module.using_moving_average,
                              using_bn=module.using_bn,
                              track_running_stats=module.track_running_stats,
                              kernel=module.kernel, process_group=process_group,
                              importance=module.importance_function,
                              shared_importance=module.shared_importance)
        sync.momentum = module.momentum
        sync.load_state_dict(module.state_dict())
        for new, old in zip(sync.parameters(), module.parameters()):
            new.requires_grad_(old.requires_grad)  # frozen (fine-tuning) layers stay frozen
        sync.train(module.training)
        sync.to(device=module.weight.device, dtype=module.weight.dtype)
        return sync
    for name, child in module.named_children():
        converted = convert_sync_switchnorm(child, process_group)
        if converted is not child:
            setattr(module, name, converted)
    return module
