"""Semantic segmentation scenes with a seen/unseen class split.

Label value k is class k of `classes.json`: 0 is background and 1..K are the detection
categories in the same order, so a label value equals the LVIS category id. The unseen classes
are the target (novel) classes. Train images still show unseen objects, but their pixels are
labelled 255 (ignore), so training never sees an unseen label nor calls those pixels
background; val labels every class. Objects may overlap: later ones occlude earlier ones.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from react_dense.lab.world.concepts import TARGET_CLASSES, TEXTURES, split_class
from react_dense.lab.world.render import ObjectSpec, background, draw_object, finish, jpeg_bytes, png_bytes
from react_dense.lab.world.scenes import CATEGORIES, SCENE_SIZE

IGNORE_INDEX = 255
CLASSES: tuple[str, ...] = ("background",) + CATEGORIES
UNSEEN: tuple[str, ...] = tuple(name for name in CLASSES if name in TARGET_CLASSES)
SEEN: tuple[str, ...] = tuple(name for name in CLASSES if name not in TARGET_CLASSES)


def plan_objects(rng: np.random.Generator, n_images: int) -> list[list[int]]:
    """Class indices per image (2-5 objects), dealt from shuffled passes over all classes so
    every class appears once before any appears twice."""
    counts = rng.integers(2, 6, n_images)
    stream = np.concatenate([rng.permutation(np.arange(1, len(CLASSES)))
                             for _ in range(int(counts.sum()) // (len(CLASSES) - 1) + 1)])
    bounds = np.concatenate([[0], np.cumsum(counts)])
    return [stream[start:stop].tolist() for start, stop in zip(bounds[:-1], bounds[1:])]


def write_images(out_dir: str, split: str, seed: int, stream: int, first: int, plans: list[list[int]]) -> None:
    """Images and label maps `first`.. of one split under `out_dir/split/{images,labels}`."""
    unseen = {CLASSES.index(name) for name in UNSEEN}
    images, labels = Path(out_dir) / split / "images", Path(out_dir) / split / "labels"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    for offset, classes in enumerate(plans):
        index = first + offset
        rng = np.random.default_rng([seed, stream, 0 if split == "train" else 1, index])
        canvas = background(rng, SCENE_SIZE)
        label = np.zeros((SCENE_SIZE, SCENE_SIZE), dtype=np.uint8)
        for value in classes:
            color, shape = split_class(CLASSES[value])
            radius = SCENE_SIZE * rng.uniform(0.08, 0.2)
            cx, cy = rng.uniform(radius, SCENE_SIZE - radius, 2)
            spec = ObjectSpec(color, shape, str(rng.choice(TEXTURES)), float(cx), float(cy), float(radius),
                              float(rng.uniform(0, 2 * math.pi)))
            rows, cols, mask = draw_object(canvas, spec, rng)
            hidden = split == "train" and value in unseen
            label[rows, cols][mask] = IGNORE_INDEX if hidden else value
        (images / f"{index:06d}.jpg").write_bytes(jpeg_bytes(finish(canvas, rng)))
        (labels / f"{index:06d}.png").write_bytes(png_bytes(label))


def classes_record() -> dict:
    return {
        "classes": list(CLASSES), "seen": list(SEEN), "unseen": list(UNSEEN),
        "background_index": 0, "ignore_index": IGNORE_INDEX,
        "unseen_in_train": "unseen objects appear in train images with their pixels labelled 255 (ignore)",
    }
