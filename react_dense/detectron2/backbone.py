"""The REACT tower as Detectron2 backbones, under Detectron2's own pyramids.

- `ReactViT`: a (customized) CLIP ViT as a single-scale `Backbone`, the `net` of Detectron2's
  `SimpleFeaturePyramid` (ViTDet): `L(ReactViT)(weights=..., out_feature="last_feat")` in a
  LazyConfig, where ViTDet has `L(ViT)(...)`.
- `ReactResNet`: a CLIP ModifiedResNet's stage outputs res2..res5, the `bottom_up` of
  Detectron2's `FPN`, or the `res4` of a C4 config.
- `build_react_backbone` (in `BACKBONE_REGISTRY`): `MODEL.BACKBONE.NAME: build_react_backbone`
  builds either from `MODEL.REACT.*` with the pyramid of the tower's kind.

Both read the tower through `react_dense.modeling.backbone.ClipTower`, the reading every engine
shares. Either can also emit `"clip"`, the tower's dense readout, for score ensembling.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, FPN, Backbone, SimpleFeaturePyramid
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from torch import nn

from react_core.config import ConfigError
from react_core.modeling.readout import pad_to_stride
from react_dense.modeling.backbone import CLIP_MAP, ClipTower, Keys, build_clip_tower, load_react_clip

RESNET_NAMES = ("res2", "res3", "res4", "res5")
FORMATS = ("RGB", "BGR")


class ClipInput(nn.Module):
    """Images as Detectron2 normalised them (`input_format`, `pixel_mean`, `pixel_std` on 0..255)
    -> as the CLIP tower expects them (RGB, its own mean and std on 0..1): one per-channel affine
    map, exact, and the identity under `add_react_config`'s statistics."""

    def __init__(self, visual: nn.Module, input_format: str = "RGB", pixel_mean: Optional[Sequence[float]] = None,
                 pixel_std: Optional[Sequence[float]] = None):
        super().__init__()
        from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

        if input_format not in FORMATS:
            raise ConfigError(f"INPUT.FORMAT={input_format!r}: the REACT tower reads colour images, RGB or BGR")
        clip_mean = torch.tensor(getattr(visual, "image_mean", None) or OPENAI_DATASET_MEAN) * 255
        clip_std = torch.tensor(getattr(visual, "image_std", None) or OPENAI_DATASET_STD) * 255
        order = [2, 1, 0] if input_format == "BGR" else [0, 1, 2]
        mean = torch.tensor(pixel_mean if pixel_mean is not None else clip_mean.tolist(), dtype=torch.float32)
        std = torch.tensor(pixel_std if pixel_std is not None else clip_std.tolist(), dtype=torch.float32)
        if mean.numel() != 3 or std.numel() != 3:
            raise ConfigError(f"MODEL.PIXEL_MEAN and MODEL.PIXEL_STD need three values each for the REACT tower, "
                              f"got {mean.tolist()} and {std.tolist()}")
        mean, std = mean.flatten()[order], std.flatten()[order]
        self.order = order
        self.identity = order == [0, 1, 2] and torch.allclose(mean, clip_mean) and torch.allclose(std, clip_std)
        self.register_buffer("scale", (std / clip_std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", ((mean - clip_mean) / clip_std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.identity:
            return images
        return images[:, self.order] * self.scale + self.shift


class ReactViT(Backbone):
    """A (customized) CLIP ViT as Detectron2's single-scale backbone: `{out_feature: map}`.

    The map is the patch tokens of `block` (or the dense readout) at `stride`, resampled from the
    patch grid when the patch size differs (ViTDet's pyramids expect 16). It stands where ViTDet's
    `ViT` stands, under `SimpleFeaturePyramid`:

        model.backbone.net = L(ReactViT)(weights="adapter.safetensors", out_feature="last_feat")

    Args:
        model: open_clip name of the tower (ViT-B-16, react-tiny); None when `weights` is an adapter.
        pretrained: open_clip pretrained tag.
        weights: any file `load_clip` reads: base, official REACT, full customized, or an adapter.
        base_weights: where an adapter's base file is now, if it moved.
        freeze: frozen | gated | full.
        features: tokens | readout.
        block: with `features="tokens"`, the block whose output tokens are read (-1: the last).
        out_feature: the name of the output map.
        stride: the output map's stride, a power of two (None: the patch size).
        clip_map: also output `"clip"`, the dense readout at the patch stride (score ensembling).
        input_format, pixel_mean, pixel_std: how Detectron2 normalised the images (default: CLIP's).
        tower: a `ClipTower` already built (then the loading arguments are unused).
        keys: how one-line errors name the settings (default: these arguments; the yacs builder
            passes `MODEL.REACT.*`'s).
    """

    def __init__(
        self,
        model: Optional[str] = None,
        pretrained: Optional[str] = None,
        weights: Optional[str] = None,
        base_weights: Optional[str] = None,
        *,
        freeze: str = "frozen",
        features: str = "tokens",
        block: int = -1,
        out_feature: str = "last_feat",
        stride: Optional[int] = 16,
        clip_map: bool = False,
        input_format: str = "RGB",
        pixel_mean: Optional[Sequence[float]] = None,
        pixel_std: Optional[Sequence[float]] = None,
        tower: Optional[ClipTower] = None,
        keys: Optional[Keys] = None,
    ):
        super().__init__()
        keys = keys or Keys.arguments(type(self).__name__)
        if tower is None:
            visual = load_react_clip(model, pretrained, weights, base_weights, keys).model.visual
            tower = build_clip_tower(visual, weights, freeze, features, block, clip_map, keys)
        if tower.kind != "vit":
            raise ConfigError(f"{keys.model}: ReactViT needs a ViT tower; {type(tower.trunk).__name__} is read by ReactResNet")
        stride = stride or tower.patch_size
        if stride & (stride - 1):
            raise ConfigError(f"{keys.stride}={stride}: Detectron2's pyramids need a power of two")
        self.tower = tower
        self.input = ClipInput(tower.trunk, input_format, pixel_mean, pixel_std)
        self.out_feature = out_feature
        self._out_features = [out_feature]
        self._out_feature_channels = {out_feature: tower.feature_channels[0]}
        self._out_feature_strides = {out_feature: stride}
        if tower.emit_clip_map:
            self._out_features.append(CLIP_MAP)
            self._out_feature_channels[CLIP_MAP] = tower.embed_dim
            self._out_feature_strides[CLIP_MAP] = tower.clip_stride

    @property
    def size_divisibility(self) -> int:
        return max(self._out_feature_strides[self.out_feature], self.tower.patch_size)

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        height, width = images.shape[-2:]
        images = pad_to_stride(self.input(images), self.tower.patch_size)
        tokens, clip_map = self.tower.vit_features(images)
        stride = self._out_feature_strides[self.out_feature]
        grid = (math.ceil(height / stride), math.ceil(width / stride))
        if tuple(tokens.shape[-2:]) != grid:
            tokens = F.interpolate(tokens, size=grid, mode="bilinear", align_corners=False, antialias=stride > self.tower.patch_size)
        outputs = {self.out_feature: tokens}
        if clip_map is not None:
            outputs[CLIP_MAP] = clip_map
        return outputs


class ReactResNet(Backbone):
    """A (customized) CLIP ModifiedResNet as Detectron2's bottom-up backbone: res2..res5 (res5
    replaced by the dense readout with `features="readout"`), the `bottom_up` of `FPN`.

    Args: as `ReactViT`'s loading, reading and normalisation arguments (no `block`, no
        `stride`, no `out_feature`), and
        out_features: the stages returned (Detectron2's MODEL.RESNETS.OUT_FEATURES).
    """

    def __init__(
        self,
        model: Optional[str] = None,
        pretrained: Optional[str] = None,
        weights: Optional[str] = None,
        base_weights: Optional[str] = None,
        *,
        freeze: str = "frozen",
        features: str = "tokens",
        out_features: Sequence[str] = RESNET_NAMES,
        clip_map: bool = False,
        input_format: str = "RGB",
        pixel_mean: Optional[Sequence[float]] = None,
        pixel_std: Optional[Sequence[float]] = None,
        tower: Optional[ClipTower] = None,
        keys: Optional[Keys] = None,
    ):
        super().__init__()
        keys = keys or Keys.arguments(type(self).__name__)
        if tower is None:
            visual = load_react_clip(model, pretrained, weights, base_weights, keys).model.visual
            tower = build_clip_tower(visual, weights, freeze, features, -1, clip_map, keys)
        if tower.kind != "resnet":
            raise ConfigError(f"{keys.model}: ReactResNet needs a ModifiedResNet tower; a ViT is read by ReactViT")
        unknown = [name for name in out_features if name not in RESNET_NAMES]
        if unknown:
            raise ConfigError(f"MODEL.RESNETS.OUT_FEATURES: {unknown} are not stages of a CLIP ResNet ({', '.join(RESNET_NAMES)})")
        self.tower = tower
        self.input = ClipInput(tower.trunk, input_format, pixel_mean, pixel_std)
        self._out_features = list(out_features)
        channels = dict(zip(RESNET_NAMES, tower.feature_channels))
        self._out_feature_channels = {name: channels[name] for name in out_features}
        self._out_feature_strides = {name: 2 ** (2 + RESNET_NAMES.index(name)) for name in out_features}
        if tower.emit_clip_map:
            self._out_features.append(CLIP_MAP)
            self._out_feature_channels[CLIP_MAP] = tower.embed_dim
            self._out_feature_strides[CLIP_MAP] = tower.clip_stride

    @property
    def size_divisibility(self) -> int:
        return 32

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        stages, clip_map = self.tower.resnet_features(pad_to_stride(self.input(images), 32))
        outputs = {name: stage for name, stage in zip(RESNET_NAMES, stages) if name in self._out_features}
        if clip_map is not None:
            outputs[CLIP_MAP] = clip_map
        return outputs


class _PassesClipMap:
    """For Detectron2's pyramids over a REACT tower: the tower's `"clip"` map joins their outputs,
    from the one pass they make through it (a forward hook on the tower reads it)."""

    def _tower_net(self) -> Backbone:
        raise NotImplementedError

    def output_shape(self):
        shapes = super().output_shape()
        net_shapes = self._tower_net().output_shape()
        if CLIP_MAP in net_shapes:
            shapes[CLIP_MAP] = net_shapes[CLIP_MAP]
        return shapes

    def forward(self, x):
        seen = {}
        handle = self._tower_net().register_forward_hook(lambda module, args, output: seen.update(output))
        try:
            features = super().forward(x)
        finally:
            handle.remove()
        if CLIP_MAP in seen:
            features[CLIP_MAP] = seen[CLIP_MAP]
        return features


class ReactSimpleFeaturePyramid(_PassesClipMap, SimpleFeaturePyramid):
    """Detectron2's `SimpleFeaturePyramid` over `ReactViT`, passing the CLIP map through and
    padding inputs to its coarsest stride (the stock class names the constraint
    `size_divisiblity`, which `ImageList` does not read)."""

    def _tower_net(self) -> Backbone:
        return self.net

    @property
    def size_divisibility(self) -> int:
        return self._size_divisibility

    @property
    def padding_constraints(self) -> Dict[str, int]:
        return {"size_divisibility": self._size_divisibility, "square_size": self._square_pad}


class ReactFPN(_PassesClipMap, FPN):
    """Detectron2's `FPN` over `ReactResNet`, passing the CLIP map through."""

    def _tower_net(self) -> Backbone:
        return self.bottom_up


def top_block_on(level: str) -> LastLevelMaxPool:
    """Detectron2's max-pooled top level, above `level` (the stock one assumes p5)."""
    block = LastLevelMaxPool()
    block.in_feature = level
    return block


def react_pyramid(
    tower: ClipTower,
    *,
    out_channels: int = 256,
    scale_factors: Sequence[float] = (4.0, 2.0, 1.0, 0.5),
    stride: Optional[int] = 16,
    norm: str = "LN",
    top_block: bool = True,
    fpn_features: Sequence[str] = RESNET_NAMES,
    fpn_norm: str = "",
    fuse_type: str = "sum",
    stage_features: Sequence[str] = (),
    input_format: str = "RGB",
    pixel_mean: Optional[Sequence[float]] = None,
    pixel_std: Optional[Sequence[float]] = None,
    keys: Optional[Keys] = None,
) -> Backbone:
    """Detectron2's own pyramid on a REACT tower, by its kind.

    ViT: `SimpleFeaturePyramid` over `ReactViT` (the map at `stride`, levels `scale_factors`,
    `norm`), levels named p<log2 stride>. ModifiedResNet: `FPN` over `ReactResNet`'s
    `fpn_features` (`fpn_norm`, `fuse_type`), or with `stage_features` (a C4 detector) those stages
    alone. `top_block` adds a max-pooled level above the coarsest; the CLIP map passes through.

    Returns:
        A Detectron2 `Backbone`.
    """
    keys = keys or Keys.yacs()
    normalisation = {"input_format": input_format, "pixel_mean": pixel_mean, "pixel_std": pixel_std}
    if tower.kind == "vit":
        net = ReactViT(tower=tower, stride=stride, keys=keys, **normalisation)
        for scale in scale_factors:
            if scale not in (4.0, 2.0, 1.0, 0.5):
                raise ConfigError(f"MODEL.REACT.SCALE_FACTORS: {scale} is not one of SimpleFeaturePyramid's (4, 2, 1, 0.5)")
        coarsest = int(math.log2(net.output_shape()[net.out_feature].stride / min(scale_factors)))
        return ReactSimpleFeaturePyramid(
            net, net.out_feature, out_channels, tuple(scale_factors), norm=norm,
            top_block=top_block_on(f"p{coarsest}") if top_block else None,
        )
    if stage_features:
        return ReactResNet(tower=tower, out_features=stage_features, keys=keys, **normalisation)
    net = ReactResNet(tower=tower, out_features=fpn_features, keys=keys, **normalisation)
    coarsest = max(fpn_features, key=RESNET_NAMES.index)
    return ReactFPN(
        net, list(fpn_features), out_channels, norm=fpn_norm, fuse_type=fuse_type,
        top_block=top_block_on(f"p{2 + RESNET_NAMES.index(coarsest)}") if top_block else None,
    )


@BACKBONE_REGISTRY.register()
def build_react_backbone(cfg, input_shape: Optional[ShapeSpec] = None) -> Backbone:
    """`MODEL.BACKBONE.NAME: build_react_backbone`: the tower `MODEL.REACT.*` names, under
    Detectron2's own pyramid for its kind (`react_pyramid`). ViT: `SimpleFeaturePyramid`
    (`MODEL.REACT.STRIDE`, `SCALE_FACTORS`, `PYRAMID_NORM`, `TOP_BLOCK`, `MODEL.FPN.OUT_CHANNELS`).
    ModifiedResNet: `FPN` over the stages `MODEL.FPN.IN_FEATURES` names (`MODEL.FPN.*`), or, with
    none (a C4 config), the stages of `MODEL.RESNETS.OUT_FEATURES`. The CLIP map is added for
    `MODEL.REACT.ENSEMBLE`'s `map` regions. Input normalisation: `INPUT.FORMAT`, `MODEL.PIXEL_*`.

    Args:
        cfg: a Detectron2 config with `MODEL.REACT.*` (see `add_react_config`).
        input_shape: unused (Detectron2's builder signature).

    Returns:
        A Detectron2 `Backbone`.
    """
    react = cfg.MODEL.REACT
    keys = Keys.yacs()
    ensemble = react.ENSEMBLE
    if ensemble.ENABLED and react.FREEZE != "frozen":
        raise ConfigError(f"MODEL.REACT.ENSEMBLE.ENABLED needs MODEL.REACT.FREEZE frozen (it is {react.FREEZE!r}): "
                          "the region scores come from the frozen CLIP tower (F-VLM)")
    clip_map = bool(ensemble.ENABLED and ensemble.REGIONS == "map")
    bundle = load_react_clip(react.MODEL, react.PRETRAINED, react.WEIGHTS, react.BASE_WEIGHTS, keys)
    tower = build_clip_tower(bundle.model.visual, react.WEIGHTS, react.FREEZE, react.FEATURES, react.BLOCK, clip_map, keys)
    fpn = cfg.MODEL.FPN
    return react_pyramid(
        tower, out_channels=fpn.OUT_CHANNELS, scale_factors=react.SCALE_FACTORS, stride=react.STRIDE, norm=react.PYRAMID_NORM,
        top_block=react.TOP_BLOCK, fpn_features=fpn.IN_FEATURES, fpn_norm=fpn.NORM, fuse_type=fpn.FUSE_TYPE,
        stage_features=() if fpn.IN_FEATURES else cfg.MODEL.RESNETS.OUT_FEATURES,
        input_format=cfg.INPUT.FORMAT, pixel_mean=cfg.MODEL.PIXEL_MEAN, pixel_std=cfg.MODEL.PIXEL_STD, keys=keys,
    )
