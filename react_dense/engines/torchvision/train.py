"""Train and evaluate the torchvision detector: the engine that runs wherever torch does.

It trains through mmengine's Runner (`react_dense.engines.runner`): schedules, checkpoints,
`--resume`, DDP under torchrun and AMP on GPU are the Runner's; the main process evaluates.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import torch
from mmengine.runner import set_random_seed
from tqdm import tqdm

from react_core.config import ConfigError, write_run_config
from react_core.io import atomic_write_json
from react_dense.detection.build import VocabularyTensors, build_parts, dataset_vocabularies
from react_dense.detection.calibrate import calibrate_detector
from react_dense.detection.config import DetectionConfig
from react_dense.detection.data import DetectionDataset, collate
from react_dense.engines import runner
from react_dense.engines.checkpoint import FINAL, load_checkpoint
from react_dense.engines.torchvision.model import OpenVocabularyRCNN, build_torchvision_detector
from react_dense.detection.evaluation import evaluate, to_coco_results

log = logging.getLogger(__name__)


def build_model(cfg: DetectionConfig) -> tuple[OpenVocabularyRCNN, VocabularyTensors, VocabularyTensors, object]:
    """The detector with its training vocabulary set, plus (train vocab, eval vocab, split)."""
    parts = build_parts(cfg)
    annotation_file = cfg.data.train or cfg.data.val
    train_vocab, eval_vocab, split = dataset_vocabularies(parts.bundle, cfg, annotation_file)
    model = build_torchvision_detector(parts, cfg.detector)
    model.set_vocabulary(train_vocab.embeddings, train_vocab.is_base, train_vocab.image_counts)
    return model, train_vocab, eval_vocab, split


def training_dataset(cfg: DetectionConfig, base_ids) -> DetectionDataset:
    if not cfg.data.train:
        raise ConfigError("data.train is empty: name the training annotation JSON (or run with --eval-only)")
    return DetectionDataset(
        cfg.data.train, cfg.data.train_images, base_ids, with_masks=cfg.detector.masks, skip_empty=True, hflip=cfg.data.hflip
    )


def detection_losses(detector: OpenVocabularyRCNN, images, targets) -> dict:
    return detector(list(images), list(targets))


def train(cfg: DetectionConfig, out: Path, resume: bool = False):
    """Train on base categories only; returns (model, evaluation vocabulary, split, rank)."""
    set_random_seed(cfg.train.seed)
    model, _, eval_vocab, split = build_model(cfg)
    rank = runner.train(
        model, training_dataset(cfg, split.base_ids), detection_losses, cfg.train, out,
        identity=runner.run_identity(cfg), desc="detection", resume=resume, collate=collate,
        num_workers=cfg.data.num_workers,
    )
    return model, eval_vocab, split, rank


@torch.no_grad()
def inference(model: OpenVocabularyRCNN, dataset: DetectionDataset, category_ids, device, batch_size: int = 2) -> list[dict]:
    model.eval()
    results = []
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate)
    for images, targets in tqdm(loader, desc="inference", dynamic_ncols=True):
        outputs = model([i.to(device) for i in images])
        for output, target in zip(outputs, targets):
            results.extend(
                to_coco_results(target["image_id"], output["boxes"], output["scores"], output["labels"], category_ids, output.get("masks"))
            )
    return results


def evaluate_model(cfg: DetectionConfig, model: OpenVocabularyRCNN, eval_vocab: VocabularyTensors, split, out: Path) -> dict:
    """All categories, evaluated with the LVIS rules (or COCO's); writes results and metrics.json."""
    if not cfg.data.val:
        raise ConfigError("data.val is empty: name the evaluation annotation JSON")
    device = next(model.parameters()).device
    model.set_vocabulary(eval_vocab.embeddings.to(device), eval_vocab.is_base)
    calibrate(cfg, model, eval_vocab, split, out)
    dataset = DetectionDataset(cfg.data.val, cfg.data.val_images, eval_vocab.vocabulary.category_ids, with_masks=False)
    results = inference(model, dataset, eval_vocab.vocabulary.category_ids, device, cfg.train.batch_size)
    atomic_write_json(out / "inference" / "detections.json", results)
    iou_types = ("bbox", "segm") if cfg.detector.masks else ("bbox",)
    metrics = evaluate(dataset.coco, results, iou_types, lvis_style=cfg.data.lvis_style, max_dets=cfg.detector.detections_per_image, novel_ids=split.novel_ids)
    atomic_write_json(out / "metrics.json", metrics)
    return metrics


def calibrate(cfg: DetectionConfig, model: OpenVocabularyRCNN, eval_vocab: VocabularyTensors, split, out: Path) -> None:
    """The score ensemble's calibration (`react_dense.detection.calibrate`) with this detector's proposals."""
    device = next(model.parameters()).device
    model.eval()

    def records(images, targets):
        return model.calibration_records([i.to(device) for i in images], [{**t, "boxes": t["boxes"].to(device)} for t in targets])

    heads = model.roi_heads
    calibrate_detector(cfg, heads.ensemble, heads.box_predictor.class_embeddings, eval_vocab.vocabulary.category_ids,
                       split, records, out)


def run(
    cfg: DetectionConfig, out: Path, *, eval_only: bool = False, resume: bool = False, weights: Optional[str] = None,
    tower_from_config: bool = False,
) -> Optional[dict]:
    """Train (unless `eval_only`) and evaluate; a training run writes its resolved config first,
    so `react detect` can rebuild the detector from `OUT/config.yaml`. Returns the metrics, or
    None on the other processes of a torchrun launch (the main one evaluates)."""
    out.mkdir(parents=True, exist_ok=True)
    if not eval_only:
        write_run_config(cfg, out)
    if eval_only:
        set_random_seed(cfg.train.seed)
        model, _, eval_vocab, split = build_model(cfg)
        load_checkpoint(weights or (out / FINAL), model, tower_from_model=tower_from_config)
        model.to(cfg.train.device)
    else:
        model, eval_vocab, split, rank = train(cfg, out, resume)
        if rank != 0:
            return None
    return evaluate_model(cfg, model, eval_vocab, split, out)
