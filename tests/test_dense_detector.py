"""The torchvision open-vocabulary detector end to end on tiny LVIS-format scenes."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from react_dense.detection.build import build_parts, dataset_vocabularies
from react_dense.modeling.vocabulary import permute_novel
from react_dense.detection.data import DetectionDataset, OpenVocabularySplit
from react_dense.engines.torchvision.model import build_torchvision_detector
from react_dense.detection.config import load_detection_config

CONFIG = Path(__file__).resolve().parents[1] / "react_dense" / "lab" / "configs" / "ovd_synthetic.yaml"
CATEGORIES = [
    ("red square", "f"), ("blue square", "f"), ("red circle", "c"),
    ("green square", "c"), ("blue circle", "r"), ("green circle", "r"),
]
COLORS = {"red": (220, 40, 40), "blue": (40, 60, 220), "green": (40, 200, 60)}


def _polygon(shape: str, x: float, y: float, size: float) -> list[float]:
    if shape == "square":
        return [x, y, x + size, y, x + size, y + size, x, y + size]
    r = size / 2
    return [v for k in range(16) for v in (x + r + r * math.cos(2 * math.pi * k / 16), y + r + r * math.sin(2 * math.pi * k / 16))]


def write_scenes(root: Path, split: str, count: int, seed: int, size: int = 64) -> Path:
    """LVIS-format scenes of coloured shapes: exhaustive labels, neg_category_ids filled in."""
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    for image_id in range(1, count + 1):
        canvas = Image.fromarray((rng.random((size, size, 3)) * 60 + 100).astype(np.uint8))
        draw = ImageDraw.Draw(canvas)
        present = set()
        for _ in range(int(rng.integers(1, 3))):
            category = int(rng.integers(len(CATEGORIES)))
            color, shape = CATEGORIES[category][0].split()
            side = float(rng.integers(16, 28))
            x, y = (float(v) for v in rng.integers(0, size - side, 2))
            polygon = _polygon(shape, x, y, side)
            draw.polygon(polygon, fill=COLORS[color])
            present.add(category + 1)
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": category + 1,
                "bbox": [x, y, side, side], "area": side * side, "iscrowd": 0, "segmentation": [polygon],
            })
        name = f"images/{split}/{image_id:05d}.png"
        canvas.save(root / name)
        images.append({
            "id": image_id, "file_name": name, "width": size, "height": size,
            "neg_category_ids": [c for c in range(1, len(CATEGORIES) + 1) if c not in present],
            "not_exhaustive_category_ids": [],
        })
    counts = {c: len({a["image_id"] for a in annotations if a["category_id"] == c}) for c in range(1, len(CATEGORIES) + 1)}
    categories = [
        {"id": i + 1, "name": name, "frequency": freq, "image_count": counts[i + 1], "synonyms": [name]}
        for i, (name, freq) in enumerate(CATEGORIES)
    ]
    path = root / f"{split}.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scenes") / "detection"
    write_scenes(root, "train", 16, seed=0)
    write_scenes(root, "val", 6, seed=1)
    return root.parent


def demo_config(world: Path, *overrides: str):
    return load_detection_config(str(CONFIG), [f"vars.world={world}", "model.weights=null", "data.num_workers=0", *overrides])


def test_training_loader_yields_no_rare_instance(scenes):
    cfg = demo_config(scenes)
    train_json = json.loads(Path(cfg.data.train).read_text())
    split = OpenVocabularySplit.from_categories(train_json["categories"], "rare")
    rare = {c["id"] for c in train_json["categories"] if c["frequency"] == "r"}
    assert set(split.novel_ids) == rare and rare
    assert any(a["category_id"] in rare for a in train_json["annotations"]), "fixture must contain rare objects"
    dataset = DetectionDataset(cfg.data.train, cfg.data.train_images, split.base_ids, with_masks=True, skip_empty=True)
    seen = set()
    for index in range(len(dataset)):
        image, target = dataset[index]
        seen.update(dataset.category_ids[int(l)] for l in target["labels"])
        assert len(target["masks"]) == len(target["boxes"])
    assert seen and not seen & rare


def test_training_vocabulary_is_base_only_and_control_permutes_novel_rows(scenes):
    cfg = demo_config(scenes)
    parts = build_parts(cfg)
    train_vocab, eval_vocab, split = dataset_vocabularies(parts.bundle, cfg, cfg.data.train)
    assert train_vocab.vocabulary.category_ids == split.base_ids
    assert eval_vocab.vocabulary.category_ids == sorted(split.base_ids + split.novel_ids)
    novel = ~eval_vocab.is_base
    assert int(novel.sum()) == len(split.novel_ids)
    shuffled = permute_novel(eval_vocab.embeddings, novel, seed=0)
    assert torch.equal(shuffled[~novel], eval_vocab.embeddings[~novel])
    for row in torch.nonzero(novel).flatten():
        assert not torch.equal(shuffled[row], eval_vocab.embeddings[row])


@pytest.mark.parametrize("regions", ["map", "crops"])
def test_detector_losses_inference_and_vocabulary_swap(scenes, regions):
    torch.manual_seed(0)
    cfg = demo_config(scenes, "ensemble.enabled=true", f"ensemble.regions={regions}", "backbone.features=tokens", "backbone.feature_block=-2")
    parts = build_parts(cfg)
    train_vocab, eval_vocab, split = dataset_vocabularies(parts.bundle, cfg, cfg.data.train)
    model = build_torchvision_detector(parts, cfg.detector)
    model.set_vocabulary(train_vocab.embeddings, train_vocab.is_base)
    dataset = DetectionDataset(cfg.data.train, cfg.data.train_images, split.base_ids, skip_empty=True)
    images, targets = zip(*(dataset[i] for i in range(2)))
    model.train()
    losses = model(list(images), list(targets))
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask"}
    sum(losses.values()).backward()
    assert model.roi_heads.box_predictor.projection.weight.grad is not None
    assert all(p.grad is None for p in model.backbone.trunk.parameters())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert not any("class_embeddings" in k for k in state), "checkpoints must not depend on the vocabulary"

    model.eval()
    novel_only = eval_vocab.embeddings[~eval_vocab.is_base]
    model.set_vocabulary(novel_only)
    with torch.no_grad():
        outputs = model(list(images))
    assert outputs[0]["boxes"].shape[1] == 4
    assert outputs[0]["masks"].shape[1:] == (1, 64, 64)
    assert len(outputs[0]["labels"]) and int(outputs[0]["labels"].max()) < len(novel_only)
    assert len(outputs[0]["boxes"]) <= cfg.detector.detections_per_image
