"""Config schemas of `react customize` (kind: customize) and `react pretrain` (kind: pretrain)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Literal, Optional

from react_core.config import ConfigError, buildable, config_kind
from react_core.config.common import DEFAULT_TEMPLATES, ModelConfig, TrainSchedule
from react_core.registry import DATASETS

for _name in ("PairManifest", "WebDatasetPairs", "CaptionedFolder"):  # the pair sets `data.train` may name
    DATASETS.declare(_name, "react_core.data.pairs")


@dataclass
class GatedConfig:
    """Where the gated blocks go: explicit `layers`, or the last `k` blocks (default: REACT's k)."""

    layers: Optional[List[int]] = None
    k: Optional[int] = None
    checkpointing: bool = False


@dataclass
class DataConfig:
    """Training pairs: a PairManifest, WebDatasetPairs or CaptionedFolder. `replay`, a second such
    spec (e.g. random pairs of the same corpus, `sample: N`), is trained on alongside `train` as
    one shuffled set, so a tower customized on a narrow vocabulary keeps the rest (retention);
    none by default, as in the official recipe."""

    train: dict = buildable(DATASETS)
    replay: Optional[dict] = buildable(DATASETS, optional=True)
    augmentation: Literal["none", "open_clip", "official"] = "open_clip"
    batch_size: int = 64
    workers: int = 0
    text_embeddings: Optional[str] = None


@dataclass
class TrainConfig(TrainSchedule):
    """Optimisation: AdamW (betas, eps), warm-up + cosine, AMP on GPU, stop after iterations or epochs."""

    mode: Literal["gated-image", "locked-text", "full"] = "gated-image"
    lr: float = 5e-4
    weight_decay: float = 0.1
    betas: List[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    warmup_iters: int = 5000
    epochs: Optional[float] = None

    def total_iters(self, samples: int, global_batch: int) -> int:
        if (self.max_iters is None) == (self.epochs is None):
            raise ConfigError("set exactly one of train.max_iters and train.epochs")
        if self.max_iters is not None:
            return self.max_iters
        return max(1, round(self.epochs * samples / global_batch))


@dataclass
class ZeroShotConfig:
    """Held-out labelled images for zero-shot top-1 before and after training (`eval`: the target
    task; `generic_eval`: classes outside it, for retention)."""

    classes: str
    images: str
    templates: str = DEFAULT_TEMPLATES
    batch_size: int = 256


@dataclass
class DenseConfig:
    """Dense-aware customization (CLIPSelf-style), gated-image mode only; off by default.

    On each batch's first `images` images (all when null), region features pooled (roi_align)
    from the tower's dense readout over `boxes_per_image` cells of a random m x n grid
    (m, n in 1..`max_grid`) are drawn to the class-token embeddings of those cells' crops
    (1 - cosine, weight `weight`). The teacher encodes the crops without gradient: `self` is the
    customized tower as it trains, `base` the base tower (gated blocks bypassed). `keep` holds the
    dense readout near the base tower's: `close` penalises ||f - f_base||^2 / ||f_base||^2,
    `norm` only (||f|| / ||f_base|| - 1)^2, per location (weight `keep_weight`). With
    `contrastive: false` the class-token loss is left out (the plain CLIPSelf control). With
    `mosaic: m` > 1 the `images` (rounded down to a multiple of m^2) are tiled m x m into images of
    m times the side, read through the readout in a pass of their own, and each tile's box is
    drawn to its own image's class token too (the step's image features with `teacher: self`).
    """

    enabled: bool = False
    teacher: Literal["self", "base"] = "self"
    weight: float = 1.0
    keep: Literal["close", "norm", "none"] = "close"
    keep_weight: float = 1.0
    contrastive: bool = True
    max_grid: int = 4
    boxes_per_image: int = 2
    images: Optional[int] = None
    mosaic: int = 1

    def check(self, mode: str) -> None:
        if not self.enabled:
            return
        if mode != "gated-image":
            raise ConfigError(f"dense: the dense objective trains gated blocks; train.mode is {mode!r}, not 'gated-image'")
        if self.max_grid < 1 or self.boxes_per_image < 1 or self.mosaic < 1 or (self.images is not None and self.images < 1):
            raise ConfigError("dense: max_grid, boxes_per_image, mosaic and images must be at least 1")
        if self.mosaic > 1 and self.images is not None and self.images < self.mosaic**2:
            raise ConfigError(f"dense: images {self.images} do not fill one {self.mosaic} x {self.mosaic} mosaic")


@dataclass
class _RunConfig:
    kind: str
    data: DataConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: Optional[ZeroShotConfig] = None
    generic_eval: Optional[ZeroShotConfig] = None
    out: Optional[str] = None


@config_kind("customize")
@dataclass
class CustomizeConfig(_RunConfig):
    """Customize a CLIP on image-text pairs. `cache` (default OUT/cache) keeps what depends only on
    the base model: its caption and class embeddings and its zero-shot results before
    customization, so runs of one base (seeds, variants) may share it."""

    gated: GatedConfig = field(default_factory=GatedConfig)
    dense: DenseConfig = field(default_factory=DenseConfig)
    cache: Optional[str] = None


@config_kind("pretrain")
@dataclass
class PretrainConfig(_RunConfig):
    """Train a CLIP from scratch (both towers, mode full) on a generic pair set."""
