"""The score ensemble's calibration on training images, for every engine.

An engine hands over one callable, `records(images, targets)`, that runs its detector on a batch
(images as the dataset gives them: RGB in 0..1 at their own size; targets' `boxes` in those
pixels and `labels` over the evaluation vocabulary) and returns, for every proposal, the
detector's class scores [R, C], its CLIP region embedding [R, D] and its label
(`react_dense.modeling.calibration.label_regions`). Everything else, which images are read and
which annotations they keep, is here, once.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from react_core.config import ConfigError
from react_core.io import atomic_write_json
from react_dense.detection.config import DetectionConfig
from react_dense.detection.data import DetectionDataset, collate
from react_dense.modeling.calibration import CALIBRATION_FILE, calibrate_ensemble

Records = Callable[[list, list], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def needs_calibration(cfg: DetectionConfig) -> bool:
    options = cfg.ensemble
    return options.enabled and bool(options.background or options.prior_correction or options.heldout)


@torch.no_grad()
def calibrate_detector(
    cfg: DetectionConfig, ensemble, class_embeddings: torch.Tensor, category_ids, split, records: Records, out: Path | None
) -> dict | None:
    """Calibrate `ensemble` in place (`ensemble.background`, `prior_correction`, `heldout`) on the
    first `ensemble.calibration_images` training images, from their base (and held-out base)
    annotations only: novel objects count as background. `category_ids` is the evaluation
    vocabulary, `class_embeddings` [C, D] its text embeddings. Writes `OUT/ensemble_calibration.json`
    unless `out` is None (the other processes of a multi-GPU run); returns the report."""
    if ensemble is None or not needs_calibration(cfg):
        return None
    options = cfg.ensemble
    if not cfg.data.train:
        raise ConfigError("ensemble calibration reads the training images: set data.train")
    ids = list(category_ids)
    dataset = DetectionDataset(cfg.data.train, cfg.data.train_images, ids, with_masks=False)
    id_of_name = {c["name"]: c["id"] for c in dataset.coco.dataset["categories"]}
    wrong = [name for name in options.heldout if id_of_name.get(name) not in split.novel_ids]
    if wrong:
        raise ConfigError(f"ensemble.heldout: {', '.join(wrong)} must be categories that data.novel leaves out of training")
    heldout = [ids.index(id_of_name[name]) for name in options.heldout]
    allowed = torch.tensor(sorted({ids.index(c) for c in split.base_ids} | set(heldout)))
    subset = torch.utils.data.Subset(dataset, range(min(options.calibration_images, len(dataset))))
    loader = torch.utils.data.DataLoader(subset, batch_size=cfg.train.batch_size, collate_fn=collate)
    batches = []
    for images, targets in tqdm(loader, desc="calibration", dynamic_ncols=True):
        kept = [torch.isin(t["labels"], allowed) for t in targets]
        batches.append(records(list(images), [{"boxes": t["boxes"][k], "labels": t["labels"][k]} for t, k in zip(targets, kept)]))
    scores, embeddings, labels = (torch.cat(parts) for parts in zip(*batches))
    report = calibrate_ensemble(
        ensemble, scores, embeddings, labels, class_embeddings.cpu(), [ids.index(c) for c in split.base_ids], heldout,
        background=options.background, prior_correction=options.prior_correction,
    )
    if out is not None:
        atomic_write_json(Path(out) / CALIBRATION_FILE, report)
    return report
