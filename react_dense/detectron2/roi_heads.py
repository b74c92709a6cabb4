"""A zero-shot region-text box predictor for Detectron2's RoI heads, chosen by one key.

`MODEL.ROI_HEADS.NAME: ZeroShotROIHeads` (Detectron2's `StandardROIHeads`) or
`ZeroShotCascadeROIHeads` (`CascadeROIHeads`) put `ZeroShotBoxPredictor` where
`FastRCNNOutputLayers` stands: class scores are cosine similarities between projected region
features and class embeddings (`react_dense.modeling.region_text.RegionTextClassifier`, the one
region-text classifier of every engine), boxes and masks are class-agnostic.

Class embeddings come from a file in Detic's format (`MODEL.REACT.ZEROSHOT.WEIGHT_PATH`: a C x D
float `.npy`, one row per class, what `react text-embed` and Detic's `dump_clip_features.py`
write), or from the datasets' class names through the tower's own text encoder. The training
vocabulary is the training dataset's classes; the test vocabulary (`TEST_WEIGHT_PATH`, or
`set_vocabulary` on a built model) can be any other, without retraining.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, cat
from detectron2.modeling import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.modeling.roi_heads.cascade_rcnn import CascadeROIHeads
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference
from detectron2.structures import Instances
from torch import nn

from react_core.config import ConfigError
from react_dense.modeling.backbone import Keys, load_react_clip
from react_dense.modeling.backbone import CLIP_MAP
from react_dense.modeling.region_text import ClipScoreEnsemble, RegionTextClassifier

INPUT_IMAGES = "react_input_images"
WEIGHT_PATH = "MODEL.REACT.ZEROSHOT.WEIGHT_PATH"
TEST_WEIGHT_PATH = "MODEL.REACT.ZEROSHOT.TEST_WEIGHT_PATH"


def read_classifier_file(path: str, key: str, width: Optional[int] = None, tower: str = "the tower") -> torch.Tensor:
    """A classifier file in Detic's format (`react_core.modeling.text.load_classifier_file`), its
    problems named by the setting `key`.

    Args:
        path: the `.npy` file.
        key: the setting that named it, for the one-line error.
        width: the tower's embedding width, checked when given.
        tower: how the messages name the tower.

    Returns:
        The [C, D] float32 tensor, rows as written.
    """
    from react_core.modeling.text import VocabularyError, load_classifier_file

    try:
        embeddings = load_classifier_file(path)
    except VocabularyError as error:
        raise ConfigError(f"{key}: {error}") from None
    if width is not None and embeddings.shape[1] != width:
        raise ConfigError(f"{key}: {path} holds {embeddings.shape[1]}-wide class embeddings, but {tower} embeds into {width}")
    return embeddings


def tower_embed_dim(react) -> int:
    """The joint embedding width of the tower `MODEL.REACT` names, from its architecture alone."""
    import open_clip

    from react_core.modeling.adapters import read_adapter_metadata
    from react_core.modeling.clip import base_architecture, register_project_models

    adapter = read_adapter_metadata(react.WEIGHTS) if react.WEIGHTS else None
    if adapter is not None:
        return int(adapter["model_config"]["embed_dim"])
    register_project_models()
    config = open_clip.get_model_config(base_architecture(react.MODEL)) if react.MODEL else None
    if config is None:
        raise ConfigError(f"MODEL.REACT.MODEL={react.MODEL!r}: not an open_clip architecture (its embedding width is needed)")
    return int(config["embed_dim"])


def dataset_classes(name: str) -> Optional[List[str]]:
    """A registered dataset's `thing_classes` (loading it once if its metadata lacks them); None if
    `name` is not registered."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if name not in DatasetCatalog.list():
        return None
    metadata = MetadataCatalog.get(name)
    if "thing_classes" not in metadata.as_dict():
        DatasetCatalog.get(name)
    return list(metadata.get("thing_classes", []) or []) or None


