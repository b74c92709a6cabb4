"""Draw detections (boxes, masks, labels) on an image with torchvision's drawing utilities, the
labels in a font that has the glyphs of every class name (`react_dense.fonts`)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image

from react_dense.fonts import font_path


def draw_detections(image: Image.Image, output: dict, names: Sequence[str]) -> Image.Image:
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    canvas = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).contiguous()
    if len(output["boxes"]) == 0:
        return image.convert("RGB")
    if output.get("masks") is not None:
        masks = output["masks"].reshape(len(output["boxes"]), *canvas.shape[-2:]) > 0.5
        canvas = draw_segmentation_masks(canvas, masks.cpu(), alpha=0.4)
    labels = [f"{names[int(l)]} {float(s):.2f}" for l, s in zip(output["labels"], output["scores"])]
    canvas = draw_bounding_boxes(canvas, output["boxes"].cpu(), labels=labels, width=1, font=font_path(labels), font_size=11)
    return Image.fromarray(canvas.permute(1, 2, 0).numpy())
