"""Optimizer updates that skip non-finite gradients without waiting for the GPU.

A micro-batch whose loss is not finite multiplies its backward by NaN, so its gradients (and,
through DDP's all-reduce, every process's gradients) are NaN. The update then sees a
non-finite total gradient norm, the norm gradient clipping needs anyway, and the fused SGD
step skips on the device (`found_inf`, the flag GradScaler hands to fused optimizers): every
process skips the same update without a host sync. The skip flags stay on the device until
`NonFiniteGuard.flush`, called once per log interval, turns them into counts on the host (one
sync) and raises NonFiniteLossError after `max_nonfinite` skips in a row,
naming the iteration that reached it.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from snvideo.norm.switchnorm import sparse_importance_parameters


class NonFiniteLossError(RuntimeError):
    pass


def poison_if_nonfinite(loss: torch.Tensor) -> torch.Tensor:
    """`loss` unchanged when finite, else NaN all the way into the gradients."""
    return loss * torch.where(torch.isfinite(loss), 1.0, float("nan"))


def guarded_step(model: nn.Module, optimizer: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler, clip_grad: float | None) -> torch.Tensor:
    """Unscale, clip and step, skipping the step when any gradient is non-finite.

    Returns the skip flag as a 0-dim bool tensor on the device (not synced).
    """
    if scaler.is_enabled():
        scaler.unscale_(optimizer)
    params = [p for p in model.parameters() if p.grad is not None]
    norm = nn.utils.get_total_norm([p.grad for p in params])
    found = ~torch.isfinite(norm)
    sparse = [p for p in sparse_importance_parameters(model) if p.grad is not None]
    if sparse:  # Sparse SN's rule (its code): their gradient norm clipped to 1
        nn.utils.clip_grad_norm_(sparse, 1.0)
    if clip_grad:
        nn.utils.clip_grads_with_norm_(params, clip_grad, norm)
    if scaler.is_enabled():  # fp16: the scaler passes its own found_inf to the fused step
        scaler.step(optimizer)
        scaler.update()
    elif getattr(optimizer, "_step_supports_amp_scaling", False):
        optimizer.grad_scale, optimizer.found_inf = None, found.float().reshape(1)
        try:
            optimizer.step()
        finally:
            del optimizer.grad_scale, optimizer.found_inf
    elif not bool(found):  # an optimizer without on-device skipping: one sync per update
        optimizer.step()
    return found


class NonFiniteGuard:
    """Per-update skip flags kept on the device; counted on the host at `flush`.

    Under fp16 a skipped update may just be the loss scale overflowing (GradScaler lowers the
    scale and goes on): it counts as non-finite only when some process's loss was not finite.
    """

    def __init__(self, device: torch.device, fp16: bool, max_nonfinite: int,
                 consecutive: int = 0):
        self.device, self.fp16, self.max_nonfinite = device, fp16, max_nonfinite
        self.consecutive = consecutive  # skipped updates in a row so far (host)
        self._flags: list[torch.Tensor] = []
        self._iterations: list[int] = []
        self._loss_bad = torch.zeros((), dtype=torch.bool, device=device)
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.loss_count = torch.zeros((), dtype=torch.float64, device=device)

    def add_loss(self, loss: torch.Tensor) -> None:
        finite = torch.isfinite(loss.detach())
        self._loss_bad |= ~finite
        self.loss_sum += torch.where(finite, loss.detach().double(), 0.0)
        self.loss_count += finite.double()

    def add_update(self, skipped: torch.Tensor, iteration: int) -> None:
        flag = skipped & self._loss_bad if self.fp16 else skipped
        self._flags.append(flag)
        self._iterations.append(iteration)
        self._loss_bad = torch.zeros((), dtype=torch.bool, device=self.device)

    def flush(self, distributed: bool, describe) -> tuple[int, float, int]:
        """(non-finite updates skipped, loss sum, finite losses) since the last flush, over all
        processes; raises NonFiniteLossError after max_nonfinite skips in a row (every process
        at once). `describe(iteration)` names an iteration."""
        flags = torch.stack(self._flags).to(torch.int32) if self._flags else \
            torch.zeros(0, dtype=torch.int32, device=self.device)
        sums = torch.stack([self.loss_sum, self.loss_count])
        if distributed:  # asynchronous on the GPU stream; .tolist() below is the one sync
            if len(self._flags):
                dist.all_reduce(flags, op=dist.ReduceOp.MAX)  # a bad loss on any process counts
            dist.all_reduce(sums)
        values = torch.cat([flags.double(), sums]).tolist()
        skipped = 0
        for flag, iteration in zip(values[:-2], self._iterations):
            if not flag:
                self.consecutive = 0
                continue
            skipped += 1
            self.consecutive += 1
            if self.consecutive >= self.max_nonfinite:
                raise NonFiniteLossError(f"{self.consecutive} non-finite losses in a row, the "
                                         f"last at {describe(iteration)}")
        self._flags, self._iterations = [], []
        self.loss_sum.zero_()
        self.loss_count.zero_()
        return skipped, values[-2], int(values[-1])
