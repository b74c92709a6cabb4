"""The segmentation head, the MaskCLIP baseline and the segmenter built from a config."""
import copy

import pytest
import torch

from react_core.modeling import load_clip
from react_dense.modeling.backbone import ClipBackbone
from react_dense.modeling.seg_head import OpenVocabSegHead
from react_dense.modeling.seg_maskclip import MaskClipDense, MaskClipSegmenter
from react_dense.modeling.seg_model import MaskClipModel, OpenVocabSegmenter, _to_input_size

from conftest import TINY_RESNET

def _segmenter(visual):
    backbone = ClipBackbone(visual, out_channels=32, scale_factors=(2.0, 1.0, 0.5), top_block=False)
    head = OpenVocabSegHead(backbone.output_shape(), backbone.embed_dim, decoder_channels=32)
    return OpenVocabSegmenter(backbone, head)


def test_head_scores_any_vocabulary_at_input_size(tiny_clip):
    model = _segmenter(copy.deepcopy(tiny_clip.model.visual)).eval()
    images = torch.rand(2, 3, 72, 56)
    with torch.no_grad():
        for classes in (3, 11):
            logits = model(images, torch.randn(classes, 128))
            assert logits.shape == (2, classes, 72, 56)


def test_void_rows_and_appended_void_share_the_learned_embedding(tiny_clip):
    model = _segmenter(copy.deepcopy(tiny_clip.model.visual)).eval()
    images, text = torch.rand(1, 3, 64, 64), torch.randn(4, 128)
    void_rows = torch.tensor([True, False, False, False])
    with torch.no_grad():
        with_void_row = model(images, text, void_rows)
        appended = model(images, text, append_void=True)
    assert appended.shape[1] == 5
    torch.testing.assert_close(with_void_row[:, 0], appended[:, 4])
    torch.testing.assert_close(with_void_row[:, 1:], appended[:, 1:4])


def test_frozen_backbone_trains_only_pyramid_and_head(tiny_clip):
    model = _segmenter(copy.deepcopy(tiny_clip.model.visual)).train()
    logits = model(torch.rand(2, 3, 64, 64), torch.randn(3, 128), torch.tensor([True, False, False]))
    torch.nn.functional.cross_entropy(logits, torch.randint(0, 3, (2, 64, 64))).backward()
    assert all(p.grad is None for p in model.backbone.trunk.parameters())
    assert model.head.void_embedding.grad.abs().sum() > 0
    assert model.head.logit_scale.grad is not None
    assert any(p.grad is not None for p in model.backbone.pyramid.parameters())


def test_maskclip_value_path_differs_from_raw_tokens_and_residual_variant(tiny_clip):
    visual = tiny_clip.model.visual
    images = torch.rand(2, 3, 64, 80)
    with torch.no_grad():
        value = MaskClipDense(visual)(images)
        raw = MaskClipDense(visual, raw_tokens=True)(images)
        residual = MaskClipDense(visual, residual=True)(images)
        backbone_map = ClipBackbone(visual, emit_clip_map=True)(images)["clip"]
    assert value.shape == raw.shape == (2, 128, 8, 10)
    torch.testing.assert_close(value, backbone_map)  # the detector's CLIP map is the same readout
    assert not torch.allclose(value, raw, atol=1e-3)
    assert not torch.allclose(value, residual, atol=1e-3)


def test_maskclip_on_a_modified_resnet_and_as_a_segmenter():
    torch.manual_seed(0)
    bundle = load_clip(TINY_RESNET)
    dense = MaskClipDense(bundle.model.visual)
    assert dense.stride == 32 and dense.embed_dim == 32
    model = MaskClipModel(MaskClipSegmenter(bundle.model.visual))
    with torch.no_grad():
        logits = model(torch.rand(1, 3, 70, 64), torch.randn(5, 32), append_void=True)
    assert logits.shape == (1, 6, 70, 64)
    assert (logits.argmax(1) < 5).all()  # MaskCLIP has no void: the appended class never wins
    with pytest.raises(ValueError, match="ViT towers only"):
        MaskClipDense(bundle.model.visual, raw_tokens=True)


