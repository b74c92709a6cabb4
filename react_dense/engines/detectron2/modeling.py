"""Detectron2 adapters: the CLIP backbone in BACKBONE_REGISTRY, region-text RoI heads in ROI_HEADS_REGISTRY.

Both wrap the engine-free parts (`react_dense.detection.build.build_parts`) of the resolved config that
`cfg.REACT.CONFIG` names; no modelling code lives here. Importing this module registers them (Detectron2 required).
"""
from __future__ import annotations

from typing import Dict, List

import torch
from detectron2.layers import ShapeSpec, cat
from detectron2.modeling import BACKBONE_REGISTRY, ROI_HEADS_REGISTRY, Backbone, StandardROIHeads
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference
from detectron2.structures import Instances
from torch import nn

from react_core.config import load
from react_dense.detection.build import DenseParts, build_parts
from react_dense.modeling.backbone import CLIP_MAP

INPUT_IMAGES = "react_input_images"
_PARTS: Dict[str, DenseParts] = {}


def register_parts(config_file: str, parts: DenseParts) -> None:
    """Hand the parts a run built (after seeding) to the builders of the config that names `config_file`."""
    _PARTS[config_file] = parts


def parts_of(cfg) -> DenseParts:
    """The parts of `cfg.REACT.CONFIG`, a written-out resolved config: those its run registered,
    or, for a model built outside a run, built once from that file."""
    config_file = cfg.REACT.CONFIG
    if config_file not in _PARTS:
        _PARTS[config_file] = build_parts(load(config_file))
    return _PARTS[config_file]


class Detectron2ClipBackbone(Backbone):
    def __init__(self, clip_backbone):
        super().__init__()
        self.clip_backbone = clip_backbone

    @property
    def size_divisibility(self) -> int:
        return self.clip_backbone.size_divisibility

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {name: ShapeSpec(channels=s.channels, stride=s.stride) for name, s in self.clip_backbone.output_shape().items()}

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        return dict(self.clip_backbone(images))


@BACKBONE_REGISTRY.register()
def build_react_clip_backbone(cfg, input_shape):
    return Detectron2ClipBackbone(parts_of(cfg).backbone)


class RegionTextOutputLayers(nn.Module):
    """FastRCNNOutputLayers' interface over the engine-free RegionTextClassifier."""

    def __init__(self, classifier, ensemble, box2box_transform, score_thresh, nms_thresh, topk):
        super().__init__()
        self.classifier = classifier
        self.ensemble = ensemble
        self.box2box_transform = box2box_transform
        self.test_score_thresh = score_thresh
        self.test_nms_thresh = nms_thresh
        self.test_topk_per_image = topk
        self.register_buffer("is_base", torch.zeros(0, dtype=torch.bool), persistent=False)

    def set_vocabulary(self, embeddings, is_base=None, image_counts=None):
        self.classifier.set_vocabulary(embeddings, image_counts)
        self.is_base = is_base if is_base is not None else torch.zeros(len(embeddings), dtype=torch.bool)

    def forward(self, x):
        return self.classifier(x)

    def losses(self, predictions, proposals: List[Instances]):
        logits, deltas = predictions
        gt_classes = cat([p.gt_classes for p in proposals])
        proposal_boxes = cat([p.proposal_boxes.tensor for p in proposals])
        gt_boxes = cat([(p.gt_boxes if p.has("gt_boxes") else p.proposal_boxes).tensor for p in proposals])
        targets = self.box2box_transform.get_deltas(proposal_boxes, gt_boxes)
        return {
            "loss_cls": self.classifier.classification_loss(logits, gt_classes),
            "loss_box_reg": self.classifier.box_loss(deltas, targets, gt_classes),
        }

    def inference(self, predictions, proposals: List[Instances], clip_scores=None):
        logits, deltas = predictions
        scores = self.classifier.scores(logits)
        if self.ensemble is not None and clip_scores is not None:
            scores = self.ensemble(scores, clip_scores, self.is_base.to(scores.device))
        scores = torch.cat([scores, scores.new_zeros(len(scores), 1)], dim=1)
        boxes = self.box2box_transform.apply_deltas(deltas, cat([p.proposal_boxes.tensor for p in proposals]))
        counts = [len(p) for p in proposals]
        return fast_rcnn_inference(
            boxes.split(counts), scores.split(counts), [p.image_size for p in proposals],
            self.test_score_thresh, self.test_nms_thresh, self.test_topk_per_image,
        )


