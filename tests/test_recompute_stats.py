"""recompute_norm_stats reads no layer buffer back to the host (a sync per layer per batch on
CUDA; tests/test_cuda.py checks it there with the sync debug mode) and still gives the plain
average over the batches."""
from __future__ import annotations

import torch
from torch import nn

from snvideo.norm import SwitchNorm3d, recompute_norm_stats


def test_recompute_norm_stats_reads_no_buffer_back_to_the_host(monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(3, 4, 1), SwitchNorm3d(4), nn.Conv3d(4, 4, 1),
                          nn.BatchNorm3d(4), SwitchNorm3d(4, using_moving_average=False))
    batches = [torch.randn(2, 3, 2, 4, 4) * (i + 1) for i in range(4)]
    with torch.no_grad():  # the expected plain average, computed before the counting starts
        feats = [model[0](b) for b in batches]
        expected = torch.stack([f.mean((0, 2, 3, 4)) for f in feats]).mean(0)
    # A read of a layer's buffer (num_batches_tracked, running stats) is a host sync on CUDA.
    # (Reads of other CPU tensors are not: SN's CPU-only cancellation check makes one.)
    watched = {t.data_ptr() for t in model.buffers()}
    reads = []
    for name in ("__float__", "__int__", "__bool__", "item", "tolist"):
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _original=original, _name=name):
            if self.data_ptr() in watched:
                reads.append(_name)
            return _original(self, *args)

        monkeypatch.setattr(torch.Tensor, name, counting)
    used = recompute_norm_stats(model, batches, num_batches=4)
    monkeypatch.undo()
    assert used == 4 and reads == []
    torch.testing.assert_close(model[1].running_mean, expected)
    assert model[1].num_batches_tracked.item() == 4 and model[3].num_batches_tracked.item() == 4
    assert model[1].momentum == 0.1 and model[3].momentum == 0.1 and model[4].momentum is None
