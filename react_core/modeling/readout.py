"""The one dense readout of a (customized) CLIP image tower: a CLIP-space embedding per location.

A CLIP tower is trained to put its *pooled* token in the text space; its last-layer patch tokens
are not (their class-text similarities are close to chance). MaskCLIP (Zhou et al., ECCV 2022)
and CLIPSelf (Wu et al., ICLR 2024) read each location through the *value* path of the last
attention layer instead, then through the tower's own output head:

- ViT: the tokens entering the last residual block (its gated REACT block included) -> `ln_1` ->
  the attention's value projection -> `out_proj` (-> `ls_1`), then `ln_post` and `proj`. Following
  ClearCLIP, the last block's residual and MLP are left out unless `residual=True` (MaskCLIP's
  original choice).
- ModifiedResNet: the attention pool's value and output projections (`v_proj`, `c_proj`) at every
  location of res5.

`dense_readout(visual, images)` is what the dense customization objective aligns and what the
detector's CLIP map, region and mask pooling (`pool_boxes`) and the training-free MaskCLIP
segmenter read. With every gate at 0 it equals the base tower's readout bit for bit.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from react_core.modeling.gated import GATED_ATTR
from react_core.modeling.tower import (
    attnpool_value_map,
    project_tokens,
    resnet_stages,
    run_vit_blocks,
    tokens_to_map,
    tower_kind,
    vit_input_tokens,
)


def check_tower(visual: nn.Module) -> str:
    """`"vit"` or `"resnet"` for a tower the readout supports; a clear error for any other."""
    kind = tower_kind(visual)
    if kind is None:
        raise ValueError(f"unsupported CLIP image tower {type(visual).__name__}: expected a ViT or ModifiedResNet")
    if kind == "vit":
        if visual.conv1.kernel_size[0] != visual.conv1.kernel_size[1]:
            raise ValueError(f"non-square patches {visual.conv1.kernel_size} are not supported")
        last = visual.transformer.resblocks[-1]
        if not isinstance(getattr(last, "attn", None), nn.MultiheadAttention):
            raise ValueError(f"the dense readout needs nn.MultiheadAttention in the last block, found {type(last.attn).__name__}")
    return kind


def readout_stride(visual: nn.Module) -> int:
    """Pixels per readout location: the patch size (ViT) or 32 (ModifiedResNet)."""
    return visual.conv1.kernel_size[0] if tower_kind(visual) == "vit" else 32


def readout_dim(visual: nn.Module) -> int:
    """Channels of the readout: CLIP's joint embedding dimension."""
    if tower_kind(visual) == "vit":
        return visual.proj.shape[1] if visual.proj is not None else visual.conv1.out_channels
    return visual.attnpool.c_proj.out_features


def vit_value_path(visual: nn.Module, x: torch.Tensor, residual: bool = False) -> torch.Tensor:
    """Tokens entering the last block [B, L, width] -> their value-path embeddings [B, L, embed_dim]."""
    block = visual.transformer.resblocks[-1]
    gated = getattr(block, GATED_ATTR, None)
    if gated is not None:
        x = run_vit_blocks(visual, x, [gated])
    attn = block.attn
    width = attn.embed_dim
    bias = attn.in_proj_bias[2 * width :] if attn.in_proj_bias is not None else None
    value = F.linear(block.ln_1(x), attn.in_proj_weight[2 * width :], bias)
    out = block.ls_1(attn.out_proj(value))
    if residual:
        x = x + out
        out = x + block.ls_2(block.mlp(block.ln_2(x)))
    return project_tokens(visual, out)


def pad_to_stride(images: torch.Tensor, stride: int) -> torch.Tensor:
    """Zero-pad bottom and right so both sides are multiples of `stride`."""
    pad_h, pad_w = (-images.shape[-2]) % stride, (-images.shape[-1]) % stride
    return F.pad(images, (0, pad_w, 0, pad_h)) if pad_h or pad_w else images


