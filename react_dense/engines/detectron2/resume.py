"""Exact resume for Detectron2's `DefaultTrainer`: after a kill, `--resume` ends with the tensors
of an uninterrupted run, as on the engines that train on mmengine's Runner.

Detectron2's checkpoint holds the model, optimizer, scheduler and iteration; on resume its
`TrainingSampler` starts its stream again from the first sample, the augmentations draw from
generators no checkpoint holds, and so does the model (proposal sampling). `ExactResume` trains
from the samples of `react_core`'s `ResumableSampler`, each drawn under its own seed
(`SeededSamples`: the same whatever the number of workers), moves the sampler to the resumed
position, and keeps python's, NumPy's, torch's and CUDA's random states in the checkpoint
(`RandomStateHook`, through Detectron2's own hook state). Batches are consecutive samples of the
stream, so `DATALOADER.ASPECT_RATIO_GROUPING` must be off for a resume to be exact: grouping
holds back samples of the other aspect ratio, which no checkpoint records.
"""
from __future__ import annotations

from detectron2.data import DatasetFromList, DatasetMapper, MapDataset, build_detection_train_loader, get_detection_dataset_dicts
from detectron2.engine import HookBase
from detectron2.utils import comm

from react_core.data import ResumableSampler, SeededSamples
from react_core.engine.randomness import random_states, restore_random_states


class RandomStateHook(HookBase):
    """Every process's global random states, saved with each checkpoint (Detectron2 saves the
    state of every hook that has one) and restored when a run resumes from it. The main process
    alone saves, so every process hands its states over (a collective) at each step that ends in
    a checkpoint, before the checkpointer's hook runs."""

    def __init__(self, period: int):
        self.period = period
        self.states = []

    def after_step(self) -> None:
        done = self.trainer.iter + 1
        if done % self.period == 0 or done >= self.trainer.max_iter:
            self.states = comm.all_gather(random_states())

    def state_dict(self) -> dict:
        return {"ranks": self.states}

    def load_state_dict(self, state: dict) -> None:
        saved = state["ranks"]
        restore_random_states(saved[comm.get_rank() % len(saved)])


class ExactResume:
    """Mix in before `DefaultTrainer`: the training loader, hook and resume that make `--resume`
    continue exactly where the interrupted run's checkpoint left it."""

    @classmethod
    def build_train_loader(cls, d2):
        dicts = get_detection_dataset_dicts(d2.DATASETS.TRAIN, filter_empty=d2.DATALOADER.FILTER_EMPTY_ANNOTATIONS)
        samples = SeededSamples(MapDataset(DatasetFromList(dicts, copy=False), DatasetMapper(d2, True)))
        sampler = ResumableSampler(len(samples), seed=d2.SEED, rank=comm.get_rank(), world_size=comm.get_world_size())
        return build_detection_train_loader(
            samples, mapper=None, sampler=sampler, total_batch_size=d2.SOLVER.IMS_PER_BATCH,
            aspect_ratio_grouping=d2.DATALOADER.ASPECT_RATIO_GROUPING, num_workers=d2.DATALOADER.NUM_WORKERS,
            seed=d2.SEED,  # the loader's own generator seeds its workers: nothing draws from the restored ones
        )

    def build_hooks(self) -> list:
        return [RandomStateHook(self.cfg.SOLVER.CHECKPOINT_PERIOD), *super().build_hooks()]

    def resume_or_load(self, resume: bool = True) -> None:
        """Detectron2's resume, then the sampler moved past the samples of the iterations done
        (before the loader's first iterator, whose workers copy the sampler)."""
        super().resume_or_load(resume)
        sampler = _resumable_sampler(self.data_loader)
        if sampler is not None:
            sampler.start_at(self.start_iter * (self.cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size()))


def _resumable_sampler(loader) -> ResumableSampler | None:
    """The `ResumableSampler` under a loader of `ExactResume.build_train_loader` (the loader's
    dataset, or that of the loader aspect-ratio grouping wraps, draws from it)."""
    node = loader
    while node is not None:
        sampler = getattr(node, "sampler", None)
        if isinstance(sampler, ResumableSampler):
            return sampler
        node = getattr(node, "dataset", None)
    return None
