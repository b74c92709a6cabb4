"""Gated customization blocks for open_clip image towers, training modes, and the training forward.

REACT freezes a pre-trained CLIP and inserts new blocks whose output is scaled by `tanh(alpha)`,
with `alpha` initialised at 0, so the customized model starts exactly equal to the base model.

ViT towers follow the official REACT layout, so its released checkpoints load strictly: one
`GatedResidualAttentionBlock` lives as attribute `gated_attn_block` *inside* residual block `i`
and runs before it (keys `visual.transformer.resblocks.{i}.gated_attn_block.*`). Attaching it
inside the block, through a forward pre-hook, keeps open_clip's `resblocks` indices (and so every
other key) unchanged.

ModifiedResNet towers (RN50, RN101, RN50x4...), which the official code lacks, get a
`GatedFeatureMapBlock` inside each of the last `k` bottleneck blocks, run after it: gated
self-attention over the feature map at the bottleneck width (`channels / 4`), projected back to
the channels by a bias-free linear layer, so the tower is unchanged at initialisation. Blocks are
numbered across `layer1..layer4` in order.
"""
from __future__ import annotations

import contextlib
import inspect
import re
from collections import OrderedDict
from typing import Iterator, Literal

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from react_core.modeling.tower import RESNET_STAGES, tower_kind

GATED_ATTR = "gated_attn_block"
MODES = ("gated-image", "locked-text", "full")
Mode = Literal["gated-image", "locked-text", "full"]

_VIT_KEY = re.compile(r"^visual\.transformer\.resblocks\.(\d+)\." + GATED_ATTR + r"\.")
_RESNET_KEY = re.compile(r"^visual\.layer([1-4])\.(\d+)\." + GATED_ATTR + r"\.")


class GatedResidualAttentionBlock(nn.Module):
    """The official REACT block: `x += tanh(alpha_attn) * attn(ln_1(x)); x += tanh(alpha_dense) * mlp(ln_2(x))`.

    `norm_layer` and `act_layer` follow the host tower (LayerNorm flavour, GELU or QuickGELU);
    `batch_first` follows the host's attention, so the block accepts the tensors the tower passes.
    """

    def __init__(
        self,
        d_model: int,
        n_head: int,
        *,
        mlp_ratio: float = 4.0,
        act_layer: type[nn.Module] = nn.GELU,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        batch_first: bool = True,
    ):
        super().__init__()
        self.alpha_attn = nn.Parameter(torch.zeros(()))
        self.alpha_dense = nn.Parameter(torch.zeros(()))
        self.ln_1 = norm_layer(d_model)
        self.attn = nn.MultiheadAttention(d_model, n_head, batch_first=batch_first)
        self.ln_2 = norm_layer(d_model)
        hidden = int(d_model * mlp_ratio)
        self.mlp = nn.Sequential(
            OrderedDict([("c_fc", nn.Linear(d_model, hidden)), ("gelu", act_layer()), ("c_proj", nn.Linear(hidden, d_model))])
        )
        self.checkpointing = False
        self.bypass = False

    def _forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        attn_mask = attn_mask.to(x.dtype) if attn_mask is not None else None
        h = self.ln_1(x)
        x = x + torch.tanh(self.alpha_attn) * self.attn(h, h, h, need_weights=False, attn_mask=attn_mask)[0]
        return x + torch.tanh(self.alpha_dense) * self.mlp(self.ln_2(x))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.bypass:
            return x
        if self.checkpointing and torch.is_grad_enabled():
            return checkpoint(self._forward, x, attn_mask, use_reentrant=False)
        return self._forward(x, attn_mask)


class GatedFeatureMapBlock(nn.Module):
    """Gated self-attention over a ResNet feature map `[N, C, H, W]`, returning the same shape.

    Tokens are projected to the bottleneck width, run through a `GatedResidualAttentionBlock`,
    and only the block's gated increment is projected back (no bias), so at initialisation the
    output equals the input exactly.
    """

    def __init__(self, channels: int, width: int, n_head: int):
        super().__init__()
        self.proj_in = nn.Linear(channels, width)
        self.block = GatedResidualAttentionBlock(width, n_head)
        self.proj_out = nn.Linear(width, channels, bias=False)

    @property
    def checkpointing(self) -> bool:
        return self.block.checkpointing

    @checkpointing.setter
    def checkpointing(self, enable: bool) -> None:
        self.block.checkpointing = enable

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.block.bypass:
            return x
        n, c, h, w = x.shape
        tokens = self.proj_in(x.flatten(2).transpose(1, 2))
        increment = self.proj_out(self.block(tokens) - tokens)
        return x + increment.transpose(1, 2).reshape(n, c, h, w)


