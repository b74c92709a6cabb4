"""Public inspection of an open_clip image tower: which kind it is, and the pieces of its forward
pass that gated blocks, the dense readout, the detection backbone and MaskCLIP reuse.

One `tower_kind` answers "ViT or ModifiedResNet?" for all of them, so they cannot disagree about
which towers they support.
"""
from __future__ import annotations

import math
from typing import Literal, Optional, Sequence

import torch
from torch import nn

RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")
TowerKind = Literal["vit", "resnet"]


def tower_kind(visual: nn.Module) -> Optional[TowerKind]:
    """`"vit"` for an open_clip VisionTransformer, `"resnet"` for a ModifiedResNet, None otherwise."""
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if isinstance(blocks, nn.ModuleList) and hasattr(visual, "conv1"):
        return "vit"
    if all(isinstance(getattr(visual, stage, None), nn.Sequential) for stage in RESNET_STAGES) and hasattr(visual, "attnpool"):
        return "resnet"
    return None


def vit_input_tokens(visual: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """Class + patch tokens entering the ViT's first block [B, 1 + h*w, width], and the grid (h, w).

    Position embeddings are resampled to the input's grid, so any input size works.
    """
    from timm.layers import resample_abs_pos_embed

    x = visual.conv1(images)
    grid = tuple(x.shape[-2:])
    x = x.flatten(2).transpose(1, 2)
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1)
    pos = visual.positional_embedding
    trained_grid = int(round(math.sqrt(pos.shape[0] - 1)))
    if grid != (trained_grid, trained_grid):
        pos = resample_abs_pos_embed(pos[None], list(grid), [trained_grid, trained_grid], num_prefix_tokens=1)[0]
    return visual.ln_pre(x + pos.to(x.dtype)), grid


def run_vit_blocks(visual: nn.Module, x: torch.Tensor, blocks: Sequence[nn.Module]) -> torch.Tensor:
    """Batch-first tokens [B, L, width] through `blocks` (with their gated blocks), batch-first out."""
    batch_first = getattr(visual.transformer, "batch_first", True)
    if not batch_first:
        x = x.transpose(0, 1)
    for block in blocks:
        x = block(x)
    return x if batch_first else x.transpose(0, 1)


def project_tokens(visual: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The ViT's output head on every token: `ln_post`, then `proj`."""
    x = visual.ln_post(x)
    return x @ visual.proj if visual.proj is not None else x


def tokens_to_map(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Patch tokens [B, 1 + h*w, D] (class token first) -> a map [B, D, h, w]."""
    return x[:, 1:].transpose(1, 2).reshape(x.shape[0], -1, *grid)


def resnet_stages(visual: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """res2..res5 of a ModifiedResNet (gated blocks run through their hooks)."""
    x = visual.stem(images.to(visual.conv1.weight.dtype))
    stages = []
    for name in RESNET_STAGES:
        x = getattr(visual, name)(x)
        stages.append(x)
    return stages


def attnpool_value_map(pool: nn.Module, res5: torch.Tensor) -> torch.Tensor:
    """The attention pool's value and output projections at every location of res5 [B, C, h, w]
    -> [B, embed_dim, h, w]."""
    return pool.c_proj(pool.v_proj(res5.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
