"""Calibrating the CLIP score ensemble on training images, with base-class annotations only.

From proposals of training images, labelled by their overlap with the base annotations
(`label_regions`: a base class, background, or ignored), three things are measured, none of
which sees a novel annotation:

- `fit_background`: a background embedding, the one vector that, as an extra column of the CLIP
  softmax, best separates background proposals from base objects (cross-entropy, classes fixed,
  background and object proposals weighing half each);
- `measure_prior`: each class's CLIP score on proposals that are *not* of that class (background
  and other base objects): a tower that favours some classes everywhere shows it here, and
  `ClipScoreEnsemble` divides it out;
- `choose_weight`: the ensemble exponent that maximises the mean proposal-level AP over a set of
  classes: novel_weight over base classes held out of the detector's training (they stand in for
  the novel ones), base_weight over the base classes it trained on.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

BACKGROUND = -1
IGNORE = -2
CALIBRATION_FILE = "ensemble_calibration.json"  # what a calibration chose, in the run's folder (either task)
WEIGHT_GRID = tuple(round(0.1 * i, 1) for i in range(11))


def label_regions(
    proposals: torch.Tensor, gt_boxes: torch.Tensor, gt_labels: torch.Tensor, fg_iou: float = 0.5, bg_iou: float = 0.3
) -> torch.Tensor:
    """Label [R] of each proposal [R, 4]: its best-overlapping annotation's class at IoU >= `fg_iou`,
    BACKGROUND below `bg_iou` with every annotation, IGNORE in between."""
    from torchvision.ops import box_iou

    labels = torch.full((len(proposals),), BACKGROUND, dtype=torch.long)
    if len(gt_boxes) == 0 or len(proposals) == 0:
        return labels
    best, index = box_iou(proposals, gt_boxes).max(dim=1)
    labels[best >= bg_iou] = IGNORE
    labels[best >= fg_iou] = gt_labels[index[best >= fg_iou]].long().cpu()
    return labels


def fit_background(
    region_embeddings: torch.Tensor, labels: torch.Tensor, class_embeddings: torch.Tensor, temperature: float, steps: int = 100
) -> torch.Tensor:
    """A unit background embedding [D] for the CLIP softmax, fitted on background and object proposals."""
    keep = labels != IGNORE
    regions = F.normalize(region_embeddings[keep].float(), dim=-1)
    classes = F.normalize(class_embeddings.float(), dim=-1)
    target = torch.where(labels[keep] == BACKGROUND, len(classes), labels[keep])
    if not (target == len(classes)).any():
        raise ValueError("no background proposal to fit the background embedding on")
    class_logits = regions @ classes.t() / temperature
    is_background = target == len(classes)
    # background and object proposals weigh half each: background ones outnumber objects many times
    weights = torch.where(is_background, 0.5 / is_background.sum(), 0.5 / (~is_background).sum().clamp(min=1))
    background = regions[is_background].mean(0).clone().requires_grad_(True)
    optimizer = torch.optim.Adam([background], lr=0.05)
    for _ in range(steps):
        logits = torch.cat([class_logits, (regions @ F.normalize(background, dim=0) / temperature)[:, None]], dim=1)
        loss = (F.cross_entropy(logits, target, reduction="none") * weights).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return F.normalize(background.detach(), dim=0)


def measure_prior(clip_scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[C]: class c's mean CLIP score over the background and object proposals not of class c."""
    keep = labels != IGNORE
    scores, labels = clip_scores[keep].float(), labels[keep]
    others = labels[:, None] != torch.arange(scores.shape[1])[None]
    return (scores * others).sum(0) / others.sum(0).clamp(min=1)


def average_precision(scores: torch.Tensor, positives: torch.Tensor) -> float:
    """Non-interpolated AP of ranking `scores` [R] against boolean `positives` [R]."""
    if not positives.any():
        return float("nan")
    order = scores.argsort(descending=True)
    hits = positives[order].float()
    precision = hits.cumsum(0) / torch.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / hits.sum())


def choose_weight(
    detector_scores: torch.Tensor, clip_scores: torch.Tensor, labels: torch.Tensor, classes: Sequence[int], grid: Sequence[float] = WEIGHT_GRID
) -> tuple[float, dict[float, float]]:
    """The w of `det^(1-w) * clip^w` with the best mean AP over `classes` (vocabulary indices,
    each with a positive proposal), and the mean AP of every w in `grid`."""
    keep = labels != IGNORE
    det, clip, labels = detector_scores[keep].float().clamp(min=1e-8), clip_scores[keep].float().clamp(min=1e-8), labels[keep]
    classes = [c for c in classes if (labels == c).any()]
    if not classes:
        raise ValueError("no proposal overlaps an annotation of the classes to choose the weight on")
    curve = {}
    for w in grid:
        combined = det[:, classes].log() * (1 - w) + clip[:, classes].log() * w
        curve[float(w)] = sum(average_precision(combined[:, i], labels == c) for i, c in enumerate(classes)) / len(classes)
    return max(curve, key=curve.get), curve


@torch.no_grad()
def calibrate_ensemble(
    ensemble,
    detector_scores: torch.Tensor,
    region_embeddings: torch.Tensor,
    labels: torch.Tensor,
    class_embeddings: torch.Tensor,
    base: Sequence[int],
    heldout: Sequence[int] = (),
    background: bool = False,
    prior_correction: bool = False,
) -> dict:
    """Calibrate a `ClipScoreEnsemble` in place from training proposals; returns what was measured.

    detector_scores [R, C], region_embeddings [R, D], labels [R] (vocabulary index, BACKGROUND or
    IGNORE) over the vocabulary `class_embeddings` [C, D] that evaluation scores. `base`: the
    classes the detector trained on; `heldout`: base classes it did not train on, on which
    novel_weight is chosen (base_weight is chosen on `base`); without them the weights stay.
    """
    heldout = list(heldout)
    fitting = torch.where(torch.isin(labels, torch.tensor(heldout, dtype=torch.long)), IGNORE, labels)
    report: dict = {
        "proposals": int(len(labels)), "background_proposals": int((labels == BACKGROUND).sum()),
        "background": background, "prior_correction": prior_correction,
    }
    bg = None
    if background:
        with torch.enable_grad():
            bg = fit_background(region_embeddings, fitting, class_embeddings, ensemble.clip_temperature)
    ensemble.calibrate(background=bg)
    if prior_correction:
        prior = measure_prior(ensemble.clip_scores(region_embeddings, class_embeddings), fitting)
        ensemble.calibrate(background=bg, prior=prior)
        report["prior"] = [round(float(p), 6) for p in prior]
    if heldout:
        clip_scores = ensemble.clip_scores(region_embeddings, class_embeddings)
        ensemble.novel_weight, report["novel_weight_curve"] = choose_weight(detector_scores, clip_scores, labels, heldout)
        ensemble.base_weight, report["base_weight_curve"] = choose_weight(detector_scores, clip_scores, labels, list(base))
    report.update(base_weight=ensemble.base_weight, novel_weight=ensemble.novel_weight)
    return report
