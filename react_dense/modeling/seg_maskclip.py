"""MaskCLIP: training-free dense zero-shot segmentation straight from a (customized) CLIP tower.

A CLIP image tower is trained to put its *pooled* token in the text space; its last-layer patch
tokens are not (their class-text similarities are close to chance). MaskCLIP (Zhou et al.,
ECCV 2022) reads each location through the *value* path of the last attention layer instead:
value projection, output projection, then the tower's own output head (ViT: `ln_post` and `proj`;
ModifiedResNet: the attention pool's `v_proj` and `c_proj`). Following ClearCLIP, the last
block's residual and MLP are left out by default. Gated REACT blocks run as in the tower, so
the baseline measures what customization alone buys.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from react_core.modeling.gated import GATED_ATTR
from react_dense.modeling.backbone import _is_modified_resnet, _is_vit, attnpool_value_map, run_vit_blocks, vit_input_tokens


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
        if _is_vit(visual):
            self.kind = "vit"
            self.stride = visual.conv1.kernel_size[0]
            last = visual.transformer.resblocks[-1]
            if not isinstance(last.attn, nn.MultiheadAttention):
                raise ValueError(f"MaskCLIP needs nn.MultiheadAttention in the last block, found {type(last.attn).__name__}")
        elif _is_modified_resnet(visual):
            if raw_tokens:
                raise ValueError("raw_tokens applies to ViT towers only")
            self.kind = "resnet"
            self.stride = 32
        else:
            raise ValueError(f"unsupported CLIP image tower {type(visual).__name__}: expected a ViT or ModifiedResNet")
        for param in visual.parameters():
            param.requires_grad_(False)

    @property
    def embed_dim(self) -> int:
        if self.kind == "vit":
            return self.visual.proj.shape[1] if self.visual.proj is not None else self.visual.conv1.out_channels
        return self.visual.attnpool.c_proj.out_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pad_h, pad_w = (-images.shape[-2]) % self.stride, (-images.shape[-1]) % self.stride
        images = F.pad(images, (0, pad_w, 0, pad_h))
        if self.kind == "resnet":
            visual = self.visual
            x = visual.stem(images.to(visual.conv1.weight.dtype))
            for stage in (visual.layer1, visual.layer2, visual.layer3, visual.layer4):
                x = stage(x)
            return attnpool_value_map(visual.attnpool, x)
        return self._vit(images)

    def _vit(self, images: torch.Tensor) -> torch.Tensor:
        visual = self.visual
        transformer = visual.transformer
        x, grid = vit_input_tokens(visual, images)
        if self.raw_tokens:
            x = run_vit_blocks(visual, x, transformer.resblocks)
        else:
            *blocks, last = transformer.resblocks
            x = self._value_path(last, run_vit_blocks(visual, x, blocks))
        x = visual.ln_post(x[:, 1:])
        if visual.proj is not None:
            x = x @ visual.proj
        return x.transpose(1, 2).reshape(x.shape[0], -1, *grid)

    def _value_path(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        gated = getattr(block, GATED_ATTR, None)
        if gated is not None:
            x = run_vit_blocks(self.visual, x, [gated])
        attn = block.attn
        width = attn.embed_dim
        bias = attn.in_proj_bias[2 * width :] if attn.in_proj_bias is not None else None
        value = F.linear(block.ln_1(x), attn.in_proj_weight[2 * width :], bias)
        out = block.ls_1(attn.out_proj(value)) if hasattr(block, "ls_1") else attn.out_proj(value)
        if not self.residual:
            return out
        x = x + out
        return x + block.ls_2(block.mlp(block.ln_2(x))) if hasattr(block, "ls_2") else x + block.mlp(block.ln_2(x))


class MaskClipSegmenter(nn.Module):
    """Dense zero-shot segmentation: cosine similarity of MaskCLIP features with class text
    embeddings, upsampled to the input. `logits(images, text) -> [B, C, H, W]`."""

    def __init__(self, visual: nn.Module, residual: bool = False, raw_tokens: bool = False, temperature: float = 0.01):
        super().__init__()
        self.dense = MaskClipDense(visual, residual=residual, raw_tokens=raw_tokens)
        self.temperature = temperature

    def forward(self, images: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        features = F.normalize(self.dense(images), dim=1)
        logits = torch.einsum("bdhw,cd->bchw", features, F.normalize(text_embeddings, dim=-1)) / self.temperature
        logits = F.interpolate(logits, scale_factor=self.dense.stride, mode="bilinear", align_corners=False)
        return logits[..., : images.shape[-2], : images.shape[-1]]
