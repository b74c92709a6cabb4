"""The open-vocabulary segmenter: CLIP backbone pyramid + segmentation head, or the
training-free MaskCLIP baseline, behind one interface.

`model(images, text_embeddings, void_rows=None, append_void=False) -> logits [B, C, H, W]` at
the input's size; images are RGB in 0..1 (the model applies CLIP's normalisation).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD


class ClipNormalize(nn.Module):
    """The tower's own mean/std (open_clip sets `image_mean`/`image_std`), OpenAI's otherwise."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        mean = getattr(visual, "image_mean", None) or OPENAI_DATASET_MEAN
        std = getattr(visual, "image_std", None) or OPENAI_DATASET_STD
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std


class OpenVocabSegmenter(nn.Module):
    """`ClipBackbone` + `OpenVocabSegHead`; logits are upsampled bilinearly to the input size."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.normalize = ClipNormalize(backbone.trunk)
        self.backbone = backbone
        self.head = head

    def forward(
        self,
        images: torch.Tensor,
        text_embeddings: torch.Tensor,
        void_rows: Optional[torch.Tensor] = None,
        append_void: bool = False,
    ) -> torch.Tensor:
        features = self.backbone(self.normalize(images))
        logits = self.head(features, text_embeddings, void_rows, append_void)
        return _to_input_size(logits, self.head.stride, images.shape[-2:])


class MaskClipModel(nn.Module):
    """The training-free baseline with the segmenter's interface. It has no learned void
    embedding: void rows keep their name's text embedding ("background"), and an appended void
    class never wins."""

    def __init__(self, maskclip: nn.Module):
        super().__init__()
        self.normalize = ClipNormalize(maskclip.dense.visual)
        self.maskclip = maskclip

    def forward(
        self,
        images: torch.Tensor,
        text_embeddings: torch.Tensor,
        void_rows: Optional[torch.Tensor] = None,
        append_void: bool = False,
    ) -> torch.Tensor:
        logits = self.maskclip(self.normalize(images), text_embeddings)
        if append_void:
            logits = torch.cat([logits, torch.full_like(logits[:, :1], torch.finfo(logits.dtype).min)], dim=1)
        return logits


def _to_input_size(logits: torch.Tensor, stride: int, size) -> torch.Tensor:
    """Upsample stride-`stride` logits and crop away the backbone's padding."""
    logits = F.interpolate(logits, scale_factor=stride, mode="bilinear", align_corners=False)
    return logits[..., : size[0], : size[1]]
