"""Label maps as coloured overlays with a legend of the classes present, in a font that has the
glyphs of every class name (`react_dense.fonts`)."""
from __future__ import annotations

import colorsys
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from react_dense.fonts import label_font

UNLABELED_COLOR = (0, 0, 0)


def palette(count: int) -> np.ndarray:
    """`count` distinct RGB colours (golden-ratio hue steps), uint8 [count, 3]; stable per index."""
    hues = (np.arange(count) * 0.618033988749895) % 1.0
    rows = [colorsys.hsv_to_rgb(h, 0.65 + 0.35 * (i % 2), 0.95 - 0.25 * ((i // 2) % 2)) for i, h in enumerate(hues)]
    return (np.array(rows, dtype=np.float64).reshape(-1, 3) * 255).round().astype(np.uint8)


def overlay_with_legend(
    image: Image.Image, labels: np.ndarray, names: Sequence[str], alpha: float = 0.5, unlabeled: int | None = None
) -> Image.Image:
    """Blend class colours over `image` and append a legend (one row per class present, most
    pixels first). `unlabeled` is a label value drawn without colour and listed as such."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    colors = palette(len(names)).astype(np.float32)
    labelled = labels != unlabeled if unlabeled is not None else np.ones(labels.shape, dtype=bool)
    coloured = rgb.copy()
    coloured[labelled] = (1 - alpha) * rgb[labelled] + alpha * colors[labels[labelled]]
    canvas = Image.fromarray(coloured.round().astype(np.uint8))
    values, counts = np.unique(labels, return_counts=True)
    present = [int(v) for v in values[np.argsort(-counts)]]
    entries = [("unlabeled" if v == unlabeled else names[v], UNLABELED_COLOR if v == unlabeled else tuple(int(c) for c in colors[v])) for v in present]
    font = label_font([text for text, _ in entries])
    row = max(12, int(font.getbbox("Ag")[3]) + 4)
    width = 16 + max(int(font.getlength(text)) for text, _ in entries) + 8
    legend = Image.new("RGB", (width, max(canvas.height, row * len(entries) + 4)), (255, 255, 255))
    draw = ImageDraw.Draw(legend)
    for index, (text, color) in enumerate(entries):
        top = 2 + index * row
        draw.rectangle([2, top + 1, 12, top + row - 3], fill=color, outline=(0, 0, 0))
        draw.text((16, top), text, fill=(0, 0, 0), font=font)
    out = Image.new("RGB", (canvas.width + legend.width, max(canvas.height, legend.height)), (255, 255, 255))
    out.paste(canvas, (0, 0))
    out.paste(legend, (canvas.width, 0))
    return out
