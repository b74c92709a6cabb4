"""The dense objective of dense-aware customization (CLIPSelf, Wu et al., ICLR 2024, on REACT).

Gated blocks trained with the class-token contrastive loss alone are free to rewrite the patch
tokens that detectors and segmenters read. Here region features pooled from the tower's dense
readout (`react_core.modeling.readout`, the one readout the dense heads read too) over random grids
of boxes are drawn to the class-token embeddings of the crops of those boxes (1 - cosine), the
teacher encoding the crops without gradient; a keep term holds the readout near the base tower's.

Retrieved images show one object at the tower's input size, while detectors and segmenters read
scenes of several smaller objects at a larger size. With `mosaic: m`, m x m training images are
tiled into one image of m times the side, and each tile's box is drawn to the class token of its
own image besides the grid cells: the readout learns, at scene scale and with neighbours in view,
to say what the class token says about each object.

`image_and_dense` computes the pooled image features and the dense readout in one pass through
the tower (the trunk below the readout is shared), so the dense objective costs little more
than the contrastive step it joins.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from react_core.modeling.gated import bypass_gated, encode_image_for_training, first_trainable_block
from react_core.modeling.readout import check_tower, dense_readout, pool_boxes, readout_stride, vit_value_path
from react_core.modeling.tower import attnpool_value_map, resnet_stages, run_vit_blocks, tokens_to_map, vit_input_tokens


def image_and_dense(visual: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(image features [B, D] as `visual(images)`, `dense_readout(visual, images)` [B, D, h, w]).

    ViT: the tokens entering the last block are computed once (frozen blocks below the first
    trainable one without gradient) and read both ways: through the last block and the pool, and
    through its value path. ModifiedResNet: res5 through the attention pool and its value map.
    """
    if check_tower(visual) == "resnet":
        res5 = resnet_stages(visual, images)[-1]
        return visual.attnpool(res5), attnpool_value_map(visual.attnpool, res5)
    blocks = visual.transformer.resblocks
    last = len(blocks) - 1
    first = first_trainable_block(visual)
    frozen = 0 if first is None else min(first, last)
    with torch.set_grad_enabled(torch.is_grad_enabled() and first is None):
        x, grid = vit_input_tokens(visual, images)
        x = run_vit_blocks(visual, x, blocks[:frozen])
    x = run_vit_blocks(visual, x, blocks[frozen:last])
    dense = tokens_to_map(vit_value_path(visual, x), grid)
    tokens = run_vit_blocks(visual, x, blocks[last:])
    pooled, _ = visual._pool(tokens)
    return (pooled @ visual.proj if visual.proj is not None else pooled), dense


def random_grid_boxes(
    count: int, height: int, width: int, max_grid: int, per_image: int, generator: torch.Generator
) -> list[torch.Tensor]:
    """Per image, `per_image` distinct cells (fewer if the grid has fewer) of a random m x n grid,
    m, n uniform in 1..max_grid, as x1y1x2y2 pixel boxes [N, 4] (CLIPSelf's random grids)."""
    boxes = []
    for _ in range(count):
        m, n = (int(v) for v in torch.randint(1, max_grid + 1, (2,), generator=generator))
        cells = torch.randperm(m * n, generator=generator)[:per_image]
        rows, cols = cells // n, cells % n
        cell_h, cell_w = height / m, width / n
        boxes.append(torch.stack([cols * cell_w, rows * cell_h, (cols + 1) * cell_w, (rows + 1) * cell_h], dim=1).float())
    return boxes


