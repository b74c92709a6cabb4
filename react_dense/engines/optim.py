"""The one optimizer and schedule of every dense engine: AdamW (torch's betas and eps) over
`react_core`'s parameter groups (no decay on biases, norms, gates), `react_core`'s warm-up +
cosine schedule, gradient-norm clipping at `train.grad_clip` (null: none).

`optim_wrapper` is mmengine's form (the Runner of the torchvision and plain engines, AMP on
GPU); `build_optimizer` and `build_scheduler` are the torch form that Detectron2's trainers step.
"""
from __future__ import annotations

import torch

from react_core.engine.optim import build_optim_wrapper, param_groups, warmup_cosine_factors

BETAS = (0.9, 0.999)
EPS = 1e-8


def optim_wrapper(model: torch.nn.Module, train, amp: str | None = None):
    """mmengine's OptimWrapper (AmpOptimWrapper with `amp` = 'float16' or 'bfloat16')."""
    return build_optim_wrapper(model, train.lr, train.weight_decay, BETAS, EPS, amp=amp, grad_clip=train.grad_clip)


class ClippedAdamW(torch.optim.AdamW):
    """AdamW that clips the global gradient norm of all its parameters before each step, so an
    engine that only calls `optimizer.step()` (Detectron2's trainers) clips as the Runner does."""

    def __init__(self, params, lr: float, clip_grad_norm: float = 0.0):
        super().__init__(params, lr=lr, betas=BETAS, eps=EPS)
        self.clip_grad_norm = clip_grad_norm

    def step(self, closure=None):
        if self.clip_grad_norm > 0:
            params = [p for group in self.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.clip_grad_norm)
        return super().step(closure)


def build_optimizer(model: torch.nn.Module, train) -> ClippedAdamW:
    return ClippedAdamW(param_groups(model, train.weight_decay), train.lr, train.grad_clip or 0.0)


def build_scheduler(optimizer: torch.optim.Optimizer, train) -> torch.optim.lr_scheduler.LambdaLR:
    """`react_core`'s warm-up + cosine, stepped once per iteration."""
    factors = warmup_cosine_factors(train.max_iters, train.warmup_iters)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: factors[min(step, len(factors) - 1)])
