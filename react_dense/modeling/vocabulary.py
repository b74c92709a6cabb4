"""Vocabularies (class names with synonyms) and their CLIP text embeddings for dense heads.

A vocabulary comes from a list of names, a comma-separated string, a text file (one class per
line, synonyms separated by `|`), or COCO/LVIS categories (`name`, optional `synonyms`). Each
class's embedding is the mean of its synonyms' template-averaged embeddings, L2-normalised;
the per-name embeddings go through `react_core.modeling.text`'s on-disk cache, so a vocabulary
is encoded once per text tower.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch

from react_core.config import ConfigError
from react_core.io import read_json, read_text
from react_core.modeling.text import VocabularyError, load_templates, synonym_class_embeddings


def _readable(name: str) -> str:
    """LVIS names are `aerosol_can`; prompts read better as `aerosol can`."""
    return " ".join(name.replace("_", " ").split())


@dataclass
class Vocabulary:
    """Class names in order, each with the synonyms used for prompting (first is the name)."""

    names: list[str]
    synonyms: list[list[str]] = field(default_factory=list)
    category_ids: list[int] = field(default_factory=list)

    def __post_init__(self):
        if not self.synonyms:
            self.synonyms = [[n] for n in self.names]
        if not self.category_ids:
            self.category_ids = list(range(1, len(self.names) + 1))
        if not (len(self.names) == len(self.synonyms) == len(self.category_ids)):
            raise VocabularyError("names, synonyms and category ids must have the same length")
        seen = {}
        for index, name in enumerate(self.names):
            if name in seen:
                raise VocabularyError(f"class name {name!r} appears twice (entries {seen[name] + 1} and {index + 1})")
            seen[name] = index

    def __len__(self) -> int:
        return len(self.names)

    @classmethod
    def from_categories(cls, categories: Sequence[dict]) -> "Vocabulary":
        """COCO/LVIS `categories` (sorted by id); LVIS `synonyms` are used when present."""
        ordered = sorted(categories, key=lambda c: c["id"])
        names = [_readable(c["name"]) for c in ordered]
        synonyms = []
        for c, name in zip(ordered, names):
            words = [name] + [_readable(s) for s in c.get("synonyms", [])]
            synonyms.append(list(dict.fromkeys(words)))
        return cls(names, synonyms, [int(c["id"]) for c in ordered])

    def subset(self, category_ids: Sequence[int]) -> "Vocabulary":
        index = {cid: i for i, cid in enumerate(self.category_ids)}
        picked = [index[c] for c in category_ids]
        return Vocabulary([self.names[i] for i in picked], [self.synonyms[i] for i in picked], list(category_ids))


def parse_vocabulary(spec: str | Sequence[str]) -> Vocabulary:
    """`"cat,red car"`, a list of names, a `.txt` file (`|` between synonyms) or a COCO/LVIS `.json`."""
    if not isinstance(spec, str):
        return Vocabulary([str(n).strip() for n in spec])
    path = Path(spec)
    if path.suffix.lower() in (".txt", ".json") and not path.is_file():  # a missing file, not a class name
        raise VocabularyError(f"vocabulary file not found: {path}")
    if path.suffix.lower() == ".json":
        data = read_json(path, VocabularyError)
        categories = data.get("categories") if isinstance(data, dict) else data
        if not isinstance(categories, list) or not all(isinstance(c, dict) and "name" in c and "id" in c for c in categories):
            raise VocabularyError(f"{path}: expected COCO/LVIS 'categories' with 'id' and 'name'")
        return Vocabulary.from_categories(categories)
    if path.is_file():
        names, synonyms = [], []
        for number, line in enumerate(read_text(path, VocabularyError).splitlines(), 1):
            words = [w.strip() for w in line.split("|") if w.strip()]
            if not words:
                continue
            if words[0] in names:
                raise VocabularyError(f"{path}, line {number}: class {words[0]!r} appears twice")
            names.append(words[0])
            synonyms.append(words)
        if not names:
            raise VocabularyError(f"{path}: no class names")
        return Vocabulary(names, synonyms)
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        raise VocabularyError(f"vocabulary {spec!r} is neither a file nor a comma-separated list of names")
    return Vocabulary(names)


def vocabulary_embeddings(
    bundle,
    vocabulary: Vocabulary,
    templates: str | Sequence[str] = "imagenet",
    cache_dir: Optional[str | Path] = None,
) -> torch.Tensor:
    """[C, D] L2-normalised class embeddings from `bundle`'s text tower (a `ClipBundle`)."""
    return synonym_class_embeddings(bundle, vocabulary.synonyms, load_templates(templates), cache_dir)


def permute_novel(embeddings: torch.Tensor, is_novel: torch.Tensor, seed: int) -> torch.Tensor:
    """Control: shuffle the novel rows among themselves (a derangement when there are two or more)."""
    novel = torch.nonzero(is_novel).flatten()
    if len(novel) < 2:
        raise ConfigError("permute_novel_embeddings needs at least two novel categories")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(novel), generator=generator)
    while (order == torch.arange(len(novel))).any():
        order = torch.randperm(len(novel), generator=generator)
    shuffled = embeddings.clone()
    shuffled[novel] = embeddings[novel[order]]
    return shuffled
