"""No lost results: a refused rerun leaves the finished run as it was."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from react_core.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "react_dense" / "lab" / "configs"


@pytest.fixture(autouse=True)
def _root_logging_restored():
    """`react customize` configures logging onto this test's captured stderr; undo it after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


def test_customize_rerun_with_a_changed_setting_is_refused_before_it_writes(tiny_world, tiny_base, tmp_path, capsys):
    customize_yaml = tmp_path / "customize.yaml"
    customize_yaml.write_text(
        f"_base_: {CONFIGS / 'customize.yaml'}\n"
        f"vars: {{world: {tiny_world}}}\n"
        f"model: {{weights: {tiny_base}}}\n"
        "gated: {k: 1}\n"
        "data: {batch_size: 8, workers: 0}\n"
        "train: {max_iters: 1, warmup_iters: 1}\n"
        "eval: null\n"
    )
    out = tmp_path / "run"
    assert main(["customize", "--config", str(customize_yaml), "--out", str(out)]) == 0
    finished = {name: (out / name).read_bytes() for name in ("config.yaml", "metrics.json", "adapter.safetensors")}
    capsys.readouterr()
    assert main(["customize", "--config", str(customize_yaml), "--out", str(out), "train.lr=1e-3"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error:") == 1 and "different run" in err  # besides progress bars
    assert {name: (out / name).read_bytes() for name in finished} == finished


def test_segment_writes_one_output_per_input_when_basenames_collide(tiny_world, tmp_path):
    import numpy as np
    from PIL import Image

    inputs = []
    for folder, value in (("a", 30), ("b", 220)):
        (tmp_path / folder).mkdir()
        Image.fromarray(np.full((32, 32, 3), value, np.uint8)).save(tmp_path / folder / "x.png")
        inputs.append(str(tmp_path / folder / "x.png"))
    out = tmp_path / "segment"
    argv = ["segment", "--config", str(CONFIGS / "seg_synthetic.yaml"), "--set", f"vars.world={tiny_world}", "--set", "model.weights=null",
            "--set", "method=maskclip", "--vocabulary", "red circle,blue square", "--out", str(out), *inputs]
    assert main(argv) == 0
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["00001_x.png", "00002_x.png"]
    first, second = (np.asarray(Image.open(out / "overlays" / name)) for name in ("00001_x.png", "00002_x.png"))
    assert not np.array_equal(first, second)


def test_a_missing_validation_file_is_reported_before_training(tmp_path, capsys):
    import sys

    from test_dense_detector import CONFIG, write_scenes

    write_scenes(tmp_path / "detection", "train", 2, seed=0)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    try:
        from train_net import main as train_net
    finally:
        sys.path.pop(0)
    out = tmp_path / "run"
    missing = tmp_path / "detection" / "val.json"
    assert train_net(["--config", str(CONFIG), "--out", str(out), f"vars.world={tmp_path}", "model.weights=null", "train.max_iters=2"]) == 2
    assert f"train_net: error: annotation file not found: {missing} (data.val)" in capsys.readouterr().err
    assert not out.exists() or not any(out.rglob("*.pth"))


def test_an_interrupted_write_leaves_the_previous_file_whole(tmp_path):
    from react_core.io import atomic_open, atomic_write_json

    atomic_write_json(tmp_path / "metrics.json", {"top1": 36.0})
    with pytest.raises(KeyboardInterrupt):
        with atomic_open(tmp_path / "metrics.json") as handle:
            handle.write('{"top1": ')
            raise KeyboardInterrupt
    assert (tmp_path / "metrics.json").read_text() == '{\n  "top1": 36.0\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
