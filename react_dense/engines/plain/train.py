"""The plain PyTorch engine of segmentation: train and evaluate an open-vocabulary segmenter, or
evaluate the training-free MaskCLIP baseline; `react_dense.train_net` calls `run`.

Training sees the seen classes only: the vocabulary of the loss is the seen classes' text
embeddings, so unseen classes are never negatives, and unseen pixels are ignored. Evaluation
scores every class of each test set (any vocabulary works: the classifier is the text
embeddings) and writes `metrics.json`. Training runs on mmengine's Runner
(`react_dense.engines.runner`: resumable checkpoints, `--resume`, DDP under torchrun, AMP on
GPU); `model_final.pth` holds the weights. The main process evaluates.
"""
from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from mmengine.runner import set_random_seed
from tqdm import tqdm

from react_core.config import ConfigError, write_run_config
from react_dense.engines import runner
from react_dense.engines.checkpoint import FINAL, load_checkpoint
from react_dense.segmentation.calibrate import choose_ensemble_temperature
from react_dense.segmentation.common import (
    backbone_spec, encode_classes, open_spec, score_ensemble, seen_label_space, write_metrics,
)
from react_dense.segmentation.config import SegmentationConfig
from react_dense.segmentation.data import IGNORE_INDEX, RandomScaleCropFlip, SegmentationDataset, SegmentationSource
from react_dense.segmentation.inference import predict_logits
from react_dense.segmentation.metrics import ScoreConfusion, segmentation_metrics

log = logging.getLogger(__name__)


def build_segmenter(cfg: SegmentationConfig, bundle) -> torch.nn.Module:
    """The trained-head segmenter or the MaskCLIP baseline over `bundle`'s image tower."""
    from react_core.registry import BACKBONES, HEADS
    from react_dense.modeling.seg_maskclip import MaskClipSegmenter
    from react_dense.modeling.seg_model import MaskClipModel, OpenVocabSegmenter

    if cfg.method == "maskclip":
        options = cfg.maskclip
        return MaskClipModel(MaskClipSegmenter(bundle.model.visual, options.residual, options.raw_tokens, options.temperature))
    backbone = BACKBONES.build(backbone_spec(cfg, bundle.model.visual))
    head = HEADS.build({**cfg.head, "input_shape": backbone.output_shape(), "embed_dim": backbone.embed_dim})
    ensemble = score_ensemble(cfg)
    return OpenVocabSegmenter(backbone, head, ensemble)


def train(cfg: SegmentationConfig, model: torch.nn.Module, bundle, out: Path, resume: bool = False) -> int:
    """Per-pixel cross-entropy over the seen classes; returns this process's rank."""
    if cfg.train_data is None:
        raise ConfigError("train_data is not set: name the training set (or run with --eval-only)")
    source = open_spec(cfg.train_data)
    classes = encode_classes(bundle, cfg, source, source.background)
    augment = RandomScaleCropFlip(cfg.train.crop_size, cfg.train.scale_range, cfg.train.hflip)
    seen = seen_label_space(classes)

    def losses(net, images, labels):
        seen_here = seen.to(images.device)
        logits = net(images, seen_here.embeddings, seen_here.void_rows)
        return {"loss": F.cross_entropy(logits, seen_here.relabel(labels), ignore_index=IGNORE_INDEX)}

    return runner.train(
        model, SegmentationDataset(source, augment), losses, cfg.train, out,
        identity=runner.run_identity(cfg), desc="segmentation", resume=resume, num_workers=cfg.train.num_workers,
    )


@torch.no_grad()
def confusion(cfg: SegmentationConfig, model: torch.nn.Module, classes, source: SegmentationSource, ignored=(), desc: str = "") -> torch.Tensor:
    """The confusion matrices [groups, C, C] of `model`'s labels on `source` over the vocabulary
    `classes` (one group unless the score ensemble sweeps temperatures); pixels of the class
    indices `ignored` do not count."""
    device = next(model.parameters()).device
    text, void_rows, unseen_rows = classes.embeddings.to(device), classes.void_rows.to(device), classes.unseen.to(device)
    matrix = ScoreConfusion(len(classes.names), IGNORE_INDEX)
    loader = torch.utils.data.DataLoader(SegmentationDataset(source), batch_size=cfg.test.batch_size, num_workers=cfg.train.num_workers)
    model.eval()
    test = cfg.test
    ignored = torch.tensor(list(ignored), dtype=torch.long)
    for images, labels in tqdm(loader, desc=desc or f"evaluate {source.name}", dynamic_ncols=True):
        logits = predict_logits(
            lambda x: model(x, text, void_rows, unseen=unseen_rows), images.to(device), test.mode, test.crop_size, test.stride, test.test_size
        )
        matrix.update(logits, torch.where(torch.isin(labels, ignored), IGNORE_INDEX, labels))
    return matrix.matrices


def evaluate_source(cfg: SegmentationConfig, model: torch.nn.Module, bundle, source: SegmentationSource) -> dict:
    """Metrics of one test set over its full vocabulary."""
    classes = encode_classes(bundle, cfg, source, source.background)
    unseen = [name for name, hidden in zip(classes.names, classes.unseen.tolist()) if hidden]
    return segmentation_metrics(confusion(cfg, model, classes, source)[0], classes.names, unseen or None)


def evaluate(cfg: SegmentationConfig, model: torch.nn.Module, bundle, out: Path) -> dict:
    """Every `test_data` set over its full vocabulary; writes metrics.json."""
    if not cfg.test_data:
        raise ConfigError("test_data is empty: name at least one evaluation set")
    per_dataset = {}
    for spec in cfg.test_data:
        source = open_spec(spec)
        per_dataset[source.name] = evaluate_source(cfg, model, bundle, source)
        log.info("%s: mIoU %.2f", source.name, per_dataset[source.name]["mIoU"])
    return write_metrics(out, per_dataset, method=cfg.method, engine="plain")


def run(
    cfg: SegmentationConfig, out: Path, *, eval_only: bool = False, resume: bool = False, weights: Optional[str] = None,
    tower_from_config: bool = False,
) -> Optional[dict]:
    """Train (unless `eval_only` or `method: maskclip`) and evaluate; returns the metrics written
    to `out/metrics.json` (None on the other processes of a torchrun launch). `weights` is a
    checkpoint to evaluate with `eval_only`."""
    out.mkdir(parents=True, exist_ok=True)
    if not eval_only:
        write_run_config(cfg, out)
    for spec in ([cfg.train_data] if cfg.train_data and not eval_only and cfg.method == "head" else []) + cfg.test_data:
        open_spec(spec)  # fail on a bad dataset before loading any model
    set_random_seed(cfg.train.seed)
    bundle = cfg.model.load()
    set_random_seed(cfg.train.seed)  # the head starts alike whatever the tower (a gated block draws from the generator)
    model = build_segmenter(cfg, bundle)
    if cfg.method == "head":
        if eval_only:
            load_checkpoint(weights or out / FINAL, model, tower_from_model=tower_from_config)
        elif train(cfg, model, bundle, out, resume) != 0:
            return None
    model.to(cfg.train.device)
    ensemble = getattr(model, "ensemble", None)  # the MaskCLIP baseline has none
    if ensemble is not None:
        choose_ensemble_temperature(cfg, ensemble, bundle, out, partial(confusion, cfg, model))
    return evaluate(cfg, model, bundle, out)
