"""Train and evaluate the open-vocabulary segmenter through Detectron2 (`engine: detectron2`).

Our YAML stays the config users edit (written to `OUT/config.yaml`); `build_segmenter` makes
Detectron2's `SemanticSegmentor` from it with Detectron2's keyword arguments, on the REACT tower
under Detectron2's own pyramid. `SimpleTrainer` runs the steps with the optimizer and schedule
every dense engine shares (`react_dense.engines.optim`) and logs the losses (`train_metrics.json`),
`inference_on_dataset` runs the evaluator. Checkpoints are ours (atomic, read with
`weights_only=True`), so `resume` continues an interrupted run.
"""
from __future__ import annotations

import itertools
import logging
from functools import partial
from pathlib import Path
from typing import Optional

import torch

from react_core.config import ConfigError, write_run_config
from react_dense.segmentation.config import SegmentationConfig

log = logging.getLogger(__name__)


def _inputs(images: torch.Tensor, labels: torch.Tensor) -> list[dict]:
    """Detectron2's input dicts: 0..255 RGB images, label maps, original sizes."""
    return [
        {"image": image * 255.0, "sem_seg": label, "height": image.shape[-2], "width": image.shape[-1]}
        for image, label in zip(images, labels)
    ]


def _confusion(model, classes, source, ignored_rows=(), desc: str = "") -> torch.Tensor:
    """The confusion matrices [groups, C, C] of the Detectron2 segmenter's labels on `source` over the
    vocabulary `classes`, pixels of the `ignored_rows` classes left out (the evaluation and the
    calibration, whose temperature sweep gives one group per temperature)."""
    from detectron2.evaluation import inference_on_dataset

    from react_dense.engines.detectron2.seg_modeling import ReactSemSegEvaluator
    from react_dense.segmentation.data import IGNORE_INDEX, SegmentationDataset

    ignored = torch.tensor(list(ignored_rows), dtype=torch.long)

    def collate(batch):
        images, labels = map(torch.stack, zip(*batch))
        return _inputs(images, torch.where(torch.isin(labels, ignored), IGNORE_INDEX, labels))

    model.sem_seg_head.set_vocabulary(classes.embeddings, classes.void_rows, classes.unseen)
    evaluator = ReactSemSegEvaluator(classes.names, ignore_index=IGNORE_INDEX)
    if desc:
        log.info("%s: %d images", desc, len(source.images))
    inference_on_dataset(model, torch.utils.data.DataLoader(SegmentationDataset(source), batch_size=1, collate_fn=collate), evaluator)
    return evaluator.confusion()


def _batches(loader, seen):
    """Endless training inputs with labels in the seen label space (`SeenLabelSpace`)."""
    for images, labels in itertools.chain.from_iterable(itertools.repeat(loader)):
        yield _inputs(images, seen.relabel(labels))


def run(
    cfg: SegmentationConfig, out: Path, *, eval_only: bool = False, resume: bool = False, weights: Optional[str] = None,
    tower_from_config: bool = False,
) -> dict:
    """Train (unless `eval_only`) and evaluate on every `test_data` set; returns `metrics.json`."""
    from detectron2.engine import SimpleTrainer, hooks

    from react_dense.engines.detectron2.seg_modeling import build_segmenter
    from react_dense.engines.detectron2.train import training_writers
    from mmengine.runner import set_random_seed

    from react_dense.engines.checkpoint import FINAL, LAST, load_checkpoint, save_checkpoint
    from react_dense.engines.optim import build_optimizer, build_scheduler
    from react_core.engine.train import training_loader
    from react_dense.segmentation.data import RandomScaleCropFlip, SegmentationDataset
    from react_dense.segmentation.calibrate import choose_ensemble_temperature
    from react_dense.segmentation.common import encode_classes, open_spec, seen_label_space, write_metrics
    from react_dense.segmentation.metrics import segmentation_metrics

    if cfg.detectron2:
        raise ConfigError("detectron2: segmentation's Detectron2 engine builds its model from this config's own sections; "
                          f"it reads no Detectron2 keys ({', '.join(cfg.detectron2)})")
    out.mkdir(parents=True, exist_ok=True)
    write_run_config(cfg, out)
    set_random_seed(cfg.train.seed)
    bundle = cfg.model.load()
    model = build_segmenter(cfg, bundle).to(cfg.train.device)
    head = model.sem_seg_head
    if eval_only:
        load_checkpoint(weights or out / FINAL, model, tower_from_model=tower_from_config)
    else:
        source = open_spec(cfg.train_data)
        seen = seen_label_space(encode_classes(bundle, cfg, source, source.background))
        head.set_vocabulary(seen.embeddings, seen.void_rows)
        augment = RandomScaleCropFlip(cfg.train.crop_size, cfg.train.scale_range, cfg.train.hflip)
        # the loader our Runner trains from: moved to the resumed sample, each drawn under its own seed,
        # so with the random states of the checkpoint a resumed run ends as an uninterrupted one
        loader = training_loader(SegmentationDataset(source, augment), cfg.train.batch_size, seed=cfg.train.seed,
                                 rank=0, world_size=1, workers=cfg.train.num_workers)
        optimizer = build_optimizer(model, cfg.train)
        scheduler = build_scheduler(optimizer, cfg.train)
        start = load_checkpoint(out / LAST, model, optimizer, scheduler) if resume and (out / LAST).is_file() else 0
        loader.sampler.start_at(start * cfg.train.batch_size)
        trainer = SimpleTrainer(model, _batches(loader, seen), optimizer)
        period = cfg.train.checkpoint_interval
        trainer.register_hooks([
            hooks.IterationTimer(),
            hooks.LRScheduler(optimizer, scheduler),
            hooks.CallbackHook(after_step=lambda t: (t.iter + 1) % period == 0 and save_checkpoint(out / LAST, model, optimizer, scheduler, t.iter + 1)),
            hooks.PeriodicWriter(training_writers(out, cfg.train.max_iters), period=cfg.train.log_interval),
        ])
        trainer.train(start, cfg.train.max_iters)
        save_checkpoint(out / LAST, model, optimizer, scheduler, cfg.train.max_iters)
        save_checkpoint(out / FINAL, model)
    if head.ensemble is not None:
        choose_ensemble_temperature(cfg, head.ensemble, bundle, out, partial(_confusion, model))
    per_dataset = {}
    for spec in cfg.test_data:
        source = open_spec(spec)
        classes = encode_classes(bundle, cfg, source, source.background)
        unseen = [name for name, hidden in zip(classes.names, classes.unseen.tolist()) if hidden]
        per_dataset[source.name] = segmentation_metrics(_confusion(model, classes, source)[0], classes.names, unseen or None)
    return write_metrics(out, per_dataset, method=cfg.method, engine="detectron2")
