"""Training on mmengine's Runner: `build_runner` is the one set-up of every stage that trains
through it (pretrain, customize, and the torchvision and plain dense engines);
`train_contrastive` is the contrastive run behind pretrain and customize."""
from __future__ import annotations

import itertools
import os
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from react_core.data import PairCollate, PairDataset, ResumableSampler, SeededSamples
from react_core.engine.hooks import ClampLogitScaleHook, ProgressHook, SafeCheckpointHook, ThroughputHook
from react_core.engine.model import ContrastiveCLIP
from react_core.engine.optim import build_optim_wrapper, warmup_cosine
from react_core.engine.runner import SafeRunner

_run_counter = itertools.count()


def distributed_context() -> tuple[str, int, int]:
    """(launcher, rank, world size); starts the process group when launched by torchrun."""
    from mmengine.dist import get_dist_info, init_dist, is_distributed

    launcher = "pytorch" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "none"
    if launcher == "pytorch" and not is_distributed():
        if torch.cuda.is_available():
            init_dist("pytorch", backend="nccl")
        else:  # mmengine's init_dist picks a CUDA device even for gloo
            torch.distributed.init_process_group(backend="gloo")
    rank, world_size = get_dist_info()
    return launcher, rank, world_size


def training_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    seed: int,
    rank: int,
    world_size: int,
    workers: int,
    collate: Callable | None = None,
    pin_memory: bool = False,
) -> DataLoader:
    """The training loader of every trainer (the stages `build_runner` trains, and the Detectron2
    engines through the same sampler and seeds): the one a resume continues exactly.

    Args:
        dataset: the training samples (any random augmentation drawn from python's, NumPy's or
            torch's global generators).
        batch_size: samples per step on this process.
        seed: the run's seed: the order of each epoch and every sample's own seed.
        rank, world_size: this process's share of each epoch.
        workers: loader worker processes (the samples, and so the run, are the same for any count).
        collate: how samples become a batch.
        pin_memory: page-locked batches, for a copy to the accelerator.

    Returns:
        A loader over `ResumableSampler` keys (the runner moves it to the resumed position)
        whose samples are drawn under their own seeds (`SeededSamples`), and whose own generator
        (not the global one, which the checkpoint restores) seeds its iterators.
    """
    return DataLoader(
        SeededSamples(dataset),
        batch_size=batch_size,
        sampler=ResumableSampler(len(dataset), seed=seed, rank=rank, world_size=world_size),
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )


def build_runner(
    model: torch.nn.Module,
    loader: DataLoader,
    train,
    optim_wrapper,
    *,
    work_dir: str | Path,
    desc: str,
    launcher: str,
    run_identity: dict,
    resume: bool,
    max_iters: int | None = None,
    hooks: Sequence = (),
    device: str | None = None,
) -> SafeRunner:
    """A `SafeRunner` for `max_iters` (default `train.max_iters`) iterations of `model` (an
    mmengine `BaseModel`) over `loader` (a `training_loader`), with `train`'s (a `TrainSchedule`)
    warm-up + cosine schedule, seed, log and checkpoint intervals; a progress bar named `desc`;
    `hooks` besides it. With `resume`, a checkpoint of this `run_identity` in `work_dir` is
    continued. The runner writes only its resumable checkpoint: a stage writes its final weights
    once `train()` has returned, so no intermediate weights carry a final file's name."""
    max_iters = max_iters or train.max_iters
    if launcher == "pytorch":  # torchrun sets OMP_NUM_THREADS; mmengine would set MKL's to 1 and warn on every rank
        os.environ.setdefault("MKL_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    if not hasattr(loader.dataset, "metainfo"):
        loader.dataset.metainfo = {}  # mmengine's loop hands it to its visualizer (which draws nothing here), or warns
    return SafeRunner(
        model=model,
        work_dir=str(work_dir),
        experiment_name=f"{desc}_{time.strftime('%Y%m%d_%H%M%S')}_{os.getpid()}_{next(_run_counter)}",
        train_dataloader=loader,
        train_cfg=dict(type="ResumableIterBasedTrainLoop", max_iters=max_iters),
        optim_wrapper=optim_wrapper,
        param_scheduler=warmup_cosine(max_iters, train.warmup_iters),
        default_hooks=dict(logger=None, checkpoint=None, sampler_seed=None),
        custom_hooks=[ProgressHook(train.log_interval, desc), *hooks, SafeCheckpointHook(train.checkpoint_interval)],
        launcher=launcher,
        randomness=dict(seed=train.seed),
        default_scope=None,  # our parts build in the react registries; a global "mmengine" scope only warns
        resume=resume,
        run_identity=run_identity,
        device=device,
    )


def train_contrastive(
    clip: torch.nn.Module,
    dataset: PairDataset,
    *,
    mode: str,
    train,
    data,
    work_dir: str | Path,
    run_identity: dict,
    tokenizer: Callable | None = None,
    caption_embeddings: torch.Tensor | None = None,
    hooks: Sequence = (),
    dense=None,
) -> dict:
    """Train `clip` (its `requires_grad` flags already set for `mode`) on `dataset`; resumes from
    `work_dir` when it holds a checkpoint of the same `run_identity`.

    `train` and `data` are the `TrainConfig` and `DataConfig` of the run; `hooks` are extra
    mmengine hooks; `dense`, a `DenseObjective` joining the loss (dense-aware customization).
    Returns the number of iterations, the images skipped as unreadable, the final
    learning rate and the wall time of this call.
    """
    launcher, rank, world_size = distributed_context()
    text_locked = mode != "full"
    if text_locked and caption_embeddings is None:
        raise ValueError(f"mode {mode!r} locks the text tower: pass the caption embeddings")
    model = ContrastiveCLIP(clip, text_locked=text_locked, rank=rank, world_size=world_size, dense=dense)
    collate = PairCollate(dataset.captions, None if text_locked else tokenizer, caption_embeddings if text_locked else None)
    loader = training_loader(dataset, data.batch_size, seed=train.seed, rank=rank, world_size=world_size,
                             workers=data.workers, collate=collate, pin_memory=torch.cuda.is_available())
    max_iters = train.total_iters(len(dataset), data.batch_size * world_size)
    amp = train.mixed_precision(torch.cuda.is_available())
    throughput = ThroughputHook()
    runner = build_runner(
        model,
        loader,
        train,
        build_optim_wrapper(model, train.lr, train.weight_decay, train.betas, train.eps, amp=amp, grad_clip=train.grad_clip),
        work_dir=work_dir,
        desc=mode,
        launcher=launcher,
        max_iters=max_iters,
        hooks=[throughput, ClampLogitScaleHook(), *hooks],
        resume=True,
        run_identity=run_identity,
    )
    start = time.perf_counter()
    runner.train()
    return {
        "iters": max_iters,
        "skipped_images": throughput.skipped,
        "final_lr": runner.optim_wrapper.get_lr()["lr"][0],
        "train_seconds": time.perf_counter() - start,
    }
