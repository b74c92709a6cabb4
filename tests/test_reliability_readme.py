"""The README's commands as written: every demo config reads the world the README makes."""
from __future__ import annotations

import re
from pathlib import Path

from react_core.cli import main
from react_core.config import load
from react_dense.segmentation.config import load_segmentation_config
from react_dense.detection.config import load_detection_config

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo"


def test_every_demo_config_reads_the_world_the_readme_makes():
    made = re.search(r"^react synth --preset (\w+) --out (\S+)", (ROOT / "README.md").read_text(), re.M)
    preset, world = made.groups()
    for name in ("pretrain", "customize"):
        cfg = load(DEMO / f"{name}.yaml")
        assert (cfg.world.dir, cfg.world.preset) == (world, preset), name
        assert str(cfg.data.train["manifest"]).startswith(world)
    assert load(DEMO / "pretrain.yaml").out == "runs/pretrain"  # the base model customize.yaml's base_pretrain reuses
    assert load_detection_config(str(DEMO / "ovd_synthetic.yaml"), []).data.train.startswith(world)
    assert str(load_segmentation_config(str(DEMO / "seg_synthetic.yaml"), []).train_data.root) == world


def test_a_config_whose_world_differs_from_the_folder_is_one_line(tmp_path, capsys):
    (tmp_path / "world.json").write_text('{"preset": "small", "seed": 0, "generator_version": "1"}')
    argv = ["pretrain", "--config", str(DEMO / "pretrain.yaml"), "--out", str(tmp_path / "out"), f"world.dir={tmp_path}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error:") == 1
    assert f"react synth --preset demo --seed 0 --out {tmp_path} --overwrite" in err
    assert not (tmp_path / "corpus").exists()
