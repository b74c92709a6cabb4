"""End to end on the tiny synthetic world: tools/train_net.py, resume, eval-only, MaskCLIP,
the permuted control, `react segment`, and the Detectron2 engine where it is installed."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from react_core.io import file_sha256

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "react_dense" / "lab" / "configs" / "seg_synthetic.yaml")


def _quick(world, *extra):
    return [
        f"vars.world={world}", "model.weights=null", "train.max_iters=4", "train.batch_size=4", "train.crop_size=64", "train.checkpoint_interval=2",
        "train.warmup_iters=1", "test.batch_size=4", "test_data.0.max_images=4", "backbone.out_channels=32",
        "head.decoder_channels=32", *extra,
    ]


def _train_net(*args):
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from train_net import main
    finally:
        sys.path.pop(0)
    return main(list(args))


def test_train_net_writes_metrics_and_resumes(tiny_world, tmp_path, capsys):
    out = tmp_path / "seg"
    assert _train_net("--config", CONFIG, "--out", str(out), *_quick(tiny_world)) == 0
    assert torch.load(out / "checkpoint_last.pt", weights_only=True)["meta"]["iter"] == 4
    assert sorted(p.name for p in out.iterdir()) == [
        ".react-run.json", "checkpoint_last.pt", "config.yaml", "metrics.json", "model_final.pth", "train.log"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert _train_net("--config", CONFIG, "--out", str(out), "--resume", *_quick(tiny_world)) == 0  # evaluated again
    assert json.loads((out / "metrics.json").read_text())["mIoU"] == pytest.approx(metrics["mIoU"], abs=1e-3)
    capsys.readouterr()
    assert _train_net("--config", CONFIG, "--out", str(out), "--resume", *_quick(tiny_world, "train.lr=1e-3")) == 2
    assert "different run (differs in: train)" in capsys.readouterr().err
    for key in ("mIoU", "mIoU_seen", "mIoU_unseen", "fwIoU", "pACC", "mACC", "IoU-background"):
        assert key in metrics
    assert 0 <= metrics["mIoU_seen"] <= 100 and metrics["pACC"] > 0
    again = tmp_path / "again"
    assert _train_net("--config", CONFIG, "--out", str(again), "--eval-only", "--weights", str(out / "model_final.pth"), *_quick(tiny_world)) == 0
    assert json.loads((again / "metrics.json").read_text())["mIoU"] == pytest.approx(metrics["mIoU"], abs=1e-3)
    recorded = yaml.safe_load((again / "config.yaml").read_text())["sha256"]  # the evaluation names what it read
    assert recorded[str((out / "model_final.pth").resolve())] == file_sha256(out / "model_final.pth")
    mixed = tmp_path / "ensemble"  # the same trained head, its scores ensembled with the readout's
    assert _train_net("--config", CONFIG, "--out", str(mixed), "--eval-only", "--weights", str(out / "model_final.pth"),
                      *_quick(tiny_world, "ensemble.enabled=true")) == 0
    assert json.loads((mixed / "metrics.json").read_text())["mIoU"] != pytest.approx(metrics["mIoU"], abs=1e-3)


def test_maskclip_baseline_and_permuted_control_write_their_metrics(tiny_world, tmp_path):
    from react_dense.train_net import train

    metrics = train(CONFIG, _quick(tiny_world, "method=maskclip"), tmp_path / "maskclip")
    assert metrics["method"] == "maskclip" and not (tmp_path / "maskclip" / "model_final.pth").exists()
    assert json.loads((tmp_path / "maskclip" / "metrics.json").read_text())["mIoU_unseen"] is not None
    plain = train(CONFIG, _quick(tiny_world, "method=maskclip"), tmp_path / "a")
    control = train(CONFIG, _quick(tiny_world, "method=maskclip", "permute_unseen_embeddings=true"), tmp_path / "b")
    assert plain["mIoU_seen"] == pytest.approx(metrics["mIoU_seen"])
    assert control["mIoU_seen"] == pytest.approx(plain["mIoU_seen"])  # only unseen rows move
    assert control["mIoU_unseen"] != pytest.approx(plain["mIoU_unseen"])


def test_bad_dataset_is_a_one_line_error(tmp_path, capsys):
    assert _train_net("--config", CONFIG, "--out", str(tmp_path / "run"), f"vars.world={tmp_path}", "model.weights=null") == 2
    assert f"train_net: error: segmentation data folder not found: {tmp_path}/semseg" in capsys.readouterr().err


def test_react_segment_writes_label_maps_and_overlays(tiny_world, tmp_path):
    from react_core.cli import main

    out = tmp_path / "train"
    assert _train_net("--config", CONFIG, "--out", str(out), *_quick(tiny_world, "train.max_iters=1")) == 0
    images = sorted((tiny_world / "semseg" / "val" / "images").glob("*.jpg"))[:2]
    result_dir = tmp_path / "segment"
    sets = [item for override in _quick(tiny_world) for item in ("--set", override)]
    args = ["segment", "--config", CONFIG, "--weights", str(out / "model_final.pth"), *sets,
            "--vocabulary", "red circle,blue square,purple star", "--out", str(result_dir), *map(str, images)]
    assert main(args[:5] + args[5 + len(sets):]) == 2  # the checkpoint does not fit the default widths
    torch.manual_seed(0)  # the config's tower is random (model.weights: null), its text tower too
    assert main(args) == 0
    label = np.asarray(Image.open(result_dir / "labels" / f"{images[0].stem}.png"))
    assert label.shape == (128, 128) and set(np.unique(label)) <= {0, 1, 2, 255}
    overlay = Image.open(result_dir / "overlays" / f"{images[0].stem}.png")
    assert overlay.height == 128 and overlay.width > 128  # the legend sits to the right
    classes = json.loads((result_dir / "classes.json").read_text())
    assert [c["name"] for c in classes["classes"]] == ["red circle", "blue square", "purple star"]
    assert main(args[:3] + args[5:]) == 2  # a trained head needs --weights
    beside = ["segment", "--weights", str(out / "model_final.pth"), "--vocabulary", "red circle,blue square,purple star",
              "--out", str(tmp_path / "beside"), *map(str, images)]
    torch.manual_seed(0)
    assert main(beside) == 0  # the training run's OUT/config.yaml, overrides and all, rebuilds the segmenter
    assert np.array_equal(np.asarray(Image.open(tmp_path / "beside" / "labels" / f"{images[0].stem}.png")), label)


def test_detectron2_engine_trains_and_evaluates(tiny_world, tmp_path):
    pytest.importorskip("detectron2")
    from react_dense.train_net import train

    metrics = train(CONFIG, _quick(tiny_world, "engine=detectron2"), tmp_path / "d2")
    assert metrics["engine"] == "detectron2"
    assert {"mIoU", "mIoU_seen", "mIoU_unseen"} <= set(metrics)
    assert torch.load(tmp_path / "d2" / "last_checkpoint.pth", weights_only=True)["step"] == 4
    curve = [json.loads(line) for line in (tmp_path / "d2" / "train_metrics.json").read_text().splitlines()]
    assert curve and all(line["total_loss"] > 0 for line in curve)
    again = train(CONFIG, _quick(tiny_world, "engine=detectron2"), tmp_path / "d2", eval_only=True)
    assert again["mIoU"] == pytest.approx(metrics["mIoU"], abs=1e-3)


def test_detectron2_engine_ensembles_the_head_with_the_readout_as_the_plain_engine(tiny_world, tmp_path):
    pytest.importorskip("detectron2")
    from react_dense.train_net import train

    trained = tmp_path / "d2"
    head_alone = train(CONFIG, _quick(tiny_world, "engine=detectron2"), trained)

    def ensembled(engine, seen, unseen):
        name = f"{engine}-{seen}-{unseen}"
        weights = trained / "model_final.pth" if engine == "detectron2" else None
        overrides = _quick(tiny_world, f"engine={engine}", "ensemble.enabled=true", f"ensemble.seen_weight={seen}",
                           f"ensemble.unseen_weight={unseen}", *(("train.max_iters=1",) if weights is None else ()))
        return train(CONFIG, overrides, tmp_path / name, eval_only=weights is not None, weights=weights)

    # weight 0: the head's labels; weight 1: the readout's alone, which the plain engine computes alike
    assert ensembled("detectron2", 0, 0)["mIoU"] == pytest.approx(head_alone["mIoU"], abs=1e-6)
    readout = ensembled("detectron2", 1, 1)
    assert readout["mIoU"] != pytest.approx(head_alone["mIoU"], abs=1e-3)
    assert readout["mIoU"] == pytest.approx(ensembled("plain", 1, 1)["mIoU"], abs=1e-3)


def test_ensemble_temperature_is_chosen_on_heldout_seen_classes_and_applied(tiny_world, tmp_path, capsys):
    record = json.loads((Path(tiny_world) / "semseg" / "classes.json").read_text())
    held = next(name for name in record["seen"] if name != record["classes"][record["background_index"]])
    unseen = "train_data.unseen=[" + ",".join(record["unseen"] + [held]) + "]"
    out = tmp_path / "heldout"
    # neither temperature is the default 0.01: evaluating at the default would show it was not applied
    calibrated = _quick(tiny_world, unseen, "ensemble.enabled=true", f"ensemble.heldout=[{held}]",
                        "ensemble.calibration_images=4", "ensemble.temperatures=[0.05,0.5]")
    assert _train_net("--config", CONFIG, "--out", str(out), *calibrated) == 0
    report = json.loads((out / "ensemble_calibration.json").read_text())
    curve = report["hIoU_curve"]
    assert set(curve) == {"0.05", "0.5"} and report["temperature"] == float(max(curve, key=curve.get))
    for value, part in zip(curve.values(), report["mIoU_curve"].values()):
        assert value == pytest.approx(2 * part["seen"] * part["heldout"] / max(part["seen"] + part["heldout"], 1e-9))
    assert held not in report["seen_classes"] and not set(record["unseen"]) & set(report["seen_classes"])
    again = tmp_path / "again"
    assert _train_net("--config", CONFIG, "--out", str(again), "--eval-only", "--weights", str(out / "model_final.pth"),
                      *_quick(tiny_world, unseen, "ensemble.enabled=true", f"ensemble.temperature={report['temperature']}")) == 0
    assert json.loads((again / "metrics.json").read_text())["mIoU"] == pytest.approx(json.loads((out / "metrics.json").read_text())["mIoU"], abs=1e-3)
    capsys.readouterr()
    bad = _quick(tiny_world, "ensemble.enabled=true", f"ensemble.heldout=[{held}]")  # held is trained on here
    assert _train_net("--config", CONFIG, "--out", str(tmp_path / "bad"), "--eval-only", "--weights", str(out / "model_final.pth"), *bad) == 2
    assert held in capsys.readouterr().err


def test_detectron2_engine_chooses_the_temperature_as_the_plain_engine(tiny_world, tmp_path):
    pytest.importorskip("detectron2")
    from react_dense.train_net import train

    record = json.loads((Path(tiny_world) / "semseg" / "classes.json").read_text())
    held, left_out = [name for name in record["seen"] if name != record["classes"][record["background_index"]]][:2]
    # left_out is on the training images but neither trained nor held out: calibration must ignore its pixels
    unseen = "train_data.unseen=[" + ",".join(record["unseen"] + [held, left_out]) + "]"
    heldout = (unseen, "ensemble.enabled=true", f"ensemble.heldout=[{held}]", "ensemble.calibration_images=6",
               "ensemble.temperatures=[0.05,0.5]")
    trained = tmp_path / "d2"
    train(CONFIG, _quick(tiny_world, "engine=detectron2", unseen), trained)

    def calibrate(engine, *extra):
        weights = trained / "model_final.pth" if engine == "detectron2" else None
        overrides = _quick(tiny_world, f"engine={engine}", *heldout, *extra, *(("train.max_iters=1",) if weights is None else ()))
        out = tmp_path / f"{engine}{len(extra)}"
        metrics = train(CONFIG, overrides, out, eval_only=weights is not None, weights=weights)
        return metrics, json.loads((out / "ensemble_calibration.json").read_text())

    # the readout alone (weights 1) is engine-free: both engines must score its calibration alike
    readout_only = ("ensemble.seen_weight=1", "ensemble.unseen_weight=1")
    d2_curve = calibrate("detectron2", *readout_only)[1]["mIoU_curve"]
    plain_curve = calibrate("plain", *readout_only)[1]["mIoU_curve"]
    assert d2_curve.keys() == plain_curve.keys() == {"0.05", "0.5"}
    for temperature in d2_curve:
        assert d2_curve[temperature] == pytest.approx(plain_curve[temperature], abs=1e-3)
    metrics, report = calibrate("detectron2")
    curve = report["hIoU_curve"]
    assert report["temperature"] == float(max(curve, key=curve.get))
    assert held not in report["seen_classes"] and left_out not in report["seen_classes"]
    fixed = train(CONFIG, _quick(tiny_world, "engine=detectron2", unseen, "ensemble.enabled=true",
                                 f"ensemble.temperature={report['temperature']}"),
                  tmp_path / "fixed", eval_only=True, weights=trained / "model_final.pth")
    assert fixed["mIoU"] == pytest.approx(metrics["mIoU"], abs=1e-6)  # the chosen temperature is the one evaluated
