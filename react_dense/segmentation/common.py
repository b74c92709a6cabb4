"""What the plain and the Detectron2 segmentation engines share: the data sources, the class
embeddings of a label space, the score ensemble, and `metrics.json`."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from react_core.config import ConfigError
from react_core.io import atomic_write_json
from react_dense.segmentation.config import SegmentationConfig, SegmentationDataSpec
from react_dense.segmentation.data import IGNORE_INDEX, SegmentationSource, open_source


@dataclass
class ClassEmbeddings:
    """A label space's text embeddings, and which rows are unseen or scored by the void embedding."""

    names: list[str]
    embeddings: torch.Tensor
    unseen: torch.Tensor
    void_rows: torch.Tensor


@dataclass
class SeenLabelSpace:
    """The training label space: the seen classes only, so unseen classes are never negatives.

    `to_seen` maps a label of the full space to its seen index, unseen classes to IGNORE_INDEX.
    """

    embeddings: torch.Tensor
    void_rows: torch.Tensor
    to_seen: torch.Tensor

    def to(self, device) -> "SeenLabelSpace":
        return SeenLabelSpace(self.embeddings.to(device), self.void_rows.to(device), self.to_seen.to(device))

    def relabel(self, labels: torch.Tensor) -> torch.Tensor:
        """Full-space label maps -> seen-space ones; unseen pixels become IGNORE_INDEX."""
        return torch.where(labels == IGNORE_INDEX, labels, self.to_seen[labels.clamp(min=0)])


def score_ensemble(cfg: SegmentationConfig):
    """The head's score ensemble with the dense readout (`SegScoreEnsemble`, FC-CLIP's weights), or
    None with `ensemble.enabled: false`; the temperature defaults to the MaskCLIP readout's."""
    if not cfg.ensemble.enabled:
        return None
    from react_dense.modeling.seg_model import SegScoreEnsemble

    options = cfg.ensemble
    temperature = options.temperature if options.temperature is not None else cfg.maskclip.temperature
    return SegScoreEnsemble(options.seen_weight, options.unseen_weight, temperature)


def backbone_spec(cfg: SegmentationConfig, visual) -> dict:
    """The backbone's registry spec over `visual`: with the ensemble on it also emits the readout map."""
    return {**cfg.backbone, **({"emit_clip_map": True} if cfg.ensemble.enabled else {}), "visual": visual}


def seen_label_space(classes: ClassEmbeddings) -> SeenLabelSpace:
    seen = ~classes.unseen
    to_seen = torch.full((len(seen),), IGNORE_INDEX, dtype=torch.long)
    to_seen[torch.nonzero(seen).flatten()] = torch.arange(int(seen.sum()))
    return SeenLabelSpace(classes.embeddings[seen], classes.void_rows[seen], to_seen)


def vocabulary_of(names: list[str]):
    """Layout class names (`name|synonym|...`, ADE's `name;synonym`) as a `Vocabulary`."""
    from react_dense.modeling.vocabulary import Vocabulary

    synonyms = [[word.strip() for word in name.split("|") if word.strip()] for name in names]
    return Vocabulary([words[0] for words in synonyms], synonyms)


def encode_classes(bundle, cfg: SegmentationConfig, source: SegmentationSource, background: Optional[str]) -> ClassEmbeddings:
    from react_dense.modeling.vocabulary import permute_novel, vocabulary_embeddings

    vocabulary = vocabulary_of(source.class_names)
    embeddings = vocabulary_embeddings(bundle, vocabulary, cfg.text.templates, cfg.text.cache_dir)
    # A class is named by its whole entry ("building|edifice") or its first name ("building").
    entries = list(zip(source.class_names, vocabulary.names))
    unseen = torch.tensor([bool({entry, first} & set(source.unseen)) for entry, first in entries])
    if background is not None and not any(background in pair for pair in entries):
        raise ConfigError(f"background class {background!r} is not a class of {source.name}")
    void_rows = torch.tensor([background in pair for pair in entries])
    if cfg.permute_unseen_embeddings:
        embeddings = permute_novel(embeddings, unseen, cfg.train.seed)
    return ClassEmbeddings(vocabulary.names, embeddings, unseen, void_rows)


def open_spec(spec: SegmentationDataSpec) -> SegmentationSource:
    source = open_source(spec.layout, spec.root, spec.split, spec.classes, spec.unseen, spec.max_images)
    if spec.name:
        source.name = spec.name
    if spec.background is not None:
        source.background = spec.background
    return source


def _json_safe(metrics: dict) -> dict:
    """NaN (a class neither present nor predicted) is written as null."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else (round(v, 4) if isinstance(v, float) else v)) for k, v in metrics.items()}


def write_metrics(out: Path, per_dataset: dict, **extra) -> dict:
    """metrics.json: the first test set's metrics at the top level, every set's under `datasets`."""
    first = next(iter(per_dataset))
    metrics = {**_json_safe(per_dataset[first]), "dataset": first, **extra}
    if len(per_dataset) > 1:
        metrics["datasets"] = {name: _json_safe(values) for name, values in per_dataset.items()}
    atomic_write_json(out / "metrics.json", metrics)
    return metrics
