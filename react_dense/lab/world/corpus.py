"""Web-like image-caption pairs, written as webdataset shards plus a parquet manifest.

Captions are noisy the way alt-text is: many templates, synonyms, missing colours, junk
tokens, and a fraction that describes some other concept entirely (`mismatched`). Images are
64 px: one main object on clutter, sometimes a small distractor of another class. Each shard
draws from its own seed, so shards can be made in parallel and still be reproducible.
"""
from __future__ import annotations

import io
import json
import math
import tarfile
from pathlib import Path

import numpy as np

from react_core.io import atomic_path
from react_dense.lab.world.concepts import (
    CLASSES,
    COLOR_SYNONYMS,
    SHAPE_SYNONYMS,
    TEXTURE_WORDS,
    TEXTURES,
    split_class,
)
from react_dense.lab.world.render import ObjectSpec, background, draw_object, finish, jpeg_bytes, place_objects

IMAGE_SIZE = 64
MANIFEST_COLUMNS = ("id", "key", "shard", "caption", "class", "color", "shape", "texture", "mismatched")

_TEMPLATES = (
    "a photo of a {c} {s}",
    "{c} {s} sticker on sale",
    "{s}, {c}, {t} pattern",
    "stock image {n} {c} {s} icon",
    "{t} {c} {s} on a messy background",
    "cheap {c} {s} decal free shipping",
    "{c} {s} clipart png",
    "close-up of a {c} {s}",
    "my favourite {s}! so {c} :)",
    "{s} shape in {c}",
    "vintage {c} {s} print, {t}",
    "{c} {s} | free download | hd wallpaper",
    "a {t} {s} that is {c}",
    "wall art {c} {s} {n}",
    "{s} ({c}) - buy now",
    "the {c} {s} in the picture",
    "#{c} #{s} #art",
    "{c} {s}",
    "a {c} {t} {s} on a cluttered table",
    "lot {n}: {c} {s} badge",
)
_JUNK = ("hd", "png", "jpg", "4k", "free", "#art", "sale", "new", "best price", "2019", "(c)", "img", "vector",
         "royalty free", "download")


def noisy_caption(rng: np.random.Generator, name: str, texture: str) -> str:
    """Alt-text-like caption of `name`; may drop the colour, use synonyms, add junk."""
    color, shape = split_class(name)
    if rng.random() < 0.2:
        color = str(rng.choice(COLOR_SYNONYMS[color]))
    if rng.random() < 0.2:
        shape = str(rng.choice(SHAPE_SYNONYMS[shape]))
    if rng.random() < 0.12:
        color = str(rng.choice(("", "colourful", "bright", "nice")))
    template = str(rng.choice(_TEMPLATES))
    text = template.format(c=color, s=shape, t=rng.choice(TEXTURE_WORDS[texture]), n=int(rng.integers(100, 10000)))
    if "{t}" not in template and texture != "plain" and rng.random() < 0.4:
        text += f", {rng.choice(TEXTURE_WORDS[texture])}"
    if rng.random() < 0.3:
        junk = str(rng.choice(_JUNK))
        text = f"{junk} {text}" if rng.random() < 0.5 else f"{text} {junk}"
    if rng.random() < 0.1:
        text = text.title()
    return " ".join(text.replace("# ", "").split())


def clean_caption(rng: np.random.Generator, name: str, texture: str) -> str:
    """A correct, complete caption (evaluation pairs)."""
    color, shape = split_class(name)
    words = "" if texture == "plain" else f"{TEXTURE_WORDS[texture][0]} "
    template = str(rng.choice(("a photo of a {}.", "a {} on a cluttered background.", "an image of a {}.")))
    return template.format(f"{words}{color} {shape}")


def random_object(rng: np.random.Generator, name: str, texture: str, cx: float, cy: float, radius: float) -> ObjectSpec:
    color, shape = split_class(name)
    return ObjectSpec(color, shape, texture, cx, cy, radius, float(rng.uniform(0, 2 * math.pi)))


def render_single(
    rng: np.random.Generator, name: str, texture: str, distractor_rate: float
) -> tuple[bytes, list[dict]]:
    """A 64 px image of `name` (maybe plus a small distractor): JPEG bytes and object records."""
    canvas = background(rng, IMAGE_SIZE)
    radii = [IMAGE_SIZE * rng.uniform(0.22, 0.34)]
    names, textures = [name], [texture]
    if rng.random() < distractor_rate:
        radii.append(IMAGE_SIZE * rng.uniform(0.09, 0.13))
        names.append(str(rng.choice([c for c in CLASSES if c != name])))
        textures.append(str(rng.choice(TEXTURES)))
    objects = []
    for (cx, cy, radius), obj_name, obj_texture in zip(place_objects(rng, IMAGE_SIZE, radii), names, textures):
        spec = random_object(rng, obj_name, obj_texture, cx, cy, radius)
        draw_object(canvas, spec, rng)
        objects.append({"class": obj_name, "color": spec.color, "shape": spec.shape, "texture": obj_texture,
                        "bbox": spec.bbox()})
    return jpeg_bytes(finish(canvas, rng)), objects


def _tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


def write_shard(
    out_dir: str, shard: int, shard_size: int, total: int, weights: list[float], mismatch_rate: float,
    distractor_rate: float, seed: int, stream: int,
) -> dict[str, list]:
    """Write `shards/{shard:06d}.tar` under `out_dir`; return its manifest columns.

    Sample ids are global across shards (shard * shard_size + i); keys are the zero-padded id.
    """
    rng = np.random.default_rng([seed, stream, shard])
    start, stop = shard * shard_size, min((shard + 1) * shard_size, total)
    count = stop - start
    classes = rng.choice(len(CLASSES), size=count, p=np.asarray(weights))
    relative = f"shards/{shard:06d}.tar"
    columns: dict[str, list] = {name: [] for name in MANIFEST_COLUMNS}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for offset, class_index in enumerate(classes):
            sample_id = start + offset
            key = f"{sample_id:09d}"
            name = CLASSES[class_index]
            texture = str(rng.choice(TEXTURES))
            mismatched = bool(rng.random() < mismatch_rate)
            caption_class = str(rng.choice([c for c in CLASSES if c != name])) if mismatched else name
            caption_texture = str(rng.choice(TEXTURES)) if mismatched else texture
            caption = noisy_caption(rng, caption_class, caption_texture)
            image, objects = render_single(rng, name, texture, distractor_rate)
            color, shape = split_class(name)
            truth = {"id": sample_id, "class": name, "color": color, "shape": shape, "texture": texture,
                     "mismatched": mismatched, "caption_class": caption_class, "objects": objects}
            _tar_member(tar, f"{key}.jpg", image)
            _tar_member(tar, f"{key}.txt", caption.encode("utf-8"))
            _tar_member(tar, f"{key}.json", json.dumps(truth, sort_keys=True).encode("utf-8"))
            for column, value in zip(MANIFEST_COLUMNS, (sample_id, key, relative, caption, name, color, shape,
                                                         texture, mismatched)):
                columns[column].append(value)
    with atomic_path(Path(out_dir) / relative) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return columns


def write_manifest(path: Path, parts: list[dict[str, list]]) -> int:
    """Concatenate per-shard columns into `manifest.parquet`; returns the row count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {"id": pa.int64(), "mismatched": pa.bool_()}
    table = pa.table({
        name: pa.array([v for part in parts for v in part[name]], type=types.get(name, pa.string()))
        for name in MANIFEST_COLUMNS
    })
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return table.num_rows
