"""Image transforms for training: the model's own preprocessing or the official REACT augmentation."""
from __future__ import annotations

from typing import Callable, Literal

from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

Augmentation = Literal["none", "open_clip", "official"]


def image_size_of(model) -> int:
    size = model.visual.image_size
    return size[0] if isinstance(size, (tuple, list)) else int(size)


def official_augmentation(size: int, mean=OPENAI_DATASET_MEAN, std=OPENAI_DATASET_STD) -> Callable:
    """REACT's recipe through timm: random-resized crop (0.08-1), hflip, RandAugment m9, erasing 0.25."""
    from timm.data import create_transform

    return create_transform(
        input_size=size,
        is_training=True,
        scale=(0.08, 1.0),
        hflip=0.5,
        auto_augment="rand-m9-mstd0.5-inc1",
        interpolation="bicubic",
        re_prob=0.25,
        re_mode="pixel",
        re_count=1,
        mean=mean,
        std=std,
    )


def train_transform(bundle, augmentation: Augmentation = "open_clip") -> Callable:
    """`none`: the evaluation transform; `open_clip`: its light training crop; `official`: timm."""
    if augmentation == "none":
        return bundle.preprocess_val
    if augmentation == "open_clip":
        return bundle.preprocess_train
    if augmentation == "official":
        return official_augmentation(image_size_of(bundle.model))
    raise ValueError(f"unknown augmentation {augmentation!r} (none, open_clip, official)")