def test_score_ensemble_mixes_head_and_readout_by_seen_and_unseen_weights(tiny_clip):
    """p = p_head^(1-w) p_clip^w: w = 0 gives the head, w = 1 the readout (the MaskCLIP scores)."""
    from react_dense.modeling.seg_model import SegScoreEnsemble

    visual = copy.deepcopy(tiny_clip.model.visual)
    backbone = ClipBackbone(visual, out_channels=32, scale_factors=(2.0, 1.0, 0.5), top_block=False, emit_clip_map=True)
    head = OpenVocabSegHead(backbone.output_shape(), backbone.embed_dim, decoder_channels=32)
    images, text = torch.rand(1, 3, 64, 64), torch.randn(4, 128)
    unseen, void_rows = torch.tensor([False, False, True, True]), torch.tensor([True, False, False, False])
    plain = OpenVocabSegmenter(backbone, head).eval()
    with torch.no_grad():
        head_only = plain(images, text, void_rows)
        head_log = _to_input_size(
            torch.log_softmax(head(backbone(plain.normalize(images)), text, void_rows), 1), head.stride, images.shape[-2:])
        readout_labels = MaskClipModel(MaskClipSegmenter(visual))(images, text).argmax(1)
        for seen_weight, unseen_weight in ((0.0, 0.0), (1.0, 1.0), (0.4, 0.8)):
            mixed = OpenVocabSegmenter(backbone, head, SegScoreEnsemble(seen_weight, unseen_weight)).eval()
            scores = mixed(images, text, void_rows, unseen=unseen)
            assert torch.equal(mixed(images, text, void_rows), head_only)  # no split given: the head alone
            if unseen_weight == 0.0:
                torch.testing.assert_close(scores, head_log)
            elif seen_weight == 1.0:  # every class, the void row's "background" text included, ranks as the readout does
                agree = (scores.argmax(1) == readout_labels).float().mean()
                assert agree > 0.9, agree
            else:
                assert not torch.allclose(scores, head_log, atol=1e-3)
    with pytest.raises(ValueError, match="emit_clip_map"):
        OpenVocabSegmenter(ClipBackbone(visual, out_channels=32, top_block=False), head, SegScoreEnsemble())


def test_a_temperature_sweep_labels_each_group_as_that_temperature_alone(tiny_clip):
    """The calibration runs the model once for every temperature: each group of scores, through the
    sliding window and the confusion matrices, is what a run at that temperature alone gives (up to
    float rounding: wider tensors vectorise differently)."""
    from react_dense.modeling.seg_model import SegScoreEnsemble
    from react_dense.segmentation.inference import predict_logits
    from react_dense.segmentation.metrics import ConfusionMatrix, ScoreConfusion

    torch.manual_seed(1)
    visual = copy.deepcopy(tiny_clip.model.visual)
    backbone = ClipBackbone(visual, out_channels=32, scale_factors=(2.0, 1.0, 0.5), top_block=False, emit_clip_map=True)
    head = OpenVocabSegHead(backbone.output_shape(), backbone.embed_dim, decoder_channels=32)
    model = OpenVocabSegmenter(backbone, head, SegScoreEnsemble(0.4, 0.8)).eval()
    images, text, targets = torch.rand(2, 3, 80, 72), torch.randn(5, 128), torch.randint(-1, 5, (2, 80, 72))
    unseen = torch.tensor([False, False, False, True, True])
    temperatures = [0.01, 0.1, 1.0]

    def scores():
        with torch.no_grad():
            return predict_logits(lambda x: model(x, text, unseen=unseen), images, "slide", 64, 40)

    sweep = ScoreConfusion(5)
    model.ensemble.temperature = temperatures
    swept = scores()
    sweep.update(swept, targets)
    assert swept.shape == (2, 15, 80, 72) and sweep.matrices.shape == (3, 5, 5)
    for group, temperature in enumerate(temperatures):
        model.ensemble.temperature = temperature
        alone = scores()
        torch.testing.assert_close(swept[:, 5 * group : 5 * group + 5], alone, rtol=1e-5, atol=1e-5)
        matrix = ConfusionMatrix(5)
        matrix.update(alone.argmax(1), targets)
        assert (sweep.matrices[group] - matrix.matrix).abs().sum() <= 2, temperature  # a near-tie may flip
    assert not torch.equal(sweep.matrices[0], sweep.matrices[2])  # the temperatures do label differently
    with pytest.raises(ValueError, match="groups"):
        sweep.update(swept[:, :10], targets)
