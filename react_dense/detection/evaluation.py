"""Box and mask AP with the official LVIS rules, and COCO-OVD AP50 on novel/base classes.

Matching and accumulation run in faster-coco-eval (C++), in its LVIS mode: per image only the
categories verified present or absent (`neg_category_ids`) are evaluated, and unmatched
detections of `not_exhaustive_category_ids` are ignored. pycocotools' COCOeval has no
federated rules and PyPI's `lvis` 0.5.3 does not run on NumPy 2. LVIS keeps the 300 highest
scores per image over all categories (LVISResults' `max_dets`); `limit_per_image` does that
before matching. AP of a category group (r/c/f, novel/base) is the mean of the per-category AP
over the group's categories that have ground truth, as in the LVIS API.
"""
from __future__ import annotations

import contextlib
import copy
import io
from collections import defaultdict
from typing import Optional, Sequence

import numpy as np

LVIS_MAX_DETS = 300
FREQUENCY_GROUPS = {"r": "APr", "c": "APc", "f": "APf"}


def limit_per_image(results: Sequence[dict], max_dets: int = LVIS_MAX_DETS) -> list[dict]:
    """Keep each image's `max_dets` highest-scoring detections, over all categories."""
    by_image = defaultdict(list)
    for result in results:
        by_image[result["image_id"]].append(result)
    kept = []
    for detections in by_image.values():
        kept.extend(sorted(detections, key=lambda r: -r["score"])[:max_dets])
    return kept


def _group_ap(precision: np.ndarray, category_indices: Sequence[int], iou_index: Optional[int] = None) -> float:
    """Mean AP over categories; precision is [T, R, K, A, M] (area 'all', last maxDets)."""
    if len(category_indices) == 0:
        return float("nan")
    values = precision[:, :, list(category_indices), 0, -1]
    if iou_index is not None:
        values = values[iou_index : iou_index + 1]
    per_category = []
    for k in range(values.shape[2]):
        column = values[:, :, k]
        if (column > -1).any():
            per_category.append(column[column > -1].mean())
    return float(np.mean(per_category)) if per_category else float("nan")


def evaluate(
    gt,
    results: Sequence[dict],
    iou_types: Sequence[str] = ("bbox", "segm"),
    lvis_style: bool = True,
    max_dets: int = LVIS_MAX_DETS,
    novel_ids: Optional[Sequence[int]] = None,
) -> dict[str, float]:
    """Metrics as `{iou_type}/{AP, AP50, AP75, APr, APc, APf, AP50_novel, AP50_base, ...}` (0..100).

    gt: a pycocotools/faster-coco-eval COCO or the path of a JSON file. results: COCO result
    dicts (`image_id`, `category_id`, `score`, `bbox` and/or `segmentation`). Groups r/c/f are
    reported when the categories carry LVIS `frequency`; novel/base when `novel_ids` is given.
    """
    from faster_coco_eval import COCO, COCOeval_faster

    gt_coco = COCO(gt) if isinstance(gt, str) else COCO(copy.deepcopy(gt.dataset))
    results = limit_per_image(results, max_dets) if lvis_style else list(results)
    categories = gt_coco.loadCats(sorted(gt_coco.getCatIds()))
    metrics: dict[str, float] = {}
    for iou_type in iou_types:
        prefix = iou_type
        usable = [dict(r) for r in results if (iou_type == "bbox" and "bbox" in r) or (iou_type == "segm" and "segmentation" in r)]
        if iou_type == "segm":
            for r in usable:
                r.pop("bbox", None)
        if not usable:
            metrics.update({f"{prefix}/AP": 0.0, f"{prefix}/AP50": 0.0})
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            dt_coco = gt_coco.loadRes(usable)
            evaluator = COCOeval_faster(gt_coco, dt_coco, iou_type, lvis_style=lvis_style, print_function=lambda *a: None)
            evaluator.params.maxDets = [max_dets]
            evaluator.params.catIds = [c["id"] for c in categories]
            evaluator.evaluate()
            evaluator.accumulate()
        precision = evaluator.eval["precision"]
        all_indices = list(range(len(categories)))
        iou_50 = int(np.argmin(np.abs(evaluator.params.iouThrs - 0.5)))
        iou_75 = int(np.argmin(np.abs(evaluator.params.iouThrs - 0.75)))
        metrics[f"{prefix}/AP"] = _group_ap(precision, all_indices)
        metrics[f"{prefix}/AP50"] = _group_ap(precision, all_indices, iou_50)
        metrics[f"{prefix}/AP75"] = _group_ap(precision, all_indices, iou_75)
        if all("frequency" in c for c in categories):
            for letter, name in FREQUENCY_GROUPS.items():
                metrics[f"{prefix}/{name}"] = _group_ap(precision, [i for i, c in enumerate(categories) if c["frequency"] == letter])
        if novel_ids is not None:
            novel = set(novel_ids)
            novel_idx = [i for i, c in enumerate(categories) if c["id"] in novel]
            base_idx = [i for i, c in enumerate(categories) if c["id"] not in novel]
            metrics[f"{prefix}/AP_novel"] = _group_ap(precision, novel_idx)
            metrics[f"{prefix}/AP50_novel"] = _group_ap(precision, novel_idx, iou_50)
            metrics[f"{prefix}/AP50_base"] = _group_ap(precision, base_idx, iou_50)
    return {k: (round(v * 100, 4) if v == v else v) for k, v in metrics.items()}


def to_coco_results(image_id: int, boxes, scores, labels, category_ids: Sequence[int], masks=None) -> list[dict]:
    """COCO result dicts from one image's detections (boxes xyxy, labels indexing `category_ids`,
    masks [N, H, W] probabilities or binary, thresholded at 0.5 and RLE-encoded)."""
    from pycocotools import mask as mask_utils

    boxes = boxes.detach().cpu().float().numpy()
    scores = scores.detach().cpu().float().numpy()
    labels = labels.detach().cpu().numpy()
    rles = None
    if masks is not None and len(boxes):
        binary = (masks.detach().cpu().reshape(len(boxes), *masks.shape[-2:]) > 0.5).numpy().astype(np.uint8)
        rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
    results = []
    for i, (box, score, label) in enumerate(zip(boxes, scores, labels)):
        x0, y0, x1, y1 = (float(v) for v in box)
        result = {
            "image_id": int(image_id),
            "category_id": int(category_ids[int(label)]),
            "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
            "score": round(float(score), 5),
        }
        if rles is not None:
            result["segmentation"] = {"size": [int(s) for s in rles[i]["size"]], "counts": rles[i]["counts"].decode("ascii")}
        results.append(result)
    return results
