"""mmengine hooks for contrastive training: progress, throughput, logit-scale clamp, safe checkpoints."""
from __future__ import annotations

import math
import time

import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

MAX_LOGIT_SCALE = math.log(100)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if is_model_wrapper(model) else model


class ProgressHook(Hook):
    """A progress bar with the loss and learning rate in place of mmengine's log lines, and
    every `interval` iterations one line of every training scalar (window means) in the log file."""

    priority = "BELOW_NORMAL"

    def __init__(self, interval: int, desc: str):
        self.interval = interval
        self.desc = desc
        self.bar = None

    def before_train(self, runner):
        from tqdm import tqdm

        self.bar = tqdm(total=runner.max_iters, initial=runner.iter, desc=self.desc, unit="it", disable=runner.rank != 0)

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        scalars = {name.split("/", 1)[1]: buffer for name, buffer in runner.message_hub.log_scalars.items()
                   if name.startswith("train/")}
        self.bar.set_postfix(loss=f"{scalars['loss'].current():.3f}", lr=f"{scalars['lr'].current():.1e}", refresh=False)
        self.bar.update(1)
        done = runner.iter + 1
        if done % self.interval == 0 or done == runner.max_iters:
            means = "  ".join(f"{name}: {buffer.mean(self.interval):.4g}" for name, buffer in sorted(scalars.items()))
            runner.logger.info(f"iter {done}/{runner.max_iters}  {means}")

    def after_train(self, runner):
        self.close()

    def close(self) -> None:
        """Close the bar; `SafeRunner.train` calls this on an error too, which `after_train` misses."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class ThroughputHook(Hook):
    """Logs images/s (all ranks together) and the running count of skipped, unreadable images.

    The count comes from the `skipped` entry that `PairCollate` puts in each batch; the hook
    takes it out before the batch reaches the model. The count so far travels in the resumable
    checkpoint, so a resumed run reports the whole run's.
    """

    priority = "HIGH"

    def __init__(self):
        self.skipped = 0
        self._images = 0
        self._start = None

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if self._start is None:
            self._start = time.perf_counter()
        self.skipped += int(data_batch.pop("skipped", 0)) * runner.world_size
        self._images = int(len(data_batch["images"])) * runner.world_size

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        now = time.perf_counter()
        runner.message_hub.update_scalar("train/images_per_s", self._images / max(now - self._start, 1e-9))
        runner.message_hub.update_scalar("train/skipped", self.skipped)
        self._start = now

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint["meta"]["skipped_images"] = self.skipped

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        self.skipped = int(checkpoint["meta"].get("skipped_images", 0))


class ClampLogitScaleHook(Hook):
    """Clamp `logit_scale` to [0, ln 100] after every optimizer step, as CLIP does."""

    priority = "LOW"

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        with torch.no_grad():
            unwrap(runner.model).logit_scale.clamp_(0, MAX_LOGIT_SCALE)


class SafeCheckpointHook(Hook):
    """Every `interval` iterations and at the end: the resumable checkpoint
    (`SafeRunner.save_checkpoint`), once the iteration's other hooks (the schedulers' step
    included) are done, so it holds the state the next iteration starts from. The user-facing weights are written by the stage once
    training has ended, never here."""

    priority = "VERY_LOW"

    def __init__(self, interval: int):
        self.interval = interval

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        done = runner.iter + 1
        if done % self.interval == 0 or done == runner.max_iters:
            runner.save_checkpoint(runner.work_dir, "checkpoint_last.pt", by_epoch=False)
