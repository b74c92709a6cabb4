"""torchvision Faster/Mask R-CNN around the CLIP backbone and the region-text classifier.

torchvision's RoI heads assume class-specific box and mask outputs, a softmax loss and 100
detections. `RegionTextRoIHeads` keeps its proposal sampling, RoI pooling and mask loss, and
replaces the rest: one box and one mask per region for every class, the classifier's own
loss (sigmoid/federated or softmax), score ensembling, and `detections_per_image` (300 for LVIS).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Optional

import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_inference, maskrcnn_loss
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign, batched_nms, clip_boxes_to_image, remove_small_boxes

from react_dense.detection.build import DenseParts
from react_dense.detection.config import DetectorConfig
from react_dense.modeling.backbone import CLIP_MAP


PRE_NMS_PER_DETECTION = 10


class RegionTextRoIHeads(RoIHeads):
    """Class-agnostic boxes and masks; classes from `box_predictor` (a RegionTextClassifier)."""

    def __init__(self, *args, ensemble=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.ensemble = ensemble
        self.register_buffer("is_base", torch.zeros(0, dtype=torch.bool), persistent=False)

    def forward(
        self, features, proposals, image_shapes, targets=None, images: Optional[torch.Tensor] = None,
        clip_map: Optional[torch.Tensor] = None, clip_stride: int = 1,
    ):
        classifier = self.box_predictor
        if self.training:
            targets = [{**t, "labels": t["labels"] + 1} for t in targets]
            proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        logits, deltas = self.classify(features, proposals, image_shapes)
        if self.training:
            labels_flat = torch.cat(labels)
            gt_classes = torch.where(labels_flat > 0, labels_flat - 1, classifier.num_classes)
            losses = {
                "loss_classifier": classifier.classification_loss(logits, gt_classes),
                "loss_box_reg": classifier.box_loss(deltas, torch.cat(regression_targets), gt_classes),
            }
            if self.has_mask():
                losses["loss_mask"] = self._mask_loss(features, proposals, image_shapes, targets, matched_idxs, labels)
            return [], losses
        scores = classifier.scores(logits)
        if self.ensemble is not None:
            regions = self.ensemble.region_embeddings(proposals, images, clip_map, clip_stride)
            clip_scores = self.ensemble.clip_scores(regions, classifier.class_embeddings)
            scores = self.ensemble(scores, clip_scores, self.is_base.to(scores.device))
        boxes = self.box_coder.decode(deltas, proposals).reshape(-1, 4)
        results = self._postprocess(boxes, scores, proposals, image_shapes)
        if self.has_mask():
            mask_boxes = [r["boxes"] for r in results]
            mask_logits = self.mask_predictor(self.mask_head(self.mask_roi_pool(features, mask_boxes, image_shapes)))
            agnostic = [torch.zeros(len(b), dtype=torch.int64, device=mask_logits.device) for b in mask_boxes]
            for probabilities, result in zip(maskrcnn_inference(mask_logits, agnostic), results):
                result["masks"] = probabilities
        return results, {}

    def classify(self, features, proposals, image_shapes) -> tuple[torch.Tensor, torch.Tensor]:
        """(class logits [R, C + 1], box deltas [R, 4]) of the proposals of a batch."""
        return self.box_predictor(self.box_head(self.box_roi_pool(features, proposals, image_shapes)))

    def _mask_loss(self, features, proposals, image_shapes, targets, matched_idxs, labels):
        positive = [torch.where(l > 0)[0] for l in labels]
        mask_proposals = [p[i] for p, i in zip(proposals, positive)]
        matched = [m[i] for m, i in zip(matched_idxs, positive)]
        mask_logits = self.mask_predictor(self.mask_head(self.mask_roi_pool(features, mask_proposals, image_shapes)))
        agnostic = [torch.zeros_like(t["labels"]) for t in targets]
        return maskrcnn_loss(mask_logits, mask_proposals, [t["masks"] for t in targets], agnostic, matched)

    def _postprocess(self, boxes, scores, proposals, image_shapes):
        """Per class: threshold, keep the best candidates, drop tiny boxes, NMS; then the image's top
        `detections_per_img`. LVIS's 0.0001 threshold passes nearly every (region, class) pair of
        1203 classes, so NMS only sees the `PRE_NMS_PER_DETECTION * detections_per_img` best."""
        results = []
        start = 0
        for proposal, shape in zip(proposals, image_shapes):
            count = len(proposal)
            image_boxes = clip_boxes_to_image(boxes[start : start + count], shape)
            image_scores = scores[start : start + count]
            start += count
            region, label = torch.nonzero(image_scores > self.score_thresh, as_tuple=True)
            candidate_scores = image_scores[region, label]
            if len(candidate_scores) > PRE_NMS_PER_DETECTION * self.detections_per_img:
                top = candidate_scores.topk(PRE_NMS_PER_DETECTION * self.detections_per_img).indices
                region, label, candidate_scores = region[top], label[top], candidate_scores[top]
            candidate_boxes = image_boxes[region]
            keep = remove_small_boxes(candidate_boxes, min_size=1e-2)
            candidate_boxes, candidate_scores, label = candidate_boxes[keep], candidate_scores[keep], label[keep]
            keep = batched_nms(candidate_boxes, candidate_scores, label, self.nms_thresh)[: self.detections_per_img]
            results.append({"boxes": candidate_boxes[keep], "scores": candidate_scores[keep], "labels": label[keep]})
        return results


class OpenVocabularyRCNN(GeneralizedRCNN):
    """Faster/Mask R-CNN whose classes are a swappable vocabulary of text embeddings."""

    def set_vocabulary(self, embeddings: torch.Tensor, is_base: Optional[torch.Tensor] = None, image_counts=None) -> None:
        self.roi_heads.box_predictor.set_vocabulary(embeddings, image_counts)
        self.roi_heads.is_base = (is_base if is_base is not None else torch.zeros(len(embeddings), dtype=torch.bool)).to(
            embeddings.device
        )

    def forward(self, images, targets=None):
        """Training: dict of losses. Inference: per image `boxes`, `scores`, `labels` (vocabulary index), `masks`."""
        original_sizes = [tuple(image.shape[-2:]) for image in images]
        images, targets, pyramid, clip_map, clip_stride, proposals, proposal_losses = self._propose(images, targets)
        detections, detector_losses = self.roi_heads(
            pyramid, proposals, images.image_sizes, targets, images.tensors, clip_map, clip_stride
        )
        if self.training:
            return {**proposal_losses, **detector_losses}
        return self.transform.postprocess(detections, images.image_sizes, original_sizes)

    def _propose(self, images, targets):
        images, targets = self.transform(images, targets)
        features = self.backbone(images.tensors)
        clip_map = features.pop(CLIP_MAP, None)
        pyramid = OrderedDict(features)
        proposals, proposal_losses = self.rpn(images, pyramid, targets)
        clip_stride = self.backbone.output_shape()[CLIP_MAP].stride if clip_map is not None else 1
        return images, targets, pyramid, clip_map, clip_stride, proposals, proposal_losses

    @torch.no_grad()
    def calibration_records(self, images, targets) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Ensemble calibration (eval mode): for every proposal of the batch, the detector's class
        scores [R, C], its CLIP region embedding [R, D], and its label from the targets' `boxes`
        and `labels` (`react_dense.modeling.calibration.label_regions`)."""
        from react_dense.modeling.calibration import label_regions

        heads = self.roi_heads
        images, targets, pyramid, clip_map, clip_stride, proposals, _ = self._propose(images, targets)
        logits, _ = heads.classify(pyramid, proposals, images.image_sizes)
        embeddings = heads.ensemble.region_embeddings(proposals, images.tensors, clip_map, clip_stride)
        labels = torch.cat([label_regions(p.cpu(), t["boxes"].cpu(), t["labels"].cpu()) for p, t in zip(proposals, targets)])
        return heads.box_predictor.scores(logits).cpu(), embeddings.cpu(), labels