def image_counts(name: str, num_classes: int) -> torch.Tensor:
    """Images per class of the training dataset, for the federated loss: its `class_image_count`
    metadata (Detectron2's convention, set by LVIS's registration), else counted from its records."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    recorded = MetadataCatalog.get(name).get("class_image_count", None)
    if recorded:
        return torch.tensor([float(c["image_count"]) for c in sorted(recorded, key=lambda c: c["id"])])
    counts = torch.zeros(num_classes)
    for record in DatasetCatalog.get(name):
        classes = {a["category_id"] for a in record.get("annotations", [])}
        counts[list(classes)] += 1
    return counts


@dataclass
class ZeroShotVocabularies:
    """The class embeddings a zero-shot detector trains and tests with, and the training classes'
    image counts (federated loss; None without it)."""

    train: torch.Tensor
    test: torch.Tensor
    image_counts: Optional[torch.Tensor]


def seen_in_training(test: torch.Tensor, train: torch.Tensor) -> torch.Tensor:
    """[C_test] bool: which test classes are training classes (their embedding is one of the
    training vocabulary's), the classes score ensembling weighs as base."""
    if not len(train) or not len(test):
        return torch.zeros(len(test), dtype=torch.bool, device=test.device)
    similarity = F.normalize(test.float(), dim=-1) @ F.normalize(train.float(), dim=-1).t()
    return similarity.max(dim=1).values > 1 - 1e-5


def zeroshot_vocabularies(cfg) -> ZeroShotVocabularies:
    """The training and test class embeddings `MODEL.REACT.ZEROSHOT` names, checked against the
    tower's embedding width, `MODEL.ROI_HEADS.NUM_CLASSES` and the datasets' classes."""
    react, zeroshot = cfg.MODEL.REACT, cfg.MODEL.REACT.ZEROSHOT
    width = tower_embed_dim(react)
    tower = f"the tower (MODEL.REACT.MODEL {react.MODEL!r})" if react.MODEL else f"the tower of MODEL.REACT.WEIGHTS {react.WEIGHTS}"
    train_name = cfg.DATASETS.TRAIN[0] if cfg.DATASETS.TRAIN else None
    test_name = cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else None
    encoder = TextEncoder(react, zeroshot)
    if zeroshot.WEIGHT_PATH:
        train = read_classifier_file(zeroshot.WEIGHT_PATH, WEIGHT_PATH, width, tower)
        source = f"{WEIGHT_PATH}: {zeroshot.WEIGHT_PATH} holds {len(train)} classes"
    else:
        names = dataset_classes(train_name) if train_name else None
        if names is None:
            raise ConfigError(f"{WEIGHT_PATH} is empty and DATASETS.TRAIN names no registered dataset whose class names "
                              "could be encoded: give a classifier file (react text-embed)")
        train = encoder.encode(names)
        source = f"DATASETS.TRAIN {train_name!r} has {len(train)} classes"
    num_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    if len(train) != num_classes:
        raise ConfigError(f"{source}, but MODEL.ROI_HEADS.NUM_CLASSES is {num_classes}")
    if zeroshot.WEIGHT_PATH and train_name:
        known = dataset_classes(train_name)
        if known is not None and len(known) != len(train):
            raise ConfigError(f"{source}, but the training dataset {train_name!r} has {len(known)}")
    if zeroshot.TEST_WEIGHT_PATH:
        test = read_classifier_file(zeroshot.TEST_WEIGHT_PATH, TEST_WEIGHT_PATH, width, tower)
        test_source = f"{TEST_WEIGHT_PATH}: {zeroshot.TEST_WEIGHT_PATH} holds {len(test)} classes"
    elif zeroshot.WEIGHT_PATH or not test_name or dataset_classes(test_name) is None:
        test, test_source = train, source
    else:
        test = encoder.encode(dataset_classes(test_name))
        test_source = f"DATASETS.TEST {test_name!r} has {len(test)} classes"
    if test_name:
        known = dataset_classes(test_name)
        if known is not None and len(known) != len(test):
            raise ConfigError(f"{test_source}, but the test dataset {test_name!r} has {len(known)}")
    counts = image_counts(train_name, len(train)) if cfg.MODEL.ROI_BOX_HEAD.USE_FED_LOSS and train_name else None
    return ZeroShotVocabularies(F.normalize(train, dim=-1), F.normalize(test, dim=-1), counts)


class TextEncoder:
    """Class names -> text embeddings with the tower's own text encoder (loaded on first use)."""

    def __init__(self, react, zeroshot):
        self.react, self.zeroshot = react, zeroshot
        self._bundle = None

    def encode(self, names: List[str]) -> torch.Tensor:
        from react_dense.modeling.vocabulary import Vocabulary, vocabulary_embeddings

        if self._bundle is None:
            react = self.react
            self._bundle = load_react_clip(react.MODEL, react.PRETRAINED, react.WEIGHTS, react.BASE_WEIGHTS, Keys.yacs())
        readable = [" ".join(name.replace("_", " ").split()) for name in names]
        return vocabulary_embeddings(self._bundle, Vocabulary(readable), self.zeroshot.TEMPLATES, self.zeroshot.CACHE_DIR or None)


class ZeroShotBoxPredictor(nn.Module):
    """`FastRCNNOutputLayers`' interface (`forward`, `losses`, `inference`, `predict_boxes`,
    `predict_probs`) over the region-text classifier: no per-class weights, class-agnostic boxes.

    Training uses the training vocabulary, evaluation the test vocabulary (`train()`/`eval()`
    switch them); `set_test_vocabulary` swaps the latter at any time. `test_is_base` marks the
    test classes seen in training (score ensembling).
    """

    @configurable
    def __init__(
        self,
        input_shape: ShapeSpec,
        *,
        box2box_transform: Box2BoxTransform,
        vocabularies: ZeroShotVocabularies,
        loss: str = "sigmoid",
        temperature: float = 0.02,
        learn_temperature: bool = True,
        use_bias: bool = True,
        prior_prob: float = 0.01,
        federated_classes: int = 0,
        federated_power: float = 0.5,
        test_score_thresh: float = 0.05,
        test_nms_thresh: float = 0.5,
        test_topk_per_image: int = 100,
        smooth_l1_beta: float = 0.0,
        box_reg_loss_weight: float = 1.0,
    ):
        super().__init__()
        in_features = input_shape.channels * (input_shape.width or 1) * (input_shape.height or 1)
        self.classifier = RegionTextClassifier(
            in_features, vocabularies.train.shape[1], loss, temperature, learn_temperature, use_bias, prior_prob,
            federated_classes, federated_power,
        )
        self.box2box_transform = box2box_transform
        self.test_score_thresh = test_score_thresh
        self.test_nms_thresh = test_nms_thresh
        self.test_topk_per_image = test_topk_per_image
        self.smooth_l1_beta = smooth_l1_beta
        self.box_reg_loss_weight = box_reg_loss_weight
        counts = vocabularies.image_counts if vocabularies.image_counts is not None else torch.ones(len(vocabularies.train))
        self.register_buffer("train_embeddings", vocabularies.train.clone(), persistent=False)
        self.register_buffer("test_embeddings", vocabularies.test.clone(), persistent=False)
        self.register_buffer("test_is_base", seen_in_training(vocabularies.test, vocabularies.train), persistent=False)
        self.register_buffer("image_counts", counts.float(), persistent=False)
        self.train(self.training)

    @classmethod
    def from_config(cls, cfg, input_shape, *, vocabularies: ZeroShotVocabularies, box2box_transform=None):
        box = cfg.MODEL.ROI_BOX_HEAD
        zeroshot = cfg.MODEL.REACT.ZEROSHOT
        return {
            "input_shape": input_shape,
            "box2box_transform": box2box_transform or Box2BoxTransform(weights=box.BBOX_REG_WEIGHTS),
            "vocabularies": vocabularies,
            "loss": "sigmoid" if box.USE_SIGMOID_CE else "softmax",
            "temperature": zeroshot.TEMPERATURE,
            "learn_temperature": zeroshot.LEARN_TEMPERATURE,
            "use_bias": zeroshot.USE_BIAS,
            "prior_prob": zeroshot.PRIOR_PROB,
            "federated_classes": box.FED_LOSS_NUM_CLASSES if box.USE_FED_LOSS else 0,
            "federated_power": box.FED_LOSS_FREQ_WEIGHT_POWER,
            "test_score_thresh": cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST,
            "test_nms_thresh": cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST,
            "test_topk_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "smooth_l1_beta": box.SMOOTH_L1_BETA,
            "box_reg_loss_weight": box.BBOX_REG_LOSS_WEIGHT,
        }

    @property
    def num_classes(self) -> int:
        return self.classifier.num_classes

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            self.classifier.set_vocabulary(self.train_embeddings, self.image_counts)
        else:
            self.classifier.set_vocabulary(self.test_embeddings)
        return self

    def set_test_vocabulary(self, embeddings: torch.Tensor, is_base: Optional[torch.Tensor] = None) -> None:
        """Classify into these [C, D] class embeddings at evaluation from now on; `is_base` [C]
        marks the classes seen in training (default: those whose embedding is a training one)."""
        if embeddings.shape[1] != self.train_embeddings.shape[1]:
            raise ValueError(f"class embeddings of width {embeddings.shape[1]}, the classifier's is {self.train_embeddings.shape[1]}")
        device = self.train_embeddings.device
        self.test_embeddings = F.normalize(embeddings.float(), dim=-1).to(device)
        self.test_is_base = (is_base if is_base is not None else seen_in_training(self.test_embeddings, self.train_embeddings)).to(device)
        self.train(self.training)

    def forward(self, x: torch.Tensor):
        return self.classifier(x.flatten(1))

    def losses(self, predictions, proposals: List[Instances]) -> Dict[str, torch.Tensor]:
        logits, deltas = predictions
        gt_classes = cat([p.gt_classes for p in proposals]) if proposals else torch.empty(0, dtype=torch.long)
        proposal_boxes = cat([p.proposal_boxes.tensor for p in proposals])
        gt_boxes = cat([(p.gt_boxes if p.has("gt_boxes") else p.proposal_boxes).tensor for p in proposals])
        targets = self.box2box_transform.get_deltas(proposal_boxes, gt_boxes)
        return {
            "loss_cls": self.classifier.classification_loss(logits, gt_classes),
            "loss_box_reg": self.box_reg_loss_weight * self.classifier.box_loss(deltas, targets, gt_classes, self.smooth_l1_beta),
        }

    def predict_boxes(self, predictions, proposals: List[Instances]):
        if not len(proposals):
            return []
        _, deltas = predictions
        boxes = self.box2box_transform.apply_deltas(deltas, cat([p.proposal_boxes.tensor for p in proposals]))
        return boxes.split([len(p) for p in proposals])

    def predict_probs(self, predictions, proposals: List[Instances]):
        """Per image [R, C + 1]: the class probabilities and a background column of zeros."""
        logits, _ = predictions
        scores = self.classifier.scores(logits)
        return torch.cat([scores, scores.new_zeros(len(scores), 1)], dim=1).split([len(p) for p in proposals])

    def inference(self, predictions, proposals: List[Instances], scores=None):
        """Detectron2's `fast_rcnn_inference` on these boxes and the classifier's scores (or `scores`)."""
        boxes = self.predict_boxes(predictions, proposals)
        scores = scores if scores is not None else self.predict_probs(predictions, proposals)
        return fast_rcnn_inference(
            boxes, scores, [p.image_size for p in proposals], self.test_score_thresh, self.test_nms_thresh, self.test_topk_per_image,
        )


def _stock_predictor_cfg(cfg):
    """`cfg` for the stock heads' own builders: their `FastRCNNOutputLayers` is replaced, so it
    must not look for federated-loss metadata; masks are class-agnostic (a class never trained has
    no mask channel)."""
    plain = cfg.clone()
    plain.defrost()
    plain.MODEL.ROI_BOX_HEAD.USE_FED_LOSS = False
    plain.MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK = True
    plain.freeze()
    return plain


def _check_supported(cfg) -> None:
    if cfg.MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES:
        raise ConfigError("MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES is not supported by the zero-shot heads")
    if cfg.MODEL.KEYPOINT_ON:
        raise ConfigError("MODEL.KEYPOINT_ON: keypoints are class-specific; the zero-shot heads predict boxes and masks")


def build_ensemble(cfg) -> Optional[ClipScoreEnsemble]:
    """The F-VLM score ensemble `MODEL.REACT.ENSEMBLE` describes, or None when it is off."""
    options = cfg.MODEL.REACT.ENSEMBLE
    if not options.ENABLED:
        return None
    tower = None
    if options.REGIONS == "crops":
        react = cfg.MODEL.REACT
        tower = load_react_clip(react.MODEL, react.PRETRAINED, react.WEIGHTS, react.BASE_WEIGHTS, Keys.yacs()).model.visual
    try:
        return ClipScoreEnsemble(options.BASE_WEIGHT, options.NOVEL_WEIGHT, options.CLIP_TEMPERATURE, options.REGIONS,
                                 options.CROP_SCALE, tower)
    except ValueError as error:
        raise ConfigError(f"MODEL.REACT.ENSEMBLE: {error}") from None


@ROI_HEADS_REGISTRY.register()
class ZeroShotROIHeads(StandardROIHeads):
    """Detectron2's `StandardROIHeads` with `ZeroShotBoxPredictor`, class-agnostic masks, and the
    optional F-VLM score ensemble (`MODEL.REACT.ENSEMBLE`) at test time."""

    @configurable
    def __init__(self, *, ensemble: Optional[ClipScoreEnsemble] = None, **kwargs):
        super().__init__(**kwargs)
        self.ensemble = ensemble

    @classmethod
    def from_config(cls, cfg, input_shape):
        _check_supported(cfg)
        config = super().from_config(cfg, input_shape)
        config["ensemble"] = build_ensemble(cfg)
        return config

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        config = super()._init_box_head(_stock_predictor_cfg(cfg), input_shape)
        config["box_predictor"] = ZeroShotBoxPredictor(cfg, config["box_head"].output_shape, vocabularies=zeroshot_vocabularies(cfg))
        return config

    @classmethod
    def _init_mask_head(cls, cfg, input_shape):
        return super()._init_mask_head(_stock_predictor_cfg(cfg), input_shape)

    def forward(self, images, features, proposals, targets=None):
        if not self.training and self.ensemble is not None:  # crops are cut from the input
            features = {**features, INPUT_IMAGES: images.tensor}
        return super().forward(images, features, proposals, targets)

    def _forward_box(self, features: Dict[str, torch.Tensor], proposals: List[Instances]):
        if self.training or self.ensemble is None:
            return super()._forward_box(features, proposals)
        predictions, regions = self.classify(features, proposals)
        predictor = self.box_predictor
        probabilities = torch.cat(predictor.predict_probs(predictions, proposals))[:, :-1]
        clip_scores = self.ensemble.clip_scores(regions, predictor.classifier.class_embeddings)
        scores = self.ensemble(probabilities, clip_scores, predictor.test_is_base)
        scores = torch.cat([scores, scores.new_zeros(len(scores), 1)], dim=1).split([len(p) for p in proposals])
        instances, _ = predictor.inference(predictions, proposals, scores)
        return instances

    def classify(self, features: Dict[str, torch.Tensor], proposals: List[Instances]):
        """The box head's (logits, deltas) of every proposal, and its CLIP region embeddings [R, D]
        when the score ensemble is on (else None)."""
        pooled = self.box_pooler([features[f] for f in self.box_in_features], [p.proposal_boxes for p in proposals])
        predictions = self.box_predictor(self.box_head(pooled))
        if self.ensemble is None:
            return predictions, None
        if self.ensemble.tower is not None:
            self.ensemble.tower.to(features[INPUT_IMAGES].device)
        clip_map = features.get(CLIP_MAP)
        stride = self._clip_stride(features) if clip_map is not None else 1
        boxes = [p.proposal_boxes.tensor for p in proposals]
        return predictions, self.ensemble.region_embeddings(boxes, features.get(INPUT_IMAGES), clip_map, stride)

    def _clip_stride(self, features) -> int:
        """Stride of the CLIP map, from its size relative to the finest pooled level."""
        finest_stride = 1.0 / self.box_pooler.level_poolers[0].spatial_scale
        return int(round(finest_stride * features[self.box_in_features[0]].shape[-1] / features[CLIP_MAP].shape[-1]))


@ROI_HEADS_REGISTRY.register()
class ZeroShotCascadeROIHeads(CascadeROIHeads):
    """Detectron2's `CascadeROIHeads` with a `ZeroShotBoxPredictor` at every stage (one
    vocabulary for all), and class-agnostic masks."""

    @classmethod
    def from_config(cls, cfg, input_shape):
        _check_supported(cfg)
        if cfg.MODEL.REACT.ENSEMBLE.ENABLED:
            raise ConfigError("MODEL.REACT.ENSEMBLE.ENABLED: the score ensemble works with ZeroShotROIHeads, not the cascade")
        return super().from_config(cfg, input_shape)

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        config = super()._init_box_head(_stock_predictor_cfg(cfg), input_shape)
        vocabularies = zeroshot_vocabularies(cfg)
        config["box_predictors"] = [
            ZeroShotBoxPredictor(cfg, head.output_shape, vocabularies=vocabularies, box2box_transform=stock.box2box_transform)
            for head, stock in zip(config["box_heads"], config["box_predictors"])
        ]
        return config

    @classmethod
    def _init_mask_head(cls, cfg, input_shape):
        return super()._init_mask_head(_stock_predictor_cfg(cfg), input_shape)


def set_vocabulary(model: nn.Module, embeddings, is_base: Optional[torch.Tensor] = None) -> None:
    """Swap the test vocabulary of every zero-shot predictor in `model` (no retraining).

    Args:
        model: a Detectron2 model with `ZeroShotROIHeads` or `ZeroShotCascadeROIHeads`.
        embeddings: [C, D] class embeddings, or the path of a Detic-format `.npy` file.
        is_base: [C] bool, the classes seen in training (score ensembling); default: those whose
            embedding is one of the training vocabulary's.

    Returns:
        None; the model's evaluation now predicts classes 0..C-1 of `embeddings`.
    """
    if isinstance(embeddings, (str, Path)):
        embeddings = read_classifier_file(str(embeddings), "vocabulary")
    predictors = [m for m in model.modules() if isinstance(m, ZeroShotBoxPredictor)]
    if not predictors:
        raise ValueError("the model has no ZeroShotBoxPredictor (MODEL.ROI_HEADS.NAME: ZeroShotROIHeads)")
    for predictor in predictors:
        predictor.set_test_vocabulary(embeddings, is_base)
