"""The open-vocabulary segmenter: CLIP backbone pyramid + segmentation head, or the
training-free MaskCLIP baseline, behind one interface.

`model(images, text_embeddings, void_rows=None, append_void=False, unseen=None) -> logits [B, C, H, W]`
at the input's size; images are RGB in 0..1 (the model applies CLIP's normalisation). With a
`SegScoreEnsemble` and `unseen` given (evaluation, where the seen/unseen split is known), the
trained head's class probabilities are ensembled with those of the tower's dense readout.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from react_dense.modeling.backbone import CLIP_MAP
from react_dense.modeling.seg_maskclip import readout_logits


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


class SegScoreEnsemble(nn.Module):
    """FC-CLIP's geometric ensemble (Yu et al., NeurIPS 2023) for dense labels: per pixel and class,
    p = p_head^(1 - w) * p_clip^w, w = `seen_weight` on the classes the head was trained on and
    `unseen_weight` on the others, p_clip the softmax of the dense readout's cosine to the class
    texts / `temperature` (the MaskCLIP segmenter's scores, "background" included, as a seen
    class). A trained head learns only its seen classes; the readout, which dense-aware
    customization trains, carries the unseen ones. Returns log-probabilities (their argmax is the
    label). With a sequence of temperatures (the calibration's sweep) the log-probabilities of each
    are returned one group of C channels after another, from one pass of the model: the labels of
    each group are those that temperature alone gives (`ScoreConfusion` reads them)."""

    def __init__(self, seen_weight: float = 0.4, unseen_weight: float = 0.8, temperature: float | Sequence[float] = 0.01):
        super().__init__()
        self.seen_weight, self.unseen_weight, self.temperature = seen_weight, unseen_weight, temperature

    def forward(
        self, head_logits: torch.Tensor, clip_map: torch.Tensor, text_embeddings: torch.Tensor,
        unseen: torch.Tensor,
    ) -> torch.Tensor:
        weight = torch.where(unseen.to(head_logits.device), self.unseen_weight, self.seen_weight).to(head_logits.dtype)
        weight = weight.view(1, -1, 1, 1)
        head = (1 - weight) * F.log_softmax(head_logits, dim=1)
        sweep = not isinstance(self.temperature, (int, float))
        scores = []
        for temperature in self.temperature if sweep else (self.temperature,):
            clip_logits = readout_logits(clip_map, text_embeddings, temperature)
            clip_logits = F.interpolate(clip_logits, size=head_logits.shape[-2:], mode="bilinear", align_corners=False)
            scores.append(head + weight * F.log_softmax(clip_logits, dim=1))
        return torch.cat(scores, dim=1) if sweep else scores[0]


class OpenVocabSegmenter(nn.Module):
    """`ClipBackbone` + `OpenVocabSegHead` (+ an optional `SegScoreEnsemble`, which needs the
    backbone's `clip` map); logits are upsampled bilinearly to the input size."""

    def __init__(self, backbone: nn.Module, head: nn.Module, ensemble: Optional[SegScoreEnsemble] = None):
        super().__init__()
        if ensemble is not None and CLIP_MAP not in backbone.output_shape():
            raise ValueError("the score ensemble needs a backbone with emit_clip_map=True")
        self.normalize = ClipNormalize(backbone.trunk)
        self.backbone = backbone
        self.head = head
        self.ensemble = ensemble

    def forward(
        self,
        images: torch.Tensor,
        text_embeddings: torch.Tensor,
        void_rows: Optional[torch.Tensor] = None,
        append_void: bool = False,
        unseen: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        features = self.backbone(self.normalize(images))
        logits = self.head(features, text_embeddings, void_rows, append_void)
        if self.ensemble is not None and unseen is not None:
            if append_void:
                raise ValueError("the score ensemble scores the vocabulary's classes only, not an appended void class")
            logits = self.ensemble(logits, features[CLIP_MAP], text_embeddings, unseen)
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
        unseen: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        logits = self.maskclip(self.normalize(images), text_embeddings)
        if append_void:
            logits = torch.cat([logits, torch.full_like(logits[:, :1], torch.finfo(logits.dtype).min)], dim=1)
        return logits


def _to_input_size(logits: torch.Tensor, stride: int, size) -> torch.Tensor:
    """Upsample stride-`stride` logits and crop away the backbone's padding."""
    logits = F.interpolate(logits, scale_factor=stride, mode="bilinear", align_corners=False)
    return logits[..., : size[0], : size[1]]
