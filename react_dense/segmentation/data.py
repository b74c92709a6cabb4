"""Semantic-segmentation datasets in their published file layouts, and the training augmentation.

Every layout becomes a `SegmentationSource`: image and label files in pairs, class names, which
classes are unseen, and a lookup table from the raw values stored in the label files to class
indices 0..C-1 (anything else becomes `IGNORE_INDEX`). The layouts are documented in
docs/detection-segmentation.md.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from react_core.errors import ReactError
from react_core.io import read_json, read_text

IGNORE_INDEX = -1  # in memory; files use 255 (uint8) or 65535 (uint16), mapped here by the lookup tables
_RAW_VALUES = 1 << 16  # labels are uint8 PNGs or uint16 TIFFs


class SegmentationDataError(ReactError):
    """A dataset folder or file that does not follow its layout (the message names it)."""


@dataclass
class SegmentationSource:
    name: str
    images: list[Path]
    labels: list[Path]
    class_names: list[str]
    lookup: np.ndarray
    unseen: list[str] = field(default_factory=list)
    background: Optional[str] = None


def shift_lookup(num_classes: int, offset: int) -> np.ndarray:
    """Raw value `v` -> class `v + offset` for classes 0..num_classes-1; anything else ignored."""
    lookup = np.full(_RAW_VALUES, IGNORE_INDEX, dtype=np.int64)
    raw = np.arange(num_classes) - offset
    lookup[raw] = np.arange(num_classes)
    return lookup


def table_lookup(raw_values: Sequence[int]) -> np.ndarray:
    """The i-th raw value -> class i; anything else ignored."""
    lookup = np.full(_RAW_VALUES, IGNORE_INDEX, dtype=np.int64)
    lookup[np.asarray(raw_values)] = np.arange(len(raw_values))
    return lookup


def read_class_file(path: str | Path) -> list[str]:
    """One class per line (synonyms after `|` or `;` are kept on the line), or a JSON list of names."""
    path = Path(path)
    if not path.is_file():
        raise SegmentationDataError(f"class-name file not found: {path}")
    if path.suffix == ".json":
        names = read_json(path, SegmentationDataError)
        if isinstance(names, dict):
            names = names.get("classes")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise SegmentationDataError(f"{path}: expected a JSON list of class names (or {{'classes': [...]}})")
        return names
    return [line.strip() for line in read_text(path, SegmentationDataError).splitlines() if line.strip()]


def _pairs(image_dir: Path, label_dir: Path, image_suffix: str, label_suffix: str, stems: Optional[list[str]] = None):
    if not label_dir.is_dir():
        raise SegmentationDataError(f"label folder not found: {label_dir}")
    if not image_dir.is_dir():
        raise SegmentationDataError(f"image folder not found: {image_dir}")
    if stems is None:
        stems = sorted(p.name[: -len(label_suffix)] for p in label_dir.iterdir() if p.name.endswith(label_suffix))
    if not stems:
        raise SegmentationDataError(f"no *{label_suffix} label files in {label_dir}")
    images = [image_dir / f"{s}{image_suffix}" for s in stems]
    missing = [str(p) for p in images if not p.is_file()]
    if missing:
        raise SegmentationDataError(f"{len(missing)} label maps in {label_dir} have no image, e.g. {missing[0]}")
    return images, [label_dir / f"{s}{label_suffix}" for s in stems]


def _ade150_names(root: Path) -> list[str]:
    """`objectInfo150.txt` of ADEChallengeData2016 (tab-separated, last column `name;synonym;...`)."""
    info = root / "objectInfo150.txt"
    if not info.is_file():
        raise SegmentationDataError(f"{info} not found: give the 150 class names with `classes: FILE`")
    rows = [line.split("\t") for line in read_text(info, SegmentationDataError).splitlines()[1:] if line.strip()]
    return [row[-1].strip().replace(";", "|") for row in rows]


def coco_stuff_171(root: Path, split: str, classes: Optional[list[str]]) -> SegmentationSource:
    """COCO-Stuff-164k: `coco/{train,val}2017/*.jpg`; labels either converted to 0..170
    (`coco/stuffthingmaps_detectron2/`, MaskFormer's preparation script) or the released
    `coco/stuffthingmaps_trainval2017/` (value = COCO category id - 1)."""
    names = classes or list(COCO_STUFF_171)
    converted = root / "coco" / "stuffthingmaps_detectron2" / f"{split}2017"
    if converted.is_dir():
        lookup = shift_lookup(len(names), 0)
        label_dir = converted
    else:
        label_dir = root / "coco" / "stuffthingmaps_trainval2017" / f"{split}2017"
        lookup = table_lookup([i - 1 for i in COCO_STUFF_IDS])
    images, labels = _pairs(root / "coco" / f"{split}2017", label_dir, ".jpg", ".png")
    return SegmentationSource(f"coco_stuff_171_{split}", images, labels, names, lookup)


def ade20k_150(root: Path, split: str, classes: Optional[list[str]]) -> SegmentationSource:
    """ADEChallengeData2016: `images/{training,validation}/*.jpg`, `annotations/.../*.png`, 0 = unlabelled."""
    folder = root / "ADEChallengeData2016"
    names = classes or _ade150_names(folder)
    images, labels = _pairs(folder / "images" / split, folder / "annotations" / split, ".jpg", ".png")
    return SegmentationSource(f"ade20k_150_{split}", images, labels, names, shift_lookup(len(names), -1))


def ade20k_847(root: Path, split: str, classes: Optional[list[str]]) -> SegmentationSource:
    """ADE20K_2021_17_01 after Detectron2-style preparation: `images_detectron2/validation/*.jpg`,
    `annotations_detectron2/validation/*.tif` (uint16 0..846, 65535 unlabelled)."""
    if not classes:
        raise SegmentationDataError("ade20k-847 needs `classes: FILE` with its 847 names in label order")
    folder = root / "ADE20K_2021_17_01"
    images, labels = _pairs(folder / "images_detectron2" / split, folder / "annotations_detectron2" / split, ".jpg", ".tif")
    return SegmentationSource(f"ade20k_847_{split}", images, labels, classes, shift_lookup(len(classes), 0))


def pascal_context_59(root: Path, split: str, classes: Optional[list[str]]) -> SegmentationSource:
    """`VOCdevkit/VOC2010/JPEGImages/*.jpg`, `VOCdevkit/VOC2010/annotations_detectron2/pc59_{split}/*.png` (0..58, 255)."""
    names = classes or list(PASCAL_CONTEXT_59)
    folder = root / "VOCdevkit" / "VOC2010"
    images, labels = _pairs(folder / "JPEGImages", folder / "annotations_detectron2" / f"pc59_{split}", ".jpg", ".png")
    return SegmentationSource(f"pascal_context_59_{split}", images, labels, names, shift_lookup(len(names), 0))


def pascal_context_459(root: Path, split: str, classes: Optional[list[str]]) -> SegmentationSource:
    """`VOCdevkit/VOC2010/annotations_detectron2/pc459_{split}/*.tif` (uint16 0..458, 65535)."""
    if not classes:
        raise SegmentationDataError("pascal-context-459 needs `classes: FILE` with its 459 names in label order")
    folder = root / "VOCdevkit" / "VOC2010"
    images, labels = _pairs(folder / "JPEGImages", folder / "annotations_detectron2" / f"pc459_{split}", ".jpg", ".tif")
    return SegmentationSource(f"pascal_context_459_{split}", images, labels, classes, shift_lookup(len(classes), 0))


def voc_20(root: Path, split: str, classes: Optional[list[str]]) -> SegmentationSource:
    """The released VOC2012: `JPEGImages/`, `SegmentationClass/*.png` (palette: 0 background,
    1..20 classes, 255 border), image list `ImageSets/Segmentation/{split}.txt`. Background is
    not a class (FC-CLIP/CAT-Seg's VOC-20)."""
    names = classes or list(VOC_20)
    folder = root / "VOCdevkit" / "VOC2012"
    listing = folder / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not listing.is_file():
        raise SegmentationDataError(f"image list not found: {listing}")
    stems = [s.strip() for s in read_text(listing, SegmentationDataError).splitlines() if s.strip()]
    images, labels = _pairs(folder / "JPEGImages", folder / "SegmentationClass", ".jpg", ".png", stems)
    return SegmentationSource(f"voc_20_{split}", images, labels, names, shift_lookup(len(names), -1))


def image_folder(root: Path, split: str, classes: Optional[list[str]]) -> SegmentationSource:
    """Any `ROOT/{split}/images/*.jpg` + `ROOT/{split}/labels/*.png` whose label values are class
    indices. The class names come from `classes: FILE`, or from `ROOT/classes.json`:
    `{"classes": [...], "unseen": [...], "background_index": i}` (the last two optional)."""
    if not root.is_dir():
        raise SegmentationDataError(f"segmentation data folder not found: {root}")
    record = {}
    record_path = root / "classes.json"
    if record_path.is_file():
        record = read_json(record_path, SegmentationDataError)
        if not isinstance(record, dict) or not isinstance(record.get("classes"), list):
            raise SegmentationDataError(f"{record_path}: expected {{\"classes\": [...], \"unseen\": [...], \"background_index\": i}}")
    names = classes or record.get("classes")
    if not names:
        raise SegmentationDataError(f"layout `folder` needs `classes: FILE` (one name per line, in label order) or {record_path}")
    background = record["classes"][record["background_index"]] if record.get("background_index") is not None else None
    images, labels = _pairs(root / split / "images", root / split / "labels", ".jpg", ".png")
    return SegmentationSource(f"{root.name}_{split}", images, labels, names, shift_lookup(len(names), 0),
                              list(record.get("unseen", [])), background)


LAYOUTS: dict[str, Callable[[Path, str, Optional[list[str]]], SegmentationSource]] = {
    "coco-stuff-171": coco_stuff_171,
    "ade20k-150": ade20k_150,
    "ade20k-847": ade20k_847,
    "pascal-context-59": pascal_context_59,
    "pascal-context-459": pascal_context_459,
    "voc-20": voc_20,
    "folder": image_folder,
}


def open_source(
    layout: str, root: str | Path, split: str, classes: Optional[str] = None, unseen: Optional[Sequence[str]] = None,
    max_images: int = 0,
) -> SegmentationSource:
    """One dataset split; `classes` (a file) replaces the layout's names, `unseen` its unseen list."""
    if layout not in LAYOUTS:
        raise SegmentationDataError(f"unknown segmentation layout {layout!r} (known: {', '.join(LAYOUTS)})")
    names = read_class_file(classes) if classes else None
    source = LAYOUTS[layout](Path(root), split, names)
    if unseen is not None:
        source.unseen = list(unseen)
    known = set(source.class_names) | {name.split("|")[0].strip() for name in source.class_names}
    missing = sorted(set(source.unseen) - known)
    if missing:
        raise SegmentationDataError(f"{source.name}: unseen classes {missing} are not among its class names")
    if max_images:
        source.images, source.labels = source.images[:max_images], source.labels[:max_images]
    return source


def read_image(path: Path) -> torch.Tensor:
    """RGB float [3, H, W] in 0..1."""
    try:
        with Image.open(path) as handle:
            array = np.asarray(handle.convert("RGB"), dtype=np.float32)
    except OSError as error:
        raise SegmentationDataError(f"cannot read image {path}: {error}") from None
    return torch.from_numpy(array / 255.0).permute(2, 0, 1).contiguous()


def read_label(path: Path, lookup: np.ndarray) -> torch.Tensor:
    """Class indices [H, W] (int64) through the layout's lookup table."""
    try:
        with Image.open(path) as handle:
            raw = np.asarray(handle)
    except OSError as error:
        raise SegmentationDataError(f"cannot read label map {path}: {error}") from None
    if raw.ndim != 2:
        raise SegmentationDataError(f"label map {path} has shape {raw.shape}: expected one channel of class values")
    return torch.from_numpy(lookup[raw.astype(np.int64)])


class SegmentationDataset(torch.utils.data.Dataset):
    """(image [3, H, W] in 0..1, label [H, W]) pairs, optionally augmented for training."""

    def __init__(self, source: SegmentationSource, augment: Optional[Callable] = None):
        self.source = source
        self.augment = augment

    def __len__(self) -> int:
        return len(self.source.images)

    def __getitem__(self, index: int):
        image = read_image(self.source.images[index])
        label = read_label(self.source.labels[index], self.source.lookup)
        if image.shape[-2:] != label.shape:
            raise SegmentationDataError(
                f"image {self.source.images[index]} is {tuple(image.shape[-2:])} but its label map is {tuple(label.shape)}"
            )
        if self.augment is not None:
            image, label = self.augment(image, label)
        return image, label


class RandomScaleCropFlip:
    """Training augmentation of the semantic-segmentation recipes: resize the short side to
    `crop_size * s` (s uniform in `scale_range`), random crop (padding labels with ignore),
    horizontal flip."""

    def __init__(self, crop_size: int, scale_range: Sequence[float] = (0.5, 2.0), hflip: bool = True):
        self.crop_size = crop_size
        self.scale_range = tuple(scale_range)
        self.hflip = hflip

    def __call__(self, image: torch.Tensor, label: torch.Tensor):
        scale = random.uniform(*self.scale_range) * self.crop_size / min(image.shape[-2:])
        size = [max(1, round(side * scale)) for side in image.shape[-2:]]
        image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
        label = F.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0].long()
        pad_h, pad_w = max(self.crop_size - size[0], 0), max(self.crop_size - size[1], 0)
        if pad_h or pad_w:
            image = F.pad(image, (0, pad_w, 0, pad_h))
            label = F.pad(label, (0, pad_w, 0, pad_h), value=IGNORE_INDEX)
        top = random.randint(0, image.shape[-2] - self.crop_size)
        left = random.randint(0, image.shape[-1] - self.crop_size)
        image = image[:, top : top + self.crop_size, left : left + self.crop_size]
        label = label[top : top + self.crop_size, left : left + self.crop_size]
        if self.hflip and random.random() < 0.5:
            image, label = image.flip(-1), label.flip(-1)
        return image, label


# Class names of the benchmark vocabularies that are not shipped with their data.
VOC_20 = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "dining table", "dog",
    "horse", "motorbike", "person", "potted plant", "sheep", "sofa", "train", "tv monitor",
)
PASCAL_CONTEXT_59 = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle", "building", "bus",
    "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow", "cup", "curtain", "dog", "door", "fence",
    "floor", "flower", "food", "grass", "ground", "horse", "keyboard", "light", "motorbike", "mountain", "mouse",
    "person", "plate", "platform", "potted plant", "road", "rock", "sheep", "shelves", "sidewalk", "sign", "sky",
    "snow", "sofa", "table", "track", "train", "tree", "truck", "tv monitor", "wall", "water", "window", "wood",
)
_COCO_THINGS = {
    1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 5: "airplane", 6: "bus", 7: "train", 8: "truck", 9: "boat",
    10: "traffic light", 11: "fire hydrant", 13: "stop sign", 14: "parking meter", 15: "bench", 16: "bird", 17: "cat",
    18: "dog", 19: "horse", 20: "sheep", 21: "cow", 22: "elephant", 23: "bear", 24: "zebra", 25: "giraffe",
    27: "backpack", 28: "umbrella", 31: "handbag", 32: "tie", 33: "suitcase", 34: "frisbee", 35: "skis",
    36: "snowboard", 37: "sports ball", 38: "kite", 39: "baseball bat", 40: "baseball glove", 41: "skateboard",
    42: "surfboard", 43: "tennis racket", 44: "bottle", 46: "wine glass", 47: "cup", 48: "fork", 49: "knife",
    50: "spoon", 51: "bowl", 52: "banana", 53: "apple", 54: "sandwich", 55: "orange", 56: "broccoli", 57: "carrot",
    58: "hot dog", 59: "pizza", 60: "donut", 61: "cake", 62: "chair", 63: "couch", 64: "potted plant", 65: "bed",
    67: "dining table", 70: "toilet", 72: "tv", 73: "laptop", 74: "mouse", 75: "remote", 76: "keyboard",
    77: "cell phone", 78: "microwave", 79: "oven", 80: "toaster", 81: "sink", 82: "refrigerator", 84: "book",
    85: "clock", 86: "vase", 87: "scissors", 88: "teddy bear", 89: "hair drier", 90: "toothbrush",
}
_COCO_STUFF = (
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage", "cardboard", "carpet",
    "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter", "cupboard", "curtain", "desk-stuff",
    "dirt", "door-stuff", "fence", "floor-marble", "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower",
    "fog", "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves",
    "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper", "pavement",
    "pillow", "plant-other", "plastic", "platform", "playingfield", "railing", "railroad", "river", "road", "rock",
    "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow", "solid-other", "stairs",
    "stone", "straw", "structural-other", "table", "tent", "textile-other", "towel", "tree", "vegetable",
    "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile", "wall-wood", "water-other",
    "waterdrops", "window-blind", "window-other", "wood",
)
COCO_STUFF_IDS = tuple(sorted(_COCO_THINGS)) + tuple(range(92, 92 + len(_COCO_STUFF)))
COCO_STUFF_171 = tuple(_COCO_THINGS[i] for i in sorted(_COCO_THINGS)) + _COCO_STUFF