def tile_mosaics(images: torch.Tensor, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """images [side * side * M, 3, H, W] -> (M mosaics [M, 3, side * H, side * W], row-major: image
    i is tile i % side^2 of mosaic i // side^2; the tiles' x1y1x2y2 boxes [side^2, 4], one set for all)."""
    count, channels, height, width = images.shape
    tiles = side * side
    if count % tiles:
        raise ValueError(f"{count} images do not fill mosaics of {side} x {side}")
    mosaics = images.view(count // tiles, side, side, channels, height, width).permute(0, 3, 1, 4, 2, 5)
    rows, cols = torch.arange(tiles) // side, torch.arange(tiles) % side
    boxes = torch.stack([cols * width, rows * height, (cols + 1) * width, (rows + 1) * height], dim=1).float()
    return mosaics.reshape(count // tiles, channels, side * height, side * width), boxes


def crop_boxes(images: torch.Tensor, boxes: list[torch.Tensor], size: int) -> torch.Tensor:
    """The crops of `boxes` resized to size x size (bilinear, one sample at each output pixel's centre)
    [sum N_i, 3, size, size]."""
    from torchvision.ops import roi_align

    boxes = [b.to(images.device, images.dtype) for b in boxes]
    return roi_align(images, boxes, output_size=(size, size), spatial_scale=1.0, sampling_ratio=1, aligned=True)


class DenseObjective(nn.Module):
    """Region-to-crop distillation plus a keep term, on a `DenseConfig`'s settings.

    `forward(visual, images, dense, pooled)` takes the student's dense readout `dense` of `images`
    (None with `mosaic` > 1: the objective reads its mosaics itself) and their image features
    `pooled`, and returns the loss terms `{"loss_region", "loss_keep"}` (weighted) and their raw
    values. Holds no parameters, so adapters gain no keys; the state of the generator that draws
    the boxes is the module's extra state, so a resumed training run continues its draws.
    """

    def __init__(self, cfg, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        self.generator = torch.Generator().manual_seed(seed)

    def get_extra_state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_extra_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)

    def features(self, visual: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(image features of the step, the dense readout `forward` needs): one pass for both, or
        None for the readout with `mosaic` > 1 (`forward` reads the mosaics itself)."""
        if self.cfg.mosaic > 1:
            return encode_image_for_training(visual, images), None
        return image_and_dense(visual, images)

    @torch.no_grad()
    def teacher(self, visual: nn.Module, crops: torch.Tensor) -> torch.Tensor:
        context = bypass_gated(visual) if self.cfg.teacher == "base" else contextlib.nullcontext()
        with context:
            return F.normalize(visual(crops), dim=-1)

    @torch.no_grad()
    def tile_teacher(self, visual: nn.Module, images: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """The teacher's class tokens of the tiles' own images: the step's image features for `self`."""
        if self.cfg.teacher == "self":
            return F.normalize(pooled.detach(), dim=-1)
        return self.teacher(visual, images)

    @torch.no_grad()
    def base_dense(self, visual: nn.Module, images: torch.Tensor) -> torch.Tensor:
        with bypass_gated(visual):
            return dense_readout(visual, images)

    def forward(self, visual: nn.Module, images: torch.Tensor, dense: torch.Tensor | None, pooled: torch.Tensor) -> dict:
        cfg = self.cfg
        count = images.shape[0] if cfg.images is None else min(cfg.images, images.shape[0])
        side = cfg.mosaic
        if side > 1:
            count -= count % (side * side)
            if count == 0:
                raise ValueError(f"dense: a batch of {images.shape[0]} images fills no {side} x {side} mosaic")
            inputs, tiles = tile_mosaics(images[:count], side)
            dense = dense_readout(visual, inputs)
        else:
            inputs, dense = images[:count], dense[:count]
        height, width = inputs.shape[-2:]
        boxes = random_grid_boxes(inputs.shape[0], height, width, cfg.max_grid, cfg.boxes_per_image, self.generator)
        targets = self.teacher(visual, crop_boxes(inputs, boxes, images.shape[-1]))
        if side > 1:
            tile_targets = self.tile_teacher(visual, images[:count], pooled[:count]).view(-1, side * side, targets.shape[-1])
            per_cell = targets.split([len(b) for b in boxes])
            targets = torch.cat([torch.cat([cells, tiled]) for cells, tiled in zip(per_cell, tile_targets)])
            boxes = [torch.cat([b, tiles]) for b in boxes]
        regions = F.normalize(pool_boxes(dense, [b.to(dense.device) for b in boxes], readout_stride(visual)), dim=-1)
        region = 1 - (regions * targets.to(regions.dtype)).sum(-1).mean()
        out = {"loss_region": cfg.weight * region, "region_cos": (1 - region).detach()}
        if cfg.keep != "none":
            base = self.base_dense(visual, inputs).to(dense.dtype)
            base_sq = base.pow(2).sum(1).clamp(min=1e-12)
            if cfg.keep == "close":
                keep = ((dense - base).pow(2).sum(1) / base_sq).mean()
            else:
                keep = (dense.pow(2).sum(1).sqrt() / base_sq.sqrt() - 1).pow(2).mean()
            out["loss_keep"] = cfg.keep_weight * keep
            out["keep"] = keep.detach()
        return out
