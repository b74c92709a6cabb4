"""Open-vocabulary semantic-segmentation head: pixel decoder -> per-pixel CLIP-space embeddings
-> cosine similarity with the class names' text embeddings.

The classifier has no per-class weights of its own, so any vocabulary can be swapped in at
inference. Two things are learned besides the decoder: the temperature, and a *void* embedding
that stands in for classes no text describes well ("background", "other"); the rows of the
vocabulary flagged `void_rows` use it instead of their text embedding, and `append_void` adds it
as an extra last class when segmenting with a user's vocabulary.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import List, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import Conv2dNormActivation

from react_core.registry import HEADS


def _block(in_channels: int, out_channels: int, kernel: int = 3) -> nn.Module:
    return Conv2dNormActivation(
        in_channels, out_channels, kernel, norm_layer=lambda c: nn.GroupNorm(min(32, c), c), activation_layer=nn.ReLU
    )


class PixelDecoder(nn.Module):
    """FPN-style fusion of a feature pyramid into one map at the finest level's stride.

    Each level is projected to `channels`, fused top-down (coarser levels upsampled and added),
    then refined by a 3x3 conv; the finest refined map is the output.
    """

    def __init__(self, input_shape: Mapping[str, object], channels: int):
        super().__init__()
        ordered = sorted(input_shape.items(), key=lambda item: item[1].stride)
        self.names = [name for name, _ in ordered]
        self.stride = ordered[0][1].stride
        self.lateral = nn.ModuleList(_block(spec.channels, channels, 1) for _, spec in ordered)
        self.output = nn.ModuleList(_block(channels, channels) for _ in ordered)

    def forward(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        fused = None
        for index in reversed(range(len(self.names))):
            lateral = self.lateral[index](features[self.names[index]])
            if fused is not None:
                lateral = lateral + F.interpolate(fused, size=lateral.shape[-2:], mode="bilinear", align_corners=False)
            fused = self.output[index](lateral)
        return fused


@HEADS.register_module()
class OpenVocabSegHead(nn.Module):
    """Pyramid features -> class logits `[B, C (+1 with append_void), h, w]` at the decoder stride.

    Config: `head: {type: OpenVocabSegHead, decoder_channels: 128, in_features: [p2, p3, p4]}`.

    input_shape: `{name: FeatureSpec(channels, stride)}` of the backbone's outputs, and
    embed_dim: CLIP's joint-space width (the text embeddings' size): both passed by the
        segmenter builder, not config keys.
    in_features: the pyramid levels to decode (default: all but the CLIP map).
    temperature: initial softmax temperature of the cosine logits (learned when `learn_temperature`).
    """

    def __init__(
        self,
        input_shape: Mapping[str, object],
        embed_dim: int,
        decoder_channels: int = 128,
        temperature: float = 0.01,
        learn_temperature: bool = True,
        in_features: Optional[List[str]] = None,
        max_logit_scale: float = 100.0,
    ):
        names = in_features or [name for name in input_shape if name != "clip"]
        unknown = [name for name in names if name not in input_shape]
        if unknown:
            raise ValueError(f"head.in_features {unknown} are not backbone outputs ({', '.join(input_shape)})")
        super().__init__()
        self.decoder = PixelDecoder(OrderedDict((name, input_shape[name]) for name in names), decoder_channels)
        self.embed = nn.Sequential(_block(decoder_channels, decoder_channels), nn.Conv2d(decoder_channels, embed_dim, 1))
        self.void_embedding = nn.Parameter(torch.randn(embed_dim) / math.sqrt(embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)), requires_grad=learn_temperature)
        self.max_log_scale = math.log(max_logit_scale)
        self.in_features = list(self.decoder.names)

    @property
    def stride(self) -> int:
        return self.decoder.stride

    def pixel_embeddings(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """L2-normalised per-pixel embeddings in CLIP space [B, D, h, w]."""
        return F.normalize(self.embed(self.decoder(features)), dim=1)

    def class_embeddings(
        self, text_embeddings: torch.Tensor, void_rows: Optional[torch.Tensor] = None, append_void: bool = False
    ) -> torch.Tensor:
        """[C (+1), D] L2-normalised: text rows, with `void_rows` (bool [C]) replaced by the void embedding."""
        void = F.normalize(self.void_embedding, dim=0).to(text_embeddings.dtype)
        weights = F.normalize(text_embeddings, dim=-1)
        if void_rows is not None:
            weights = torch.where(void_rows.to(weights.device)[:, None], void, weights)
        if append_void:
            weights = torch.cat([weights, void[None]], dim=0)
        return weights

    def forward(
        self,
        features: Mapping[str, torch.Tensor],
        text_embeddings: torch.Tensor,
        void_rows: Optional[torch.Tensor] = None,
        append_void: bool = False,
    ) -> torch.Tensor:
        pixels = self.pixel_embeddings(features)
        weights = self.class_embeddings(text_embeddings, void_rows, append_void)
        scale = self.logit_scale.clamp(max=self.max_log_scale).exp()
        return scale * torch.einsum("bdhw,cd->bchw", pixels, weights)
