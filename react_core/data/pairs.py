"""Image-caption pair datasets: a parquet manifest, webdataset shards, or a folder with captions.

All three expose the same interface: `captions` and `ids` (lists, known before any image is
read, so locked-text training can embed every caption once) and `__getitem__(i)` returning
`{"image": tensor, "index": i}`, or `None` for an image that cannot be read. `PairCollate`
drops the `None`s and counts them.
"""
from __future__ import annotations

import glob
import json
import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from react_core.data.images import (
    IMAGE_EXTENSIONS,
    ImageHashError,
    ShardReader,
    TarMember,
    check_recorded_sha256,
    decode_image,
    index_shard,
    load_image,
    read_bytes,
)
from react_core.errors import ReactError
from react_core.registry import DATASETS

logger = logging.getLogger(__name__)


class PairDataError(ReactError):
    """A pair source that cannot be used; the message names the file, column or sample."""


class PairDataset(Dataset):
    """Base class: subclasses fill `captions`, `ids` and implement `load_image(i)`."""

    captions: list[str]
    ids: list[str]

    def __init__(self, transform: Callable | None = None):
        self.transform = transform

    def __len__(self) -> int:
        return len(self.captions)

    def load_image(self, index: int):
        raise NotImplementedError

    def image_locations(self) -> list[str]:
        """One string per row naming its image; rows with equal strings show the same image."""
        return list(self.ids)

    def __getitem__(self, index: int) -> dict | None:
        image = self.load_image(index)
        if image is None:
            return None
        return {"image": self.transform(image) if self.transform is not None else image, "index": index}


def _resolve(root: Path, value: str) -> str:
    if "://" in value:
        return value
    path = Path(value)
    return str(path if path.is_absolute() else root / path)


