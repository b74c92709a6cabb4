"""The segmentation score ensemble's temperature, chosen on training images, for every engine.

An engine hands over one callable, `confusion(classes, source, ignored_rows, desc)`, that labels
`source`'s images with its segmenter over the vocabulary `classes` (`ClassEmbeddings`) and returns
the confusion matrices [groups, C, C] (`ScoreConfusion`), pixels of the `ignored_rows` classes left
out. The ensemble is given every temperature at once, so the model runs once over the images and
each temperature's labels come from its own group of scores. Which images are read, which classes
stand in for the unseen ones and how a temperature is scored are here, once.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Optional

import torch

from react_core.config import ConfigError
from react_core.io import atomic_write_json
from react_dense.modeling.calibration import CALIBRATION_FILE
from react_dense.segmentation.common import ClassEmbeddings, encode_classes, open_spec
from react_dense.segmentation.config import SegmentationConfig
from react_dense.segmentation.data import SegmentationSource
from react_dense.segmentation.metrics import segmentation_metrics

log = logging.getLogger(__name__)
Confusion = Callable[[ClassEmbeddings, SegmentationSource, list, str], torch.Tensor]


def choose_ensemble_temperature(cfg: SegmentationConfig, ensemble, bundle, out: Path, confusion: Confusion) -> Optional[float]:
    """Choose the score ensemble's readout temperature without unseen annotations (FC-CLIP's
    weights fixed): the one of `ensemble.temperatures` with the best harmonic mean of the mean IoU
    over the `ensemble.heldout` classes (seen classes left out of training, standing in for the
    unseen ones) and over the trained seen classes (hIoU, the zero-shot segmentation metric), on
    the first `ensemble.calibration_images` training images, scored by `segmentation_metrics` as
    the evaluation is; pixels of the other unseen classes are ignored. Sets it on `ensemble`
    (`SegScoreEnsemble`), writes `ensemble_calibration.json`; None when nothing is to be chosen."""
    options = cfg.ensemble
    if cfg.method != "head" or not options.enabled or not options.heldout:
        return None
    if cfg.train_data is None:
        raise ConfigError("ensemble.heldout: the temperature is chosen on the training images; set train_data")
    source = open_spec(cfg.train_data)
    wrong = [name for name in options.heldout if name not in source.unseen]
    if wrong:
        raise ConfigError(f"ensemble.heldout: {', '.join(wrong)} must be classes that train_data.unseen leaves out of training")
    if not options.temperatures or min(options.temperatures) <= 0:
        raise ConfigError(f"ensemble.temperatures must be positive numbers, got {list(options.temperatures)}")
    source.images, source.labels = source.images[: options.calibration_images], source.labels[: options.calibration_images]
    classes = encode_classes(bundle, cfg, source, source.background)
    ignored = [name for name in classes.names if name in source.unseen and name not in options.heldout]
    ignored_rows = [classes.names.index(name) for name in ignored]
    temperatures = [float(temperature) for temperature in options.temperatures]
    ensemble.temperature = temperatures
    matrices = confusion(classes, source, ignored_rows, f"calibration, {len(temperatures)} temperatures")
    absent = [name for name in options.heldout if matrices[0][classes.names.index(name)].sum() == 0]
    if absent:
        raise ConfigError(f"ensemble.heldout: {', '.join(absent)} do not occur in the first {len(source.images)} "
                          "training images (ensemble.calibration_images); the temperature cannot be scored on them")
    curve, parts = {}, {}
    for temperature, matrix in zip(temperatures, matrices, strict=True):
        metrics = segmentation_metrics(matrix, classes.names, unseen=list(options.heldout), excluded=ignored)
        curve[temperature] = metrics["hIoU"]
        parts[temperature] = {"seen": metrics["mIoU_seen"], "heldout": metrics["mIoU_unseen"]}
    chosen = max(curve, key=curve.get)
    ensemble.temperature = chosen
    atomic_write_json(out / CALIBRATION_FILE, {
        "temperature": chosen, "hIoU_curve": curve, "mIoU_curve": parts, "heldout": list(options.heldout),
        "images": len(source.images), "seen_classes": [name for name in classes.names if name not in source.unseen],
    })
    log.info("ensemble temperature %s chosen on %d training images (hIoU %.2f)", chosen, len(source.images), curve[chosen])
    return chosen
