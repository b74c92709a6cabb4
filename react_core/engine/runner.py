"""mmengine's Runner with checkpointing and resume of our own, safe to load.

mmengine 0.10.7 resumes through `torch.load` without `weights_only`, which fails on
PyTorch >= 2.6 (and would unpickle arbitrary objects). Our checkpoint holds only tensors and
plain containers, and is read back with `weights_only=True`: what training changed in the model
(trainable tensors, buffers, modules' extra state such as a generator's), the optimizer state
(the AMP loss scaler's with it), the schedulers', the iteration, every process's python, NumPy,
torch and CUDA random states, and what hooks keep (`before_save_checkpoint`). A resumed run ends
with the tensors of an uninterrupted one: `ResumableIterBasedTrainLoop` starts the sampler where
the interrupted run stopped instead of re-reading every batch before it, each sample draws its
augmentation from its own seed (`react_core.data.SeededSamples`), and nothing between the
restore and the next step draws from the restored generators.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch
from mmengine.device import get_device
from mmengine.dist import all_gather_object
from mmengine.model import MMDistributedDataParallel, is_model_wrapper
from mmengine.registry import LOOPS
from mmengine.runner import IterBasedTrainLoop, Runner
from mmengine.runner.loops import _InfiniteDataloaderIterator
from mmengine.visualization import Visualizer

from react_core.engine.hooks import ProgressHook, unwrap
from react_core.engine.randomness import random_states, restore_random_states
from react_core.errors import ReactError
from react_core.io import atomic_path

CHECKPOINT_NAME = "checkpoint_last.pt"
LOG_NAME = "train.log"
CHECKPOINT_FORMAT = 2  # what a checkpoint holds and how the run draws its samples; resume refuses another


class ResumeError(ReactError):
    """A checkpoint that cannot resume this run; the message names the file and why."""


@LOOPS.register_module()
class ResumableIterBasedTrainLoop(IterBasedTrainLoop):
    """IterBasedTrainLoop that, when resumed, moves the sampler instead of replaying batches."""

    def run(self) -> torch.nn.Module:
        if self._iter > 0:
            sampler = self.dataloader.sampler
            if not hasattr(sampler, "start_at"):
                raise ResumeError("resuming needs a ResumableSampler in the training dataloader")
            sampler.start_at(self._iter * self.dataloader.batch_size)
            self.dataloader_iterator = _InfiniteDataloaderIterator(self.dataloader)
        self.runner.call_hook("before_train")
        self.runner.call_hook("before_train_epoch")
        while self._iter < self._max_iters and not self.stop_training:
            self.runner.model.train()
            self.run_iter(next(self.dataloader_iterator))
        self.runner.call_hook("after_train_epoch")
        self.runner.call_hook("after_train")
        return self.runner.model


def trained_state(model: torch.nn.Module) -> dict:
    """What training may change in `model`: its state dict less the frozen parameters (the
    trainable tensors, buffers such as running statistics, modules' extra state)."""
    frozen = {name for name, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}
    return {key: value for key, value in model.state_dict().items() if key not in frozen}


class SafeRunner(Runner):
    """Runner whose checkpoints are weights-only files and whose resume reads them safely.

    `run_identity` (any JSON-able dict, e.g. the config hash and base model identity) is stored
    in each checkpoint; resuming from a checkpoint of a different run is an error.

    `--out` gets only what a user reads: mmengine's full log goes to `train.log` (appended on
    resume) instead of a timestamped folder, the console shows warnings only (a `ProgressHook`
    shows the progress), and no visualizer folder or config copy is written.

    The model trains on `device` (default: mmengine's, the accelerator if there is one); under
    torchrun each process wraps it in DDP on its own device, or on none on CPU (gloo).
    """

    def __init__(self, *args, run_identity: dict | None = None, device: str | None = None, **kwargs):
        self._device = device or get_device()
        super().__init__(*args, **kwargs)
        self.run_identity = dict(run_identity or {})
        with contextlib.suppress(OSError):  # mmengine made it before the logger was ours; empty
            Path(self._log_dir).rmdir()
        self._log_dir = self.work_dir

    def wrap_model(self, model_wrapper_cfg, model):
        if model_wrapper_cfg is not None or is_model_wrapper(model):
            return super().wrap_model(model_wrapper_cfg, model)
        model = model.to(self._device)
        if not self.distributed:
            return model
        on_cpu = torch.device(self._device).type == "cpu"
        return MMDistributedDataParallel(module=model, device_ids=None if on_cpu else [torch.cuda.current_device()])

    def build_logger(self, log_level="INFO", log_file=None, **kwargs):
        logger = super().build_logger(log_level=log_level, log_file=str(Path(self.work_dir) / LOG_NAME), **kwargs)
        for handler in logger.handlers:
            if not isinstance(handler, logging.FileHandler):
                handler.setLevel(max(handler.level, logging.WARNING))
        return logger

    def build_visualizer(self, visualizer=None) -> Visualizer:
        return Visualizer.get_instance(name=self._experiment_name)

    def dump_config(self) -> None:
        """The commands write the resolved config as `config.yaml`; mmengine's copy would be empty."""

    def train(self):
        """mmengine's training, with the progress bar closed however it ends."""
        try:
            return super().train()
        finally:
            for hook in self.hooks:
                if isinstance(hook, ProgressHook):
                    hook.close()

    def checkpoint_path(self) -> Path:
        return Path(self.work_dir) / CHECKPOINT_NAME

    def save_checkpoint(self, out_dir, filename, file_client_args=None, save_optimizer=True,
                        save_param_scheduler=True, meta=None, by_epoch=False, backend_args=None):
        every_rank = all_gather_object(random_states())  # each process draws its own, e.g. on its own images
        if self.rank != 0:
            return
        checkpoint = {
            "meta": {"iter": self.iter + 1, "epoch": self.epoch, "seed": self.seed, "run": self.run_identity,
                     "format": CHECKPOINT_FORMAT},
            "state_dict": {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v
                           for k, v in trained_state(unwrap(self.model)).items()},
            "optimizer": self.optim_wrapper.state_dict(),
            "param_schedulers": [s.state_dict() for s in self.param_schedulers or []],
            "random": every_rank,
        }
        self.call_hook("before_save_checkpoint", checkpoint=checkpoint)
        with atomic_path(Path(out_dir) / filename) as tmp:
            torch.save(checkpoint, tmp)

    def load_or_resume(self) -> None:
        if self._has_loaded:
            return
        if self._resume and self.checkpoint_path().is_file():
            self.resume(str(self.checkpoint_path()))
        self._has_loaded = True

    def resume(self, filename, resume_optimizer=True, resume_param_scheduler=True, map_location="cpu") -> None:
        try:
            checkpoint = torch.load(filename, map_location="cpu", weights_only=True)
        except Exception as error:
            raise ResumeError(f"{filename}: not a readable checkpoint ({type(error).__name__}: {error})") from None
        saved_run = checkpoint["meta"].get("run", {})
        if saved_run != self.run_identity:
            changed = sorted(k for k in saved_run.keys() | self.run_identity.keys() if saved_run.get(k) != self.run_identity.get(k))
            raise ResumeError(
                f"{filename} belongs to a different run (differs in: {', '.join(changed)}); "
                "use another output folder or start over"
            )
        if checkpoint["meta"].get("format", 1) != CHECKPOINT_FORMAT:
            raise ResumeError(f"{filename} was written by an earlier version of react, whose runs do not continue exactly "
                              "with this one; start over (remove it) or use another output folder")
        model = unwrap(self.model)
        if set(checkpoint["state_dict"]) != set(trained_state(model)):
            raise ResumeError(f"{filename}: its tensors are not the trained tensors of this model")
        model.load_state_dict(checkpoint["state_dict"], strict=False)
        self.optim_wrapper.load_state_dict(checkpoint["optimizer"])
        for scheduler, state in zip(self.param_schedulers or [], checkpoint["param_schedulers"]):
            scheduler.load_state_dict(state)
        saved = checkpoint["random"]
        if len(saved) != self.world_size:
            self.logger.warning(f"{filename} was written by {len(saved)} processes, this run has {self.world_size}: it "
                                f"continues, but not as an uninterrupted run on {len(saved)} would have")
        restore_random_states(saved[self.rank % len(saved)])
        self.train_loop._iter = checkpoint["meta"]["iter"]
        self.train_loop._epoch = checkpoint["meta"]["epoch"]
        self.call_hook("after_load_checkpoint", checkpoint=checkpoint)
        self.logger.info(f"resumed from {filename} at iteration {self.train_loop._iter}")
