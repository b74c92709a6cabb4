"""Region-text box classifier and CLIP score ensembling: engine-free `nn.Module`s.

Class scores are scaled cosine similarities between projected region features and CLIP text
embeddings of the class names, so the classifier has no per-class weights: the vocabulary is
a non-persistent buffer that `set_vocabulary` swaps at any time, and checkpoints never depend
on it. Boxes are class-agnostic (4 deltas per region).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from react_core.modeling.readout import pool_boxes
from react_core.registry import HEADS

LOSSES = ("softmax", "sigmoid")


@HEADS.register_module()
class RegionTextClassifier(nn.Module):
    """Region features [R, in_features] -> (class logits [R, C + 1], box deltas [R, 4]).

    `in_features` (the box head's width) and `embed_dim` (the CLIP's) are filled in by the
    detector builder, not config keys.

    The last logit column is background. Softmax: a learned background embedding competes
    with the classes. Sigmoid: the background column is not used (all classes negative), and
    the federated loss (LVIS) only scores the classes present in the batch plus negatives
    sampled by `image_count ** federated_power`.
    """

    def __init__(
        self,
        in_features: int,
        embed_dim: int,
        loss: str = "sigmoid",
        temperature: float = 0.02,
        learn_temperature: bool = True,
        use_bias: bool = True,
        prior_prob: float = 0.01,
        federated_classes: int = 0,
        federated_power: float = 0.5,
    ):
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
        self.loss = loss
        self.projection = nn.Linear(in_features, embed_dim)
        # sigmoid scores never read the background column: frozen there, so DDP finds no unused parameter
        self.background = nn.Parameter(torch.randn(embed_dim) / math.sqrt(embed_dim), requires_grad=loss == "softmax")
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)), requires_grad=learn_temperature)
        bias = -math.log((1 - prior_prob) / prior_prob) if loss == "sigmoid" else 0.0
        self.bias = nn.Parameter(torch.tensor(bias)) if use_bias else None
        self.box_deltas = nn.Linear(in_features, 4)
        nn.init.normal_(self.box_deltas.weight, std=0.001)
        nn.init.zeros_(self.box_deltas.bias)
        self.federated_classes = federated_classes
        self.federated_power = federated_power
        self.register_buffer("class_embeddings", torch.zeros(0, embed_dim), persistent=False)
        self.register_buffer("class_frequency", torch.zeros(0), persistent=False)

    @property
    def num_classes(self) -> int:
        return self.class_embeddings.shape[0]

    def set_vocabulary(self, embeddings: torch.Tensor, image_counts: Optional[torch.Tensor] = None) -> None:
        """Use these [C, D] text embeddings as classes; `image_counts` [C] weights federated sampling."""
        if embeddings.shape[1] != self.projection.out_features:
            raise ValueError(f"text embeddings have dim {embeddings.shape[1]}, the head projects to {self.projection.out_features}")
        device = self.projection.weight.device
        self.class_embeddings = F.normalize(embeddings.float(), dim=-1).to(device)
        counts = image_counts if image_counts is not None else torch.ones(len(embeddings))
        self.class_frequency = counts.float().clamp(min=1).pow(self.federated_power).to(device)

    def forward(self, regions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.num_classes == 0:
            raise RuntimeError("no vocabulary: call set_vocabulary(text_embeddings) first")
        regions = regions.flatten(1)
        embedded = F.normalize(self.projection(regions), dim=-1)
        weights = torch.cat([self.class_embeddings, F.normalize(self.background, dim=0)[None]])
        logits = embedded @ weights.t() * self.logit_scale.clamp(max=math.log(100.0)).exp()
        if self.bias is not None:
            logits = logits + self.bias
        return logits, self.box_deltas(regions)

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-class probabilities [R, C] (background dropped)."""
        if self.loss == "softmax":
            return logits.softmax(dim=-1)[:, :-1]
        return logits[:, :-1].sigmoid()

    def classification_loss(self, logits: torch.Tensor, gt_classes: torch.Tensor) -> torch.Tensor:
        """`gt_classes` [R] in 0..C-1, C for background."""
        if logits.numel() == 0:
            return logits.sum() * 0.0
        if self.loss == "softmax":
            return F.cross_entropy(logits, gt_classes)
        num_classes = logits.shape[1] - 1
        target = F.one_hot(gt_classes, num_classes + 1)[:, :num_classes].to(logits.dtype)
        loss = F.binary_cross_entropy_with_logits(logits[:, :num_classes], target, reduction="none")
        if self.federated_classes > 0 and self.training:
            loss = loss * self._federated_mask(gt_classes, num_classes)[None].to(loss.dtype)
        return loss.sum() / max(len(gt_classes), 1)

    def _federated_mask(self, gt_classes: torch.Tensor, num_classes: int) -> torch.Tensor:
        """Classes of the batch plus frequency-sampled negatives, up to `federated_classes`."""
        present = gt_classes[gt_classes < num_classes].unique()
        mask = torch.zeros(num_classes, dtype=torch.bool, device=gt_classes.device)
        mask[present] = True
        wanted = self.federated_classes - len(present)
        if wanted > 0:
            weights = self.class_frequency.to(gt_classes.device).clone()
            weights[present] = 0
            available = int((weights > 0).sum())
            if available:
                mask[torch.multinomial(weights, min(wanted, available), replacement=False)] = True
        return mask

    def box_loss(self, deltas: torch.Tensor, target_deltas: torch.Tensor, gt_classes: torch.Tensor, beta: float = 0.0) -> torch.Tensor:
        """Class-agnostic smooth-L1 (L1 at beta 0) on foreground regions, normalised over all regions."""
        foreground = gt_classes < self.num_classes
        if deltas.numel() == 0 or not foreground.any():
            return deltas.sum() * 0.0
        loss = F.smooth_l1_loss(deltas[foreground], target_deltas[foreground], beta=beta, reduction="sum")
        return loss / max(len(gt_classes), 1)


