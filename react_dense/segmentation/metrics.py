"""Semantic-segmentation metrics from one confusion matrix: mIoU, fwIoU, pixel accuracy,
mean class accuracy, per-class IoU, and mIoU over the seen and the unseen classes.

Conventions follow Detectron2's `SemSegEvaluator` (and so FC-CLIP and CAT-Seg): pixels labelled
`ignore_index` do not count; a class enters a mean only if it occurs in the ground truth or
in the predictions (IoU) / in the ground truth (accuracy). Values are percentages.

The segmentation ensemble's temperature calibration scores its held-out classes with the same
function, so evaluation and calibration share one definition of IoU and hIoU.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch


class ConfusionMatrix:
    """Accumulates `[num_classes, num_classes]` counts (rows: ground truth, columns: prediction)."""

    def __init__(self, num_classes: int, ignore_index: int = -1):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch of label maps (same shape, integer class indices)."""
        if prediction.shape != target.shape:
            raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape")
        target = target.reshape(-1).to(torch.int64).cpu()
        prediction = prediction.reshape(-1).to(torch.int64).cpu()
        valid = target != self.ignore_index
        target, prediction = target[valid], prediction[valid]
        if len(target) and (target.min() < 0 or target.max() >= self.num_classes):
            raise ValueError(f"ground-truth label {int(target.max())} is outside 0..{self.num_classes - 1} (and is not ignore {self.ignore_index})")
        if len(prediction) and (prediction.min() < 0 or prediction.max() >= self.num_classes):
            raise ValueError(f"predicted label {int(prediction.max())} is outside 0..{self.num_classes - 1}")
        self.matrix += torch.bincount(target * self.num_classes + prediction, minlength=self.num_classes**2).reshape(
            self.num_classes, self.num_classes
        )

    def merge(self, other: "ConfusionMatrix") -> None:
        self.matrix += other.matrix


class ScoreConfusion:
    """Confusion matrices from class scores: one matrix per group of `num_classes` score channels
    (one group per temperature of the segmentation ensemble's calibration sweep, one otherwise),
    each group's label its own argmax. `matrices` is [groups, C, C]."""

    def __init__(self, num_classes: int, ignore_index: int = -1):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.groups: list[ConfusionMatrix] = []

    def update(self, scores: torch.Tensor, target: torch.Tensor, dim: int = 1) -> None:
        """Add the scores [..., G * C (at `dim`), H, W] of label maps `target` [..., H, W]."""
        labels = scores.unflatten(dim, (-1, self.num_classes)).argmax(dim + 1)
        if not self.groups:
            self.groups = [ConfusionMatrix(self.num_classes, self.ignore_index) for _ in range(labels.shape[dim])]
        if labels.shape[dim] != len(self.groups):
            raise ValueError(f"{labels.shape[dim]} groups of class scores after {len(self.groups)}")
        for group, matrix in enumerate(self.groups):
            matrix.update(labels.select(dim, group), target)

    @property
    def matrices(self) -> torch.Tensor:
        if not self.groups:
            return torch.zeros(1, self.num_classes, self.num_classes, dtype=torch.int64)
        return torch.stack([matrix.matrix for matrix in self.groups])


def segmentation_metrics(
    matrix: torch.Tensor,
    class_names: Sequence[str],
    unseen: Optional[Sequence[str]] = None,
    excluded: Sequence[str] = (),
) -> dict:
    """Metrics of a confusion matrix; `unseen` names the classes held out of training, and
    `excluded` classes enter no mean (their IoU is still reported).

    Returns `mIoU`, `fwIoU`, `mACC`, `pACC`, `IoU-<class>` for every class (NaN when the class
    neither occurs nor is predicted), and, when `unseen` is given, `mIoU_seen`, `mIoU_unseen`
    and their harmonic mean `hIoU` (the zero-shot segmentation literature's summary).
    """
    matrix = matrix.to(torch.float64)
    if matrix.shape != (len(class_names), len(class_names)):
        raise ValueError(f"confusion matrix {tuple(matrix.shape)} does not match {len(class_names)} class names")
    true_positive = matrix.diagonal()
    gt_pixels = matrix.sum(1)
    predicted_pixels = matrix.sum(0)
    union = gt_pixels + predicted_pixels - true_positive
    iou_valid = union > 0
    iou = torch.where(iou_valid, true_positive / union.clamp(min=1), torch.full_like(union, float("nan")))
    unknown = (set(unseen or ()) | set(excluded)) - set(class_names)
    if unknown:
        raise ValueError(f"unseen or excluded classes {sorted(unknown)} are not among the class names")
    counted = torch.tensor([name not in set(excluded) for name in class_names])
    iou_valid &= counted
    acc_valid = (gt_pixels > 0) & counted
    acc = torch.where(acc_valid, true_positive / gt_pixels.clamp(min=1), torch.full_like(gt_pixels, float("nan")))
    total = gt_pixels.sum()
    frequency = gt_pixels / total.clamp(min=1)
    metrics = {
        "mIoU": _mean(iou, iou_valid),
        "fwIoU": float(100 * (frequency[iou_valid] * iou[iou_valid]).sum()),
        "mACC": _mean(acc, acc_valid),
        "pACC": float(100 * true_positive.sum() / total.clamp(min=1)),
    }
    for name, value in zip(class_names, iou.tolist()):
        metrics[f"IoU-{name}"] = 100 * value
    if unseen is not None:
        is_unseen = torch.tensor([name in set(unseen) for name in class_names])
        metrics["mIoU_seen"] = _mean(iou, iou_valid & ~is_unseen)
        metrics["mIoU_unseen"] = _mean(iou, iou_valid & is_unseen)
        seen_value, unseen_value = metrics["mIoU_seen"], metrics["mIoU_unseen"]
        metrics["hIoU"] = 2 * seen_value * unseen_value / (seen_value + unseen_value) if seen_value + unseen_value > 0 else 0.0
    return metrics


def _mean(values: torch.Tensor, valid: torch.Tensor) -> float:
    return float(100 * values[valid].mean()) if valid.any() else float("nan")
