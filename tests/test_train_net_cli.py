"""tools/train_net.py: Detectron2 users' spellings, finished runs kept, seeded runs identical."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from react_core.config import ConfigError
from test_dense_detector import CONFIG, scenes  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
try:
    from train_net import build_parser, claimed_output, main, normalize_overrides
finally:
    sys.path.pop(0)


def test_detectron2_key_value_pairs_become_detectron2_section_overrides():
    tokens = ["engine=detectron2", "SOLVER.MAX_ITER", "10", "MODEL.RPN.NMS_THRESH", "0.6", "train.lr=1e-3"]
    assert normalize_overrides(tokens) == [
        "engine=detectron2", "detectron2.SOLVER.MAX_ITER=10", "detectron2.MODEL.RPN.NMS_THRESH=0.6", "train.lr=1e-3",
    ]
    with pytest.raises(ConfigError, match="'solver.max_iter'"):
        normalize_overrides(["solver.max_iter", "10"])
    with pytest.raises(ConfigError, match="'SOLVER.MAX_ITER'"):
        normalize_overrides(["SOLVER.MAX_ITER"])


def test_config_file_spelling_and_overrides_on_both_sides_of_a_flag():
    args = build_parser().parse_intermixed_args(["--config-file", "a.yaml", "train.max_iters=3", "--resume", "engine=detectron2"])
    assert args.config == "a.yaml" and args.resume and args.overrides == ["train.max_iters=3", "engine=detectron2"]


def _error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("train_net: error:")]
    assert len(lines) == 1
    return lines[0]


def test_a_finished_run_is_not_retrained_over(scenes, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "run"
    argv = ["--config", str(CONFIG), "--out", str(out), f"vars.world={scenes}", "model.weights=null"]
    with claimed_output(build_parser().parse_intermixed_args(argv)):  # the run that finished here
        (out / "metrics.json").write_text(json.dumps({"bbox/AP": 1.0}))
    assert main(argv) == 2
    assert "--resume" in _error_line(capsys)
    assert json.loads((out / "metrics.json").read_text()) == {"bbox/AP": 1.0}
    assert main([*argv, "train.lr=0.5"]) == 2  # another config: another run, not this one to resume
    assert "holds the results of a different run (differs in: train), `tools/train_net.py`" in _error_line(capsys)


def test_a_bad_detectron2_override_is_named(scenes, tmp_path, capsys):  # noqa: F811
    pytest.importorskip("detectron2")
    assert main(["--config", str(CONFIG), "--out", str(tmp_path / "run"), f"vars.world={scenes}", "model.weights=null", "engine=detectron2",
                 "train.max_iters=1", "SOLVER.NO_SUCH_KEY", "3"]) == 2
    assert "detectron2.SOLVER.NO_SUCH_KEY=3" in _error_line(capsys)


def test_eval_only_without_a_checkpoint_is_one_line(scenes, tmp_path, capsys):  # noqa: F811
    pytest.importorskip("detectron2")
    assert main(["--config-file", str(CONFIG), "--out", str(tmp_path / "none"), f"vars.world={scenes}", "model.weights=null", "engine=detectron2", "--eval-only"]) == 2
    assert "checkpoint not found" in _error_line(capsys)


def test_torchvision_runs_of_one_config_are_identical(scenes, tmp_path, capsys):  # noqa: F811
    runs, weights = [], []
    for name in ("a", "b"):
        assert main(["--config", str(CONFIG), "--out", str(tmp_path / name), f"vars.world={scenes}", "model.weights=null", "data.num_workers=0", "train.max_iters=3"]) == 0
        runs.append(json.loads((tmp_path / name / "metrics.json").read_text()))
        weights.append(torch.load(tmp_path / name / "model_final.pth", weights_only=True)["model"])
    assert runs[0] == runs[1]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])


def test_detect_reads_the_run_config_beside_the_checkpoint(scenes, tmp_path):  # noqa: F811
    """A detector trained with a non-default setting is rebuilt from OUT/config.yaml, no --config needed."""
    from react_core.cli import main as react

    out = tmp_path / "run"
    assert main(["--config", str(CONFIG), "--out", str(out), f"vars.world={scenes}", "model.weights=null", "data.num_workers=0",
                 "train.max_iters=2", "backbone.out_channels=32"]) == 0
    image = next((scenes / "detection" / "images" / "val").glob("*.png"))
    assert react(["detect", str(image), "--weights", str(out / "model_final.pth"), "--vocabulary", "red square,blue circle",
                  "--out", str(tmp_path / "detect"), "--score-threshold", "0"]) == 0
    assert (tmp_path / "detect" / "detections.json").is_file()
    assert react(["detect", str(image), "--config", str(CONFIG), "--weights", str(out / "model_final.pth"),
                  "--vocabulary", "red square", "--out", str(tmp_path / "other")]) == 2