def build_torchvision_detector(parts: DenseParts, cfg: DetectorConfig) -> OpenVocabularyRCNN:
    backbone = parts.backbone
    shapes = {k: v for k, v in backbone.output_shape().items() if k != CLIP_MAP}
    names = list(shapes)
    channels = next(iter(shapes.values())).channels
    roi_levels = names[:4] if len(names) > 4 else names
    anchor_sizes = tuple((8 * spec.stride,) for spec in shapes.values())
    anchors = AnchorGenerator(anchor_sizes, ((0.5, 1.0, 2.0),) * len(anchor_sizes))
    rpn = RegionProposalNetwork(
        anchors,
        RPNHead(channels, anchors.num_anchors_per_location()[0], conv_depth=1),
        fg_iou_thresh=0.7,
        bg_iou_thresh=0.3,
        batch_size_per_image=256,
        positive_fraction=0.5,
        pre_nms_top_n={"training": cfg.rpn_pre_nms_train, "testing": cfg.rpn_pre_nms_test},
        post_nms_top_n={"training": cfg.rpn_post_nms_train, "testing": cfg.rpn_post_nms_test},
        nms_thresh=0.7,
    )
    mask_parts = {}
    if cfg.masks:
        mask_parts = {
            "mask_roi_pool": MultiScaleRoIAlign(roi_levels, 14, 2),
            "mask_head": MaskRCNNHeads(channels, (channels,) * 4, 1),
            "mask_predictor": MaskRCNNPredictor(channels, channels, 1),
        }
    roi_heads = RegionTextRoIHeads(
        MultiScaleRoIAlign(roi_levels, 7, 2),
        TwoMLPHead(channels * 49, cfg.box_head_dim),
        parts.classifier,
        fg_iou_thresh=0.5,
        bg_iou_thresh=0.5,
        batch_size_per_image=cfg.roi_batch_size,
        positive_fraction=cfg.roi_positive_fraction,
        bbox_reg_weights=None,
        score_thresh=cfg.score_threshold,
        nms_thresh=cfg.nms_threshold,
        detections_per_img=cfg.detections_per_image,
        ensemble=parts.ensemble,
        **mask_parts,
    )
    visual = backbone.trunk
    transform = GeneralizedRCNNTransform(
        cfg.min_size,
        cfg.max_size,
        list(getattr(visual, "image_mean", None) or OPENAI_DATASET_MEAN),
        list(getattr(visual, "image_std", None) or OPENAI_DATASET_STD),
        size_divisible=backbone.size_divisibility,
    )
    return OpenVocabularyRCNN(backbone, rpn, roi_heads, transform)
