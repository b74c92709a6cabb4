"""`react detect` with a vocabulary the detector never saw writes boxes, JSON and drawings."""
from __future__ import annotations

import json

import torch

from react_core.cli import main
from react_dense.detection.build import build_parts
from react_dense.engines.torchvision.model import build_torchvision_detector
from react_dense.engines.checkpoint import save_checkpoint
from react_dense.detection.config import load_detection_config
from test_dense_detector import CONFIG, write_scenes


def test_detect_new_vocabulary(tmp_path):
    world = tmp_path / "world"
    write_scenes(world / "detection", "val", 2, seed=3)
    overrides = [f"vars.world={world}", "model.weights=null", f"data.val={world}/detection/val.json"]
    torch.manual_seed(0)
    cfg = load_detection_config(str(CONFIG), overrides)
    model = build_torchvision_detector(build_parts(cfg), cfg.detector)
    save_checkpoint(tmp_path / "model.pth", model)
    images = sorted((world / "detection" / "images" / "val").glob("*.png"))
    out = tmp_path / "out"
    status = main([
        "detect", *map(str, images), "--config", str(CONFIG), "--weights", str(tmp_path / "model.pth"),
        "--vocabulary", "purple hexagon,orange ring", "--out", str(out), "--score-threshold", "0",
        *[item for o in overrides for item in ("--set", o)],
    ])
    assert status == 0
    detections = json.loads((out / "detections.json").read_text())
    listing = json.loads((out / "images.json").read_text())
    assert [c["name"] for c in listing["categories"]] == ["purple hexagon", "orange ring"]
    assert detections and {d["category_id"] for d in detections} <= {1, 2}
    assert {d["image_id"] for d in detections} <= {1, 2}
    assert all(len(d["bbox"]) == 4 and "segmentation" in d for d in detections)
    assert len(list(out.glob("*.png"))) == 2


def test_detect_reports_bad_vocabulary_file(tmp_path, capsys):
    empty = tmp_path / "vocab.txt"
    empty.write_text("\n")
    status = main(["detect", "x.png", "--config", str(CONFIG), "--weights", "w.pth", "--vocabulary", str(empty), "--out", str(tmp_path)])
    assert status == 2
    assert str(empty) in capsys.readouterr().err
