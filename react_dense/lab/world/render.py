"""Drawing objects on cluttered backgrounds, with exact masks and polygons.

Every object is a polygon (a ring is an outer and an inner circle), so one geometry gives the
pixels, the binary mask for segmentation labels and the COCO polygon for instance annotations.
Masks are drawn at four times the resolution and box-filtered down, so edges are anti-aliased
and the hard masks agree with the COCO polygons (pixel i covers [i, i+1)).
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from react_dense.lab.world.concepts import COLORS, SHAPES

_SUPERSAMPLE = 4
_CIRCLE_POINTS = 32
_RING_INNER = 0.55


def _unit_outline(shape: str) -> np.ndarray:
    """Vertices of the shape with circumradius 1, centred on the origin, [N, 2]."""
    def regular(n, phase=0.0, radius=1.0):
        angles = phase + 2 * math.pi * np.arange(n) / n
        return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)

    if shape in ("circle", "ring"):
        return regular(_CIRCLE_POINTS)
    if shape == "square":
        return regular(4, math.pi / 4)
    if shape == "triangle":
        return regular(3, -math.pi / 2)
    if shape == "hexagon":
        return regular(6)
    if shape == "diamond":
        return np.array([[0.0, -1.0], [0.6, 0.0], [0.0, 1.0], [-0.6, 0.0]])
    if shape == "star":
        points = regular(10, -math.pi / 2)
        points[1::2] *= 0.45
        return points
    if shape == "cross":
        a, b = 0.33, 0.95
        return np.array([[-a, -b], [a, -b], [a, -a], [b, -a], [b, a], [a, a],
                         [a, b], [-a, b], [-a, a], [-b, a], [-b, -a], [-a, -a]])
    raise ValueError(f"unknown shape {shape!r}")


_OUTLINES = {shape: _unit_outline(shape) for shape in SHAPES}


@dataclass(frozen=True)
class ObjectSpec:
    """One object: what it is and where, in pixel coordinates (pixel i covers [i, i+1))."""

    color: str
    shape: str
    texture: str
    cx: float
    cy: float
    radius: float
    angle: float

    def _place(self, points: np.ndarray) -> np.ndarray:
        cos, sin = math.cos(self.angle), math.sin(self.angle)
        rotated = points @ np.array([[cos, sin], [-sin, cos]])
        return rotated * self.radius + np.array([self.cx, self.cy])

    def outline(self) -> np.ndarray:
        return self._place(_OUTLINES[self.shape])

    def hole(self) -> np.ndarray | None:
        return self._place(_OUTLINES["ring"] * _RING_INNER) if self.shape == "ring" else None

    def coco_polygon(self) -> list[float]:
        """One flat COCO polygon. A ring's hole is joined to its rim by a zero-width cut,
        traced in the opposite direction, so parity filling leaves it empty."""
        points = self.outline()
        hole = self.hole()
        if hole is not None:
            points = np.concatenate([points, points[:1], hole[:1], hole[::-1], hole[:1]])
        return [round(float(v), 2) for v in points.reshape(-1)]

    def area(self) -> float:
        def shoelace(p):
            x, y = p[:, 0], p[:, 1]
            return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))

        hole = self.hole()
        return shoelace(self.outline()) - (shoelace(hole) if hole is not None else 0.0)

    def bbox(self) -> list[float]:
        points = self.outline()
        x0, y0 = points.min(axis=0)
        x1, y1 = points.max(axis=0)
        return [round(float(x0), 2), round(float(y0), 2), round(float(x1 - x0), 2), round(float(y1 - y0), 2)]


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A dull, cluttered backdrop: tinted gradient plus low-saturation strokes and blobs.

    Clutter colours are mixed towards grey so they never read as one of the concept colours.
    """
    theta = rng.uniform(0, 2 * math.pi)
    ramp = np.linspace(-1, 1, size, dtype=np.float32) * np.float32(rng.uniform(10, 35))
    gradient = np.float32(math.cos(theta)) * ramp[None, :] + np.float32(math.sin(theta)) * ramp[:, None]
    tint = (rng.uniform(70, 190) + rng.normal(0, 12, 3)).astype(np.float32)
    base = np.clip(gradient[:, :, None] + tint, 0, 255).astype(np.uint8)
    image = Image.fromarray(base, "RGB")
    draw = ImageDraw.Draw(image)
    count = int(rng.integers(3, 9))
    colors = (0.3 * rng.uniform(0, 255, (count, 3)) + 0.7 * rng.uniform(50, 210, (count, 1))).astype(int).tolist()
    ends = rng.uniform(-0.1 * size, 1.1 * size, (count, 4)).tolist()
    kinds = rng.random(count).tolist()
    sizes = (rng.uniform(0.03, 0.12, count) * size).tolist()
    for color, (x0, y0, x1, y1), kind, r in zip(colors, ends, kinds, sizes):
        if kind < 0.6:
            draw.line([(x0, y0), (x1, y1)], fill=tuple(color), width=1 + (kind < 0.2))
        else:
            draw.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], outline=tuple(color), width=1)
    return np.asarray(image, dtype=np.float32)


