"""Schema pieces shared by several config kinds."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Literal, Optional, Union


DEFAULT_TEMPLATES = "simple"  # the prompt templates of zero-shot evaluation, in `react eval zeroshot` and customize alike


@dataclass
class ModelConfig:
    """Which CLIP to start from; see `react_core.modeling.load_clip`.

    `weights` is the tower's file, whatever made it: a full checkpoint, or a `react customize`
    adapter, which names (and checks by sha256) the base it applies to; `base_weights` says where
    that base is now when it has moved.
    """

    name: str = "react-tiny"
    pretrained: Optional[str] = None
    weights: Optional[str] = None
    base_weights: Optional[str] = None
    quick_gelu: Optional[bool] = None
    architecture: Optional[Dict[str, Any]] = None

    def load(self, device: str = "cpu"):
        """The bundle in eval mode; training code switches the parts it trains."""
        from react_core.modeling import CheckpointError, load_clip

        try:
            bundle = load_clip(
                self.architecture or self.name, self.pretrained, self.weights, quick_gelu=self.quick_gelu, device=device,
                base_weights=self.base_weights,
            )
        except CheckpointError as error:
            key = "model.base_weights" if self.base_weights and "base weights" in str(error) else "model.weights"
            raise CheckpointError(f"{key}: {error}") from None
        bundle.model.eval()
        return bundle


@dataclass
class TrainSchedule:
    """The training vocabulary every stage shares (pretrain, customize, detection, segmentation):
    AdamW's lr and weight decay, linear warm-up over `warmup_iters`, then cosine to zero at
    `max_iters`; gradient-norm clipping at `grad_clip` (null: none); mixed precision `amp` on a
    GPU; a log line every `log_interval` and a resumable checkpoint every `checkpoint_interval`
    iterations."""

    lr: float = 1e-4
    weight_decay: float = 0.05
    warmup_iters: int = 100
    max_iters: Optional[int] = None
    grad_clip: Optional[float] = None
    seed: int = 0
    log_interval: int = 10
    checkpoint_interval: int = 1000
    amp: Literal["float16", "bfloat16", "none"] = "float16"

    def mixed_precision(self, on_gpu: bool) -> Optional[str]:
        """The dtype to train in with AMP: `amp` on a GPU; None (full precision) elsewhere or with 'none'."""
        return self.amp if on_gpu and self.amp != "none" else None


@dataclass
class TextConfig:
    """How class names become text embeddings (`react_dense.modeling.vocabulary.vocabulary_embeddings`),
    for either dense task: prompt `templates` (a built-in set, a file, or a list) and where the
    embeddings are cached."""

    templates: Union[str, List[str]] = "imagenet"
    cache_dir: Optional[str] = None
