"""The downstream classification task: the target classes as an image folder.

Its images are clean (correct label, no distractor) and drawn from seeds disjoint from the
corpus, so they are held out from anything retrieval can return. The validation images also
carry a correct caption each (`pairs.parquet`) for image-text retrieval evaluation.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from react_core.io import atomic_path, atomic_write_json, atomic_write_text
from react_dense.lab.world.concepts import CLASSES, TARGET_CLASSES, TEXTURES, class_dir
from react_dense.lab.world.corpus import clean_caption, render_single

PAIR_COLUMNS = ("id", "path", "caption", "class")


def write_class(out_dir: str, index: int, n_train: int, n_val: int, seed: int, stream: int) -> list[dict]:
    """Images of target class `index` under train/ and val/; returns the val caption rows."""
    name = TARGET_CLASSES[index]
    folder = class_dir(name)
    rows = []
    for split, count in (("train", n_train), ("val", n_val)):
        rng = np.random.default_rng([seed, stream, index, 0 if split == "train" else 1])
        target = Path(out_dir) / split / folder
        target.mkdir(parents=True, exist_ok=True)
        for number in range(count):
            texture = str(rng.choice(TEXTURES))
            image, _ = render_single(rng, name, texture, distractor_rate=0.0)
            (target / f"{number:05d}.jpg").write_bytes(image)
            if split == "val":
                rows.append({"path": f"val/{folder}/{number:05d}.jpg", "caption": clean_caption(rng, name, texture),
                             "class": name})
    return rows


def write_index(out_dir: Path, val_rows: list[list[dict]]) -> int:
    """classes.txt, classes.json (folder -> class name) and pairs.parquet; returns the pair count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    atomic_write_text(out_dir / "classes.txt", "".join(f"{name}\n" for name in TARGET_CLASSES))
    atomic_write_json(out_dir / "classes.json", {class_dir(name): name for name in TARGET_CLASSES})
    rows = [row for per_class in val_rows for row in per_class]
    table = pa.table({
        "id": pa.array(range(len(rows)), type=pa.int64()),
        **{column: pa.array([row[column] for row in rows], type=pa.string()) for column in PAIR_COLUMNS[1:]},
    })
    with atomic_path(out_dir / "pairs.parquet") as tmp:
        pq.write_table(table, tmp)
    return len(rows)


GENERIC_STREAM = 101  # beyond the world's own streams: these images never appear in a world part


def generic_classes() -> tuple[str, ...]:
    """The world's non-target classes: what the base CLIP learned from the generic slice."""
    return tuple(name for name in CLASSES if name not in TARGET_CLASSES)


def ensure_generic_eval(world_dir: str | Path, per_class: int = 20, seed: int = 0) -> Path:
    """Held-out images of every non-target class under `world_dir/generic/val/<class>/` with
    `generic/classes.txt`, for zero-shot retention (what customization must not forget). Made once
    from (seed, class) alone, beside the world's parts (not in its content hash); returns the folder."""
    root = Path(world_dir) / "generic"
    names = generic_classes()
    if (root / "classes.txt").is_file():
        return root
    for index, name in enumerate(names):
        rng = np.random.default_rng([seed, GENERIC_STREAM, index])
        target = root / "val" / class_dir(name)
        target.mkdir(parents=True, exist_ok=True)
        for number in range(per_class):
            image, _ = render_single(rng, name, str(rng.choice(TEXTURES)), distractor_rate=0.0)
            with atomic_path(target / f"{number:05d}.jpg") as tmp:
                Path(tmp).write_bytes(image)
    atomic_write_text(root / "classes.txt", "".join(f"{name}\n" for name in names))
    return root
