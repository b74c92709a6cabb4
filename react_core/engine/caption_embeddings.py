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
from react_core.io import read_json
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
    """Rows of a LAION-layout folder (`text_emb/text_emb_N.npy` beside `metadata/metadata_N.parquet`
    with an `id` column) for `ids`, after checking `embeddings.json`'s model identity."""
    import pandas as pd

    folder = Path(folder)
    manifest = folder / "embeddings.json"
    if not manifest.is_file():
        raise EmbeddingFolderError(f"{manifest} not found: cannot tell which model made these embeddings")
    described = read_json(manifest, EmbeddingFolderError)
    if not isinstance(described, dict):
        raise EmbeddingFolderError(f"{manifest}: expected a JSON object naming the model")
    stored = described.get("identity", described.get("model"))
    if stored != identity:
        raise EmbeddingFolderError(
            f"{manifest}: embeddings come from {stored}, but the text tower being customized is {identity}; "
            "they cannot be reused (leave data.text_embeddings unset to compute them)"
        )
    text_files = sorted((folder / "text_emb").glob("text_emb_*.npy"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    if not text_files:
        raise EmbeddingFolderError(f"{folder / 'text_emb'}: no text_emb_N.npy files")
    wanted = {str(i): row for row, i in enumerate(ids)}
    result = torch.empty(len(ids), 0)
    found = 0
    for text_file in text_files:
        shard = text_file.stem.rsplit("_", 1)[1]
        metadata_file = folder / "metadata" / f"metadata_{shard}.parquet"
        if not metadata_file.is_file():
            raise EmbeddingFolderError(f"{metadata_file} not found (needed beside {text_file})")
        shard_ids = pd.read_parquet(metadata_file, columns=["id"])["id"].astype(str).tolist()
        embeddings = np.load(text_file, mmap_mode="r")
        if len(embeddings) != len(shard_ids):
            raise EmbeddingFolderError(f"{text_file} has {len(embeddings)} rows but {metadata_file} has {len(shard_ids)}")
        hits = [(wanted[i], position) for position, i in enumerate(shard_ids) if i in wanted]
        if not hits:
            continue
        if result.shape[1] == 0:
            result = torch.full((len(ids), embeddings.shape[1]), float("nan"))
        rows, positions = zip(*hits)
        result[list(rows)] = torch.from_numpy(np.asarray(embeddings[list(positions)], dtype=np.float32))
        found += len(hits)
    missing = [i for i, row in wanted.items() if result.shape[1] == 0 or torch.isnan(result[row, 0])]
    if missing:
        raise EmbeddingFolderError(f"{folder}: no embedding for {len(missing)} training captions (e.g. id {missing[0]!r})")
    return torch.nn.functional.normalize(result, dim=-1)
