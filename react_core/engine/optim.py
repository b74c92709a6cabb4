"""AdamW with the CLIP/REACT parameter groups, and the warm-up + cosine schedule.

Weight decay applies only to weights of two or more dimensions: never to gates, norms,
biases, embeddings' scalars or `logit_scale` (as open_clip and the official REACT code do).
`warmup_cosine` is the one schedule of every stage: mmengine's schedulers step it in the
Runner; `warmup_cosine_factors` tabulates it for trainers that step a torch LR scheduler
(Detectron2's).
"""
from __future__ import annotations

import torch


def no_decay(name: str, parameter: torch.nn.Parameter) -> bool:
    return parameter.ndim < 2 or "logit_scale" in name or name.endswith(".bias")


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two groups over the trainable parameters: decayed ≥2-D weights and the rest."""
    decay, plain = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (plain if no_decay(name, parameter) else decay).append(parameter)
    if not decay and not plain:
        raise ValueError("the model has no trainable parameters")
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def build_optim_wrapper(
    model: torch.nn.Module,
    lr: float,
    weight_decay: float,
    betas=(0.9, 0.98),
    eps: float = 1e-6,
    amp: str | None = None,
    grad_clip: float | None = None,
):
    """An mmengine OptimWrapper (AmpOptimWrapper with `amp` = 'float16' or 'bfloat16')."""
    from mmengine.optim import AmpOptimWrapper, OptimWrapper

    optimizer = torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=tuple(betas), eps=eps)
    clip_grad = {"max_norm": grad_clip} if grad_clip else None
    if amp:
        return AmpOptimWrapper(optimizer=optimizer, dtype=amp, clip_grad=clip_grad)
    return OptimWrapper(optimizer=optimizer, clip_grad=clip_grad)


def warmup_cosine(max_iters: int, warmup_iters: int) -> list[dict]:
    """mmengine param schedulers: linear warm-up from lr/warmup to lr, then cosine to 0."""
    warmup_iters = min(warmup_iters, max_iters)
    schedules = []
    if warmup_iters > 0:
        schedules.append(
            dict(type="LinearLR", start_factor=1.0 / warmup_iters, by_epoch=False, begin=0, end=warmup_iters)
        )
    if max_iters > warmup_iters:
        schedules.append(
            dict(
                type="CosineAnnealingLR",
                T_max=max_iters - warmup_iters,
                eta_min=0.0,
                by_epoch=False,
                begin=warmup_iters,
                end=max_iters,
            )
        )
    return schedules


def warmup_cosine_factors(max_iters: int, warmup_iters: int) -> list[float]:
    """`warmup_cosine`'s learning rate at each of the `max_iters` iterations as a factor of the
    base lr: mmengine's schedulers stepped as the Runner steps them, for a torch `LambdaLR`."""
    import mmengine.optim  # noqa: F401  (registers the schedulers)
    from mmengine.registry import PARAM_SCHEDULERS

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(()))], lr=1.0)
    schedulers = [PARAM_SCHEDULERS.build({**s, "optimizer": optimizer}) for s in warmup_cosine(max_iters, warmup_iters)]
    factors = []
    for _ in range(max_iters):
        factors.append(optimizer.param_groups[0]["lr"])
        optimizer.step()  # no gradients: only the order mmengine expects
        for scheduler in schedulers:
            scheduler.step()
    return factors
