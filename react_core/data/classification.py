"""Labelled image folders for evaluation: `ROOT/<class>/<image>`, classes named by a text file.

The class order is the one of `classes.txt` (it is the order of the text classifier), not the
alphabetical order `torchvision.datasets.ImageFolder` would impose. A sub-folder may be named
by the class name itself, with `_` or `-` for spaces, or by the class index.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from torch.utils.data import Dataset

from react_core.data.images import IMAGE_EXTENSIONS, load_image
from react_core.data.pairs import PairDataError
from react_core.io import read_text


def read_classnames(path: str | Path) -> list[str]:
    """One class name per line; blank lines ignored; duplicates are an error naming the line.

    `imagenet` (when no such file exists) is ImageNet-1K's class names in OpenAI's wording, as
    CLIP's zero-shot evaluation uses them (two of them repeat, as there).
    """
    if str(path) == "imagenet" and not Path(path).exists():
        from react_core.modeling.text import imagenet_classnames

        return imagenet_classnames()
    path = Path(path)
    if not path.is_file():
        raise PairDataError(f"class list not found: {path}")
    names: list[str] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(read_text(path, PairDataError).splitlines(), 1):
        name = line.strip()
        if not name:
            continue
        if name in seen:
            raise PairDataError(f"{path}, line {number}: class {name!r} repeats line {seen[name]}")
        seen[name] = number
        names.append(name)
    if not names:
        raise PairDataError(f"{path}: no class names")
    return names


def _folder_aliases(index: int, name: str) -> set[str]:
    return {name, name.replace(" ", "_"), name.replace(" ", "-"), str(index), f"{index:03d}", f"{index:04d}"}


class ClassificationFolder(Dataset):
    """`(image tensor, label)` pairs; unreadable images come back as None and are skipped."""

    def __init__(self, root: str | Path, classnames: Sequence[str], transform: Callable | None = None):
        root = Path(root)
        if not root.is_dir():
            raise PairDataError(f"image folder not found: {root}")
        by_alias = {alias: i for i, name in enumerate(classnames) for alias in _folder_aliases(i, name)}
        self.classnames = list(classnames)
        self.transform = transform
        self.samples: list[tuple[str, int]] = []
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            if folder.name not in by_alias:
                raise PairDataError(f"{folder}: folder name matches no class in the class list")
            label = by_alias[folder.name]
            self.samples.extend(
                (str(p), label)
                for p in sorted(folder.rglob("*"))
                if p.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS
            )
        if not self.samples:
            raise PairDataError(f"{root}: no images in class sub-folders")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        image = load_image(path)
        if image is None:
            return None
        return (self.transform(image) if self.transform is not None else image), label


def collate_labelled(samples):
    """Default collate over the readable samples; returns (images, labels, skipped)."""
    import torch

    kept = [s for s in samples if s is not None]
    if not kept:
        return torch.empty(0), torch.empty(0, dtype=torch.long), len(samples)
    images, labels = zip(*kept)
    return torch.stack(images), torch.tensor(labels), len(samples) - len(kept)
