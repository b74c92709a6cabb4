"""A CLIP image tower (customized or not) as a multi-scale detection/segmentation backbone.

`ClipTower` reads the tower (what trains, which features, the CLIP map); `ClipBackbone` puts a
pyramid on it: a plain `nn.Module`, images [B, 3, H, W] -> {name: feature map}, that the
torchvision and plain engines wrap without looking inside. The Detectron2 face
(`react_dense.detectron2`) puts Detectron2's own pyramids on `ClipTower`.

The pyramid reads a block's patch tokens (`features: tokens`, the default: they localise and
separate the seen classes better; docs/results.md) or the tower's one dense readout
(`features: readout`; `react_core.modeling.readout`: ViT, the last block's value path through
`ln_post` and `proj`; ResNet, the attention pool's value and output projections), the CLIP-space
embedding per location that the dense customization objective trains, the training-free
segmenter reads and score ensembling pools.

- ViT towers: the readout (or patch tokens) at stride `patch`, turned into a simple feature
  pyramid (ViTDet: deconvolutions up, max-pooling down), position embeddings resampled to the
  input's grid, inputs padded to `size_divisibility`.
- ModifiedResNet towers: res2..res4 from the stages and the readout at stride 32 (or res5),
  then an FPN (torchvision's).

Both can also emit `"clip"`, the readout itself, for score ensembling.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from react_core.config import ConfigError
from react_core.modeling.readout import check_tower, dense_readout, pad_to_stride, readout_dim, readout_stride, vit_value_path
from react_core.modeling.tower import (
    RESNET_STAGES,
    attnpool_value_map,
    resnet_stages,
    run_vit_blocks,
    tokens_to_map,
    vit_input_tokens,
)
from react_core.registry import BACKBONES

FREEZE_POLICIES = ("frozen", "gated", "full")
FEATURE_SOURCES = ("readout", "tokens")
CLIP_MAP = "clip"


class FeatureSpec(NamedTuple):
    """Channels and stride of one output map (Detectron2's `ShapeSpec`, engine-free)."""

    channels: int
    stride: int


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


class ClipTower(nn.Module):
    """A CLIP image tower read for dense heads, engine-free: what trains (`freeze`), which features a
    pyramid reads (`features`, `feature_block`), and the per-location CLIP map (`emit_clip_map`).

    `ClipBackbone` puts a pyramid on it for the torchvision and plain engines; the Detectron2 face
    (`react_dense.detectron2`) puts Detectron2's own pyramids on it. One reading of the tower for all.

    visual: `clip_model.visual` (VisionTransformer or ModifiedResNet), already loaded with base,
        official or customized weights.
    freeze: `frozen` (tower fixed), `gated` (only gated REACT blocks train) or `full`.
    features: `tokens`, the patch tokens of block `feature_block` (res5 for a ResNet), or `readout`,
        the tower's one dense readout (the top stage of a ResNet).
    feature_block: ViT with `features: tokens` only: the transformer block whose output tokens are
        read (-1: the last). Gated REACT blocks run before their host block, so `-2` with one gated
        block before the last layer reads the base tower's features.
    emit_clip_map: also compute the readout, the per-location CLIP embedding (score ensembling).
    """

    def __init__(self, visual: nn.Module, freeze: str = "frozen", features: str = "tokens", feature_block: int = -1,
                 emit_clip_map: bool = False):
        super().__init__()
        if features not in FEATURE_SOURCES:
            raise ValueError(f"features must be one of {', '.join(FEATURE_SOURCES)}, got {features!r}")
        if features == "readout" and feature_block != -1:
            raise ValueError("feature_block applies to features='tokens' only")
        self.trunk = visual
        self.freeze = freeze
        self.emit_clip_map = emit_clip_map
        self.reads_readout = features == "readout"
        _set_trunk_trainable(visual, freeze)
        self.kind = check_tower(visual)
        self.embed_dim = readout_dim(visual)
        self.clip_stride = readout_stride(visual)
        if self.kind == "vit":
            self.patch_size = self.clip_stride
            blocks = len(visual.transformer.resblocks)
            if not -blocks <= feature_block < blocks:
                raise ValueError(f"feature_block={feature_block} is not a block of a {blocks}-block tower")
            self.feature_blocks = feature_block % blocks + 1
        else:
            if feature_block != -1:
                raise ValueError("feature_block applies to ViT towers only")
            freeze_batchnorm(visual)

    @property
    def feature_channels(self) -> List[int]:
        """Channels of what `features` gives: one map for a ViT, res2..res5 for a ResNet."""
        if self.kind == "vit":
            return [self.embed_dim if self.reads_readout else self.trunk.conv1.out_channels]
        channels = [getattr(self.trunk, stage)[-1].conv3.out_channels for stage in RESNET_STAGES]
        return channels[:-1] + [self.embed_dim] if self.reads_readout else channels

    def reads_gated_blocks(self, layers: Sequence[int]) -> bool:
        """Whether the features read depend on gated blocks in these host blocks (numbered as
        `react_core.modeling.gated.gated_layers`). If not, heads trained on this tower see the
        base tower's features, and serve every customized tower of the same base."""
        if self.reads_readout or self.kind != "vit":
            return bool(layers)
        return any(layer < self.feature_blocks for layer in layers)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze == "frozen":
            self.trunk.eval()
        return self

    def vit_features(self, images: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(the map read: the dense readout [B, embed_dim, h, w] or the patch tokens of block
        `feature_block` [B, width, h, w]; the readout or None without `emit_clip_map`), from one
        pass through the blocks."""
        visual = self.trunk
        if self.reads_readout:
            readout = dense_readout(visual, images)
            return readout, readout if self.emit_clip_map else None
        blocks = visual.transformer.resblocks
        last = len(blocks) - 1
        x, grid = vit_input_tokens(visual, images)
        if not self.emit_clip_map:
            return tokens_to_map(run_vit_blocks(visual, x, blocks[: self.feature_blocks]), grid), None
        below = min(self.feature_blocks, last)
        x = run_vit_blocks(visual, x, blocks[:below])
        entering_last = run_vit_blocks(visual, x, blocks[below:last])
        tokens = x if self.feature_blocks == below else run_vit_blocks(visual, entering_last, blocks[last:])
        return tokens_to_map(tokens, grid), tokens_to_map(vit_value_path(visual, entering_last), grid)

    def resnet_features(self, images: torch.Tensor) -> tuple[List[torch.Tensor], Optional[torch.Tensor]]:
        """(res2, res3, res4 and res5, or the readout in res5's place; the readout or None without
        `emit_clip_map`)."""
        stages = resnet_stages(self.trunk, images)
        readout = attnpool_value_map(self.trunk.attnpool, stages[-1]) if self.reads_readout or self.emit_clip_map else None
        top = readout if self.reads_readout else stages[-1]
        return [*stages[:-1], top], readout if self.emit_clip_map else None


@BACKBONES.register_module()
class ClipBackbone(ClipTower):
    """open_clip image tower -> multi-scale feature maps, `output_shape()` says channels/stride.

    visual: `clip_model.visual` (VisionTransformer or ModifiedResNet), already loaded with
        base, official or customized weights. Not a config key: the task's builder passes the
        tower of the CLIP it loaded, so the text tower of the class embeddings is the same model's.
    freeze, features, feature_block, emit_clip_map: as `ClipTower` reads the tower.
    scale_factors: ViT pyramid levels relative to the patch stride (ViTDet: 4, 2, 1, 0.5).
    top_block: add a max-pooled level above the coarsest one (for the RPN).

    Also emits `"clip"`, the readout itself, with `emit_clip_map`.
    """

    def __init__(
        self,
        visual: nn.Module,
        freeze: str = "frozen",
        out_channels: int = 256,
        scale_factors: Union[List[float], Tuple[float, ...]] = (4.0, 2.0, 1.0, 0.5),
        top_block: bool = True,
        emit_clip_map: bool = False,
        features: str = "tokens",
        feature_block: int = -1,
    ):
        super().__init__(visual, freeze, features, feature_block, emit_clip_map)
        if self.kind == "vit":
            self.pyramid = SimpleFeaturePyramid(self.feature_channels[0], out_channels, self.patch_size, scale_factors, top_block)
            names, strides = self.pyramid.names, self.pyramid.strides
            self._size_divisibility = int(self.patch_size / min(1.0, min(scale_factors)))
        else:
            from torchvision.ops import FeaturePyramidNetwork
            from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

            self.pyramid = FeaturePyramidNetwork(self.feature_channels, out_channels, LastLevelMaxPool() if top_block else None)
            strides = [4, 8, 16, 32] + ([64] if top_block else [])
            names = [_stride_name(s) for s in strides]
            self._size_divisibility = 32
        self._shapes = OrderedDict((n, FeatureSpec(out_channels, s)) for n, s in zip(names, strides))
        if emit_clip_map:
            self._shapes[CLIP_MAP] = FeatureSpec(self.embed_dim, self.clip_stride)

    @property
    def size_divisibility(self) -> int:
        """Input sides must be multiples of this; `forward` pads to it if they are not."""
        return self._size_divisibility

    def output_shape(self) -> "OrderedDict[str, FeatureSpec]":
        return OrderedDict(self._shapes)

    def forward(self, images: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        images = pad_to_stride(images, self._size_divisibility)
        if self.kind == "vit":
            pyramid_input, clip_map = self.vit_features(images)
            features = self.pyramid(pyramid_input)
        else:
            stages, clip_map = self.resnet_features(images)
            features = self.pyramid(OrderedDict(zip(("res2", "res3", "res4", "res5"), stages)))
            features = OrderedDict(zip(list(self._shapes)[: len(features)], features.values()))
        if clip_map is not None:
            features[CLIP_MAP] = clip_map
        return features


@dataclass(frozen=True)
class Keys:
    """How a user names each tower setting in the one-line errors: Detectron2 yacs keys, or the arguments
    of the function or LazyConfig call they gave."""

    model: str
    pretrained: str
    weights: str
    base_weights: str
    freeze: str
    features: str
    block: str
    stride: str

    @classmethod
    def yacs(cls) -> "Keys":
        return cls(*(f"MODEL.REACT.{name}" for name in ("MODEL", "PRETRAINED", "WEIGHTS", "BASE_WEIGHTS", "FREEZE",
                                                        "FEATURES", "BLOCK", "STRIDE")))

    @classmethod
    def arguments(cls, owner: str) -> "Keys":
        return cls(*(f"{owner}({name}=...)" for name in ("model", "pretrained", "weights", "base_weights", "freeze",
                                                         "features", "block", "stride")))


def load_react_clip(model: Optional[str], pretrained: Optional[str], weights: Optional[str], base_weights: Optional[str],
                    keys: Keys):
    """The CLIP (`react_core.modeling.load_clip`) a REACT setting names; a file that does not fit
    it, or an adapter whose base is missing or changed, is one line naming the key and the file.
    `model` may be empty when `weights` is an adapter: the adapter names its architecture."""
    from react_core.modeling import CheckpointError, load_clip
    from react_core.modeling.adapters import read_adapter_metadata

    adapter = read_adapter_metadata(weights) if weights else None
    if not model:
        if adapter is None:
            raise ConfigError(f"{keys.model} is empty: name the tower's architecture (e.g. ViT-B-16), or set "
                              f"{keys.weights} to an adapter file, which names its own")
        model = adapter["model"]
    try:
        with torch.random.fork_rng(devices=[]):  # the heads built next start alike whatever the tower
            return load_clip(model, pretrained or None, weights or None, base_weights=base_weights or None)
    except CheckpointError as error:
        key = keys.base_weights if base_weights and "base weights" in str(error) else keys.weights
        hint = f" (its new location goes in {keys.base_weights})" if "are not there" in str(error) else ""
        raise ConfigError(f"{key}: {error}{hint}; the tower is {keys.model}={model!r}") from None
    except ValueError as error:
        raise ConfigError(f"{keys.model}={model!r}: {error}") from None


def build_clip_tower(visual: nn.Module, weights: Optional[str], freeze: str, features: str, block: int, clip_map: bool,
                     keys: Keys) -> ClipTower:
    """`ClipTower` over `visual`, with bad settings named by their keys."""
    try:
        return ClipTower(visual, freeze=freeze, features=features, feature_block=block, emit_clip_map=clip_map)
    except ValueError as error:
        message = str(error)
        if "gated blocks" in message:
            source = weights or "the tower (no weights file)"
            raise ConfigError(f"{keys.freeze}='gated' needs gated REACT blocks, and {source} has none "
                              f"(set {keys.weights} to a customized tower, or freeze 'frozen' or 'full')") from None
        key = keys.block if "feature_block" in message else keys.features if "features" in message else keys.freeze
        raise ConfigError(f"{key}: {message}") from None
