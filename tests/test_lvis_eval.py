"""LVIS-rule box/mask AP checked against a case computed by hand."""
from __future__ import annotations

import math

import pytest
from pycocotools import mask as mask_utils

from react_dense.detection.evaluation import evaluate, limit_per_image


def _gt():
    # Image 1: A (rare) and B (common) present, C (frequent) verified absent.
    # Image 2: C present but not exhaustively annotated; B neither verified present nor absent.
    return {
        "images": [
            {"id": 1, "width": 100, "height": 100, "neg_category_ids": [3], "not_exhaustive_category_ids": []},
            {"id": 2, "width": 100, "height": 100, "neg_category_ids": [], "not_exhaustive_category_ids": [3]},
        ],
        "categories": [
            {"id": 1, "name": "a", "frequency": "r"},
            {"id": 2, "name": "b", "frequency": "c"},
            {"id": 3, "name": "c", "frequency": "f"},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [50, 50, 30, 30], "area": 900, "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 3, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0},
        ],
    }


def _detections():
    return [
        # A: a false positive ranked above the true positive -> precision 1/2 at recall 1: AP 0.5.
        {"image_id": 1, "category_id": 1, "bbox": [70, 5, 20, 20], "score": 0.95},
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.9},
        # B: exact hit; the image-2 detection is for a category not verified there: ignored.
        {"image_id": 1, "category_id": 2, "bbox": [50, 50, 30, 30], "score": 0.8},
        {"image_id": 2, "category_id": 2, "bbox": [40, 40, 30, 30], "score": 0.99},
        # C: IoU 0.62 (a hit at thresholds 0.50, 0.55, 0.60 -> AP 0.3); the unmatched one in image 2
        # is ignored (not exhaustive); the one in image 1 (verified absent) is a false positive
        # ranked below the hit, so it does not lower precision at any recall.
        {"image_id": 2, "category_id": 3, "bbox": [0, 0, 10, 6.2], "score": 0.7},
        {"image_id": 2, "category_id": 3, "bbox": [60, 60, 10, 10], "score": 0.9},
        {"image_id": 1, "category_id": 3, "bbox": [60, 60, 10, 10], "score": 0.1},
    ]


def test_lvis_box_ap_matches_hand_computation():
    from faster_coco_eval import COCO

    metrics = evaluate(COCO(_gt()), _detections(), iou_types=("bbox",))
    assert metrics["bbox/APr"] == pytest.approx(50.0)
    assert metrics["bbox/APc"] == pytest.approx(100.0)
    assert metrics["bbox/APf"] == pytest.approx(30.0)
    assert metrics["bbox/AP"] == pytest.approx(60.0)
    assert metrics["bbox/AP50"] == pytest.approx((50 + 100 + 100) / 3)


def test_coco_rules_differ_where_lvis_rules_ignore():
    """Without the federated rules the image-2 detections of B and C count as false positives."""
    from faster_coco_eval import COCO

    metrics = evaluate(COCO(_gt()), _detections(), iou_types=("bbox",), lvis_style=False, max_dets=100)
    assert metrics["bbox/AP"] == pytest.approx((50 + 50 + 15) / 3)


def test_novel_base_ap50_and_mask_ap():
    from faster_coco_eval import COCO

    gt = _gt()
    for annotation in gt["annotations"]:
        x, y, w, h = annotation["bbox"]
        annotation["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    results = []
    for det in _detections():
        x, y, w, h = det["bbox"]
        rle = mask_utils.frPyObjects([[x, y, x + w, y, x + w, y + h, x, y + h]], 100, 100)[0]
        rle["counts"] = rle["counts"].decode()
        results.append({**det, "segmentation": rle})
    metrics = evaluate(COCO(gt), results, iou_types=("bbox", "segm"), novel_ids=[1])
    assert metrics["bbox/AP50_novel"] == pytest.approx(50.0)
    assert metrics["bbox/AP50_base"] == pytest.approx(100.0)
    assert metrics["segm/APc"] == pytest.approx(100.0)
    assert metrics["segm/APr"] == pytest.approx(50.0)


def test_limit_per_image_keeps_top_scores_over_all_categories():
    results = [{"image_id": 1, "category_id": c, "score": s} for c, s in [(1, 0.1), (2, 0.9), (3, 0.5)]]
    results.append({"image_id": 2, "category_id": 1, "score": 0.01})
    kept = limit_per_image(results, 2)
    assert sorted((r["image_id"], r["score"]) for r in kept) == [(1, 0.5), (1, 0.9), (2, 0.01)]


def test_group_without_ground_truth_is_nan_not_zero():
    from faster_coco_eval import COCO

    gt = _gt()
    gt["annotations"] = [a for a in gt["annotations"] if a["category_id"] != 1]
    metrics = evaluate(COCO(gt), _detections(), iou_types=("bbox",))
    assert math.isnan(metrics["bbox/APr"])