def dense_readout(visual: nn.Module, images: torch.Tensor, residual: bool = False) -> torch.Tensor:
    """images [B, 3, H, W] (CLIP-normalised) -> CLIP-space embeddings [B, embed_dim, ceil(H/s), ceil(W/s)],
    s = `readout_stride(visual)`; inputs are zero-padded to a multiple of s. Differentiable: the
    dense objective trains the gated blocks through it."""
    kind = check_tower(visual)
    images = pad_to_stride(images, readout_stride(visual))
    if kind == "resnet":
        if residual:
            raise ValueError("residual applies to ViT towers only")
        return attnpool_value_map(visual.attnpool, resnet_stages(visual, images)[-1])
    x, grid = vit_input_tokens(visual, images)
    x = run_vit_blocks(visual, x, visual.transformer.resblocks[:-1])
    return tokens_to_map(vit_value_path(visual, x, residual), grid)


SAMPLES_PER_BIN = 2  # roi_align's sampling_ratio: 2 x 2 bilinear samples in each of the output bins


def pool_boxes(
    feature_map: torch.Tensor, boxes: list[torch.Tensor], stride: float, output_size: int = 7, masks: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Mean of `feature_map` [B, D, h, w] over each box (per image, [N_i, 4] x1y1x2y2 in input pixels;
    one location = `stride` pixels) -> [sum N_i, D]: the mean of `torchvision.ops.roi_align`'s
    output (aligned, `output_size` bins of `SAMPLES_PER_BIN`^2 samples), computed as `box_mean` does.

    masks: [sum N_i, S, S] soft masks in box coordinates (Mask R-CNN's output): a mask-weighted mean
        over roi_align's S x S sampling of each box instead (mask pooling).
    """
    if masks is None:
        return box_mean(feature_map, boxes, 1.0 / stride, output_size * SAMPLES_PER_BIN)
    from torchvision.ops import roi_align

    size = masks.shape[-1]
    boxes = [b.to(feature_map.dtype) for b in boxes]
    regions = roi_align(feature_map, boxes, output_size=(size, size), spatial_scale=1.0 / stride,
                        sampling_ratio=SAMPLES_PER_BIN, aligned=True)
    weights = masks.to(regions.dtype).flatten(1)
    return (regions.flatten(2) * weights[:, None]).sum(-1) / weights.sum(-1, keepdim=True).clamp(min=1e-6)


def _sample_weights(start: torch.Tensor, length: torch.Tensor, samples: int, size: int) -> torch.Tensor:
    """Mean bilinear weights [R, size] of `samples` evenly spaced points along each box side
    (`start`, `length` [R], in map cells, half a cell already subtracted), with roi_align's rules:
    a point more than one cell outside the map weighs nothing, one within it reads the edge cell."""
    offsets = (torch.arange(samples, dtype=start.dtype, device=start.device) + 0.5) / samples
    points = start[:, None] + length[:, None] * offsets
    inside = ((points >= -1.0) & (points <= size)).to(points.dtype)
    points = points.clamp(min=0)
    low = points.floor().clamp(max=size - 1)
    points = torch.where(low >= size - 1, low, points)
    high = (low + 1).clamp(max=size - 1)
    fraction = points - low
    weights = points.new_zeros(len(points), size)
    weights.scatter_add_(1, low.long(), (1 - fraction) * inside)
    weights.scatter_add_(1, high.long(), fraction * inside)
    return weights / samples


def box_mean(feature_map: torch.Tensor, boxes: list[torch.Tensor], spatial_scale: float, samples: int) -> torch.Tensor:
    """Mean over a `samples` x `samples` grid of bilinear samples in each box, exactly what the mean
    of an aligned `roi_align` of n x n bins with `samples / n` samples per side of a bin gives.

    Bilinear weights are separable and the grid is a product of its rows and columns, so the mean
    is `rows^T map cols` with each side's weights averaged first: two matrix products per image
    instead of a gather per sample (the detector pools its readout over a thousand proposals per
    image, where roi_align was half of an evaluation's time).
    """
    height, width = feature_map.shape[-2:]
    pooled = []
    for image, image_boxes in zip(feature_map, boxes):
        if not len(image_boxes):
            pooled.append(feature_map.new_zeros(0, feature_map.shape[1]))
            continue
        corners = image_boxes.to(feature_map.dtype) * spatial_scale - 0.5
        rows = _sample_weights(corners[:, 1], corners[:, 3] - corners[:, 1], samples, height)
        cols = _sample_weights(corners[:, 0], corners[:, 2] - corners[:, 0], samples, width)
        along_rows = (image.flatten(0, 1) @ cols.t()).view(image.shape[0], height, -1)  # [D, h, R]
        pooled.append((along_rows * rows.t()).sum(1).t())
    return torch.cat(pooled)
