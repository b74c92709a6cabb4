"""The lab's configs load, agree with the world they run on, and move with one `vars.world` override."""
from __future__ import annotations

import json

from react_core.config import load
from react_core.engine.config import CustomizeConfig, PretrainConfig
from react_dense.detection.config import load_detection_config
from react_dense.lab.base import CONFIGS
from react_dense.lab.world.concepts import BASE_CATEGORIES, TARGET_CLASSES
from react_dense.segmentation.config import load_segmentation_config

CUSTOMIZE = ("customize", "customize_dense", "customize_dense_vocab", "customize_dense_vocab_replay",
             "customize_dense_vocab_replay_clipself")


def _customize(name: str, overrides=()):
    return load(CONFIGS / f"{name}.yaml", overrides, schema=CustomizeConfig)


def test_the_dense_vocabulary_configs_differ_from_their_parents_only_where_they_say():
    cls_only, dense, vocab = _customize("customize"), _customize("customize_dense"), _customize("customize_dense_vocab")
    assert set(cls_only.data.train["classes"]) == set(TARGET_CLASSES) and not cls_only.dense.enabled
    assert dense.dense.enabled and dense.data.train == cls_only.data.train and dense.train == cls_only.train
    classes = vocab.data.train["classes"]
    assert len(classes) == len(set(classes)) == 27
    assert set(classes) == set(TARGET_CLASSES) | set(BASE_CATEGORIES)
    assert vocab.dense == dense.dense and vocab.train == dense.train
    replay, clipself = _customize("customize_dense_vocab_replay"), _customize("customize_dense_vocab_replay_clipself")
    assert replay.data.train == vocab.data.train and replay.data.replay["sample"] == 2640
    assert clipself.data.train == replay.data.train and clipself.data.replay == replay.data.replay
    assert clipself.dense.teacher == "base" and not clipself.dense.contrastive and replay.dense.contrastive


def test_the_dense_vocabulary_is_the_worlds_detection_and_segmentation_vocabulary(tiny_world):
    info = json.loads((tiny_world / "world.json").read_text())
    classes = _customize("customize_dense_vocab").data.train["classes"]
    assert set(classes) == set(info["detection"]["categories"])
    assert set(classes) == set(info["semseg"]["classes"]) - {"background"}
    assert set(classes) >= set(info["target_classes"])


def test_the_vocabulary_keyword_search_keeps_the_target_pairs_and_adds_the_base_class_pairs(tiny_world):
    from react_core.data.pairs import ManifestPairs

    manifest = str(tiny_world / "corpus" / "manifest.parquet")
    classes = _customize("customize_dense_vocab").data.train["classes"]
    vocab = ManifestPairs(manifest, classes=classes, class_match="caption")
    targets = ManifestPairs(manifest, classes=list(TARGET_CLASSES), class_match="caption")
    assert set(targets.ids) < set(vocab.ids)
    names = [name.lower() for name in classes]
    assert all(any(name in caption.lower() for name in names) for caption in vocab.captions)
    assert any(not any(t in caption.lower() for t in TARGET_CLASSES) for caption in vocab.captions)


def test_one_world_override_moves_every_lab_config(tmp_path):
    moved = {"vars.world": str(tmp_path)}
    for name in CUSTOMIZE:
        cfg = _customize(name, moved)
        paths = [cfg.model.weights, cfg.data.train["manifest"], cfg.eval.images, cfg.eval.classes, cfg.generic_eval.images]
        assert all(str(path).startswith(str(tmp_path)) for path in paths), name
    pretrain = load(CONFIGS / "pretrain.yaml", moved, schema=PretrainConfig)
    assert pretrain.data.train["manifest"].startswith(str(tmp_path)) and pretrain.model.weights is None
    detection = load_detection_config(str(CONFIGS / "ovd_synthetic.yaml"), moved)
    assert all(path.startswith(str(tmp_path)) for path in (detection.model.weights, detection.data.train, detection.data.val))
    segmentation = load_segmentation_config(str(CONFIGS / "seg_synthetic.yaml"), moved)
    assert segmentation.model.weights.startswith(str(tmp_path))
    assert str(segmentation.train_data.root) == str(tmp_path / "semseg")
