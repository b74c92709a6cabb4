"""Bad input to the dense commands: one line and exit status 2, never a traceback; dangling
annotations counted and dropped with a warning."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from react_core.cli import main
from react_dense.detection.data import DatasetError, load_coco
from test_dense_detector import CONFIG, write_scenes

ROOT = Path(__file__).resolve().parents[1]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error:") == 1, err
    return err


def test_detect_refuses_a_missing_vocabulary_file(tmp_path, capsys):
    missing = tmp_path / "missing.txt"
    argv = ["detect", "x.png", "--config", str(CONFIG), "--weights", "w.pth", "--vocabulary", str(missing),
            "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    assert f"vocabulary file not found: {missing}" in _one_error_line(capsys)


def test_detect_refuses_an_image_too_thin_for_the_detector(tmp_path, capsys):
    from react_dense.detection.build import build_parts
    from react_dense.engines.checkpoint import save_checkpoint
    from react_dense.engines.torchvision.model import build_torchvision_detector
    from react_dense.detection.config import load_detection_config

    world = tmp_path / "world"
    write_scenes(world / "detection", "val", 1, seed=0)
    overrides = [f"vars.world={world}", "model.weights=null", f"data.val={world}/detection/val.json"]
    cfg = load_detection_config(str(CONFIG), overrides)
    save_checkpoint(tmp_path / "model.pth", build_torchvision_detector(build_parts(cfg), cfg.detector))
    thin = tmp_path / "thin.png"
    Image.fromarray(np.zeros((1, 2000, 3), np.uint8)).save(thin)
    argv = ["detect", str(thin), "--config", str(CONFIG), "--weights", str(tmp_path / "model.pth"),
            "--vocabulary", "red circle", "--out", str(tmp_path / "out"), *[i for o in overrides for i in ("--set", o)]]
    assert main(argv) == 2
    assert f"image {thin} is 2000x1: too elongated" in _one_error_line(capsys)


@pytest.fixture
def scenes(tmp_path) -> Path:
    return write_scenes(tmp_path / "detection", "val", 3, seed=1)


def test_annotations_that_match_no_category_are_one_line(scenes, tmp_path, capsys):
    data = json.loads(scenes.read_text())
    for annotation in data["annotations"]:
        annotation["category_id"] += 1000
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match="none of its .* annotations names one of its"):
        load_coco(bad)
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from train_net import main as train_net
    finally:
        sys.path.pop(0)
    assert train_net(["--config", str(CONFIG), "--out", str(tmp_path / "run"), f"vars.world={tmp_path}", "model.weights=null",
                      f"data.train={bad}", f"data.val={bad}"]) == 2
    assert f"{bad}: none of its" in _one_error_line(capsys)


def test_annotations_naming_unknown_ids_are_counted_dropped_and_warned(scenes, tmp_path, caplog):
    data = json.loads(scenes.read_text())
    total = len(data["annotations"])
    data["annotations"][0]["image_id"] = 999
    data["annotations"][1]["category_id"] = 999
    path = tmp_path / "dangling.json"
    path.write_text(json.dumps(data))
    coco = load_coco(path)
    assert len(coco.dataset["annotations"]) == total - 2
    assert f"dropped 2 of {total} annotations: 1 name an unknown image id, 1 an unknown category id" in caplog.text
    assert 999 not in coco.imgToAnns and 999 not in coco.catToImgs
