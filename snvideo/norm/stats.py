"""Running statistics of norm layers: the SN paper's batch-average recomputation."""
from __future__ import annotations

import itertools
from typing import Iterable

import torch
from torch import nn

from .switchnorm import _SwitchNorm


def _stat_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules()
            if isinstance(m, (_SwitchNorm, nn.modules.batchnorm._BatchNorm))
            and m.running_mean is not None]


def _first_input(batch, device: torch.device) -> torch.Tensor:
    inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
    return inputs.to(device, non_blocking=True)


@torch.no_grad()
def recompute_norm_stats(model: nn.Module, batches: Iterable, num_batches: int = 200) -> int:
    """Reset the running statistics of every SN and BatchNorm layer in `model` and recompute them
    as the plain average over up to `num_batches` batches (the SN paper's "batch average").

    `batches` yields input tensors or (input, label, ...) tuples, e.g. a DataLoader. Forwards run
    in train mode without gradients; the model's modes and momenta are restored afterwards.
    Returns the number of batches used.

    The average is cumulative: batch k enters with momentum 1/k, set here as a Python number
    before each forward. (momentum=None would do the same, but SN and BatchNorm then read
    1/num_batches_tracked back from the device: one host sync per layer per batch on CUDA.)
    """
    layers = _stat_layers(model)
    if not layers:
        return 0
    modes = [(m, m.training) for m in model.modules()]
    momenta = [m.momentum for m in layers]
    tracking = [m.track_running_stats for m in layers]
    device = next(itertools.chain(model.parameters(), model.buffers())).device
    used = 0
    try:
        for m in layers:
            m.reset_running_stats()
            m.track_running_stats = True
        model.train()
        for batch in itertools.islice(batches, num_batches):
            for m in layers:
                m.momentum = 1.0 / (used + 1)  # cumulative average over the batches so far
            model(_first_input(batch, device))
            used += 1
    finally:
        for m, momentum, flag in zip(layers, momenta, tracking):
            m.momentum = momentum
            m.track_running_stats = flag
        for m, training in modes:
            m.training = training
    return used
