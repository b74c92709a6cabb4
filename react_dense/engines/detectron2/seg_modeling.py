"""Detectron2 adapters for open-vocabulary segmentation: the CLIP backbone and the
segmentation head in Detectron2's registries, and a semantic-segmentation evaluator.

Both builders read our `kind: segmentation` YAML named by `cfg.REACT.CONFIG` and build the
engine-free parts (`react_dense.modeling`); no modelling code lives here. The head plugs into
Detectron2's `SemanticSegmentor`. Importing this module registers them (Detectron2 required).
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.evaluation import DatasetEvaluator
from detectron2.modeling import BACKBONE_REGISTRY, SEM_SEG_HEADS_REGISTRY
from detectron2.utils import comm
from torch import nn

from react_core.config import load
from react_core.registry import BACKBONES, HEADS
from react_dense.engines.detectron2.modeling import Detectron2ClipBackbone
from react_dense.modeling.backbone import CLIP_MAP, FeatureSpec
from react_dense.segmentation.common import backbone_spec, score_ensemble
from react_dense.segmentation.metrics import ScoreConfusion, segmentation_metrics


@functools.lru_cache(maxsize=4)
def segmentation_config(config_path: str):
    """The resolved `kind: segmentation` YAML a run wrote out."""
    return load(config_path)


@functools.lru_cache(maxsize=4)
def segmentation_bundle(config_path: str):
    """The CLIP of one config, loaded once for the backbone and the text embeddings."""
    cfg = segmentation_config(config_path)
    return cfg.model.load()


def _ours(cfg):
    return segmentation_config(cfg.REACT.CONFIG), segmentation_bundle(cfg.REACT.CONFIG)


@BACKBONE_REGISTRY.register()
def build_react_seg_backbone(cfg, input_shape):
    ours, bundle = _ours(cfg)
    return Detectron2ClipBackbone(BACKBONES.build(backbone_spec(ours, bundle.model.visual)))


@SEM_SEG_HEADS_REGISTRY.register()
class ReactOpenVocabSemSegHead(nn.Module):
    """`SemanticSegmentor`'s head interface over `OpenVocabSegHead`: `(logits, losses)`.

    The vocabulary (text embeddings, void rows and, for the score ensemble, unseen rows) is set
    with `set_vocabulary`; training uses the seen classes, evaluation any vocabulary. With
    `ensemble.enabled` the evaluation's scores are the head's ensembled with the dense readout's
    (`SegScoreEnsemble`, the plain engine's).
    """

    @configurable
    def __init__(self, head: nn.Module, ignore_value: int, ensemble: Optional[nn.Module] = None):
        super().__init__()
        self.head = head
        self.ignore_value = ignore_value
        self.ensemble = ensemble
        self.register_buffer("text_embeddings", torch.zeros(0), persistent=False)
        self.register_buffer("void_rows", torch.zeros(0, dtype=torch.bool), persistent=False)
        self.register_buffer("unseen_rows", torch.zeros(0, dtype=torch.bool), persistent=False)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ours, bundle = _ours(cfg)
        shapes = {name: FeatureSpec(spec.channels, spec.stride) for name, spec in input_shape.items()}
        embed_dim = bundle.model.visual.output_dim
        return {"head": HEADS.build({**ours.head, "input_shape": shapes, "embed_dim": embed_dim}),
                "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE, "ensemble": score_ensemble(ours)}

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
