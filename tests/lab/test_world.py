"""The synthetic world: reproducible, complete, and shaped the way retrieval and the dense
protocols need (targets rare in pretraining, novel = rare LVIS categories, unseen classes
absent from training labels)."""
from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from dataclasses import replace

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from react_core.cli import main
from react_dense.lab.world import PRESETS, WorldError, generate_world, load_world
from react_dense.lab.world import scenes as scenes_module
from react_dense.lab.world.concepts import BASE_CATEGORIES, TARGET_CLASSES, split_class

MICRO = replace(
    PRESETS["tiny"], corpus_pairs=150, pretrain_pairs=100, shard_size=60, task_train_per_class=2,
    task_val_per_class=2, det_val_images=40, semseg_train_images=6, semseg_val_images=6,
)


@pytest.fixture
def micro(monkeypatch):
    """A preset small enough to generate several times in one test."""
    monkeypatch.setitem(PRESETS, "micro", MICRO)
    return "micro"


def test_same_seed_same_bytes_on_tiny(tiny_world, tmp_path):
    again = generate_world("tiny", tmp_path / "again", seed=0)
    assert again["content_sha256"] == load_world(tiny_world).content_sha256
    assert not again["cached"]


def test_worker_count_does_not_change_output_and_seed_does(micro, tmp_path):
    one = generate_world(micro, tmp_path / "one", seed=3, workers=1)
    three = generate_world(micro, tmp_path / "three", seed=3, workers=3)
    other = generate_world(micro, tmp_path / "other", seed=4, workers=2)
    assert one["content_sha256"] == three["content_sha256"]
    assert other["content_sha256"] != one["content_sha256"]


def test_existing_world_is_reused_and_other_seed_regenerates(micro, tmp_path):
    first = generate_world(micro, tmp_path, seed=1)
    assert generate_world(micro, tmp_path, seed=1)["cached"]
    second = generate_world(micro, tmp_path, seed=2, overwrite=True)
    assert not second["cached"] and second["content_sha256"] != first["content_sha256"]
    assert load_world(tmp_path).seed == 2


