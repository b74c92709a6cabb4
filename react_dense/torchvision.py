"""A REACT tower as a torchvision detection backbone: `react_backbone(...)` keeps torchvision's
contract (`out_channels`, an OrderedDict of maps named "0", "1", ... and "pool", as
`BackboneWithFPN` gives them), so `torchvision.models.detection.MaskRCNN(backbone, ...)` and
`FasterRCNN` take it as they take a ResNet-FPN:

    backbone = react_backbone(weights="adapter.safetensors")
    detector = MaskRCNN(backbone, num_classes=91, image_mean=backbone.image_mean, image_std=backbone.image_std)

The tower and its pyramid are the torchvision engine's own `ClipBackbone`.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Optional, Sequence

import torch
from torch import nn

from react_core.config import ConfigError
from react_dense.modeling.backbone import CLIP_MAP, ClipBackbone, Keys, load_react_clip


class ReactTorchvisionBackbone(nn.Module):
    """`ClipBackbone` under torchvision's names: levels "0".."n-1", the max-pooled top level
    "pool"; `out_channels` for the heads; `image_mean`, `image_std` (RGB, 0..1) for the detector's
    `GeneralizedRCNNTransform`, which must normalise as the tower was trained."""

    def __init__(self, body: ClipBackbone, top_block: bool):
        super().__init__()
        self.body = body
        shapes = [name for name in body.output_shape() if name != CLIP_MAP]
        self.names = [str(index) for index in range(len(shapes) - int(top_block))] + (["pool"] if top_block else [])
        self.out_channels = body.output_shape()[shapes[0]].channels
        from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

        visual = body.trunk
        self.image_mean = list(getattr(visual, "image_mean", None) or OPENAI_DATASET_MEAN)
        self.image_std = list(getattr(visual, "image_std", None) or OPENAI_DATASET_STD)

    def forward(self, images: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        features = self.body(images)
        features.pop(CLIP_MAP, None)
        return OrderedDict(zip(self.names, features.values()))


def react_backbone(
    model: Optional[str] = None,
    pretrained: Optional[str] = None,
    weights: Optional[str] = None,
    base_weights: Optional[str] = None,
    *,
    freeze: str = "frozen",
    features: str = "tokens",
    block: int = -1,
    out_channels: int = 256,
    scale_factors: Sequence[float] = (4.0, 2.0, 1.0, 0.5),
    top_block: bool = True,
) -> ReactTorchvisionBackbone:
    """A (customized) CLIP image tower with a simple feature pyramid (ViT) or an FPN (ResNet), for
    torchvision's detection models.

    Args:
        model: open_clip name of the tower (ViT-B-16, RN50, react-tiny); None when `weights` is an
            adapter, which names its own.
        pretrained: open_clip pretrained tag.
        weights: any file `react_core.modeling.load_clip` reads: base, official REACT, full
            customized, or an adapter from `react customize` (its base checked by sha256).
        base_weights: where an adapter's base file is now, if it moved.
        freeze: frozen (the tower is fixed) | gated (only REACT gated blocks train) | full.
        features: tokens (patch tokens of `block`; res5 of a ResNet) | readout (the dense readout).
        block: ViT, `features="tokens"`: the block whose output tokens are read (-1: the last).
        out_channels: channels of every level.
        scale_factors: ViT levels relative to the patch stride (ViTDet's 4, 2, 1, 0.5 give five
            levels with the top one, what torchvision's default anchors and RoI pooling expect).
        top_block: add the max-pooled "pool" level.

    Returns:
        A module with `out_channels`, `image_mean`, `image_std`, whose forward gives an
        OrderedDict of feature maps.
    """
    keys = Keys.arguments("react_backbone")
    visual = load_react_clip(model, pretrained, weights, base_weights, keys).model.visual
    try:
        body = ClipBackbone(visual, freeze=freeze, out_channels=out_channels, scale_factors=tuple(scale_factors),
                            top_block=top_block, features=features, feature_block=block)
    except ValueError as error:
        message = str(error)
        if "gated blocks" in message:
            raise ConfigError(f"{keys.freeze}='gated' needs gated REACT blocks, and {weights or 'the tower (no weights file)'} "
                              f"has none") from None
        raise ConfigError(f"react_backbone: {message}") from None
    return ReactTorchvisionBackbone(body, top_block)
