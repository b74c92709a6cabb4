"""Caption embeddings for locked-text training: computed once, or reused from a retrieval folder.

They are valid only for the very text tower being customized, so a cache is keyed by the
model's identity, and an embedding folder is reused only when its `embeddings.json` names
that same identity.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from react_core.errors import ReactError
from react_core.modeling.text import cached_class_embeddings

CAPTION_TEMPLATE = ["{}"]


class EmbeddingFolderError(ReactError):
    """An embedding folder that cannot serve these captions; names the file and the reason."""


def caption_embeddings(bundle, captions: Sequence[str], cache_dir: str | Path | None) -> torch.Tensor:
    """[N, D] L2-normalised text embeddings of the captions, cached on disk by model and captions.

    A caption is a one-name vocabulary under the identity template, so this is the same code
    path (and the same cache) as class-name embeddings.
    """
    return cached_class_embeddings(bundle, list(captions), CAPTION_TEMPLATE, cache_dir)


def embeddings_from_folder(folder: str | Path, ids: Sequence[str], identity: dict) -> torch.Tensor:
    """[N, D] L2-normalised caption embeddings of the samples `ids`, read from an embedding folder
    (`react embed`'s, LAION's or a DataComp pool: `react_core.retrieval.embed.EmbeddingFolder`),
    after checking that its `embeddings.json` names this very text tower (`identity`)."""
    from react_core.retrieval.embed import EmbeddingError, EmbeddingFolder

    try:
        source = EmbeddingFolder(folder)
        stored = source.info.get("identity", source.info.get("model"))
        if stored != identity:
            raise EmbeddingFolderError(
                f"{source.root / 'embeddings.json'}: embeddings come from {stored}, but the text tower being customized "
                f"is {identity}; they cannot be reused (leave data.text_embeddings unset to compute them)"
            )
        if not source.has("text"):
            raise EmbeddingFolderError(f"{folder}: holds no caption embeddings")
        rows = dict(zip(source.metadata(["id"])["id"].astype(str), range(len(source))))
        missing = [i for i in map(str, ids) if i not in rows]
        if missing:
            raise EmbeddingFolderError(f"{folder}: no embedding for {len(missing)} training captions (e.g. id {missing[0]!r})")
        vectors = source.gather("text", np.array([rows[str(i)] for i in ids], dtype=np.int64))
    except EmbeddingError as error:
        raise EmbeddingFolderError(str(error)) from None
    return torch.nn.functional.normalize(torch.from_numpy(vectors), dim=-1)
