"""The README's commands as written: every demo config reads the world the README makes."""
from __future__ import annotations

import re
from pathlib import Path

from react_core.config import load
from react_dense.segmentation.config import load_segmentation_config
from react_dense.detection.config import load_detection_config

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo"


def test_every_demo_config_reads_the_world_the_readme_makes():
    made = re.search(r"^react synth --preset (\w+) --out (\S+)", (ROOT / "README.md").read_text(), re.M)
    _, world = made.groups()
    for name in ("pretrain", "customize"):
        cfg = load(DEMO / f"{name}.yaml")
        assert cfg.world == world, name
        assert str(cfg.data.train["manifest"]).startswith(world)
    assert load(DEMO / "pretrain.yaml").out == "runs/pretrain"  # the base model customize.yaml's base_pretrain reuses
    assert load_detection_config(str(DEMO / "ovd_synthetic.yaml"), []).data.train.startswith(world)
    assert str(load_segmentation_config(str(DEMO / "seg_synthetic.yaml"), []).train_data.root) == world


def test_one_world_override_moves_every_demo_config(tmp_path):
    moved = [f"world={tmp_path}"]
    for name in ("pretrain", "customize", "customize_dense"):
        cfg = load(DEMO / f"{name}.yaml", moved)
        assert cfg.world == str(tmp_path), name
        paths = [cfg.data.train["manifest"], cfg.eval.images, cfg.eval.classes, cfg.generic_eval.images]
        assert all(str(path).startswith(str(tmp_path)) for path in paths), name
    assert load_detection_config(str(DEMO / "ovd_synthetic.yaml"), moved).data.val.startswith(str(tmp_path))
    assert str(load_segmentation_config(str(DEMO / "seg_synthetic.yaml"), moved).train_data.root) == str(tmp_path)


def test_a_folder_holding_a_world_is_used_whatever_its_preset(tiny_world, tmp_path, monkeypatch):
    from react_core.engine import common

    made = []
    monkeypatch.setattr("react_core.synth.generate_world", lambda *args, **kwargs: made.append(args) or {"seed": 0})
    common.ensure_world(str(tiny_world))
    assert made == [] and (tiny_world / "generic" / "classes.txt").is_file()
    common.ensure_world(str(tmp_path))  # holds no world: the README's is made there
    assert made == [("demo", str(tmp_path), 0)]
