"""Host time of one SN layer's training step on the Triton path, kernels left out.

    python benchmarks/bench_host_overhead.py [--steps 2000]

On a GPU the small res4/res5 layers are host-bound: what Python and torch spend around the
kernels (argument checks, allocations, the custom ops' dispatch, autograd) adds up over a
network's 50-odd norm layers. This measures that part on any machine: every Triton launch is
replaced by a stub that only counts, and the tensors are tiny CPU tensors (their allocations
are real but cheap), so the time per forward + backward of one layer is what the host spends
per layer and step, kernels excluded (a GPU adds Triton's launch overhead per kernel, 6
kernels a step, on top). Eager mode calls the custom ops' Python bodies directly
(`triton_sn.EAGER_BODIES`); the row through the ops shows what their dispatch costs.
BatchNorm3d's eager forward + backward at the same size is printed beside it for scale (its
CPU kernels are included there). Rounds interleave the rows.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")  # the wrapper code runs on CPU tensors
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from torch import nn  # noqa: E402


class _Stub:
    """Stands for a Triton kernel: launching it only counts."""

    launches = 0

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            _Stub.launches += 1
        return launch


def per_step(fn, steps: int) -> float:
    for _ in range(50):
        fn()
    times = []
    for _ in range(5):
        start = time.process_time()  # CPU time: robust to a shared machine's other load
        for _ in range(steps // 5):
            fn()
        times.append((time.process_time() - start) / (steps // 5))
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=2000)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    from snvideo.norm import SwitchNorm3d, triton_sn

    kernels = triton_sn._kernels()
    for name in dir(kernels):
        if name.endswith("_kernel"):
            setattr(kernels, name, _Stub())
    shape = (2, 64, 1, 2, 2)  # tiny: the kernels are stubs, only the host work is left
    layer = SwitchNorm3d(64, kernel="triton").train()
    bn = nn.BatchNorm3d(64).train()
    x = torch.randn(shape, requires_grad=True)
    grad = torch.randn(shape)

    def sn_step():
        layer(x).backward(grad)

    def bn_step():
        bn(x).backward(grad)

    _Stub.launches = 0
    sn_step()
    launches = _Stub.launches
    rounds = {"bodies": [], "ops": [], "bn": []}
    for _ in range(3):  # interleaved: this machine's speed drifts
        for mode in ("bodies", "ops"):
            triton_sn.EAGER_BODIES = mode == "bodies"
            rounds[mode].append(per_step(sn_step, args.steps))
        rounds["bn"].append(per_step(bn_step, args.steps))
    triton_sn.EAGER_BODIES = True
    sn, through_ops, base = (statistics.median(rounds[k]) for k in ("bodies", "ops", "bn"))
    print(f"# host time per layer and training step (forward + backward), torch {torch.__version__}, "
          f"1 thread, CPU time, median of 3 interleaved rounds x 5 of {args.steps // 5}")
    print()
    print("| layer | us per step | kernel launches |")
    print("|---|---:|---:|")
    print(f"| SwitchNorm3d, Triton path, kernels stubbed (eager: the ops' bodies called directly) | "
          f"{sn * 1e6:.1f} | {launches} |")
    print(f"| the same through the torch.library custom ops (as under torch.compile) | "
          f"{through_ops * 1e6:.1f} | {launches} |")
    print(f"| BatchNorm3d, eager CPU at {shape} (kernels included) | {base * 1e6:.1f} | - |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
