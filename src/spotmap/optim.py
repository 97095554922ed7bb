"""Row-wise ("lazy") clipped Adam: a minibatch updates only the rows of a parameter it has gradients for.

Spot-level guide parameters (``w_sf_loc``, shape (S, F), …) get a gradient only for the spots of the current
minibatch. pyro's :class:`~pyro.optim.ClippedAdam` still moves every row at every step — with the momentum
of the row's last real gradient, for all the steps until that spot's next minibatch — so with many
minibatches per epoch each spot takes many stale steps per real one, and a whole-sample Visium HD fit in
minibatches drifted away while its loss rose (benchmarks/RESULTS_hd.md). Here a row whose gradient is
all zero keeps its value and its moments, and every row counts its own steps for Adam's bias correction,
so each spot gets exactly the Adam update it would get from its own gradients alone.

When every row has a gradient and all rows have taken the same number of steps (full-batch training,
global parameters) the update is pyro's ClippedAdam exactly, bit for bit.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch.optim.optimizer import Optimizer


class LazyClippedAdam(Optimizer):
    """Adam with elementwise gradient clipping (as :class:`pyro.optim.ClippedAdam`) and row-wise lazy updates.

    Rows are the first dimension of parameters with two or more dimensions (one row otherwise). A row is
    updated at a step only if some element of its gradient is non-zero.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 clip_norm: float = 10.0) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, clip_norm=clip_norm))

    @staticmethod
    def _rows(p: torch.Tensor) -> int:
        return p.shape[0] if p.dim() >= 2 else 1

    @torch.no_grad()
    def step(self, closure: Callable | None = None) -> Any:  # noqa: D102
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            lr, eps, (beta1, beta2) = group["lr"], group["eps"], group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad.clamp_(-group["clip_norm"], group["clip_norm"])
                rows = self._rows(p)
                state = self.state[p]
                if len(state) == 0:
                    state["row_step"] = torch.zeros(rows, dtype=torch.int64, device=p.device)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                if state["row_step"].dtype != torch.int64:
                    # Optimizer.load_state_dict casts every state tensor except "step" to the parameter's dtype
                    state["row_step"] = state["row_step"].round().to(torch.int64)
                m, v, n = state["exp_avg"], state["exp_avg_sq"], state["row_step"]
                touched = grad.reshape(rows, -1).ne(0).any(1)                                    # (rows,)
                if bool(touched.all()) and bool((n == n[0]).all()):
                    # every row in step: pyro's ClippedAdam, operation for operation
                    n += 1
                    t = int(n[0])
                    m.mul_(beta1).add_(grad, alpha=1 - beta1)
                    v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                    denom = v.sqrt().add_(eps)
                    step_size = lr * math.sqrt(1 - beta2**t) / (1 - beta1**t)
                    p.addcdiv_(m, denom, value=-step_size)
                    continue
                idx = touched.nonzero().squeeze(1)
                if idx.numel() == 0:
                    continue
                g2 = grad.reshape(rows, -1).index_select(0, idx)
                m2, v2, p2 = m.view(rows, -1), v.view(rows, -1), p.view(rows, -1)
                mi = m2.index_select(0, idx).mul_(beta1).add_(g2, alpha=1 - beta1)
                vi = v2.index_select(0, idx).mul_(beta2).addcmul_(g2, g2, value=1 - beta2)
                n.index_add_(0, idx, torch.ones_like(idx))
                t = n.index_select(0, idx).double()
                step_size = (lr * torch.sqrt(1 - beta2**t) / (1 - beta1**t)).to(p.dtype)[:, None]   # (k, 1)
                pi = p2.index_select(0, idx) - step_size * mi / vi.sqrt().add_(eps)
                m2.index_copy_(0, idx, mi)
                v2.index_copy_(0, idx, vi)
                p2.index_copy_(0, idx, pi)
        return loss
