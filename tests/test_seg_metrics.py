"""Segmentation metrics against a case computed by hand, and sliding-window inference."""
import math

import pytest
import torch

from react_dense.segmentation.data import IGNORE_INDEX
from react_dense.segmentation.inference import predict_logits, sliding_window, window_starts
from react_dense.segmentation.metrics import ConfusionMatrix, segmentation_metrics

NAMES = ["sky", "road", "car", "boat"]


def _hand_case():
    target = torch.tensor([[0, 0, 1], [1, 2, IGNORE_INDEX]])
    prediction = torch.tensor([[0, 1, 1], [1, 2, 0]])
    matrix = ConfusionMatrix(len(NAMES))
    matrix.update(prediction, target)
    return matrix


def test_metrics_match_hand_computation():
    # Valid pixels: 5. sky: gt 2, pred 1, tp 1 -> IoU 1/2; road: gt 2, pred 3, tp 2 -> 2/3;
    # car: gt 1, pred 1, tp 1 -> 1; boat: absent everywhere -> not averaged.
    metrics = segmentation_metrics(_hand_case().matrix, NAMES, unseen=["car", "boat"])
    assert metrics["IoU-sky"] == pytest.approx(50.0)
    assert metrics["IoU-road"] == pytest.approx(200 / 3)
    assert metrics["IoU-car"] == pytest.approx(100.0)
    assert math.isnan(metrics["IoU-boat"])
    assert metrics["mIoU"] == pytest.approx((50 + 200 / 3 + 100) / 3)
    assert metrics["pACC"] == pytest.approx(80.0)
    assert metrics["mACC"] == pytest.approx((50 + 100 + 100) / 3)
    assert metrics["fwIoU"] == pytest.approx(100 * (0.4 * 0.5 + 0.4 * 2 / 3 + 0.2 * 1.0))
    assert metrics["mIoU_seen"] == pytest.approx((50 + 200 / 3) / 2)
    assert metrics["mIoU_unseen"] == pytest.approx(100.0)
    seen, unseen = metrics["mIoU_seen"], metrics["mIoU_unseen"]
    assert metrics["hIoU"] == pytest.approx(2 * seen * unseen / (seen + unseen))


def test_confusion_matrix_accumulates_and_rejects_bad_labels():
    matrix = _hand_case()
    matrix.merge(_hand_case())
    assert int(matrix.matrix.sum()) == 10
    assert segmentation_metrics(matrix.matrix, NAMES)["mIoU"] == pytest.approx((50 + 200 / 3 + 100) / 3)
    with pytest.raises(ValueError, match="outside"):
        matrix.update(torch.tensor([0]), torch.tensor([7]))
    with pytest.raises(ValueError, match="unseen or excluded classes"):
        segmentation_metrics(matrix.matrix, NAMES, unseen=["plane"])
    with pytest.raises(ValueError, match="plane"):
        segmentation_metrics(matrix.matrix, NAMES, excluded=["plane"])


def test_excluded_classes_enter_no_mean_but_keep_their_iou():
    # the ensemble's calibration excludes the unseen classes it does not score: here road
    metrics = segmentation_metrics(_hand_case().matrix, NAMES, unseen=["car"], excluded=["road"])
    assert metrics["IoU-road"] == pytest.approx(200 / 3)
    assert metrics["mIoU"] == pytest.approx((50 + 100) / 2)
    assert metrics["mACC"] == pytest.approx((50 + 100) / 2)
    assert metrics["mIoU_seen"] == pytest.approx(50.0)
    assert metrics["mIoU_unseen"] == pytest.approx(100.0)


def test_window_starts_cover_the_image_and_end_at_the_border():
    assert window_starts(10, 16, 8) == [0]
    assert window_starts(100, 32, 24) == [0, 24, 48, 68]
    starts = window_starts(517, 512, 341)
    assert starts[-1] + 512 == 517


def test_sliding_window_equals_whole_image_for_a_pointwise_model():
    torch.manual_seed(0)
    pointwise = torch.nn.Conv2d(3, 5, 1)
    images = torch.rand(2, 3, 37, 53)
    with torch.no_grad():
        whole = pointwise(images)
        slid = sliding_window(pointwise, images, crop_size=16, stride=11)
        resized = predict_logits(pointwise, images, "slide", 16, 11, test_size=20)
    torch.testing.assert_close(slid, whole)
    assert resized.shape == whole.shape


def test_sliding_window_averages_overlaps_and_pads_small_images():
    calls = []

    def ones(window):
        calls.append(tuple(window.shape[-2:]))
        return torch.ones(window.shape[0], 1, *window.shape[-2:])

    out = sliding_window(ones, torch.zeros(1, 3, 20, 20), crop_size=16, stride=4)
    assert torch.allclose(out, torch.ones_like(out))
    assert calls == [(16, 16)] * 4
    small = sliding_window(ones, torch.zeros(1, 3, 5, 7), crop_size=16, stride=8)
    assert small.shape[-2:] == (5, 7) and calls[-1] == (16, 16)
    with pytest.raises(ValueError, match="stride"):
        sliding_window(ones, torch.zeros(1, 3, 20, 20), crop_size=16, stride=17)
