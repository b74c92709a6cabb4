"""The `kind: segmentation` config (see configs/ade20k_react_seg.yaml)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional

from react_core.config import ConfigError, buildable, config_kind, load
from react_core.config.common import ModelConfig, TextConfig
from react_core.registry import BACKBONES, HEADS
from react_dense.schedule import DenseTrain


@dataclass
class SegmentationDataSpec:
    """One dataset split in a published layout (docs/detection-segmentation.md)."""

    layout: str = "folder"
    root: str = ""
    split: str = "val"
    classes: Optional[str] = None  # a file of class names replacing the layout's
    unseen: Optional[List[str]] = None  # classes held out of training (default: the layout's)
    background: Optional[str] = None  # a class scored by the learned void embedding (default: the layout's)
    name: Optional[str] = None
    max_images: int = 0


@dataclass
class SegmentationTrain(DenseTrain):
    """Training crops: random scale in `scale_range`, a `crop_size` crop, optional flip."""

    batch_size: int = 8
    crop_size: int = 512
    scale_range: List[float] = field(default_factory=lambda: [0.5, 2.0])
    hflip: bool = True
    num_workers: int = 0


@dataclass
class SegmentationTest:
    mode: Literal["whole", "slide"] = "whole"
    crop_size: int = 512
    stride: int = 341
    test_size: Optional[int] = None  # resize the short side to this before inference
    batch_size: int = 1


@dataclass
class MaskClipConfig:
    """The training-free baseline's options (`method: maskclip`)."""

    residual: bool = False
    raw_tokens: bool = False
    temperature: float = 0.01


@dataclass
class SegEnsembleConfig:
    """Evaluation of `method: head` with the trained head's scores ensembled with the dense
    readout's (`react_dense.modeling.seg_model.SegScoreEnsemble`; FC-CLIP's weights)."""

    enabled: bool = False
    seen_weight: float = 0.4
    unseen_weight: float = 0.8
    temperature: Optional[float] = None  # the readout softmax's temperature (None: maskclip.temperature)
    # Seen classes that train_data.unseen leaves out of training: the temperature is then chosen
    # from `temperatures` on the first `calibration_images` training images (the harmonic mean of
    # the held-out and the trained classes' mIoU; unseen pixels ignored), written to
    # ensemble_calibration.json.
    heldout: List[str] = field(default_factory=list)
    temperatures: List[float] = field(default_factory=lambda: [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0])
    calibration_images: int = 100


@config_kind("segmentation")
@dataclass
class SegmentationConfig:
    """An open-vocabulary segmenter: trained head (`method: head`) or MaskCLIP (`method: maskclip`)."""

    kind: str = "segmentation"
    engine: Literal["plain", "detectron2"] = "plain"
    method: Literal["head", "maskclip"] = "head"
    model: ModelConfig = field(default_factory=ModelConfig)
    backbone: Dict[str, Any] = buildable(BACKBONES, {"type": "ClipBackbone", "top_block": False}, supplied=("visual",))
    head: Dict[str, Any] = buildable(HEADS, {"type": "OpenVocabSegHead"}, supplied=("input_shape", "embed_dim"))
    maskclip: MaskClipConfig = field(default_factory=MaskClipConfig)
    ensemble: SegEnsembleConfig = field(default_factory=SegEnsembleConfig)
    text: TextConfig = field(default_factory=TextConfig)
    train_data: Optional[SegmentationDataSpec] = None
    test_data: List[SegmentationDataSpec] = field(default_factory=list)
    train: SegmentationTrain = field(default_factory=SegmentationTrain)
    test: SegmentationTest = field(default_factory=SegmentationTest)
    detectron2: Dict[str, Any] = field(default_factory=dict)
    permute_unseen_embeddings: bool = False  # control run: unseen text embeddings shuffled among themselves


def load_segmentation_config(path: str, overrides=()) -> SegmentationConfig:
    """`path` with `overrides`, refused unless it is a `kind: segmentation` config."""
    import react_dense.modeling.backbone  # noqa: F401  (registers ClipBackbone)
    import react_dense.modeling.seg_head  # noqa: F401  (registers OpenVocabSegHead)

    cfg = load(path, overrides)
    if not isinstance(cfg, SegmentationConfig):
        raise ConfigError(f"{path}: expected `kind: segmentation`, got kind {getattr(cfg, 'kind', '?')!r}")
    return cfg
