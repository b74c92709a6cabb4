"""Whole-image and sliding-window inference for images of any size.

Models are trained on fixed crops; at test time the semantic-segmentation protocol (FC-CLIP,
CAT-Seg, mmseg's `slide` mode) resizes the short side to a test size, scores overlapping crops of
the training size, averages the logits where crops overlap, and resizes the scores back to the
original image for evaluation.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

LogitsFn = Callable[[torch.Tensor], torch.Tensor]


def window_starts(length: int, crop: int, stride: int) -> list[int]:
    """Start offsets covering `length` with windows of `crop` every `stride`; the last window
    is shifted back to end at the border, so no window runs past the image."""
    if length <= crop:
        return [0]
    starts = list(range(0, length - crop, stride)) + [length - crop]
    return sorted(set(starts))


def sliding_window(logits_fn: LogitsFn, images: torch.Tensor, crop_size: int, stride: int) -> torch.Tensor:
    """Average `logits_fn` over overlapping `crop_size` windows; returns [B, C, H, W].

    Images smaller than a window are zero-padded to it, and the padding is cropped off again.
    """
    if stride <= 0 or stride > crop_size:
        raise ValueError(f"stride {stride} must be in 1..crop_size ({crop_size}) so windows cover the image")
    height, width = images.shape[-2:]
    pad_h, pad_w = max(crop_size - height, 0), max(crop_size - width, 0)
    padded = F.pad(images, (0, pad_w, 0, pad_h))
    total, counts = None, padded.new_zeros(1, 1, *padded.shape[-2:])
    for top in window_starts(padded.shape[-2], crop_size, stride):
        for left in window_starts(padded.shape[-1], crop_size, stride):
            window = padded[..., top : top + crop_size, left : left + crop_size]
            logits = logits_fn(window)
            if total is None:
                total = padded.new_zeros(images.shape[0], logits.shape[1], *padded.shape[-2:])
            total[..., top : top + crop_size, left : left + crop_size] += logits
            counts[..., top : top + crop_size, left : left + crop_size] += 1
    return (total / counts)[..., :height, :width]


def predict_logits(
    logits_fn: LogitsFn,
    images: torch.Tensor,
    mode: str = "whole",
    crop_size: int = 512,
    stride: int = 341,
    test_size: Optional[int] = None,
) -> torch.Tensor:
    """Logits at the input's size: `whole` runs once, `slide` runs `sliding_window`; with
    `test_size` the short side is first resized to it (and the logits resized back)."""
    if mode not in ("whole", "slide"):
        raise ValueError(f"inference mode must be 'whole' or 'slide', got {mode!r}")
    size = images.shape[-2:]
    if test_size:
        scale = test_size / min(size)
        resized = [max(1, round(side * scale)) for side in size]
        images = F.interpolate(images, size=resized, mode="bilinear", align_corners=False)
    logits = logits_fn(images) if mode == "whole" else sliding_window(logits_fn, images, crop_size, stride)
    if logits.shape[-2:] != size:
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    return logits