@ROI_HEADS_REGISTRY.register()
class RegionTextROIHeads(StandardROIHeads):
    """StandardROIHeads with the region-text predictor and class-agnostic boxes and masks."""

    @classmethod
    def from_config(cls, cfg, input_shape):
        config = super().from_config(cfg, input_shape)
        parts = parts_of(cfg)
        config["box_predictor"] = RegionTextOutputLayers(
            parts.classifier,
            parts.ensemble,
            Box2BoxTransform(weights=cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS),
            cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST,
            cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST,
            cfg.TEST.DETECTIONS_PER_IMAGE,
        )
        return config

    def forward(self, images, features, proposals, targets=None):
        if not self.training and self.box_predictor.ensemble is not None:  # crops are cut from the input
            features = {**features, INPUT_IMAGES: images.tensor}
        return super().forward(images, features, proposals, targets)

    def _forward_box(self, features: Dict[str, torch.Tensor], proposals: List[Instances]):
        if self.training:
            return super()._forward_box(features, proposals)
        predictions, regions = self.classify(features, proposals)
        predictor = self.box_predictor
        clip_scores = None if regions is None else predictor.ensemble.clip_scores(regions, predictor.classifier.class_embeddings)
        instances, _ = predictor.inference(predictions, proposals, clip_scores)
        return instances

    def classify(self, features: Dict[str, torch.Tensor], proposals: List[Instances]):
        """The box head's (logits, deltas) of every proposal, and its CLIP region embeddings [R, D]
        when the score ensemble is on (else None)."""
        box_features = self.box_head(self.box_pooler([features[f] for f in self.box_in_features], [p.proposal_boxes for p in proposals]))
        predictions = self.box_predictor(box_features)
        ensemble = self.box_predictor.ensemble
        if ensemble is None:
            return predictions, None
        clip_map = features.get(CLIP_MAP)
        stride = predictor_stride(features, self) if clip_map is not None else 1
        boxes = [p.proposal_boxes.tensor for p in proposals]
        return predictions, ensemble.region_embeddings(boxes, features[INPUT_IMAGES], clip_map, stride)


@torch.no_grad()
def calibration_records(model, augmentations, images: List[torch.Tensor], targets: List[dict]):
    """`react_dense.detection.calibrate`'s records for a Detectron2 detector (in eval mode): the
    images resized by the test-time `augmentations`, as its test loader does, and each proposal's
    detector scores [R, C], CLIP region embedding [R, D] and label."""
    import numpy as np
    from detectron2.data import transforms as T

    from react_dense.modeling.calibration import label_regions

    inputs, gt_boxes = [], []
    for image, target in zip(images, targets):
        pixels = (image * 255).round().byte().permute(1, 2, 0).numpy()  # the uint8 RGB file the test loader reads
        resized = T.AugInput(pixels, boxes=target["boxes"].numpy().astype(np.float64))
        T.AugmentationList(augmentations)(resized)
        inputs.append({"image": torch.as_tensor(np.ascontiguousarray(resized.image.transpose(2, 0, 1)))})
        gt_boxes.append(torch.as_tensor(resized.boxes, dtype=torch.float32))
    batch = model.preprocess_image(inputs)
    features = model.backbone(batch.tensor)
    proposals, _ = model.proposal_generator(batch, features, None)
    heads = model.roi_heads
    (logits, _), regions = heads.classify({**features, INPUT_IMAGES: batch.tensor}, proposals)
    labels = torch.cat([
        label_regions(p.proposal_boxes.tensor.cpu(), boxes, target["labels"]) for p, boxes, target in zip(proposals, gt_boxes, targets)
    ])
    return heads.box_predictor.classifier.scores(logits).cpu(), regions.cpu(), labels


def predictor_stride(features, heads) -> int:
    """Stride of the CLIP map, from its size relative to the finest pooled level."""
    finest = heads.box_in_features[0]
    finest_stride = 1.0 / heads.box_pooler.level_poolers[0].spatial_scale
    return int(round(finest_stride * features[finest].shape[-1] / features[CLIP_MAP].shape[-1]))
