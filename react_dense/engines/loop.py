"""The training loop of the engines that run wherever torch does: the torchvision detector and the
plain segmentation engine share it, so resume, schedules and checkpoints behave the same in both.

AdamW over `react_core`'s parameter groups (no decay on biases, norms, gates), linear warm-up
then cosine to zero, optional gradient clipping; a non-finite loss stops the run naming the
step. `last_checkpoint.pth` (model, optimizer, scheduler, step) is written atomically every
`checkpoint_interval` steps and read back with `torch.load(weights_only=True)`, so `resume`
continues an interrupted run; `model_final.pth` holds the weights alone.
"""
from __future__ import annotations

import logging
import math
import random
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from tqdm import tqdm

from react_core.engine.optim import param_groups
from react_core.io import atomic_path
from react_core.modeling.checkpoints import CheckpointError

log = logging.getLogger(__name__)
LAST = "last_checkpoint.pth"
FINAL = "model_final.pth"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def save_checkpoint(path: Path, model, optimizer=None, scheduler=None, step: int = 0) -> None:
    state = {"model": model.state_dict(), "step": step}
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
        state["scheduler"] = scheduler.state_dict()
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, model, optimizer=None, scheduler=None) -> int:
    """Load weights (strictly) and, if given, the optimizer state; returns the step reached.
    A checkpoint of another model (missing, unexpected or differently shaped tensors) is a
    `CheckpointError` naming the file."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file not found: {path}") from None
    try:
        missing, unexpected = model.load_state_dict(state["model"], strict=False)
    except RuntimeError as error:
        first = next((line.strip() for line in str(error).splitlines() if "size mismatch" in line), str(error).splitlines()[0])
        raise CheckpointError(f"{path} does not fit this config's model: {first}") from None
    if missing or unexpected:
        raise CheckpointError(f"{path} does not fit this config's model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if optimizer is not None and "optimizer" in state:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    return int(state.get("step", 0))


def warmup_cosine(steps: int, warmup_steps: int) -> Callable[[int], float]:
    """The lr factor at each step: linear warm-up to 1, then cosine to 0 at `steps`."""
    warmup, total = max(warmup_steps, 1), max(steps, 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))

    return factor


class ClippedAdamW(torch.optim.AdamW):
    """AdamW that clips the global gradient norm of all its parameters before each step, so an
    engine that only calls `optimizer.step()` (Detectron2's trainers) clips as this loop does."""

    def __init__(self, params, lr: float, clip_grad_norm: float = 0.0):
        super().__init__(params, lr=lr)
        self.clip_grad_norm = clip_grad_norm

    def step(self, closure=None):
        if self.clip_grad_norm > 0:
            params = [p for group in self.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.clip_grad_norm)
        return super().step(closure)


def build_optimizer(model: torch.nn.Module, train_cfg) -> ClippedAdamW:
    """The one optimizer of every dense engine: AdamW over `react_core`'s parameter groups, with
    global gradient clipping."""
    return ClippedAdamW(param_groups(model, train_cfg.weight_decay), train_cfg.lr, train_cfg.grad_clip or 0.0)


def build_scheduler(optimizer: torch.optim.Optimizer, train_cfg) -> torch.optim.lr_scheduler.LambdaLR:
    """The one schedule of every dense engine: linear warm-up then cosine, stepped once per iteration."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(train_cfg.max_iters, train_cfg.warmup_iters))


def _value(value) -> float:
    return float(value.detach()) if torch.is_tensor(value) else float(value)


def train_loop(
    model: torch.nn.Module,
    loader: Iterable,
    step_loss: Callable[[object], tuple[torch.Tensor, dict]],
    train_cfg,
    out: Path,
    resume: bool = False,
) -> torch.nn.Module:
    """Run `train_cfg.max_iters` optimizer steps over `loader` (cycled). `step_loss(batch)` returns
    the loss and the named values shown in the progress bar and in a non-finite-loss error.
    `train_cfg` is a `TrainSchedule`: max_iters, lr, weight_decay, warmup_iters, grad_clip, log_interval and
    checkpoint_interval."""
    optimizer = build_optimizer(model, train_cfg)
    scheduler = build_scheduler(optimizer, train_cfg)
    step = 0
    if resume and (out / LAST).is_file():
        step = load_checkpoint(out / LAST, model, optimizer, scheduler)
        log.info("resumed from %s at step %d", out / LAST, step)
    model.train()
    progress = tqdm(total=train_cfg.max_iters, initial=step, desc="train", dynamic_ncols=True)
    while step < train_cfg.max_iters:
        for batch in loader:
            if step >= train_cfg.max_iters:
                break
            loss, parts = step_loss(batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {step}: {({k: _value(v) for k, v in parts.items()})}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            progress.update(1)
            if step % train_cfg.log_interval == 0:
                progress.set_postfix({k: f"{_value(v):.3f}" for k, v in parts.items()})
            if step % train_cfg.checkpoint_interval == 0 or step == train_cfg.max_iters:
                save_checkpoint(out / LAST, model, optimizer, scheduler, step)
    progress.close()
    save_checkpoint(out / FINAL, model)
    return model
