"""The Detectron2 engine learns as much as the torchvision engine from the same tower, data and
schedule (slow: three full trainings; run with `python -m pytest -m slow`)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from test_dense_detector import CONFIG, write_scenes

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("parity")
    write_scenes(root / "detection", "train", 64, seed=0)
    write_scenes(root / "detection", "val", 16, seed=1)
    return root


def _train(world: Path, out: Path, *overrides: str) -> dict:
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from train_net import main
    finally:
        sys.path.pop(0)
    assert main(["--config", str(CONFIG), "--out", str(out), f"vars.world={world}", "model.weights=null", "data.num_workers=0",
                 "train.max_iters=200", "train.checkpoint_interval=1000", *overrides]) == 0
    return json.loads((out / "metrics.json").read_text())


def test_detectron2_matches_torchvision_and_beats_an_untrained_detector(world, tmp_path):
    pytest.importorskip("detectron2")
    torchvision = _train(world, tmp_path / "tv", "engine=torchvision")
    detectron2 = _train(world, tmp_path / "d2", "engine=detectron2")
    untrained = _train(world, tmp_path / "none", "engine=detectron2", "train.lr=1e-9")
    for metric in ("bbox/AP", "segm/AP"):
        assert detectron2[metric] >= 0.75 * torchvision[metric], (metric, detectron2[metric], torchvision[metric])
        assert min(detectron2[metric], torchvision[metric]) > 3 * untrained[metric] + 1.0, (metric, untrained[metric])