def test_interrupted_run_leaves_no_world_and_next_run_completes(micro, tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(scenes_module, "lvis_categories", crash)
    with pytest.raises(KeyboardInterrupt):
        generate_world(micro, tmp_path, seed=0, workers=1)
    assert not (tmp_path / "world.json").exists()
    monkeypatch.undo()
    monkeypatch.setitem(PRESETS, "micro", MICRO)
    summary = generate_world(micro, tmp_path, seed=0, workers=1)
    assert (tmp_path / "world.json").is_file() and not summary["cached"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != ".synth-lock") == sorted(
        ["corpus", "generic", "pretrain", "task", "detection", "semseg", "world.json"])


def test_refuses_a_folder_that_holds_something_else(micro, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(WorldError, match="not empty"):
        generate_world(micro, tmp_path)
    assert main(["synth", "--preset", "tiny", "--out", str(tmp_path)]) == 2


def test_cli_reports_the_world(tiny_world, capsys):
    assert main(["synth", "--preset", "tiny", "--out", str(tiny_world), "--seed", "0"]) == 0
    out = capsys.readouterr().out
    assert "reused" in out and load_world(tiny_world).content_sha256 in out


def test_world_json_describes_the_world(tiny_world):
    world = load_world(tiny_world)
    assert (world.preset, world.seed) == ("tiny", 0)
    assert world.target_classes == TARGET_CLASSES and set(world.target_classes) <= set(world.classes)
    assert len(world.colors) == 8 and len(world.shapes) == 8 and len(world.textures) == 4
    assert set(world.novel_categories) == set(TARGET_CLASSES)
    assert set(world.base_categories) == set(BASE_CATEGORIES)
    assert set(world.semseg_unseen) == set(TARGET_CLASSES)
    for path in list(world.paths.values()) + world.shards["corpus"] + world.shards["pretrain"]:
        assert path.exists(), path
    assert world.counts["corpus_pairs"] == PRESETS["tiny"].corpus_pairs


def test_targets_are_new_compositions_of_known_parts():
    colors = {split_class(name)[0] for name in BASE_CATEGORIES}
    shapes = {split_class(name)[1] for name in BASE_CATEGORIES}
    for name in TARGET_CLASSES:
        color, shape = split_class(name)
        assert color in colors and shape in shapes


def _read_tar(path):
    members = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            key, ext = member.name.split(".", 1)
            members.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return members


@pytest.mark.parametrize("collection", ["corpus", "pretrain"])
def test_shards_match_manifest(tiny_world, collection):
    world = load_world(tiny_world)
    manifest = pq.read_table(world.paths[f"{collection}_manifest"]).to_pandas()
    assert manifest["id"].is_unique and manifest["key"].is_unique
    assert list(manifest["id"]) == list(range(len(manifest)))
    rows = manifest.set_index("key")
    seen = 0
    for shard in world.shards[collection]:
        for key, files in _read_tar(shard).items():
            assert set(files) == {"jpg", "txt", "json"}, key
            row = rows.loc[key]
            truth = json.loads(files["json"])
            assert files["txt"].decode("utf-8") == row["caption"]
            assert row["shard"] == shard.relative_to(tiny_world / collection).as_posix()
            assert (truth["id"], truth["class"], truth["texture"], truth["mismatched"]) == (
                row["id"], row["class"], row["texture"], row["mismatched"])
            assert truth["objects"][0]["class"] == row["class"]
            seen += 1
    assert seen == len(manifest)
    image = Image.open(io.BytesIO(files["jpg"]))
    assert image.size == (64, 64) and image.mode == "RGB"


def test_captions_are_noisy_and_some_mismatched(tiny_world):
    manifest = pq.read_table(load_world(tiny_world).paths["corpus_manifest"]).to_pandas()
    assert 0.08 <= manifest["mismatched"].mean() <= 0.17
    assert manifest["caption"].nunique() > 0.9 * len(manifest)
    matched = manifest[~manifest["mismatched"]]
    with_shape_word = matched.apply(lambda r: r["shape"] in r["caption"].lower(), axis=1).mean()
    assert 0.6 < with_shape_word < 0.95  # synonyms replace the plain shape word sometimes
    counts = Counter(manifest["class"])
    assert counts.most_common()[0][1] > 8 * counts.most_common()[-1][1]  # long tail


def test_targets_rare_in_pretraining_but_present_in_corpus(tiny_world):
    world = load_world(tiny_world)
    corpus = pq.read_table(world.paths["corpus_manifest"]).to_pandas()
    pretrain = pq.read_table(world.paths["pretrain_manifest"]).to_pandas()
    corpus_share = corpus["class"].isin(TARGET_CLASSES).mean()
    pretrain_share = pretrain["class"].isin(TARGET_CLASSES).mean()
    assert corpus_share > 0.08
    assert pretrain_share < corpus_share / 5
    per_target = Counter(corpus["class"][corpus["class"].isin(TARGET_CLASSES)])
    assert min(per_target[name] for name in TARGET_CLASSES) >= 15
    # each target's colour and shape are common in pretraining, in other combinations
    colors, shapes = Counter(pretrain["color"]), Counter(pretrain["shape"])
    for name in TARGET_CLASSES:
        color, shape = split_class(name)
        assert colors[color] > 50 and shapes[shape] > 50


def test_classification_task(tiny_world):
    world = load_world(tiny_world)
    names = world.paths["task_classes"].read_text().splitlines()
    assert names == list(TARGET_CLASSES)
    folders = json.loads(world.paths["task_class_dirs"].read_text())
    assert sorted(folders.values()) == sorted(names)
    for split, per_class in (("task_train", PRESETS["tiny"].task_train_per_class),
                             ("task_val", PRESETS["tiny"].task_val_per_class)):
        for folder in folders:
            files = sorted((world.paths[split] / folder).glob("*.jpg"))
            assert len(files) == per_class
    assert Image.open(files[0]).size == (64, 64)
    pairs = pq.read_table(world.paths["task_pairs"]).to_pandas()
    assert list(pairs.columns) == ["id", "path", "caption", "class"]
    assert len(pairs) == world.counts["task_val_images"]
    for _, row in pairs.iloc[::37].iterrows():
        assert (world.paths["task"] / row["path"]).is_file()
        assert row["class"] in row["caption"]


def test_lvis_json_loads_and_has_three_frequency_buckets(tiny_world):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    world = load_world(tiny_world)
    train = COCO(str(world.paths["detection_train"]))
    val = COCO(str(world.paths["detection_val"]))
    categories = train.loadCats(train.getCatIds())
    frequency = {c["name"]: c["frequency"] for c in categories}
    buckets = Counter(frequency[train.cats[a["category_id"]]["name"]] for a in train.dataset["annotations"])
    assert set(buckets) == {"r", "c", "f"}
    assert {name for name, f in frequency.items() if f == "r"} == set(world.novel_categories)
    for category in categories:
        image_count = len(set(train.getImgIds(catIds=[category["id"]])))
        assert category["image_count"] == image_count
        expected = "r" if image_count <= 10 else "c" if image_count <= 100 else "f"
        assert category["frequency"] == expected
    assert {a["category_id"] for a in val.dataset["annotations"]} == set(train.getCatIds())
    for image in train.dataset["images"][:20]:
        present = {a["category_id"] for a in train.imgToAnns[image["id"]]}
        assert 2 <= len(train.imgToAnns[image["id"]]) <= 6
        assert present.isdisjoint(image["neg_category_ids"])
        assert present | set(image["neg_category_ids"]) == set(train.getCatIds())
        picture = Image.open(world.paths["detection_image_root"] / image["file_name"])
        assert picture.size == (image["width"], image["height"])
        for ann in train.imgToAnns[image["id"]]:
            pixels = train.annToMask(ann).sum()
            assert ann["iscrowd"] == 0 and abs(pixels - ann["area"]) <= 0.15 * ann["area"] + 4
            x, y, w, h = ann["bbox"]
            mx, my, mw, mh = mask_utils.toBbox(train.annToRLE(ann))
            # the box is the polygon's; sharp tips cover too little of a pixel to be in the mask
            assert x - 1 <= mx and y - 1 <= my and mx + mw <= x + w + 1 and my + mh <= y + h + 1
            assert mw >= w - 4 and mh >= h - 4


def test_semseg_labels_and_unseen_split(tiny_world):
    world = load_world(tiny_world)
    record = json.loads(world.paths["semseg_classes"].read_text())
    classes = record["classes"]
    assert classes[0] == "background" and classes[1:] == list(world.detection_categories)
    unseen = {classes.index(name) for name in record["unseen"]}
    assert set(record["seen"]) | set(record["unseen"]) == set(classes)
    values = {}
    for split in ("train", "val"):
        labels = sorted((world.paths["semseg"] / split / "labels").glob("*.png"))
        assert len(labels) == world.counts[f"semseg_{split}_images"]
        values[split] = set()
        for path in labels:
            label = np.asarray(Image.open(path))
            assert label.dtype == np.uint8 and label.shape == (128, 128)
            values[split] |= set(np.unique(label).tolist())
            image = world.paths["semseg"] / split / "images" / path.name.replace(".png", ".jpg")
            assert Image.open(image).size == (128, 128)
    assert values["train"].isdisjoint(unseen) and 255 in values["train"]
    assert values["val"] == set(range(len(classes)))
