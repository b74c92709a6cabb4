"""CLIP under the symmetric contrastive loss, wrapped as an mmengine model.

With the text tower locked, caption embeddings never change: the batch carries them
precomputed (`text_features`), the text tower is never run in a training step, and it is not
even part of this module (only the image tower and `logit_scale` are, through `ImageTower`),
so it is neither moved to the accelerator nor wrapped by DDP. Only in `full` mode does the
batch carry tokens (`texts`) and the whole CLIP train.

With a `DenseObjective` (dense-aware customization) the image features and the dense readout come
from one pass, and the dense terms join the loss (the contrastive term unless the objective
leaves it out); without one the step is the plain contrastive step.
"""
from __future__ import annotations

import torch
from mmengine.model import BaseModel
from open_clip.loss import ClipLoss

from react_core.modeling.dense_objective import DenseObjective
from react_core.modeling.gated import ImageTower, encode_image_for_training, train_mode


class ContrastiveCLIP(BaseModel):
    """Symmetric InfoNCE over a batch of images and captions (gathered across ranks under DDP)."""

    def __init__(
        self,
        clip: torch.nn.Module,
        text_locked: bool,
        rank: int = 0,
        world_size: int = 1,
        dense: DenseObjective | None = None,
    ):
        super().__init__()
        if dense is not None and not text_locked:
            raise ValueError("the dense objective needs a locked text tower")
        self.text_locked = text_locked
        self.tower = ImageTower(clip) if text_locked else clip
        self.loss = ClipLoss(gather_with_grad=True, rank=rank, world_size=world_size)
        self.dense = dense

    @property
    def logit_scale(self) -> torch.nn.Parameter:
        return self.tower.logit_scale

    def train(self, mode: bool = True):
        """Frozen BatchNorm statistics (ResNet towers) stay as in the base model."""
        super().train(mode)
        if mode:
            train_mode(self.tower)
        return self

    def forward(
        self,
        images: torch.Tensor,
        index: torch.Tensor | None = None,
        texts: torch.Tensor | None = None,
        text_features: torch.Tensor | None = None,
        mode: str = "loss",
    ) -> dict:
        if mode != "loss":
            raise ValueError(f"ContrastiveCLIP only computes the training loss (mode='loss'), not {mode!r}")
        if self.text_locked and text_features is None:
            raise ValueError("with the text tower locked, a batch needs precomputed 'text_features'")
        if self.dense is not None:
            return self._dense_loss(images, text_features)
        if self.text_locked:
            image_features = self.tower(images)
        else:
            if texts is None:
                raise ValueError("in full mode a batch needs tokenized captions 'texts'")
            image_features = torch.nn.functional.normalize(encode_image_for_training(self.tower, images), dim=-1)
            text_features = torch.nn.functional.normalize(self.tower.encode_text(texts), dim=-1)
        logit_scale = self.logit_scale.exp()
        loss = self.loss(image_features, text_features.to(image_features.dtype), logit_scale)
        return {"loss": loss, "logit_scale": logit_scale.detach()}

    def _dense_loss(self, images: torch.Tensor, text_features: torch.Tensor) -> dict:
        visual = self.tower.visual
        pooled, dense = self.dense.features(visual, images)
        logit_scale = self.logit_scale.exp()
        losses = self.dense(visual, images, dense, pooled)
        if self.dense.cfg.contrastive:
            image_features = torch.nn.functional.normalize(pooled, dim=-1)
            losses["loss_contrastive"] = self.loss(image_features, text_features.to(image_features.dtype), logit_scale)
        return {**losses, "logit_scale": logit_scale.detach()}
