"""COCO/LVIS-format detection data and the open-vocabulary split, engine-free.

The split follows the LVIS open-vocabulary protocol: novel categories (LVIS: the rare ones; COCO
OVD: 17 named ones) lose every annotation in training, and the training vocabulary holds the
base categories only, so novel text embeddings are never negatives. Evaluation keeps every
category.
"""
from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from react_core.errors import ReactError
from react_core.io import read_json
from react_dense.modeling.vocabulary import Vocabulary

logger = logging.getLogger(__name__)


class DatasetError(ReactError):
    """A detection JSON or image that cannot be used; the message names the file and entry."""


def load_coco(path: str | Path):
    """pycocotools COCO for a COCO/LVIS JSON, quietly, with a clear error for a bad file."""
    from pycocotools.coco import COCO

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"annotation file not found: {path}")
    data = read_json(path, DatasetError)
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a COCO/LVIS JSON object, found a {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise DatasetError(f"{path}: missing top-level key '{key}' (expected COCO/LVIS format)")
    _drop_dangling_annotations(path, data)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def check_inputs_exist(data) -> None:
    """Every annotation file and image folder a `data:` section names is there: a missing
    evaluation file is reported before the first training step, not after the last."""
    for key in ("train", "val"):
        annotation_file, image_root = getattr(data, key), getattr(data, f"{key}_images")
        if annotation_file and not Path(annotation_file).is_file():
            raise DatasetError(f"annotation file not found: {annotation_file} (data.{key})")
        if annotation_file and image_root and not Path(image_root).is_dir():
            raise DatasetError(f"image folder not found: {image_root} (data.{key}_images)")


def _drop_dangling_annotations(path: Path, data: dict) -> None:
    """Annotations must name an image and a category of the file: the others are counted, warned
    about and dropped; a file in which no annotation names one of its categories is an error."""
    images = {image.get("id") for image in data["images"]}
    categories = {category.get("id") for category in data["categories"]}
    annotations = data["annotations"]
    unknown_image = sum(a.get("image_id") not in images for a in annotations)
    unknown_category = sum(a.get("category_id") not in categories for a in annotations)
    if annotations and unknown_category == len(annotations):
        raise DatasetError(
            f"{path}: none of its {len(annotations)} annotations names one of its {len(categories)} categories "
            f"(e.g. category_id {annotations[0].get('category_id')!r}); is it the categories list of another file?"
        )
    if unknown_image or unknown_category:
        kept = [a for a in annotations if a.get("image_id") in images and a.get("category_id") in categories]
        logger.warning(
            "%s: dropped %d of %d annotations: %d name an unknown image id, %d an unknown category id",
            path, len(annotations) - len(kept), len(annotations), unknown_image, unknown_category,
        )
        data["annotations"] = kept


@dataclass
class OpenVocabularySplit:
    """Category ids seen in training (base) and held out (novel)."""

    base_ids: list[int]
    novel_ids: list[int]

    @classmethod
    def from_categories(cls, categories: Sequence[dict], novel: str | Sequence[str] = "rare") -> "OpenVocabularySplit":
        """`novel`: `rare` (LVIS frequency `r`), `none`, or a list of category names."""
        ordered = sorted(categories, key=lambda c: c["id"])
        if novel == "rare":
            if not all("frequency" in c for c in ordered):
                raise DatasetError("novel='rare' needs LVIS categories with a 'frequency' field")
            novel_ids = [c["id"] for c in ordered if c["frequency"] == "r"]
        elif novel == "none":
            novel_ids = []
        else:
            by_name = {c["name"]: c["id"] for c in ordered}
            unknown = [n for n in novel if n not in by_name]
            if unknown:
                raise DatasetError(f"novel categories not in the dataset: {', '.join(unknown)}")
            novel_ids = [by_name[n] for n in novel]
        novel_set = set(novel_ids)
        return cls([c["id"] for c in ordered if c["id"] not in novel_set], sorted(novel_ids))


def resolve_image_path(image: dict, image_root: Path) -> Path:
    """COCO `file_name`, or the last two parts of LVIS v1's `coco_url` (`train2017/xxx.jpg`)."""
    if "file_name" in image:
        return image_root / image["file_name"]
    if "coco_url" in image:
        return image_root / Path(*Path(image["coco_url"]).parts[-2:])
    raise DatasetError(f"image {image.get('id')} has neither 'file_name' nor 'coco_url'")


class DetectionDataset(torch.utils.data.Dataset):
    """Images with boxes, labels and masks of the kept categories.

    Item: (image float [3, H, W] in 0..1, target dict with `boxes` [N, 4] xyxy, `labels` [N]
    as indices into `category_ids`, `masks` [N, H, W] uint8 when `with_masks`, `image_id`).
    Crowd annotations and categories outside `category_ids` are dropped.
    """

    def __init__(
        self,
        annotation_file: str | Path,
        image_root: str | Path,
        category_ids: Optional[Sequence[int]] = None,
        with_masks: bool = True,
        skip_empty: bool = False,
        hflip: bool = False,
    ):
        self.coco = load_coco(annotation_file)
        self.annotation_file = str(annotation_file)
        self.image_root = Path(image_root)
        self.category_ids = list(category_ids) if category_ids is not None else sorted(self.coco.getCatIds())
        self.label_of = {cid: i for i, cid in enumerate(self.category_ids)}
        self.with_masks = with_masks
        self.hflip = hflip
        image_ids = sorted(self.coco.getImgIds())
        if skip_empty:
            image_ids = [i for i in image_ids if self.kept_annotations(i)]
        self.image_ids = image_ids

    def kept_annotations(self, image_id: int) -> list[dict]:
        """The image's annotations of kept categories, crowd annotations dropped: what training and
        the Detectron2 dataset dicts see."""
        return [
            a for a in self.coco.imgToAnns.get(image_id, [])
            if a["category_id"] in self.label_of and not a.get("iscrowd", 0)
        ]

    def __len__(self) -> int:
        return len(self.image_ids)

    def vocabulary(self) -> Vocabulary:
        return Vocabulary.from_categories(self.coco.loadCats(self.category_ids))

    def __getitem__(self, index: int):
        from PIL import Image

        image_id = self.image_ids[index]
        info = self.coco.imgs[image_id]
        path = resolve_image_path(info, self.image_root)
        try:
            with Image.open(path) as handle:
                array = np.asarray(handle.convert("RGB"), dtype=np.float32) / 255.0
        except (FileNotFoundError, OSError) as error:
            raise DatasetError(f"image {image_id} of {self.annotation_file}: cannot read {path} ({error})") from None
        image = torch.from_numpy(array).permute(2, 0, 1).contiguous()
        annotations = [a for a in self.kept_annotations(image_id) if a["bbox"][2] > 0 and a["bbox"][3] > 0]
        boxes = torch.tensor([a["bbox"] for a in annotations], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        target = {
            "boxes": boxes,
            "labels": torch.tensor([self.label_of[a["category_id"]] for a in annotations], dtype=torch.int64),
            "image_id": image_id,
        }
        if self.with_masks:
            masks = [self.coco.annToMask(a) for a in annotations]
            height, width = image.shape[-2:]
            target["masks"] = torch.from_numpy(np.stack(masks)) if masks else torch.zeros(0, height, width, dtype=torch.uint8)
        if self.hflip and torch.rand(()) < 0.5:
            image = image.flip(-1)
            width = image.shape[-1]
            target["boxes"] = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
            if self.with_masks:
                target["masks"] = target["masks"].flip(-1)
        return image, target


def collate(batch):
    """Lists of images and targets, as both engines' detectors take them."""
    images, targets = zip(*batch)
    return list(images), list(targets)
