"""Detection and instance-segmentation scenes in LVIS v1 JSON.

Which categories go in which image is decided up front from per-category image counts, so the
LVIS frequency buckets (r: <= 10 training images, c: 11-100, f: > 100) come out as designed:
the target classes are rare, hence the novel categories of the open-vocabulary protocol, and
the base categories hold their colours and shapes. Every object is annotated, so each image's
`neg_category_ids` lists every category it does not contain and the evaluation is exhaustive.
Image `file_name`s are relative to the detection folder (`images/train_000001.jpg`).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from react_dense.lab.world.concepts import (
    BASE_CATEGORIES,
    TARGET_CLASSES,
    TEXTURES,
    category_definition,
    category_synonyms,
    split_class,
)
from react_dense.lab.world.presets import Preset
from react_dense.lab.world.render import ObjectSpec, background, draw_object, finish, jpeg_bytes, place_objects

SCENE_SIZE = 128
MIN_OBJECTS, MAX_OBJECTS = 2, 6
CATEGORIES: tuple[str, ...] = tuple(sorted(BASE_CATEGORIES + TARGET_CLASSES))


def lvis_frequency(image_count: int) -> str:
    """LVIS's rule on training image counts."""
    return "r" if image_count <= 10 else "c" if image_count <= 100 else "f"


def plan_scenes(rng: np.random.Generator, preset: Preset) -> dict[str, list[list[str]]]:
    """Category names per image for train and val; val holds every category at least
    `det_val_min` times and otherwise mirrors the train proportions."""
    ranges = {name: preset.det_range_c for name in BASE_CATEGORIES}
    ranges.update({name: preset.det_range_f for name in BASE_CATEGORIES[: preset.det_frequent]})
    ranges.update({name: preset.det_range_r for name in TARGET_CLASSES})
    train = {name: int(rng.integers(low, high + 1)) for name, (low, high) in sorted(ranges.items())}
    scale = preset.det_val_images / preset.det_train_images
    val = {name: min(preset.det_val_images, max(preset.det_val_min, round(count * scale)))
           for name, count in train.items()}
    fillers = list(BASE_CATEGORIES[: preset.det_frequent])
    return {"train": allocate(rng, preset.det_train_images, train, fillers),
            "val": allocate(rng, preset.det_val_images, val, fillers)}


def allocate(rng: np.random.Generator, n_images: int, counts: dict[str, int], fillers: list[str]) -> list[list[str]]:
    """Category names per image so that category c is in exactly counts[c] images.

    Largest counts go first; each picks distinct images with probability proportional to
    their free room (at most MAX_OBJECTS). Images left with fewer than MIN_OBJECTS get extra
    instances of `fillers` (the frequent categories, whose bucket more images cannot change);
    some free room goes to second instances of a category already present.
    """
    load = np.zeros(n_images, dtype=np.int64)
    members: list[list[str]] = [[] for _ in range(n_images)]
    for name in sorted(counts, key=lambda c: (-counts[c], c)):
        room = (MAX_OBJECTS - load).astype(np.float64)
        if np.count_nonzero(room) < counts[name]:
            raise RuntimeError(f"cannot place '{name}' in {counts[name]} of {n_images} images; enlarge the preset")
        for index in rng.choice(n_images, size=counts[name], replace=False, p=room / room.sum()):
            members[index].append(name)
            load[index] += 1
    for objects in members:
        while len(objects) < MIN_OBJECTS:
            objects.append(str(rng.choice(fillers)))
        if len(objects) < MAX_OBJECTS and rng.random() < 0.3:
            objects.append(str(rng.choice(objects)))
        rng.shuffle(objects)
    return members


def image_file(split: str, image_id: int) -> str:
    """`file_name` of an image, relative to the detection folder (the image root)."""
    return f"images/{split}_{image_id:06d}.jpg"


def render_scene(seed: int, stream: int, split_code: int, index: int, names: list[str]) -> tuple[bytes, list[dict]]:
    """One scene: JPEG bytes and per-object {name, bbox, area, segmentation} (LVIS fields)."""
    rng = np.random.default_rng([seed, stream, split_code, index])
    canvas = background(rng, SCENE_SIZE)
    radii = sorted((SCENE_SIZE * rng.uniform(0.07, 0.16) for _ in names), reverse=True)
    objects = []
    for name, (cx, cy, radius) in zip(names, place_objects(rng, SCENE_SIZE, radii, margin=2.0)):
        color, shape = split_class(name)
        spec = ObjectSpec(color, shape, str(rng.choice(TEXTURES)), cx, cy, radius, float(rng.uniform(0, 2 * math.pi)))
        draw_object(canvas, spec, rng)
        objects.append({"name": name, "bbox": spec.bbox(), "area": round(spec.area(), 2),
                        "segmentation": [spec.coco_polygon()]})
    return jpeg_bytes(finish(canvas, rng)), objects


def write_scenes(
    out_dir: str, seed: int, stream: int, split: str, first_id: int, plans: list[list[str]]
) -> list[list[dict]]:
    """Render images `first_id`.. of one split into `out_dir/images`; returns their objects."""
    split_code = 0 if split == "train" else 1
    (Path(out_dir) / "images").mkdir(parents=True, exist_ok=True)
    results = []
    for offset, names in enumerate(plans):
        image_id = first_id + offset
        data, objects = render_scene(seed, stream, split_code, image_id, names)
        (Path(out_dir) / image_file(split, image_id)).write_bytes(data)
        results.append(objects)
    return results


def lvis_json(split: str, first_id: int, scenes: list[list[dict]], categories: list[dict], version: str) -> dict:
    """The LVIS v1 dict of one split, annotation ids numbered from 1."""
    ids = {category["name"]: category["id"] for category in categories}
    all_ids = set(ids.values())
    images, annotations = [], []
    for offset, objects in enumerate(scenes):
        image_id = first_id + offset
        present = {ids[obj["name"]] for obj in objects}
        images.append({
            "id": image_id, "file_name": image_file(split, image_id), "height": SCENE_SIZE, "width": SCENE_SIZE,
            "not_exhaustive_category_ids": [], "neg_category_ids": sorted(all_ids - present),
        })
        for obj in objects:
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": ids[obj["name"]],
                "bbox": obj["bbox"], "area": obj["area"], "segmentation": obj["segmentation"], "iscrowd": 0,
            })
    return {
        "info": {"description": f"react synthetic world, detection {split}", "version": version},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def lvis_categories(train_scenes: list[list[dict]]) -> list[dict]:
    """Category records with LVIS frequency, image_count and instance_count from the train split."""
    image_count = {name: 0 for name in CATEGORIES}
    instance_count = {name: 0 for name in CATEGORIES}
    for objects in train_scenes:
        for name in {obj["name"] for obj in objects}:
            image_count[name] += 1
        for obj in objects:
            instance_count[obj["name"]] += 1
    return [
        {"id": number, "name": name, "synonyms": category_synonyms(name), "def": category_definition(name),
         "synset": f"{name.replace(' ', '_')}.n.01", "frequency": lvis_frequency(image_count[name]),
         "image_count": image_count[name], "instance_count": instance_count[name]}
        for number, name in enumerate(CATEGORIES, 1)
    ]
