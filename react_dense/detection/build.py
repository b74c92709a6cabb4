"""From a `kind: detection` config to the engine-free parts both engines wrap.

One place loads the CLIP (a full file or an adapter, `model.weights`), builds the backbone and the region-text head, reads
the open-vocabulary split, and encodes the training and evaluation vocabularies with the same
CLIP's text tower.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from mmengine.runner import set_random_seed

from react_core.config import ConfigError
from react_core.registry import BACKBONES, HEADS
from react_dense.detection.config import DetectionConfig
from react_dense.detection.data import OpenVocabularySplit, check_inputs_exist, load_coco
from react_dense.modeling.backbone import ClipBackbone
from react_dense.modeling.region_text import ClipScoreEnsemble, RegionTextClassifier
from react_dense.modeling.vocabulary import Vocabulary, permute_novel, vocabulary_embeddings


@dataclass
class VocabularyTensors:
    """A vocabulary with its text embeddings, which classes were seen in training, and LVIS image counts."""

    vocabulary: Vocabulary
    embeddings: torch.Tensor
    is_base: torch.Tensor
    image_counts: torch.Tensor


@dataclass
class DenseParts:
    bundle: object
    backbone: ClipBackbone
    classifier: RegionTextClassifier
    ensemble: Optional[ClipScoreEnsemble]


def build_parts(cfg: DetectionConfig) -> DenseParts:
    bundle = cfg.model.load()
    # the heads start alike whatever the tower (a gated block draws from the generator when it is
    # made), so two towers' detectors differ by what they read, not by their initialisation
    set_random_seed(cfg.train.seed)
    backbone_args = {k: v for k, v in cfg.backbone.items()}
    if cfg.ensemble.enabled:
        if backbone_args.get("freeze", "frozen") != "frozen":
            raise ConfigError(
                "ensemble.enabled needs backbone.freeze=frozen: the region scores come from the frozen CLIP tower (F-VLM)"
            )
        backbone_args["emit_clip_map"] = cfg.ensemble.regions == "map"
    backbone = BACKBONES.build({**backbone_args, "visual": bundle.model.visual})
    classifier = HEADS.build({**cfg.head, "in_features": cfg.detector.box_head_dim, "embed_dim": backbone.embed_dim})
    ensemble = None
    if cfg.ensemble.enabled:
        try:
            ensemble = ClipScoreEnsemble(
                cfg.ensemble.base_weight, cfg.ensemble.novel_weight, cfg.ensemble.clip_temperature,
                regions=cfg.ensemble.regions, crop_scale=cfg.ensemble.crop_scale, tower=bundle.model.visual,
            )
        except ValueError as error:
            raise ConfigError(f"ensemble: {error}") from None
    return DenseParts(bundle, backbone, classifier, ensemble)


def encode_vocabulary(
    bundle, cfg: DetectionConfig, vocabulary: Vocabulary, categories: Optional[list] = None, base_names: Optional[set] = None
) -> VocabularyTensors:
    """Text embeddings for `vocabulary`; `base_names` marks classes seen in training (for ensembling)."""
    embeddings = vocabulary_embeddings(bundle, vocabulary, cfg.text.templates, cfg.text.cache_dir)
    by_id = {c["id"]: c for c in categories or []}
    counts = torch.tensor([float(by_id.get(cid, {}).get("image_count", 1)) for cid in vocabulary.category_ids])
    is_base = torch.tensor([name in (base_names or set()) for name in vocabulary.names], dtype=torch.bool)
    return VocabularyTensors(vocabulary, embeddings, is_base, counts)


def dataset_vocabularies(bundle, cfg: DetectionConfig, annotation_file: str) -> tuple[VocabularyTensors, VocabularyTensors, OpenVocabularySplit]:
    """(training vocabulary: base classes only, evaluation vocabulary: all classes, split)."""
    check_inputs_exist(cfg.data)
    categories = load_coco(annotation_file).dataset["categories"]
    split = OpenVocabularySplit.from_categories(categories, cfg.data.novel)
    full = Vocabulary.from_categories(categories)
    base = full.subset(split.base_ids)
    train = encode_vocabulary(bundle, cfg, base, categories, set(base.names))
    evaluation = encode_vocabulary(bundle, cfg, full, categories, set(base.names))
    if cfg.permute_novel_embeddings:
        evaluation.embeddings = permute_novel(evaluation.embeddings, ~evaluation.is_base, cfg.train.seed)
    return train, evaluation, split

