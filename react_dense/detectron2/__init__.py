"""A REACT tower in Detectron2, in Detectron2's own dialects (Detectron2 required).

`import react_dense.detectron2` registers `build_react_backbone` (BACKBONE_REGISTRY) and
`ZeroShotROIHeads`, `ZeroShotCascadeROIHeads` (ROI_HEADS_REGISTRY), and adds `MODEL.REACT.*` with
its defaults to `get_cfg()`. So:

- yacs: `add_react_config(cfg)`, then `MODEL.BACKBONE.NAME: build_react_backbone` and
  `MODEL.REACT.WEIGHTS: <tower file>` in any config; Detectron2's own `tools/train_net.py` reads
  them once this module is imported, e.g. with `DETECTRON2_ENV_MODULE=react_dense.detectron2`.
- LazyConfig: `model.backbone.net = L(ReactViT)(weights=..., out_feature="last_feat")` in ViTDet's
  `common/models/mask_rcnn_vitdet.py`.
- Zero-shot classifier: `MODEL.ROI_HEADS.NAME: ZeroShotROIHeads` and
  `MODEL.REACT.ZEROSHOT.WEIGHT_PATH: <Detic-format .npy>` (`react text-embed` writes one).
"""
from __future__ import annotations

try:
    import detectron2  # noqa: F401
except ImportError as error:  # pragma: no cover - depends on the installation
    raise ImportError("react_dense.detectron2 needs Detectron2, which is installed from source "
                      "(see the README); the torchvision face is react_dense.torchvision") from error

from detectron2.config.defaults import _C as _DETECTRON2_DEFAULTS

from react_dense.detectron2 import model_zoo
from react_dense.detectron2.backbone import ReactResNet, ReactViT, build_react_backbone
from react_dense.detectron2.config import CLIP_INPUT_FORMAT, CLIP_PIXEL_MEAN, CLIP_PIXEL_STD, add_react_config, add_react_keys
from react_dense.detectron2.roi_heads import (
    ZeroShotBoxPredictor,
    ZeroShotCascadeROIHeads,
    ZeroShotROIHeads,
    read_classifier_file,
    set_vocabulary,
)

add_react_keys(_DETECTRON2_DEFAULTS)


def setup_environment() -> None:
    """Detectron2's hook for `DETECTRON2_ENV_MODULE=react_dense.detectron2`: importing this module
    has registered everything, so Detectron2's own tools read REACT configs unchanged."""


__all__ = [
    "CLIP_INPUT_FORMAT",
    "CLIP_PIXEL_MEAN",
    "CLIP_PIXEL_STD",
    "ReactResNet",
    "ReactViT",
    "ZeroShotBoxPredictor",
    "ZeroShotCascadeROIHeads",
    "ZeroShotROIHeads",
    "add_react_config",
    "build_react_backbone",
    "model_zoo",
    "read_classifier_file",
    "set_vocabulary",
    "setup_environment",
]
