"""MaskCLIP: training-free dense zero-shot segmentation straight from a (customized) CLIP tower.

Each location is read through the tower's one dense readout (`react_core.modeling.readout`: the
last attention layer's value path, MaskCLIP / ClearCLIP), the same features the detector's CLIP
map and the dense customization objective use. Gated REACT blocks run as in the tower, so the
baseline measures what customization alone buys.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from react_core.modeling.readout import check_tower, dense_readout, pad_to_stride, readout_dim, readout_stride
from react_core.modeling.tower import project_tokens, run_vit_blocks, tokens_to_map, vit_input_tokens


class MaskClipDense(nn.Module):
    """images [B, 3, H, W] (CLIP-normalised) -> per-location CLIP embeddings [B, D, H/s, W/s].

    residual: keep the last block's residual connection and MLP (MaskCLIP's original choice).
    raw_tokens: the control the method improves on — last-layer patch tokens through `ln_post`
        and `proj`.
    """

    def __init__(self, visual: nn.Module, residual: bool = False, raw_tokens: bool = False):
        super().__init__()
        self.visual = visual
        self.residual = residual
        self.raw_tokens = raw_tokens
        self.kind = check_tower(visual)
        if self.kind == "resnet" and (raw_tokens or residual):
            raise ValueError("raw_tokens and residual apply to ViT towers only")
        self.stride = readout_stride(visual)
        self.embed_dim = readout_dim(visual)
        for param in visual.parameters():
            param.requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not self.raw_tokens:
            return dense_readout(self.visual, images, self.residual)
        x, grid = vit_input_tokens(self.visual, pad_to_stride(images, self.stride))
        x = run_vit_blocks(self.visual, x, self.visual.transformer.resblocks)
        return tokens_to_map(project_tokens(self.visual, x), grid)


def readout_logits(readout: torch.Tensor, text_embeddings: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-location class logits of a dense readout [B, D, h, w]: its cosine to each class's text
    embedding [C, D] / `temperature` -> [B, C, h, w] (MaskCLIP's scores)."""
    return torch.einsum("bdhw,cd->bchw", F.normalize(readout, dim=1), F.normalize(text_embeddings, dim=-1)) / temperature


class MaskClipSegmenter(nn.Module):
    """Dense zero-shot segmentation: cosine similarity of MaskCLIP features with class text
    embeddings, upsampled to the input. `logits(images, text) -> [B, C, H, W]`."""

    def __init__(self, visual: nn.Module, residual: bool = False, raw_tokens: bool = False, temperature: float = 0.01):
        super().__init__()
        self.dense = MaskClipDense(visual, residual=residual, raw_tokens=raw_tokens)
        self.temperature = temperature

    def forward(self, images: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        logits = readout_logits(self.dense(images), text_embeddings, self.temperature)
        logits = F.interpolate(logits, scale_factor=self.dense.stride, mode="bilinear", align_corners=False)
        return logits[..., : images.shape[-2], : images.shape[-1]]
