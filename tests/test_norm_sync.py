"""SyncSwitchNorm across 2 gloo processes equals one SwitchNorm3d on the concatenated batch."""
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from snvideo.norm import SwitchNorm3d, SyncSwitchNorm, triton_sn

# Triton on CPU tensors needs the interpreter (conftest sets it when there is no GPU).
needs_triton = pytest.mark.skipif(not triton_sn.can_run(torch.empty(1)),
                                  reason="triton kernels cannot run on CPU tensors here")

CHANNELS = 4
RADIUS = 0.3  # Sparse SN: a radius where the weights are still mixed


def make_inputs():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, CHANNELS, 2, 3, 4, generator=gen) * 2 + 0.5
    grad_out = torch.randn(x.shape, generator=gen)
    state = {
        "mean_weight": torch.randn(3, generator=gen), "var_weight": torch.randn(3, generator=gen),
        "weight": torch.randn(CHANNELS, generator=gen), "bias": torch.randn(CHANNELS, generator=gen),
    }
    return x, grad_out, state


def _count_collectives() -> list[str]:
    """Records every collective this process starts (torch.distributed and its autograd-aware
    functional versions go through these)."""
    calls: list[str] = []
    for name in ("all_reduce", "all_gather", "all_gather_into_tensor", "broadcast",
                 "reduce_scatter", "reduce_scatter_tensor"):
        real = getattr(dist, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            calls.append(_name)
            return _real(*args, **kwargs)
        setattr(dist, name, counted)
    return calls


def _worker(rank: int, world: int, init_file: str, splits: list[int], out_dir: str,
            kernel: str, importance: str = "softmax") -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    x, grad_out, state = make_inputs()
    start = sum(splits[:rank])
    rows = slice(start, start + splits[rank])
    layer = SyncSwitchNorm(CHANNELS, kernel=kernel, importance=importance)
    layer.load_state_dict({**layer.state_dict(), **state})
    if importance == "sparsestmax":
        layer.set_radius(RADIUS)
    x_local = x[rows].clone().requires_grad_()
    collectives = _count_collectives()
    for _ in range(2):  # two steps: running statistics accumulate over both
        x_local.grad = None
        layer.zero_grad()
        collectives.clear()
        y = layer(x_local)
        forward_collectives = list(collectives)
        y.backward(grad_out[rows])
    torch.save({"y": y.detach(), "dx": x_local.grad, "rows": (rows.start, rows.stop),
                "grads": {n: p.grad for n, p in layer.named_parameters()},
                "running_mean": layer.running_mean, "running_var": layer.running_var,
                "forward_collectives": forward_collectives},
               os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("splits,kernel,importance", [
    ([3, 2], "eager", "softmax"), ([1, 4], "eager", "softmax"),
    ([3, 2], "eager", "sparsestmax"),  # syncssn
    pytest.param([3, 2], "triton", "softmax", marks=needs_triton)])
def test_two_process_sync_equals_single_process(tmp_path, splits, kernel, importance):
    """Also with the Triton kernels (interpreted on CPU) around the all-reduces, and Sparse SN."""
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), splits, str(tmp_path), kernel, importance),
             nprocs=2, join=True)

    x, grad_out, state = make_inputs()
    single = SwitchNorm3d(CHANNELS, importance=importance)
    single.load_state_dict({**single.state_dict(), **state})
    if importance == "sparsestmax":
        single.set_radius(RADIUS)
    x = x.clone().requires_grad_()
    for _ in range(2):
        x.grad = None
        single.zero_grad()
        y = single(x)
        y.backward(grad_out)

    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for res in results:
        rows = slice(*res["rows"])
        torch.testing.assert_close(res["y"], y[rows].detach(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(res["dx"], x.grad[rows], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(res["running_mean"], single.running_mean)
        torch.testing.assert_close(res["running_var"], single.running_var)
        assert res["forward_collectives"] == ["all_gather"]  # one collective, not two
    # Each process holds the gradient of its own part of the loss: they add up (DDP averages).
    for name, param in single.named_parameters():
        total = results[0]["grads"][name] + results[1]["grads"][name]
        torch.testing.assert_close(total, param.grad, rtol=1e-4, atol=1e-5)
