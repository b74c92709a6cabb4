"""A CLIP image tower (customized or not) as a multi-scale detection/segmentation backbone.

`ClipBackbone` is a plain `nn.Module`: images [B, 3, H, W] -> {name: feature map}. Engines
(Detectron2, torchvision) wrap it; they never look inside.

- ViT towers: patch tokens at stride `patch`, turned into a simple feature pyramid (ViTDet:
  deconvolutions up, max-pooling down), position embeddings resampled to the input's grid,
  inputs padded to `size_divisibility`.
- ModifiedResNet towers: res2..res5 from the four stages, then an FPN (torchvision's).

Both can also emit `"clip"`: the frozen-CLIP-space embedding of every location (ViT: `ln_post`
and `proj` applied to each patch token; ResNet: the value and output projections of the
attention pool, MaskCLIP style). Region scores from it are what score ensembling combines with
the detector's own scores.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from react_core.registry import BACKBONES

FREEZE_POLICIES = ("frozen", "gated", "full")
CLIP_MAP = "clip"


def load_dense_clip(model, adapter: Optional[str] = None):
    """Load the CLIP for a dense model: `model` is a `ModelConfig`; `adapter` a `react customize` file.

    With an adapter, `model.weights` (if set) is where the adapter's base weights live now.
    Returns the `ClipBundle`.
    """
    if not adapter:
        return model.load()
    from react_core.modeling import load_clip

    return load_clip(
        model.architecture or model.name, model.pretrained, adapter, quick_gelu=model.quick_gelu, base_weights=model.weights
    )


class FeatureSpec(NamedTuple):
    """Channels and stride of one output map (Detectron2's `ShapeSpec`, engine-free)."""

    channels: int
    stride: int


def _is_vit(visual: nn.Module) -> bool:
    return hasattr(visual, "conv1") and hasattr(visual, "transformer") and hasattr(visual, "positional_embedding")


def _is_modified_resnet(visual: nn.Module) -> bool:
    return all(hasattr(visual, name) for name in ("layer1", "layer4", "attnpool"))


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d by a FrozenBatchNorm2d with the same statistics.

    Detection batches are a few images per GPU: batch statistics would be noise.
    """
    from torchvision.ops import FrozenBatchNorm2d

    if isinstance(module, nn.BatchNorm2d):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        frozen.weight.copy_(module.weight.detach())
        frozen.bias.copy_(module.bias.detach())
        frozen.running_mean.copy_(module.running_mean)
        frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        setattr(module, name, freeze_batchnorm(child))
    return module


def _set_trunk_trainable(trunk: nn.Module, freeze: str) -> None:
    if freeze not in FREEZE_POLICIES:
        raise ValueError(f"freeze must be one of {', '.join(FREEZE_POLICIES)}, got {freeze!r}")
    from react_core.modeling.gated import is_trainable

    names = [f"visual.{name}" for name, _ in trunk.named_parameters()]
    if freeze == "gated" and not any(is_trainable(n, "gated-image") for n in names):
        raise ValueError("freeze='gated' needs gated blocks in the image tower (load a customized model or an adapter file)")
    for name, param in zip(names, trunk.parameters()):
        param.requires_grad = freeze == "full" or (freeze == "gated" and is_trainable(name, "gated-image"))


def _stride_name(stride: int) -> str:
    return f"p{int(round(math.log2(stride)))}"


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's pyramid from one stride-`stride` map: each scale factor gives one output level."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, scale_factors: Sequence[float], top_block: bool):
        from timm.layers import LayerNorm2d

        super().__init__()
        self.stages = nn.ModuleList()
        self.names = []
        self.strides = []
        for scale in scale_factors:
            dim = in_channels
            if scale == 4.0:
                layers = [
                    nn.ConvTranspose2d(dim, dim // 2, 2, stride=2),
                    LayerNorm2d(dim // 2),
                    nn.GELU(),
                    nn.ConvTranspose2d(dim // 2, dim // 4, 2, stride=2),
                ]
                dim //= 4
            elif scale == 2.0:
                layers = [nn.ConvTranspose2d(dim, dim // 2, 2, stride=2)]
                dim //= 2
            elif scale == 1.0:
                layers = []
            elif scale == 0.5:
                layers = [nn.MaxPool2d(2, 2)]
            else:
                raise ValueError(f"scale factor {scale} is not supported (choose from 4, 2, 1, 0.5)")
            layers += [
                nn.Conv2d(dim, out_channels, 1, bias=False),
                LayerNorm2d(out_channels),
                nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
                LayerNorm2d(out_channels),
            ]
            self.stages.append(nn.Sequential(*layers))
            level_stride = int(stride / scale)
            self.strides.append(level_stride)
            self.names.append(_stride_name(level_stride))
        self.top_block = top_block
        if top_block:
            self.strides.append(self.strides[-1] * 2)
            self.names.append(_stride_name(self.strides[-1]))

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        maps = [stage(x) for stage in self.stages]
        if self.top_block:
            maps.append(F.max_pool2d(maps[-1], kernel_size=1, stride=2))
        return OrderedDict(zip(self.names, maps))


def attnpool_value_map(pool: nn.Module, res5: torch.Tensor) -> torch.Tensor:
    """MaskCLIP for ModifiedResNet: the attention pool's value and output projections at every
    location of res5 [B, C, h, w] -> [B, embed_dim, h, w], in CLIP's joint space."""
    return pool.c_proj(pool.v_proj(res5.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)


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


class ClipBackbone(nn.Module):
    """open_clip image tower -> multi-scale feature maps, `output_shape()` says channels/stride.

    visual: `clip_model.visual` (VisionTransformer or ModifiedResNet), already loaded with
        base, official or customized weights.
    freeze: `frozen` (tower fixed, only the pyramid trains), `gated` (only gated REACT blocks
        train) or `full`.
    scale_factors: ViT pyramid levels relative to the patch stride (ViTDet: 4, 2, 1, 0.5).
    top_block: add a max-pooled level above the coarsest one (for the RPN).
    emit_clip_map: also return `"clip"`, the per-location CLIP embedding (for score ensembling).
    feature_block: ViT only: the transformer block whose output tokens feed the pyramid (-1: the
        last). Gated REACT blocks run before their host block, so `-2` with one gated block
        before the last layer gives the pyramid the base tower's features while the whole
        customized tower still classifies regions (`ensemble.regions: crops`).
    """

    def __init__(
        self,
        visual: nn.Module,
        freeze: str = "frozen",
        out_channels: int = 256,
        scale_factors: Sequence[float] = (4.0, 2.0, 1.0, 0.5),
        top_block: bool = True,
        emit_clip_map: bool = False,
        feature_block: int = -1,
    ):
        super().__init__()
        self.trunk = visual
        self.freeze = freeze
        self.emit_clip_map = emit_clip_map
        _set_trunk_trainable(visual, freeze)
        if _is_vit(visual):
            self.kind = "vit"
            patch = visual.conv1.kernel_size
            if patch[0] != patch[1]:
                raise ValueError(f"non-square patches {patch} are not supported")
            self.patch_size = patch[0]
            blocks = len(visual.transformer.resblocks)
            if not -blocks <= feature_block < blocks:
                raise ValueError(f"feature_block={feature_block} is not a block of a {blocks}-block tower")
            self.feature_blocks = feature_block % blocks + 1
            width = visual.conv1.out_channels
            self.embed_dim = visual.proj.shape[1] if visual.proj is not None else width
            self.pyramid = SimpleFeaturePyramid(width, out_channels, self.patch_size, scale_factors, top_block)
            names, strides = self.pyramid.names, self.pyramid.strides
            self._size_divisibility = int(self.patch_size / min(1.0, min(scale_factors)))
            self._clip_stride = self.patch_size
        elif _is_modified_resnet(visual):
            if feature_block != -1:
                raise ValueError("feature_block applies to ViT towers only")
            from torchvision.ops import FeaturePyramidNetwork
            from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

            self.kind = "resnet"
            freeze_batchnorm(visual)
            stage_channels = [stage[-1].conv3.out_channels for stage in (visual.layer1, visual.layer2, visual.layer3, visual.layer4)]
            self.embed_dim = visual.attnpool.c_proj.out_features
            self.pyramid = FeaturePyramidNetwork(stage_channels, out_channels, LastLevelMaxPool() if top_block else None)
            strides = [4, 8, 16, 32] + ([64] if top_block else [])
            names = [_stride_name(s) for s in strides]
            self._size_divisibility = 32
            self._clip_stride = 32
        else:
            raise ValueError(f"unsupported CLIP image tower {type(visual).__name__}: expected a ViT or ModifiedResNet")
        self._shapes = OrderedDict((n, FeatureSpec(out_channels, s)) for n, s in zip(names, strides))
        if emit_clip_map:
            self._shapes[CLIP_MAP] = FeatureSpec(self.embed_dim, self._clip_stride)

    @property
    def size_divisibility(self) -> int:
        """Input sides must be multiples of this; `forward` pads to it if they are not."""
        return self._size_divisibility

    def output_shape(self) -> "OrderedDict[str, FeatureSpec]":
        return OrderedDict(self._shapes)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze == "frozen":
            self.trunk.eval()
        return self

    def forward(self, images: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        images = self._pad(images)
        if self.kind == "vit":
            tokens = self._vit_tokens(images)
            features = self.pyramid(tokens)
            if self.emit_clip_map:
                features[CLIP_MAP] = self.vit_clip_map(tokens)
            return features
        stages = self._resnet_stages(images)
        features = self.pyramid(OrderedDict(zip(("res2", "res3", "res4", "res5"), stages)))
        features = OrderedDict(zip(list(self._shapes)[: len(features)], features.values()))
        if self.emit_clip_map:
            features[CLIP_MAP] = self.resnet_clip_map(stages[-1])
        return features

    def _pad(self, images: torch.Tensor) -> torch.Tensor:
        div = self._size_divisibility
        pad_h = (-images.shape[-2]) % div
        pad_w = (-images.shape[-1]) % div
        if pad_h or pad_w:
            images = F.pad(images, (0, pad_w, 0, pad_h))
        return images

    def _vit_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Patch tokens of block `feature_block` as a map [B, width, H/patch, W/patch]."""
        x, grid = vit_input_tokens(self.trunk, images)
        x = run_vit_blocks(self.trunk, x, self.trunk.transformer.resblocks[: self.feature_blocks])
        return x[:, 1:].transpose(1, 2).reshape(x.shape[0], -1, *grid)

    def vit_clip_map(self, tokens: torch.Tensor) -> torch.Tensor:
        """Each patch token through `ln_post` and `proj`: [B, embed_dim, h, w]."""
        visual = self.trunk
        x = visual.ln_post(tokens.flatten(2).transpose(1, 2))
        if visual.proj is not None:
            x = x @ visual.proj
        return x.transpose(1, 2).reshape(x.shape[0], -1, *tokens.shape[-2:])

    def _resnet_stages(self, images: torch.Tensor) -> list[torch.Tensor]:
        visual = self.trunk
        x = visual.stem(images.to(visual.conv1.weight.dtype))
        stages = []
        for stage in (visual.layer1, visual.layer2, visual.layer3, visual.layer4):
            x = stage(x)
            stages.append(x)
        return stages

    def resnet_clip_map(self, res5: torch.Tensor) -> torch.Tensor:
        """The attention pool's value and output projections at every location (MaskCLIP)."""
        return attnpool_value_map(self.trunk.attnpool, res5)


def run_vit_blocks(visual: nn.Module, x: torch.Tensor, blocks) -> torch.Tensor:
    """Batch-first tokens [B, L, width] through `blocks` (with their gated blocks), batch-first out."""
    batch_first = getattr(visual.transformer, "batch_first", True)
    if not batch_first:
        x = x.transpose(0, 1)
    for block in blocks:
        x = block(x)
    return x if batch_first else x.transpose(0, 1)


@BACKBONES.register_module(name="ClipBackbone")
def build_clip_backbone(
    visual: Optional[nn.Module] = None,
    freeze: str = "frozen",
    out_channels: int = 256,
    scale_factors: Optional[list] = None,
    top_block: bool = True,
    emit_clip_map: bool = False,
    feature_block: int = -1,
) -> ClipBackbone:
    """Config entry point: `backbone: {type: ClipBackbone, freeze: gated, out_channels: 256}`.

    `visual` is not a config key: the detector builder passes the tower of the CLIP it loaded
    (`load_dense_clip`), so the text tower used for class embeddings is the same model's.
    """
    if visual is None:
        raise ValueError("ClipBackbone needs the CLIP image tower: build it through the detector builder")
    return ClipBackbone(
        visual,
        freeze=freeze,
        out_channels=out_channels,
        scale_factors=tuple(scale_factors or (4.0, 2.0, 1.0, 0.5)),
        top_block=top_block,
        emit_clip_map=emit_clip_map,
        feature_block=feature_block,
    )
