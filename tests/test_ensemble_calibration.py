"""Calibrating the CLIP score ensemble: background embedding, per-class prior, weights on held-out base classes."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from react_dense.modeling.calibration import (
    BACKGROUND,
    IGNORE,
    calibrate_ensemble,
    choose_weight,
    fit_background,
    label_regions,
    measure_prior,
)
from react_dense.modeling.region_text import ClipScoreEnsemble
from test_dense_detector import demo_config, scenes  # noqa: F401  (fixture)


def test_label_regions_by_overlap():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    proposals = torch.tensor([[0.0, 0.0, 10.0, 9.0], [0.0, 0.0, 10.0, 4.0], [20.0, 20.0, 30.0, 30.0]])
    assert label_regions(proposals, gt, torch.tensor([3])).tolist() == [3, IGNORE, BACKGROUND]
    assert label_regions(proposals, torch.zeros(0, 4), torch.zeros(0)).tolist() == [BACKGROUND] * 3


def _world(favoured: float = 0.0, n: int = 60):
    """Three orthogonal classes; objects lie near their class, background near a fourth direction.
    `favoured` tilts every region towards class 2, as a tower that prefers one class does."""
    torch.manual_seed(0)
    classes = torch.eye(4)[:3]
    labels = torch.tensor([0, 1, BACKGROUND] * n)
    centres = torch.stack([classes[0], classes[1], torch.eye(4)[3]])
    regions = centres[torch.arange(3).repeat(n)] + 0.1 * torch.randn(3 * n, 4) + favoured * classes[2]
    return regions, labels, classes


def test_background_embedding_takes_the_background_proposals():
    regions, labels, classes = _world()
    ensemble = ClipScoreEnsemble(clip_temperature=0.1)
    plain = ensemble.clip_scores(regions, classes)
    ensemble.calibrate(background=fit_background(regions, labels, classes, 0.1))
    calibrated = ensemble.clip_scores(regions, classes)
    background = labels == BACKGROUND
    assert calibrated[background].max(1).values.mean() < 0.5 * plain[background].max(1).values.mean()
    objects = ~background
    assert (calibrated[objects].argmax(1) == labels[objects]).all()


def test_prior_correction_removes_a_favoured_class_from_other_objects():
    regions, labels, classes = _world(favoured=0.5)
    ensemble = ClipScoreEnsemble(clip_temperature=0.1)
    plain = ensemble.clip_scores(regions, classes)
    prior = measure_prior(plain, labels)
    assert prior.argmax() == 2  # class 2 (never present) scores everywhere
    objects = labels >= 0
    ensemble.calibrate(prior=prior)
    corrected = ensemble.clip_scores(regions, classes)
    assert corrected[objects, 2].mean() < 0.5 * plain[objects, 2].mean()
    assert (corrected[objects].argmax(1) == labels[objects]).all()
    ensemble.calibrate()  # nothing: the plain softmax again
    torch.testing.assert_close(ensemble.clip_scores(regions, classes), plain)
    ensemble.calibrate(prior=prior[:2])
    with pytest.raises(ValueError, match="measured for 2 classes"):
        ensemble.clip_scores(regions, classes)


def test_choose_weight_follows_the_informative_score():
    torch.manual_seed(0)
    labels = torch.tensor([0, 1, BACKGROUND, IGNORE] * 25)
    truth = F.one_hot(labels.clamp(min=0), 2).float() * (labels >= 0)[:, None]
    noise = torch.rand(100, 2)
    # class 0: the detector knows it, CLIP does not; class 1: the reverse
    detector = torch.stack([truth[:, 0] * 0.5 + 0.4 * noise[:, 0], noise[:, 1]], 1)
    clip = torch.stack([noise[:, 0], truth[:, 1] * 0.5 + 0.4 * noise[:, 1]], 1)
    w0, curve = choose_weight(detector, clip, labels, [0])
    w1, _ = choose_weight(detector, clip, labels, [1])
    assert w0 < 0.5 < w1 and set(curve) == {round(0.1 * i, 1) for i in range(11)}
    with pytest.raises(ValueError, match="no proposal overlaps"):
        choose_weight(detector, clip, torch.full((100,), BACKGROUND), [0])


def test_calibrate_ensemble_uses_no_heldout_label_for_the_prior():
    regions, labels, classes = _world()
    detector = torch.rand(len(labels), 3)
    ensemble = ClipScoreEnsemble(clip_temperature=0.1)
    report = calibrate_ensemble(ensemble, detector, regions, labels, classes, base=[0], heldout=[1], background=True, prior_correction=True)
    assert len(ensemble.background) == 4 and len(ensemble.log_prior) == 3
    assert report["novel_weight"] == ensemble.novel_weight and set(report["novel_weight_curve"]) >= {0.0, 1.0}
    # class 1's regions are held out: the prior sees them as neither background nor object
    relabelled = torch.where(labels == 1, IGNORE, labels)
    ensemble.calibrate(background=ensemble.background)
    expected = measure_prior(ensemble.clip_scores(regions, classes), relabelled)
    assert report["prior"] == pytest.approx(expected.tolist(), abs=1e-5)


def test_torchvision_engine_calibrates_from_base_annotations(scenes, tmp_path):  # noqa: F811
    from react_dense.engines.torchvision.train import build_model, calibrate

    torch.manual_seed(0)
    cfg = demo_config(
        scenes, "ensemble.enabled=true", "ensemble.background=true", "ensemble.prior_correction=true",
        "data.novel=[blue circle,green circle,green square]", "ensemble.heldout=[green square]", "ensemble.calibration_images=4",
    )
    model, _, eval_vocab, split = build_model(cfg)
    model.set_vocabulary(eval_vocab.embeddings, eval_vocab.is_base)
    calibrate(cfg, model, eval_vocab, split, tmp_path)
    report = json.loads((tmp_path / "ensemble_calibration.json").read_text())
    assert len(report["prior"]) == 6 and report["background_proposals"] > 0
    assert model.roi_heads.ensemble.novel_weight == report["novel_weight"]
    with torch.no_grad():
        assert len(model.eval()([torch.rand(3, 64, 64)])[0]["scores"])
    bad = demo_config(scenes, "ensemble.enabled=true", "ensemble.heldout=[red square]")
    with pytest.raises(Exception, match="ensemble.heldout: red square"):
        calibrate(bad, model, eval_vocab, split, tmp_path)
