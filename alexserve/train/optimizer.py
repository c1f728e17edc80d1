"""The paper's SGD update rule, exactly as written in section 5.

    v := momentum * v - weight_decay * lr * w - lr * grad
    w := w + v

The momentum buffer `v` holds a step already scaled by the learning rate.
`torch.optim.SGD` instead keeps an unscaled buffer `b := momentum * b + grad +
weight_decay * w` and steps `w := w - lr * b`. With a constant learning rate the
two are the same sequence of weights (`v = -lr * b` by induction), so they agree
up to rounding. They differ when the learning rate changes: here the old,
larger steps already in `v` decay away over about 1 / (1 - momentum) steps,
while torch rescales the whole buffer to the new rate at once. We follow the
paper, because this project reproduces it.

Weight decay applies to every parameter, biases included, as in the paper's
rule (it names no exception). Parameters without a gradient are skipped
entirely (no decay, no momentum), like torch.optim.SGD: they did not take part
in the step.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.optim import Optimizer


class PaperSGD(Optimizer):
    """SGD with momentum and weight decay in the paper's form (see the module docstring).

    The per-parameter state is `{"momentum_buffer": v}`, created as zeros on a
    parameter's first step, so the first update is `-wd * lr * w - lr * grad`.
    `state_dict()` holds only tensors and numbers, so it loads with
    `torch.load(weights_only=True)`.
    """

    def __init__(self, params: Iterable, lr: float, momentum: float, weight_decay: float) -> None:
        if lr <= 0.0:
            raise ValueError(f"PaperSGD: lr must be positive, got {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"PaperSGD: momentum must be in [0, 1), got {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"PaperSGD: weight_decay must be >= 0, got {weight_decay}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    @classmethod
    def from_config(cls, params: Iterable, optim_cfg) -> PaperSGD:
        """Built from an `OptimConfig` (learning_rate, momentum, weight_decay)."""
        return cls(params, lr=optim_cfg.learning_rate, momentum=optim_cfg.momentum, weight_decay=optim_cfg.weight_decay)

    def set_lr(self, lr: float) -> None:
        """Sets the learning rate of every group (what the plateau schedule returns)."""
        if lr <= 0.0:
            raise ValueError(f"PaperSGD: lr must be positive, got {lr}")
        for group in self.param_groups:
            group["lr"] = lr

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, buffers = self._gather(group)
            if params:
                _paper_update(params, grads, buffers, group["lr"], group["momentum"], group["weight_decay"])
        return loss

    def _gather(self, group: dict) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """Parameters that have a gradient, their gradients and momentum buffers (zeros on first use)."""
        params, grads, buffers = [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("PaperSGD does not support sparse gradients")
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            params.append(p)
            grads.append(p.grad)
            buffers.append(state["momentum_buffer"])
        return params, grads, buffers


def _paper_update(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    buffers: list[torch.Tensor],
    lr: float,
    momentum: float,
    weight_decay: float,
) -> None:
    """One step of the rule on whole lists at once.

    The `_foreach_*` kernels launch one fused operation per list on GPU
    instead of one per parameter (16 parameters per tower here); on CPU they
    loop in C++. The operations run in the order the formula is written,
    ((momentum * v) - (wd * lr) * w) - lr * grad, so the result does not depend
    on whether the foreach path or a plain loop ran it.
    """
    torch._foreach_mul_(buffers, momentum)
    if weight_decay != 0.0:
        torch._foreach_add_(buffers, params, alpha=-weight_decay * lr)
    torch._foreach_add_(buffers, grads, alpha=-lr)
    torch._foreach_add_(params, buffers)
