"""mmengine's Runner for the engines that run wherever torch does (the torchvision detector and
the plain segmenter): `react_core`'s `build_runner`, the one customization trains through, so
both dense tasks get its safe resume, DDP under torchrun (gloo on CPU), AMP on GPU, hooks and
quiet log.

In `--out`: `checkpoint_last.pt` (resumable, weights-only: what training changed in the model, optimizer and
schedulers, iteration, random states) every `train.checkpoint_interval` iterations, mmengine's
log in `train.log`, and after the last iteration `model_final.pth`: the model's weights, what
`--eval-only`, `react detect` and `react segment` read. A non-finite loss stops the run naming
the iteration.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Callable, Optional

import torch
from mmengine.logging import MessageHub
from mmengine.model import BaseModel
from torch.utils.data import Dataset

from react_core.engine.runner import CHECKPOINT_NAME, ResumeError
from react_core.engine.train import build_runner, distributed_context, training_loader
from react_core.errors import ReactError
from react_dense.engines.checkpoint import FINAL, LAST, save_checkpoint
from react_dense.engines.optim import optim_wrapper

# settings a resumed run may change: they leave the weights as they are
RESULT_FREE = ("log_interval", "checkpoint_interval", "device", "num_workers")
EVALUATION_ONLY = ("test", "test_data", "ensemble")  # the score ensembles act after training


class NonFiniteLossError(ReactError, FloatingPointError):
    """A loss that is NaN or infinite; the message names the iteration and every loss term."""


class LossModel(BaseModel):
    """`net` as mmengine trains it: a batch in, `losses(net, *batch)` (named losses, summed by
    mmengine) out."""

    def __init__(self, net: torch.nn.Module, losses: Callable[..., dict]):
        super().__init__()
        self.net = net
        self.losses = losses

    def forward(self, *batch, mode: str = "loss") -> dict:
        if mode != "loss":
            raise ValueError(f"LossModel only computes the training losses (mode='loss'), not {mode!r}")
        return self.losses(self.net, *batch)

    def parse_losses(self, losses: dict):
        loss, log_vars = super().parse_losses(losses)
        if not torch.isfinite(loss):
            iteration = MessageHub.get_current_instance().get_info("iter")
            terms = {name: float(value.detach().float().mean()) for name, value in losses.items()}
            raise NonFiniteLossError(f"loss is {loss.item()} at iteration {iteration}: {terms}")
        return loss, log_vars


def run_identity(cfg) -> dict:
    """What `--resume` must find unchanged in the checkpoint: a hash of each config section, less
    evaluation-only sections and the settings in `RESULT_FREE`."""
    identity = {}
    for name, section in dataclasses.asdict(cfg).items():
        if name in EVALUATION_ONLY:
            continue
        if isinstance(section, dict):
            section = {k: v for k, v in section.items() if k not in RESULT_FREE}
        identity[name] = hashlib.sha256(json.dumps(section, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return identity


def train(
    net: torch.nn.Module,
    dataset: Dataset,
    losses: Callable[..., dict],
    train,
    out: Path,
    *,
    identity: dict,
    desc: str,
    resume: bool = False,
    collate: Optional[Callable] = None,
    num_workers: int = 0,
) -> int:
    """Train `net` for `train.max_iters` iterations over `dataset` (reshuffled each epoch from
    `train.seed`; `train.batch_size` per process) with the named `losses(net, *batch)`; with
    `resume`, continue the checkpoint in `out` of this run `identity`. `train` is a `DenseTrain`.
    Writes `out/model_final.pth` on the main process; returns this process's rank."""
    if resume and (out / LAST).is_file() and not (out / CHECKPOINT_NAME).is_file():
        raise ResumeError(f"{out / LAST} is not this engine's checkpoint (the older dense training loop's, or "
                          f"the Detectron2 segmentation engine's); --resume continues {CHECKPOINT_NAME} only: remove it "
                          "to start over, or use another --out")
    launcher, rank, world_size = distributed_context()
    model = LossModel(net, losses)
    loader = training_loader(dataset, train.batch_size, seed=train.seed, rank=rank, world_size=world_size,
                             workers=num_workers, collate=collate)
    runner = build_runner(
        model, loader, train, optim_wrapper(model, train, train.mixed_precision(torch.device(train.device).type == "cuda")),
        work_dir=out, desc=desc, launcher=launcher, run_identity=identity, resume=resume,
        device=train.device,
    )
    runner.train()
    if rank == 0:
        save_checkpoint(out / FINAL, net)
    return rank