def _jittered_color(rng: np.random.Generator, color: str) -> np.ndarray:
    rgb = np.array(COLORS[color], dtype=np.float32) * rng.uniform(0.85, 1.08) + rng.normal(0, 10, 3)
    return np.clip(rgb, 0, 255)


def _texture_pattern(spec: ObjectSpec, xs: np.ndarray, ys: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Boolean map of where the secondary colour goes, in the object's own rotated frame."""
    if spec.texture == "plain":
        return np.zeros((ys.size, xs.size), dtype=bool)
    cos, sin = math.cos(spec.angle), math.sin(spec.angle)
    dx, dy = xs[None, :] - spec.cx, ys[:, None] - spec.cy
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy
    period = max(3.0, spec.radius * rng.uniform(0.35, 0.55))
    if spec.texture == "striped":
        return np.floor(u / period * 2) % 2 == 1
    if spec.texture == "checkered":
        return (np.floor(u / period) + np.floor(v / period)) % 2 == 1
    if spec.texture == "dotted":
        du, dv = (u / period) % 1 - 0.5, (v / period) % 1 - 0.5
        return du * du + dv * dv < 0.09
    raise ValueError(f"unknown texture {spec.texture!r}")


def draw_object(canvas: np.ndarray, spec: ObjectSpec, rng: np.random.Generator) -> tuple[slice, slice, np.ndarray]:
    """Paint `spec` onto the float RGB `canvas` in place.

    Returns the rows, columns and hard mask (coverage >= 0.5) of the touched window, which is
    what segmentation labels use.
    """
    height, width = canvas.shape[:2]
    outline = spec.outline()
    x0 = max(int(math.floor(outline[:, 0].min())) - 1, 0)
    y0 = max(int(math.floor(outline[:, 1].min())) - 1, 0)
    x1 = min(int(math.ceil(outline[:, 0].max())) + 1, width)
    y1 = min(int(math.ceil(outline[:, 1].max())) + 1, height)
    if x1 <= x0 or y1 <= y0:
        return slice(0, 0), slice(0, 0), np.zeros((0, 0), dtype=bool)

    s = _SUPERSAMPLE
    mask = Image.new("L", ((x1 - x0) * s, (y1 - y0) * s), 0)
    draw = ImageDraw.Draw(mask)

    def to_mask(points):
        # Supersampled pixel k has its centre at image coordinate (k + 0.5) / s, hence -0.5;
        # Pillow floors polygon vertices, hence +0.5 (rounds to nearest instead).
        return [(float(x), float(y)) for x, y in (points - np.array([x0, y0])) * s]

    draw.polygon(to_mask(outline), fill=255)
    hole = spec.hole()
    if hole is not None:
        draw.polygon(to_mask(hole), fill=0)
    alpha = np.asarray(mask.reduce(s), dtype=np.float32)[:, :, None] / 255.0

    main = _jittered_color(rng, spec.color)
    second = main * rng.uniform(0.45, 0.65)
    xs = np.arange(x0, x1, dtype=np.float32) + 0.5
    ys = np.arange(y0, y1, dtype=np.float32) + 0.5
    pattern = _texture_pattern(spec, xs, ys, rng)
    fill = np.where(pattern[:, :, None], second, main)
    rows, cols = slice(y0, y1), slice(x0, x1)
    canvas[rows, cols] = canvas[rows, cols] * (1 - alpha) + fill * alpha
    return rows, cols, alpha[:, :, 0] >= 0.5


_NOISE_BANK = np.random.default_rng(7).standard_normal((512, 512, 3), dtype=np.float32)


def finish(canvas: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sensor noise over everything, then 8-bit. The noise is a random window of a fixed
    bank of Gaussian noise: as random as needed here, and far cheaper than drawing it anew."""
    height, width = canvas.shape[:2]
    y, x = rng.integers(0, 512 - height + 1), rng.integers(0, 512 - width + 1)
    noisy = _NOISE_BANK[y:y + height, x:x + width] * np.float32(rng.uniform(2, 9)) + canvas
    return np.clip(noisy, 0, 255, out=noisy).astype(np.uint8)


def jpeg_bytes(pixels: np.ndarray, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def png_bytes(labels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(labels, "L").save(buffer, format="PNG")
    return buffer.getvalue()


def place_objects(
    rng: np.random.Generator, size: int, radii: list[float], margin: float = 1.0, tries: int = 40
) -> list[tuple[float, float, float]]:
    """(cx, cy, radius) for circles of the given radii, inside the image and not overlapping.

    A circle that finds no room in `tries` draws shrinks by 15% and tries again, so every
    requested object is placed (the caller's category counts stay exact).
    """
    placed: list[tuple[float, float, float]] = []
    for radius in radii:
        while True:
            if radius < 2:
                raise RuntimeError(f"no room for {len(radii)} objects in a {size}px image")
            candidates = rng.uniform(radius + margin, size - radius - margin, (tries, 2))
            free = next((
                (float(cx), float(cy)) for cx, cy in candidates
                if all((cx - x) ** 2 + (cy - y) ** 2 >= (radius + r + margin) ** 2 for x, y, r in placed)
            ), None)
            if free is not None:
                placed.append((*free, float(radius)))
                break
            radius *= 0.85
    return placed