REGION_SOURCES = ("map", "crops")


class ClipScoreEnsemble(nn.Module):
    """Combine detector scores with frozen-CLIP region scores (ViLD / F-VLM geometric mean).

    score = det^(1 - w) * clip^w, with w = `base_weight` on classes seen in training and
    `novel_weight` on the others. CLIP region scores are a softmax over the vocabulary of
    cosine similarities between region embeddings and the text embeddings. Region embeddings
    come from `regions`: `map` pools the backbone's per-location CLIP map (the tower's dense
    readout) over each box (F-VLM, one forward pass); `crops` encodes a square crop around each
    box, `crop_scale` times its longer side, with the whole tower (ViLD's CLIP-on-crops): one
    tower pass per box, but it reads the pooled embedding, the one CLIP and REACT customization
    train.

    `calibrate` (react_dense.modeling.calibration measures both on training proposals) adds a
    background embedding as one more softmax column, and divides each class's CLIP probability
    by its prior (its mean score on proposals not of that class) before the softmax
    renormalises, so a tower that favours some classes everywhere adds no false positives.
    """

    def __init__(
        self,
        base_weight: float = 0.35,
        novel_weight: float = 0.65,
        clip_temperature: float = 0.01,
        regions: str = "map",
        crop_scale: float = 1.5,
        tower: Optional[nn.Module] = None,
    ):
        super().__init__()
        if regions not in REGION_SOURCES:
            raise ValueError(f"ensemble regions {regions!r}: expected one of {', '.join(REGION_SOURCES)}")
        if regions == "crops" and tower is None:
            raise ValueError("ensemble regions 'crops' needs the CLIP image tower")
        self.base_weight = base_weight
        self.novel_weight = novel_weight
        self.clip_temperature = clip_temperature
        self.regions = regions
        self.crop_scale = crop_scale
        # The backbone owns the tower; a plain attribute keeps its weights out of this module's state.
        self.__dict__["tower"] = tower
        self.register_buffer("background", torch.zeros(0), persistent=False)
        self.register_buffer("log_prior", torch.zeros(0), persistent=False)

    def calibrate(self, background: Optional[torch.Tensor] = None, prior: Optional[torch.Tensor] = None) -> None:
        """Use `background` [D] as an extra softmax column and divide out `prior` [C] (one per class
        of the vocabulary that `clip_scores` will score); None leaves that step out."""
        self.background = F.normalize(background.float(), dim=0) if background is not None else torch.zeros(0)
        if prior is None:
            self.log_prior = torch.zeros(0)
        else:
            log_prior = prior.float().clamp(min=1e-12).log()
            self.log_prior = log_prior - log_prior.mean()  # on average the classes keep their share against background

    def region_embeddings(
        self, boxes: list[torch.Tensor], images: torch.Tensor, clip_map: Optional[torch.Tensor] = None, clip_stride: int = 1
    ) -> torch.Tensor:
        """[R, D] CLIP embeddings of the boxes (per image, in `images`' pixels) of a batch."""
        if self.regions == "map":
            if clip_map is None:
                raise ValueError("ensemble regions 'map' needs the backbone's CLIP map (emit_clip_map)")
            return pool_boxes(clip_map, boxes, clip_stride)
        return crop_embeddings(self.tower, images, boxes, self.crop_scale)

    def clip_scores(self, region_embeddings: torch.Tensor, class_embeddings: torch.Tensor) -> torch.Tensor:
        """[R, C] probabilities over the classes (and the background column, dropped)."""
        region_embeddings = F.normalize(region_embeddings.float(), dim=-1)
        logits = region_embeddings @ F.normalize(class_embeddings.float(), dim=-1).t() / self.clip_temperature
        if len(self.log_prior):
            if len(self.log_prior) != logits.shape[1]:
                raise ValueError(f"the prior was measured for {len(self.log_prior)} classes, the vocabulary has {logits.shape[1]}")
            logits = logits - self.log_prior.to(logits)
        if len(self.background):
            logits = torch.cat([logits, (region_embeddings @ self.background.to(logits))[:, None] / self.clip_temperature], dim=1)
        return logits.softmax(dim=-1)[:, : class_embeddings.shape[0]]

    def forward(self, detector_scores: torch.Tensor, clip_scores: torch.Tensor, is_base: torch.Tensor) -> torch.Tensor:
        weight = torch.where(is_base, self.base_weight, self.novel_weight).to(detector_scores)
        return detector_scores.clamp(min=1e-8).pow(1 - weight) * clip_scores.clamp(min=1e-8).pow(weight)


@torch.no_grad()
def crop_embeddings(tower: nn.Module, images: torch.Tensor, boxes: list[torch.Tensor], scale: float, chunk: int = 256) -> torch.Tensor:
    """Square crops centred on `boxes` (side: `scale` x the longer side), resized to the tower's
    input size from the normalised `images` [B, 3, H, W], and encoded: [R, D]."""
    size = tower.image_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    rois = []
    for index, image_boxes in enumerate(boxes):
        centre = (image_boxes[:, :2] + image_boxes[:, 2:]) / 2
        half = (image_boxes[:, 2:] - image_boxes[:, :2]).amax(dim=1, keepdim=True) * scale / 2
        rois.append(torch.cat([torch.full_like(half, index), centre - half, centre + half], dim=1))
    rois = torch.cat(rois).to(images.dtype)
    if not len(rois):
        return images.new_zeros(0, tower.output_dim)
    return torch.cat([
        tower(roi_align(images, part, output_size=size, spatial_scale=1.0, sampling_ratio=2, aligned=True))
        for part in rois.split(chunk)
    ])
