"""Self-contained results: a run's config.yaml names its inputs by absolute path with the sha256 of
every weights file it read, so `react detect` rebuilds a detector from its checkpoint's folder
from any working directory; an adapter whose base moved is found with --base-weights."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from react_core.cli import main
from react_core.config import RUN_CONFIG, load, write_run_config
from react_core.io import file_sha256
from test_dense_detector import CONFIG, write_scenes


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


@pytest.fixture
def detector_run(gated_towers, tmp_path, monkeypatch):
    """`run/model_final.pth` and the `run/config.yaml` a training run in `tmp_path` wrote, its tower
    given as the relative path `towers/tower.safetensors` (a copy of the gated adapter)."""
    from react_dense.detection.build import build_parts
    from react_dense.detection.config import load_detection_config
    from react_dense.engines.checkpoint import FINAL, save_checkpoint
    from react_dense.engines.torchvision.model import build_torchvision_detector

    (tmp_path / "towers").mkdir()
    shutil.copy(gated_towers / "closed.safetensors", tmp_path / "towers" / "tower.safetensors")
    write_scenes(tmp_path / "world" / "detection", "val", 1, seed=3)
    monkeypatch.chdir(tmp_path)
    cfg = load_detection_config(str(CONFIG), ["vars.world=world", "model.weights=towers/tower.safetensors"])
    torch.manual_seed(0)
    (tmp_path / "run").mkdir()
    save_checkpoint(tmp_path / "run" / FINAL, build_torchvision_detector(build_parts(cfg), cfg.detector))
    write_run_config(cfg, tmp_path / "run")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return tmp_path / "run" / FINAL


def _detect(weights, out, *extra) -> int:
    image = next((weights.parents[1] / "world" / "detection" / "images" / "val").glob("*.png"))
    return main(["detect", str(image), "--weights", str(weights), "--vocabulary", "red circle", "--out", str(out), *extra])


def test_a_run_config_records_absolute_paths_and_the_weights_it_read(detector_run, gated_towers):
    record = yaml.safe_load((detector_run.parent / RUN_CONFIG).read_text())
    root = detector_run.parents[1]
    tower = root / "towers" / "tower.safetensors"
    assert record["model"]["weights"] == str(tower)
    assert record["data"]["val"] == str(root / "world" / "detection" / "val.json")
    assert record["text"]["cache_dir"] == str(root / "world" / "text_cache")  # a cache to come, under its folder
    assert record["text"]["templates"] == "simple" and record["model"]["name"] == "react-tiny"  # names stay names
    assert record["sha256"] == {str(tower): file_sha256(tower),  # the adapter, and the base it names
                                str(gated_towers / "base.safetensors"): file_sha256(gated_towers / "base.safetensors")}
    assert load(detector_run.parent / RUN_CONFIG).model.weights == str(tower)  # and it loads back as a config


def test_detect_finds_the_tower_from_the_checkpoint_folder_from_anywhere(detector_run, capsys):
    assert _detect(detector_run, "detections") == 0
    record = yaml.safe_load(open("detections/config.yaml"))
    assert record["sha256"][str(detector_run)] == file_sha256(detector_run)


def test_detect_finds_the_tower_of_a_run_config_with_relative_paths(detector_run, capsys):
    """A config.yaml written before paths were recorded absolute: the tower is looked for from the
    folders above the run's."""
    config = detector_run.parent / RUN_CONFIG
    record = yaml.safe_load(config.read_text())
    record["model"]["weights"] = "towers/tower.safetensors"
    del record["sha256"]
    config.write_text(yaml.safe_dump(record))
    assert _detect(detector_run, "detections") == 0


def test_detect_refuses_a_tower_that_changed_since_the_run(detector_run, gated_towers, capsys):
    tower = detector_run.parents[1] / "towers" / "tower.safetensors"
    shutil.copy(gated_towers / "open.safetensors", tower)  # the same model, other weights
    assert _detect(detector_run, "detections") == 2
    err = _one_error_line(capsys)
    assert f"{tower} (model.weights in {detector_run.parent / RUN_CONFIG}) is not the file that run read" in err


def test_an_adapter_whose_base_moved_loads_with_base_weights(gated_towers, tmp_path, capsys):
    from react_core.modeling import add_gated_blocks, load_clip, save_adapter

    base = tmp_path / "before" / "base.safetensors"
    base.parent.mkdir()
    shutil.copy(gated_towers / "base.safetensors", base)
    bundle = load_clip("react-tiny", weights=base)
    add_gated_blocks(bundle.model, layers=[5])
    save_adapter(bundle.model, tmp_path / "adapter.safetensors", spec=bundle.spec, mode="gated-image")
    moved = tmp_path / "after" / "base.safetensors"
    moved.parent.mkdir()
    base.rename(moved)
    for name, value in (("red", 200), ("blue", 30)):
        (tmp_path / "images" / name).mkdir(parents=True)
        Image.fromarray(np.full((32, 32, 3), value, np.uint8)).save(tmp_path / "images" / name / "0.png")
    (tmp_path / "classes.txt").write_text("red\nblue\n")
    argv = ["eval", "zeroshot", "--weights", str(tmp_path / "adapter.safetensors"), "--classes", str(tmp_path / "classes.txt"),
            "--images", str(tmp_path / "images"), "--out", str(tmp_path / "zeroshot.json")]
    assert main(argv) == 2
    assert f"its base weights {base} are not there; pass their new location with --base-weights FILE" in _one_error_line(capsys)
    assert main([*argv, "--base-weights", str(moved)]) == 0
    assert (tmp_path / "zeroshot.json").is_file()
