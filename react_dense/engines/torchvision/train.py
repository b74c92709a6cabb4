"""Train and evaluate the torchvision detector: the engine that runs wherever torch does.

Checkpoints are written atomically every `train.checkpoint_period` steps (`last_checkpoint.pth`:
model, optimizer, scheduler, step) and read back with `torch.load(weights_only=True)`, so
`--resume` continues an interrupted run; `model_final.pth` holds the weights alone.
"""
from __future__ import annotations

import logging
import math
import random
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from tqdm import tqdm

from react_core.config import ConfigError
from react_core.io import atomic_path, atomic_write_json
from react_dense.build import VocabularyTensors, build_parts, dataset_vocabularies
from react_dense.config import DetectionConfig
from react_dense.data.detection import DetectionDataset, collate
from react_dense.engines.torchvision.model import OpenVocabularyRCNN, build_torchvision_detector
from react_dense.evaluation.detection import evaluate, to_coco_results

log = logging.getLogger(__name__)
LAST = "last_checkpoint.pth"
FINAL = "model_final.pth"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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


def _schedule(cfg: DetectionConfig):
    warmup, total = max(cfg.train.warmup_steps, 1), max(cfg.train.steps, 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))

    return factor


def save_checkpoint(path: Path, model, optimizer=None, scheduler=None, step: int = 0) -> None:
    state = {"model": model.state_dict(), "step": step}
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
        state["scheduler"] = scheduler.state_dict()
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, model, optimizer=None, scheduler=None) -> int:
    """Load weights (strictly) and, if given, the optimizer state; returns the step reached."""
    from react_core.modeling.checkpoints import CheckpointError

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file not found: {path}") from None
    missing, unexpected = model.load_state_dict(state["model"], strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path} does not fit the detector: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if optimizer is not None and "optimizer" in state:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    return int(state.get("step", 0))


def train(cfg: DetectionConfig, out: Path, resume: bool = False):
    """Train on base categories only; returns (model, evaluation vocabulary, split)."""
    seed_everything(cfg.train.seed)
    model, _, eval_vocab, split = build_model(cfg)
    device = torch.device(cfg.train.device)
    model.to(device)
    dataset = training_dataset(cfg, split.base_ids)
    generator = torch.Generator().manual_seed(cfg.train.seed)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=cfg.train.batch_size, shuffle=True, collate_fn=collate, num_workers=cfg.data.num_workers,
        generator=generator, drop_last=len(dataset) >= cfg.train.batch_size,
    )
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.train.lr
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(cfg))
    step = 0
    if resume and (out / LAST).is_file():
        step = load_checkpoint(out / LAST, model, optimizer, scheduler)
        log.info("resumed from %s at step %d", out / LAST, step)
    model.train()
    progress = tqdm(total=cfg.train.steps, initial=step, desc="train", dynamic_ncols=True)
    while step < cfg.train.steps:
        for images, targets in loader:
            if step >= cfg.train.steps:
                break
            images = [i.to(device) for i in images]
            targets = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
            losses = model(images, targets)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {step}: {({k: float(v) for k, v in losses.items()})}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.train.clip_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.train.clip_grad_norm)
            optimizer.step()
            scheduler.step()
            step += 1
            progress.update(1)
            if step % cfg.train.log_period == 0:
                progress.set_postfix({k.replace("loss_", ""): f"{v.item():.3f}" for k, v in losses.items()})
            if step % cfg.train.checkpoint_period == 0 or step == cfg.train.steps:
                save_checkpoint(out / LAST, model, optimizer, scheduler, step)
    progress.close()
    save_checkpoint(out / FINAL, model)
    return model, eval_vocab, split


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
    dataset = DetectionDataset(cfg.data.val, cfg.data.val_images, eval_vocab.vocabulary.category_ids, with_masks=False)
    results = inference(model, dataset, eval_vocab.vocabulary.category_ids, device, cfg.train.batch_size)
    atomic_write_json(out / "inference" / "detections.json", results)
    iou_types = ("bbox", "segm") if cfg.detector.masks else ("bbox",)
    metrics = evaluate(dataset.coco, results, iou_types, lvis_style=cfg.data.lvis_style, max_dets=cfg.detector.detections_per_image, novel_ids=split.novel_ids)
    atomic_write_json(out / "metrics.json", metrics)
    return metrics


def run(cfg: DetectionConfig, out: Path, eval_only: bool = False, resume: bool = False, weights: Optional[str] = None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    if eval_only:
        seed_everything(cfg.train.seed)
        model, _, eval_vocab, split = build_model(cfg)
        checkpoint = weights or (out / FINAL)
        load_checkpoint(checkpoint, model)
        model.to(cfg.train.device)
    else:
        model, eval_vocab, split = train(cfg, out, resume)
    return evaluate_model(cfg, model, eval_vocab, split, out)
