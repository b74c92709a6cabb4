"""Detectron2 adapters for open-vocabulary segmentation: Detectron2's `SemanticSegmentor` on the
REACT tower under Detectron2's own pyramid (`react_dense.detectron2`), with the engine-free
segmentation head (`react_dense.modeling`) as its `sem_seg_head`, and a semantic-segmentation
evaluator. Built from our `kind: segmentation` config directly, with Detectron2's keyword
arguments (Detectron2 required).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from torch import nn

from react_core.config import ConfigError
from react_core.registry import HEADS
from react_dense.modeling.backbone import CLIP_MAP, ClipTower, FeatureSpec
from react_dense.segmentation.common import score_ensemble
from react_dense.segmentation.metrics import ScoreConfusion, segmentation_metrics


def build_segmenter(cfg, bundle):
    """`SemanticSegmentor` for a `kind: segmentation` config and its loaded CLIP `bundle`: the
    tower read as `backbone:` says (ClipBackbone's settings) under Detectron2's pyramid, and the
    config's head."""
    from detectron2.modeling import SemanticSegmentor

    from react_dense.detectron2 import CLIP_INPUT_FORMAT, CLIP_PIXEL_MEAN, CLIP_PIXEL_STD
    from react_dense.detectron2.backbone import react_pyramid

    settings = dict(cfg.backbone)
    kind = settings.pop("type", "ClipBackbone")
    if kind != "ClipBackbone":
        raise ConfigError(f"backbone.type={kind!r}: the Detectron2 engine builds ClipBackbone's settings on Detectron2's pyramids")
    visual = bundle.model.visual
    try:
        tower = ClipTower(visual, settings.get("freeze", "frozen"), settings.get("features", "tokens"),
                          settings.get("feature_block", -1), emit_clip_map=cfg.ensemble.enabled)
    except ValueError as error:
        raise ConfigError(f"backbone: {error}") from None
    backbone = react_pyramid(
        tower, out_channels=settings.get("out_channels", 256), scale_factors=settings.get("scale_factors", (4.0, 2.0, 1.0, 0.5)),
        stride=tower.patch_size if tower.kind == "vit" else None, top_block=settings.get("top_block", True),
        input_format=CLIP_INPUT_FORMAT, pixel_mean=CLIP_PIXEL_MEAN, pixel_std=CLIP_PIXEL_STD,
    )
    shapes = {name: FeatureSpec(spec.channels, spec.stride) for name, spec in backbone.output_shape().items()}
    head = HEADS.build({**cfg.head, "input_shape": shapes, "embed_dim": visual.output_dim})
    sem_seg_head = ReactOpenVocabSemSegHead(head, ignore_value=-1, ensemble=score_ensemble(cfg))
    return SemanticSegmentor(backbone=backbone, sem_seg_head=sem_seg_head, pixel_mean=CLIP_PIXEL_MEAN, pixel_std=CLIP_PIXEL_STD)


class ReactOpenVocabSemSegHead(nn.Module):
    """`SemanticSegmentor`'s head interface over `OpenVocabSegHead`: `(logits, losses)`.

    The vocabulary (text embeddings, void rows and, for the score ensemble, unseen rows) is set
    with `set_vocabulary`; training uses the seen classes, evaluation any vocabulary. With
    `ensemble.enabled` the evaluation's scores are the head's ensembled with the dense readout's
    (`SegScoreEnsemble`, the plain engine's).
    """

    def __init__(self, head: nn.Module, ignore_value: int, ensemble: Optional[nn.Module] = None):
        super().__init__()
        self.head = head
        self.ignore_value = ignore_value
        self.ensemble = ensemble
        self.register_buffer("text_embeddings", torch.zeros(0), persistent=False)
        self.register_buffer("void_rows", torch.zeros(0, dtype=torch.bool), persistent=False)
        self.register_buffer("unseen_rows", torch.zeros(0, dtype=torch.bool), persistent=False)

    def set_vocabulary(self, embeddings: torch.Tensor, void_rows: Optional[torch.Tensor] = None,
                       unseen_rows: Optional[torch.Tensor] = None) -> None:
        device = self.head.void_embedding.device
        self.text_embeddings = embeddings.to(device)
        self.void_rows = (void_rows if void_rows is not None else torch.zeros(len(embeddings), dtype=torch.bool)).to(device)
        self.unseen_rows = (unseen_rows if unseen_rows is not None else torch.zeros(len(embeddings), dtype=torch.bool)).to(device)

    def forward(self, features, targets=None):
        if not len(self.text_embeddings):
            raise RuntimeError("set_vocabulary() must be called before the segmentation head runs")
        logits = self.head(features, self.text_embeddings, self.void_rows)
        if self.ensemble is not None and not self.training:
            logits = self.ensemble(logits, features[CLIP_MAP], self.text_embeddings, self.unseen_rows)
        logits = F.interpolate(logits, scale_factor=self.head.stride, mode="bilinear", align_corners=False)
        if self.training:
            logits = logits[..., : targets.shape[-2], : targets.shape[-1]]
            return None, {"loss_sem_seg": F.cross_entropy(logits, targets, ignore_index=self.ignore_value)}
        return logits, {}


class ReactSemSegEvaluator(DatasetEvaluator):
    """mIoU, fwIoU, accuracies, per-class IoU and seen/unseen mIoU (react_dense.segmentation.metrics)
    from each output's `sem_seg` scores, gathered over GPUs (`confusion()`: one matrix per group of
    scores, as the calibration's temperature sweep gives)."""

    def __init__(self, class_names, unseen=None, ignore_index: int = -1):
        self.class_names = list(class_names)
        self.unseen = list(unseen) if unseen else None
        self.ignore_index = ignore_index

    def reset(self):
        self.matrix = ScoreConfusion(len(self.class_names), self.ignore_index)

    def process(self, inputs, outputs):
        for item, output in zip(inputs, outputs):
            self.matrix.update(output["sem_seg"].cpu(), item["sem_seg"], dim=0)

    def confusion(self) -> torch.Tensor:
        """The confusion matrices [groups, C, C] summed over the processes."""
        return sum(comm.all_gather(self.matrix.matrices))

    def evaluate(self):
        return {"sem_seg": segmentation_metrics(self.confusion()[0], self.class_names, self.unseen)}
