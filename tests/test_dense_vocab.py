"""The retention fix of issue 12: customization data retrieved for the dense tasks' whole vocabulary
(the world's detection categories: 12 targets + 15 base classes), its random-pairs control and
its CLS-only twin are committed configs that load and agree with the world they run on."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from react_core.config import load
from react_core.engine.config import CustomizeConfig
from react_core.synth.concepts import BASE_CATEGORIES, TARGET_CLASSES

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo"


def _configs():
    return {name: load(DEMO / f"{name}.yaml", schema=CustomizeConfig)
            for name in ("customize", "customize_dense", "customize_dense_vocab",
                         "customize_dense_vocab_random", "customize_dense_vocab_clipself", "customize_vocab")}


def test_vocab_configs_load_and_differ_from_their_parents_only_in_the_pairs():
    c = _configs()
    vocab, dense = c["customize_dense_vocab"], c["customize_dense"]
    classes = vocab.data.train["classes"]
    assert len(classes) == len(set(classes)) == 27
    assert set(classes) == set(TARGET_CLASSES) | set(BASE_CATEGORIES)
    assert set(dense.data.train["classes"]) == set(TARGET_CLASSES)  # the parent retrieves for the targets only
    assert vocab.dense == dense.dense and vocab.dense.enabled and vocab.train == dense.train
    assert vocab.data.train["class_match"] == "caption" and vocab.data.train["manifest"] == dense.data.train["manifest"]
    random = c["customize_dense_vocab_random"]
    assert random.dense == vocab.dense and random.train == vocab.train
    assert random.data.train["classes"] is None and random.data.train["sample"] == 7918
    clipself = c["customize_dense_vocab_clipself"]
    assert clipself.data.train == vocab.data.train and clipself.train == vocab.train
    assert clipself.dense.teacher == "base" and not clipself.dense.contrastive and clipself.dense.mosaic == vocab.dense.mosaic
    cls_only = c["customize_vocab"]
    assert not cls_only.dense.enabled and cls_only.data.train == vocab.data.train
    assert cls_only.train == c["customize"].train


def test_vocab_is_the_worlds_detection_and_segmentation_vocabulary(tiny_world):
    info = json.loads((tiny_world / "world.json").read_text())
    classes = _configs()["customize_dense_vocab"].data.train["classes"]
    assert set(classes) == set(info["detection"]["categories"])
    assert set(classes) == set(info["semseg"]["classes"]) - {"background"}
    assert set(classes) >= set(info["target_classes"])


def test_vocab_retrieval_keeps_the_target_pairs_and_adds_the_base_class_pairs(tiny_world):
    from react_core.data.pairs import ManifestPairs

    manifest = str(tiny_world / "corpus" / "manifest.parquet")
    classes = _configs()["customize_dense_vocab"].data.train["classes"]
    vocab = ManifestPairs(manifest, classes=classes, class_match="caption")
    targets = ManifestPairs(manifest, classes=list(TARGET_CLASSES), class_match="caption")
    assert set(targets.ids) < set(vocab.ids)
    names = [name.lower() for name in classes]
    assert all(any(name in caption.lower() for name in names) for caption in vocab.captions)
    assert any(not any(t in caption.lower() for t in TARGET_CLASSES) for caption in vocab.captions)


DEMO_WORLD = ROOT / "runs" / "demo" / "world"


@pytest.mark.skipif(not (DEMO_WORLD / "corpus" / "manifest.parquet").is_file(), reason="the demo world is not generated here")
def test_random_control_draws_as_many_pairs_as_the_vocab_retrieval_finds_in_the_demo_world():
    from react_core.data.pairs import ManifestPairs

    c = _configs()
    vocab = ManifestPairs(str(DEMO_WORLD / "corpus" / "manifest.parquet"),
                          classes=c["customize_dense_vocab"].data.train["classes"], class_match="caption")
    assert len(vocab) == c["customize_dense_vocab_random"].data.train["sample"]


def test_keep10_variant_only_adds_a_strong_keep_close_term():
    vocab = _configs()["customize_dense_vocab"]
    keep10 = load(DEMO / "customize_dense_vocab_keep10.yaml", schema=CustomizeConfig)
    assert vocab.dense.keep == "none" and keep10.dense.keep == "close" and keep10.dense.keep_weight == 10.0
    assert dataclasses.replace(keep10.dense, keep="none", keep_weight=vocab.dense.keep_weight) == vocab.dense
    assert keep10.data.train == vocab.data.train and keep10.train == vocab.train


def test_one_world_override_moves_the_vocab_configs(tmp_path):
    for name in ("customize_dense_vocab", "customize_dense_vocab_random", "customize_vocab", "customize_dense_vocab_keep10"):
        cfg = load(DEMO / f"{name}.yaml", [f"world={tmp_path}"], schema=CustomizeConfig)
        paths = [cfg.data.train["manifest"], cfg.eval.images, cfg.generic_eval.images]
        assert all(str(path).startswith(str(tmp_path)) for path in paths), name