@DATASETS.register_module(name="PairManifest")
class ManifestPairs(PairDataset):
    """A parquet manifest: `caption` plus `path`, `url`, or `shard` + `key` (a webdataset member).

    Relative paths and shards are read relative to `root` (default: the manifest's folder).
    `classes`, when given, keeps only rows for those classes: with `class_match="label"`, rows
    whose `class` column is in the list (e.g. to train on a retrieved subset for a few classes of
    a larger task); with `class_match="caption"`, rows whose caption names one of them
    (case-insensitive substring: a keyword search, the crudest text-to-text retrieval).
    `sample` then keeps that many rows drawn at random (seeded by `sample_seed`, manifest order
    kept): the random-pairs controls. With a `sha256` column (a retrieved subset), a sample of the
    images is checked against it.
    """

    HASH_SAMPLE = 32

    def __init__(
        self,
        manifest: str,
        root: str | None = None,
        classes: list[str] | None = None,
        class_match: str = "label",
        transform: Callable | None = None,
        sample: int | None = None,
        sample_seed: int = 0,
    ):
        super().__init__(transform)
        import pandas as pd

        path = Path(manifest)
        if not path.is_file():
            raise PairDataError(f"pair manifest not found: {path}")
        try:
            table = pd.read_parquet(path)
        except Exception as error:
            raise PairDataError(f"{path}: not a readable parquet file ({type(error).__name__}: {error})") from None
        if "caption" not in table.columns:
            raise PairDataError(f"{path}: no 'caption' column (columns: {', '.join(table.columns)})")
        if class_match not in ("label", "caption"):
            raise PairDataError(f"{path}: class_match must be 'label' or 'caption', not {class_match!r}")
        if classes is not None and class_match == "caption":
            names = [str(name).lower() for name in classes]
            table = table[[any(name in str(caption).lower() for name in names) for caption in table["caption"]]]
        elif classes is not None:
            if "class" not in table.columns:
                raise PairDataError(f"{path}: 'classes' was given but the manifest has no 'class' column")
            table = table[table["class"].isin(list(classes))]
        if sample is not None:
            if not 0 < sample <= len(table):
                raise PairDataError(f"{path}: sample={sample} is not between 1 and the {len(table)} rows")
            rows = np.sort(np.random.default_rng(sample_seed).choice(len(table), size=sample, replace=False))
            table = table.iloc[rows]
        root_dir = Path(root) if root is not None else path.parent
        self.source = str(path)
        self.captions = [str(c) for c in table["caption"]]
        self.ids = [str(i) for i in (table["id"] if "id" in table.columns else table.index)]
        self._reader = ShardReader()
        self._locations: list[str | TarMember | None]
        columns = set(table.columns)
        if not ({"path", "url"} & columns or {"shard", "key"} <= columns):
            raise PairDataError(
                f"{path}: needs a 'path' or 'url' column, or 'shard' and 'key' (columns: {', '.join(table.columns)})"
            )
        paths = table["path"] if "path" in columns else [None] * len(table)
        urls = table["url"] if "url" in columns else [None] * len(table)
        self._locations = [
            _resolve(root_dir, str(p)) if isinstance(p, str) and p else (str(u) if isinstance(u, str) and u else None)
            for p, u in zip(paths, urls)
        ]
        if {"shard", "key"} <= columns:
            members = self._shard_members(root_dir, table["shard"], table["key"], self._locations)
            self._locations = [loc if loc is not None else member for loc, member in zip(self._locations, members)]
        if "sha256" in columns:
            self._check_hashes(list(table["sha256"]))

    def _check_hashes(self, recorded: list) -> None:
        """Compare the bytes of `HASH_SAMPLE` images spread over the manifest with the sha256 it
        recorded: a corpus regenerated under the subset would pair old captions with new images."""
        step = max(1, len(recorded) // self.HASH_SAMPLE)
        for index in range(0, len(recorded), step)[: self.HASH_SAMPLE]:
            data = self._bytes(index)
            if data is not None:
                try:
                    check_recorded_sha256(data, recorded[index], f"{self.source}: sample {self.ids[index]}")
                except ImageHashError as error:
                    raise PairDataError(str(error)) from None

    def _shard_members(self, root: Path, shards, keys, known) -> list[TarMember | None]:
        """Webdataset members for the rows that have no path or url of their own."""
        indexes: dict[str, dict] = {}
        members = []
        for shard, key, location in zip(shards, keys, known):
            if location is not None or not isinstance(shard, str):
                members.append(None)
                continue
            shard_path = _resolve(root, str(shard))
            if shard_path not in indexes:
                if not Path(shard_path).is_file():
                    raise PairDataError(f"{self.source}: shard not found: {shard_path}")
                indexes[shard_path] = index_shard(shard_path)
            entry = indexes[shard_path].get(str(key), {})
            members.append(next((entry[e] for e in IMAGE_EXTENSIONS if e in entry), None))
        return members

    def image_locations(self) -> list[str]:
        return [
            f"{loc.shard}@{loc.offset}" if isinstance(loc, TarMember) else str(loc) if loc else f"missing:{i}"
            for i, loc in enumerate(self._locations)
        ]

    def _bytes(self, index: int) -> bytes | None:
        location = self._locations[index]
        if location is None:
            return None
        return self._reader.read(location) if isinstance(location, TarMember) else read_bytes(location)

    def load_image(self, index: int):
        data = self._bytes(index)
        if data is None:
            return None
        location = self._locations[index]
        return decode_image(data, f"{location.shard}:{self.ids[index]}" if isinstance(location, TarMember) else location)


def expand_shards(shards: str | Sequence[str]) -> list[str]:
    """Glob patterns (or plain paths) to a sorted list of existing shard files."""
    patterns = [shards] if isinstance(shards, str) else list(shards)
    found: list[str] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        for match in matches:
            if not Path(match).is_file():
                raise PairDataError(f"webdataset shard not found: {match}")
        if not matches:
            raise PairDataError(f"no webdataset shards match {pattern!r}")
        found.extend(matches)
    return found


@DATASETS.register_module(name="WebDatasetPairs")
class WebDatasetPairs(PairDataset):
    """Webdataset tar shards (`KEY.jpg` + `KEY.txt`, optional `KEY.json`), read by random access.

    The shards are indexed once (member offsets), so samples can be shuffled and a resumed run
    can start at any position without reading what came before. A sample without a readable
    caption is left out at indexing (with a warning when its text is not UTF-8); one without an
    image counts as skipped.
    """

    def __init__(self, shards: str | list[str], transform: Callable | None = None):
        super().__init__(transform)
        self.captions, self.ids, self._members = [], [], []
        self._reader = ShardReader()
        for shard in expand_shards(shards):
            unreadable = []
            for key, entry in index_shard(shard).items():
                try:
                    meta = json.loads(entry["json"]) if "json" in entry else {}
                    caption = entry["txt"].decode("utf-8").strip() if "txt" in entry else meta.get("caption")
                except (UnicodeDecodeError, json.JSONDecodeError):
                    unreadable.append(key)
                    continue
                if caption is None:
                    continue
                self.captions.append(caption)
                self.ids.append(str(meta.get("id", key)))
                self._members.append(next((entry[e] for e in IMAGE_EXTENSIONS if e in entry), None))
            if unreadable:
                logger.warning("%s: %d samples left out, their caption or json is not UTF-8 text (e.g. %s)",
                               shard, len(unreadable), unreadable[0])

    def load_image(self, index: int):
        member = self._members[index]
        if member is None:
            return None
        data = self._reader.read(member)
        return None if data is None else decode_image(data, f"{member.shard}:{self.ids[index]}")


@DATASETS.register_module(name="CaptionedFolder")
class CaptionedFolderPairs(PairDataset):
    """A folder of images, each with a caption in a `.txt` file of the same name beside it."""

    def __init__(self, root: str, transform: Callable | None = None):
        super().__init__(transform)
        folder = Path(root)
        if not folder.is_dir():
            raise PairDataError(f"caption folder not found: {folder}")
        self.captions, self.ids, self._paths = [], [], []
        for path in sorted(p for p in folder.rglob("*") if p.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS):
            caption_file = path.with_suffix(".txt")
            if not caption_file.is_file():
                continue
            self.captions.append(caption_file.read_text(encoding="utf-8").strip())
            self.ids.append(str(path.relative_to(folder).with_suffix("")))
            self._paths.append(str(path))
        if not self._paths:
            raise PairDataError(f"{folder}: no image with a .txt caption beside it")

    def load_image(self, index: int):
        return load_image(self._paths[index])


class ConcatPairs(PairDataset):
    """Several pair datasets read as one, in order: the training pairs, then the replay pairs."""

    def __init__(self, parts: Sequence[PairDataset]):
        super().__init__(None)
        self.parts = list(parts)
        self.captions = [caption for part in self.parts for caption in part.captions]
        self.ids = [sample_id for part in self.parts for sample_id in part.ids]
        self.offsets = np.cumsum([0] + [len(part) for part in self.parts])

    def _part(self, index: int) -> tuple[PairDataset, int]:
        which = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return self.parts[which], index - int(self.offsets[which])

    def image_locations(self) -> list[str]:
        return [location for part in self.parts for location in part.image_locations()]

    def __getitem__(self, index: int) -> dict | None:
        part, local = self._part(index)
        sample = part[local]
        return None if sample is None else {**sample, "index": index}


def build_pairs(spec: dict, transform: Callable | None = None, replay: dict | None = None) -> PairDataset:
    """Build a pair dataset from `{type: PairManifest|WebDatasetPairs|CaptionedFolder, ...}`;
    with a `replay` spec of the same form, its pairs follow the training pairs as one dataset."""
    pairs = DATASETS.build({**spec, "transform": transform})
    if replay is None:
        return pairs
    return ConcatPairs([pairs, DATASETS.build({**replay, "transform": transform})])


class PairCollate:
    """Stack the readable samples of a batch; count the unreadable ones under `skipped`.

    The text side comes as precomputed `text_features` (rows of `caption_embeddings`, when the
    text tower is locked) or as tokenized captions `texts` (with a `tokenizer`).
    """

    def __init__(
        self,
        captions: Sequence[str] | None = None,
        tokenizer: Callable | None = None,
        caption_embeddings: torch.Tensor | None = None,
    ):
        self.captions = captions
        self.tokenizer = tokenizer
        self.caption_embeddings = caption_embeddings

    def __call__(self, samples: list[dict | None]) -> dict:
        kept = [s for s in samples if s is not None]
        index = torch.tensor([s["index"] for s in kept], dtype=torch.long)
        batch = {
            "images": torch.stack([s["image"] for s in kept]) if kept else torch.empty(0),
            "index": index,
            "skipped": len(samples) - len(kept),
        }
        if self.caption_embeddings is not None:
            batch["text_features"] = self.caption_embeddings[index]
        elif self.tokenizer is not None:
            batch["texts"] = self.tokenizer([self.captions[i] for i in index.tolist()])
        return batch
