"""The `kind: detection` config: one YAML for both engines (see configs/_base_/dense_detection.yaml)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional, Union

from react_core.config import ConfigError, buildable, config_kind, load
from react_core.config.common import ModelConfig, TextConfig
from react_core.registry import BACKBONES, HEADS
from react_dense.schedule import DenseTrain


@dataclass
class DetectionData:
    """COCO/LVIS JSON files; `novel` categories lose their annotations in training."""

    train: str = ""
    train_images: str = ""
    val: str = ""
    val_images: str = ""
    novel: Union[str, List[str]] = "rare"
    lvis_style: bool = True
    with_masks: bool = True
    hflip: bool = True
    num_workers: int = 0


@dataclass
class DetectorConfig:
    """Engine-independent detector settings (input size, RPN/RoI sampling, test-time limits)."""

    min_size: int = 800
    max_size: int = 1333
    masks: bool = True
    box_head_dim: int = 1024
    rpn_pre_nms_train: int = 2000
    rpn_post_nms_train: int = 1000
    rpn_pre_nms_test: int = 1000
    rpn_post_nms_test: int = 1000
    roi_batch_size: int = 512
    roi_positive_fraction: float = 0.25
    score_threshold: float = 0.0001
    nms_threshold: float = 0.5
    detections_per_image: int = 300


@dataclass
class EnsembleConfig:
    """Frozen-CLIP region scores combined with the detector's (F-VLM); `enabled: false` turns it off."""

    enabled: bool = False
    base_weight: float = 0.35
    novel_weight: float = 0.65
    clip_temperature: float = 0.01
    regions: str = "map"       # map (F-VLM: pooled CLIP map) | crops (ViLD: the whole tower on box crops)
    crop_scale: float = 1.5    # crops: side = this x the box's longer side
    # Calibration on training images, base annotations only (react_dense/modeling/calibration.py):
    background: bool = False   # a background embedding fitted as an extra column of the CLIP softmax
    prior_correction: bool = False  # divide out each class's CLIP score on proposals not of that class
    heldout: List[str] = field(default_factory=list)  # base classes left out of training (also in data.novel): choose the weights on them
    calibration_images: int = 200  # training images the calibration reads


@config_kind("detection")
@dataclass
class DetectionConfig:
    """An open-vocabulary detector: CLIP (`model.weights`: a full file or an adapter), backbone, region-text head, data, engine."""

    kind: str = "detection"
    engine: Literal["torchvision", "detectron2"] = "torchvision"
    model: ModelConfig = field(default_factory=ModelConfig)
    backbone: Dict[str, Any] = buildable(BACKBONES, {"type": "ClipBackbone"}, supplied=("visual",))
    head: Dict[str, Any] = buildable(HEADS, {"type": "RegionTextClassifier"}, supplied=("in_features", "embed_dim"))
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    text: TextConfig = field(default_factory=TextConfig)
    data: DetectionData = field(default_factory=DetectionData)
    train: DenseTrain = field(default_factory=DenseTrain)
    detectron2: Dict[str, Any] = field(default_factory=dict)
    permute_novel_embeddings: bool = False


def load_detection_config(path: str, overrides=()) -> DetectionConfig:
    """`path` with `overrides`, refused unless it is a `kind: detection` config."""
    import react_dense.modeling.backbone  # noqa: F401  (registers ClipBackbone)
    import react_dense.modeling.region_text  # noqa: F401  (registers RegionTextClassifier)

    cfg = load(path, overrides)
    if not isinstance(cfg, DetectionConfig):
        raise ConfigError(f"{path}: expected `kind: detection`, got kind {getattr(cfg, 'kind', '?')!r}")
    return cfg
