"""The synthetic world's concepts: colour x shape classes, texture as a nuisance.

A class is a colour-shape pair ("purple star"). The target classes form a 4 x 3 grid of
colours and shapes, so telling them apart needs both attributes; each of their colours and
shapes also appears in many non-target classes. The generic pretraining slice shows targets
rarely, so a text tower can compose their names from parts it has seen often while the image
tower has seen few examples: the gap that retrieval-augmented customization closes.
"""
from __future__ import annotations

import numpy as np

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 165, 60),
    "blue": (40, 75, 215),
    "yellow": (235, 210, 35),
    "purple": (135, 45, 175),
    "orange": (245, 135, 25),
    "cyan": (35, 200, 210),
    "pink": (240, 120, 185),
}
COLOR_SYNONYMS: dict[str, tuple[str, ...]] = {
    "red": ("crimson", "scarlet"),
    "green": ("emerald", "grass green"),
    "blue": ("navy", "cobalt"),
    "yellow": ("lemon", "golden"),
    "purple": ("violet", "lilac"),
    "orange": ("tangerine", "amber"),
    "cyan": ("turquoise", "aqua"),
    "pink": ("rose", "magenta"),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring", "diamond", "hexagon")
SHAPE_SYNONYMS: dict[str, tuple[str, ...]] = {
    "circle": ("disc", "round dot"),
    "square": ("block", "box"),
    "triangle": ("trigon", "triangular sign"),
    "star": ("five-pointed star", "starburst"),
    "cross": ("plus sign", "plus"),
    "ring": ("donut", "hoop"),
    "diamond": ("rhombus", "lozenge"),
    "hexagon": ("six-sided polygon", "hex"),
}
TEXTURES: tuple[str, ...] = ("plain", "striped", "dotted", "checkered")
TEXTURE_WORDS: dict[str, tuple[str, ...]] = {
    "plain": ("plain", "solid"),
    "striped": ("striped", "stripy"),
    "dotted": ("dotted", "polka dot"),
    "checkered": ("checkered", "checkerboard"),
}

TARGET_COLORS = ("purple", "orange", "cyan", "pink")
TARGET_SHAPES = ("star", "ring", "hexagon")
TARGET_CLASSES: tuple[str, ...] = tuple(f"{c} {s}" for c in TARGET_COLORS for s in TARGET_SHAPES)

# Base (non-novel) detection/segmentation categories: every target colour and shape appears
# here, so the novel (= target) categories are new compositions of known parts. Ordered by
# how frequent they are made in scenes: the first ones become LVIS 'f', the rest 'c'.
BASE_CATEGORIES: tuple[str, ...] = (
    "red circle", "blue square", "green triangle", "yellow star", "purple square", "orange triangle",
    "cyan cross", "pink diamond", "red star", "green ring", "blue hexagon", "yellow diamond",
    "purple cross", "orange circle", "cyan square",
)

# Base categories the calibration runs of the dense heads leave out of training: they stand in for
# the novel ones when the score ensembles' settings are chosen (weights, temperature), so no
# novel annotation is read. Frequent and common ones, every target colour but pink among them.
CALIBRATION_HELDOUT: tuple[str, ...] = ("cyan cross", "yellow diamond", "orange circle", "red star", "blue hexagon")

COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
CLASSES: tuple[str, ...] = tuple(f"{c} {s}" for c in COLOR_NAMES for s in SHAPES)


def split_class(name: str) -> tuple[str, str]:
    color, shape = name.split(" ", 1)
    return color, shape


def class_dir(name: str) -> str:
    """Folder name for a class: no spaces, so image-folder tools and shells stay simple."""
    return name.replace(" ", "_")


def corpus_weights() -> np.ndarray:
    """Long-tailed (Zipf, s=0.9) class frequencies of the web corpus, fixed for every seed.

    Non-target classes take Zipf ranks in a fixed shuffled order; each target gets the
    weight of a mid-tail rank, so targets are present but not common.
    """
    others = [name for name in CLASSES if name not in TARGET_CLASSES]
    order = np.random.default_rng(20230107).permutation(len(others))
    weights = {others[i]: 1.0 / (rank + 2) ** 0.9 for rank, i in enumerate(order)}
    target_weight = 1.0 / (len(others) // 2 + 2) ** 0.9
    weights.update({name: target_weight for name in TARGET_CLASSES})
    vector = np.array([weights[name] for name in CLASSES])
    return vector / vector.sum()


def pretrain_weights(target_factor: float) -> np.ndarray:
    """Corpus frequencies with the target classes scaled by `target_factor` (e.g. 1/20)."""
    vector = corpus_weights().copy()
    vector[[CLASSES.index(name) for name in TARGET_CLASSES]] *= target_factor
    return vector / vector.sum()


def category_synonyms(name: str) -> list[str]:
    """The name first, then a few synonym spellings (LVIS `synonyms`)."""
    color, shape = split_class(name)
    return [name, f"{COLOR_SYNONYMS[color][0]} {shape}", f"{color} {SHAPE_SYNONYMS[shape][0]}"]


def category_definition(name: str) -> str:
    color, shape = split_class(name)
    return f"a {color} object shaped like a {shape}, of any texture"