def _run_gated_before(module: nn.Module, args: tuple, kwargs: dict):
    """Forward pre-hook of a ViT residual block: run its gated block on the block's input first.

    A module-level function (not a closure), so deep copies and pickles of the model stay correct.
    """
    bound = inspect.signature(module.forward).bind(*args, **kwargs)
    names = list(bound.signature.parameters)
    x = bound.arguments[names[0]]
    bound.arguments[names[0]] = getattr(module, GATED_ATTR)(x, bound.arguments.get("attn_mask"))
    return bound.args, bound.kwargs


def _run_gated_after(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    """Forward hook of a ResNet bottleneck block: run its gated block on the block's output."""
    return getattr(module, GATED_ATTR)(output)


def _visual(model: nn.Module) -> nn.Module:
    visual = getattr(model, "visual", model)
    if tower_kind(visual) is None:
        raise TypeError(
            f"gated blocks need an open_clip VisionTransformer or ModifiedResNet image tower, got {type(visual).__name__}"
        )
    return visual


def host_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks that can hold a gated block: ViT residual blocks, or ResNet bottlenecks across stages."""
    visual = _visual(model)
    if tower_kind(visual) == "vit":
        return list(visual.transformer.resblocks)
    return [block for stage in RESNET_STAGES for block in getattr(visual, stage)]


def default_num_gated(model: nn.Module) -> int:
    """REACT's k: 6 for ViT-B and L, 12 for bigG (48 layers), half the layers for small towers;
    ResNets: the bottlenecks of the last stage."""
    visual = _visual(model)
    if tower_kind(visual) == "resnet":
        return len(visual.layer4)
    depth = len(visual.transformer.resblocks)
    if depth >= 48:
        return 12
    if depth >= 12:
        return 6
    return max(1, depth // 2)


def gated_layers(model: nn.Module) -> list[int]:
    """Indices of the host blocks that hold a gated block (empty for a base model)."""
    return [i for i, block in enumerate(host_blocks(model)) if hasattr(block, GATED_ATTR)]


def gated_layers_in_state_dict(state: dict, model: nn.Module) -> list[int]:
    """Which host blocks a state dict has gated blocks for, numbered as in `add_gated_blocks`."""
    vit = {int(m.group(1)) for m in map(_VIT_KEY.match, state) if m}
    resnet = {(int(m.group(1)), int(m.group(2))) for m in map(_RESNET_KEY.match, state) if m}
    if not resnet:
        return sorted(vit)
    visual = _visual(model)
    if tower_kind(visual) != "resnet":
        return sorted(vit)
    offsets = [0]
    for stage in RESNET_STAGES:
        offsets.append(offsets[-1] + len(getattr(visual, stage)))
    return sorted(vit | {offsets[stage - 1] + j for stage, j in resnet})


def _vit_gated_block(host: nn.Module) -> GatedResidualAttentionBlock:
    width = host.attn.embed_dim
    act = type(host.mlp.gelu) if hasattr(host.mlp, "gelu") else nn.GELU
    return GatedResidualAttentionBlock(
        width,
        host.attn.num_heads,
        act_layer=act,
        norm_layer=type(host.ln_1),
        batch_first=host.attn.batch_first,
    )


def _resnet_gated_block(host: nn.Module) -> GatedFeatureMapBlock:
    channels = host.bn3.num_features
    width = host.bn1.num_features
    return GatedFeatureMapBlock(channels, width, max(1, width // 64))


def add_gated_blocks(
    model: nn.Module, layers: list[int] | None = None, k: int | None = None, checkpointing: bool = False
) -> list[int]:
    """Add gated blocks to the image tower of `model` (a CLIP or its `visual`); returns the layers.

    `layers` lists host-block indices; otherwise the last `k` blocks (default `default_num_gated`).
    Blocks take the host's dtype and device. With `checkpointing`, each gated block recomputes its
    activations in the backward pass (`use_reentrant=False`).
    """
    visual = _visual(model)
    hosts = host_blocks(visual)
    if gated_layers(visual):
        raise ValueError(f"the model already has gated blocks in layers {gated_layers(visual)}")
    if layers is not None and k is not None:
        raise ValueError("give either layers or k, not both")
    if layers is None:
        k = default_num_gated(visual) if k is None else k
        if not 1 <= k <= len(hosts):
            raise ValueError(f"k={k} gated blocks do not fit a tower of {len(hosts)} blocks")
        layers = list(range(len(hosts) - k, len(hosts)))
    layers = sorted(set(int(i) for i in layers))
    bad = [i for i in layers if not 0 <= i < len(hosts)]
    if bad or not layers:
        raise ValueError(f"gated layers {bad or layers} are out of range for a tower of {len(hosts)} blocks (0..{len(hosts) - 1})")
    vit = tower_kind(visual) == "vit"
    for i in layers:
        host = hosts[i]
        reference = next(host.parameters())
        gated = (_vit_gated_block(host) if vit else _resnet_gated_block(host)).to(reference.device, reference.dtype)
        gated.checkpointing = checkpointing
        host.add_module(GATED_ATTR, gated)
        if vit:
            host.register_forward_pre_hook(_run_gated_before, with_kwargs=True)
        else:
            host.register_forward_hook(_run_gated_after)
    return layers


@contextlib.contextmanager
def bypass_gated(model: nn.Module) -> Iterator[None]:
    """Within the block, every gated block of `model` passes its input through: the base tower."""
    blocks = [module for module in model.modules() if isinstance(module, GatedResidualAttentionBlock)]
    previous = [block.bypass for block in blocks]
    for block in blocks:
        block.bypass = True
    try:
        yield
    finally:
        for block, state in zip(blocks, previous):
            block.bypass = state


def set_gated_checkpointing(model: nn.Module, enable: bool = True) -> None:
    for i in gated_layers(model):
        getattr(host_blocks(model)[i], GATED_ATTR).checkpointing = enable


def is_trainable(name: str, mode: Mode) -> bool:
    """Which parameters a mode trains, by full-model name (also used to pick an adapter's tensors)."""
    if mode == "full":
        return True
    if name == "logit_scale":
        return True
    if mode == "gated-image":
        return f".{GATED_ATTR}." in name
    if mode == "locked-text":
        return name.startswith("visual.")
    raise ValueError(f"unknown mode '{mode}' (choose from {', '.join(MODES)})")


def set_trainable(model: nn.Module, mode: Mode) -> dict:
    """Freeze everything the mode does not train; returns trainable/frozen/total parameter counts."""
    if mode not in MODES:
        raise ValueError(f"unknown mode '{mode}' (choose from {', '.join(MODES)})")
    if mode == "gated-image" and not gated_layers(model):
        raise ValueError("mode 'gated-image' needs gated blocks: call add_gated_blocks(model) first")
    counts = {"mode": mode, "trainable": 0, "frozen": 0}
    for name, param in model.named_parameters():
        param.requires_grad_(is_trainable(name, mode))
        counts["trainable" if param.requires_grad else "frozen"] += param.numel()
    counts["total"] = counts["trainable"] + counts["frozen"]
    return counts


def train_mode(model: nn.Module) -> nn.Module:
    """`model.train()`, except that norm layers whose parameters are frozen stay in eval mode.

    Frozen BatchNorm statistics belong to the base tower (ResNets): updating them would change the
    model that gated-image tuning promises to keep.
    """
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in module.parameters()):
            module.eval()
    return model


def first_trainable_block(visual: nn.Module) -> int | None:
    """Index of the first residual block with trainable parameters; None if the embedding trains."""
    stem = [visual.conv1, visual.ln_pre, getattr(visual, "patch_dropout", None)]
    stem_params = [visual.class_embedding, visual.positional_embedding]
    stem_params += [p for m in stem if m is not None for p in m.parameters()]
    if any(p.requires_grad for p in stem_params):
        return None
    for i, block in enumerate(visual.transformer.resblocks):
        if any(p.requires_grad for p in block.parameters()):
            return i
    return len(visual.transformer.resblocks)


def encode_image_for_training(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Image features (not normalised) for a training step, storing no activations where nothing trains.

    For ViT towers the frozen embedding and the frozen residual blocks below the first trainable
    one run under `torch.no_grad()`; the rest runs as in open_clip (with its per-block
    checkpointing if enabled by `set_grad_checkpointing`). Other towers run their own forward.
    `model` is a CLIP or its `visual`; the result equals `model.encode_image(images)`.
    """
    visual = getattr(model, "visual", model)
    if tower_kind(visual) != "vit" or not hasattr(visual, "_embeds") or getattr(visual, "attn_pool", None) is not None:
        return visual(images)
    first = first_trainable_block(visual)
    transformer = visual.transformer
    blocks = transformer.resblocks
    with torch.set_grad_enabled(torch.is_grad_enabled() and first is None):
        x = visual._embeds(images)
    if not transformer.batch_first:
        x = x.transpose(0, 1).contiguous()
    with torch.no_grad():
        for block in blocks[: first or 0]:
            x = block(x)
    for block in blocks[first or 0 :]:
        if transformer.grad_checkpointing and torch.is_grad_enabled():
            x = checkpoint(block, x, use_reentrant=False)
        else:
            x = block(x)
    if not transformer.batch_first:
        x = x.transpose(0, 1)
    pooled, _ = visual._pool(x)
    return pooled @ visual.proj if visual.proj is not None else pooled


class ImageTower(nn.Module):
    """What a locked-text training step needs: the image tower and `logit_scale`, nothing of the text tower.

    Parameters keep their full-CLIP names (`visual.*`, `logit_scale`), so adapter files saved from
    this module and from the whole CLIP are the same. Build it from a CLIP and drop the CLIP to free
    the text tower's memory when caption embeddings are cached.
    """

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.visual = clip.visual
        self.logit_scale = clip.logit_scale

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image features."""
        return nn.functional.normalize(encode_image_for_training(self.visual, images), dim=-1)
