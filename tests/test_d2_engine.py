"""The Detectron2 engine: our YAML as a native Detectron2 config, on the same parts (skipped where Detectron2 is not installed)."""
from __future__ import annotations

import json

import pytest
import torch

detectron2 = pytest.importorskip("detectron2")

from test_dense_detector import demo_config, scenes  # noqa: E402,F401  (fixture)



@pytest.mark.parametrize("ensemble", [[], ["ensemble.enabled=true", "ensemble.regions=crops"]], ids=["plain", "crops"])
def test_detectron2_model_trains_on_base_and_swaps_vocabulary(scenes, tmp_path, ensemble):  # noqa: F811
    from detectron2.data import DatasetCatalog, DatasetMapper
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    from react_dense.engines.detectron2.train import TRAIN_NAME, native_config, register_datasets, write_classifiers

    cfg = demo_config(scenes, *ensemble)
    split = register_datasets(cfg)
    bundle, eval_vocab = write_classifiers(cfg, tmp_path)
    d2 = native_config(cfg, tmp_path, bundle.model.visual, len(split.base_ids))
    assert "REACT" not in d2 and d2.MODEL.BACKBONE.NAME == "build_react_backbone"
    torch.manual_seed(0)
    model = build_model(d2)
    assert type(model.backbone).__name__ == "ReactSimpleFeaturePyramid"
    from detectron2.modeling import SimpleFeaturePyramid

    assert isinstance(model.backbone, SimpleFeaturePyramid)  # Detectron2's own pyramid
    assert type(model.roi_heads).__name__ == "ZeroShotROIHeads"

    records = DatasetCatalog.get(TRAIN_NAME)
    rare = set(split.novel_ids)
    assert records and all(cfg_id not in rare for r in records for cfg_id in (split.base_ids[a["category_id"]] for a in r["annotations"]))
    mapper = DatasetMapper(d2, is_train=True)
    batch = [mapper(records[0]), mapper(records[1])]
    model.train()
    assert model.roi_heads.box_predictor.num_classes == len(split.base_ids)
    with EventStorage():
        losses = model(batch)
    assert {"loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc"} <= set(losses)
    sum(losses.values()).backward()
    assert all(p.grad is None for p in model.backbone.net.tower.trunk.parameters())

    model.eval()  # the evaluation vocabulary: every category
    assert model.roi_heads.box_predictor.num_classes == len(eval_vocab.vocabulary)
    with torch.no_grad():
        instances = model([{"image": batch[0]["image"], "height": 64, "width": 64}])[0]["instances"]
    assert len(instances) and int(instances.pred_classes.max()) < len(eval_vocab.vocabulary)
    assert instances.pred_masks.shape[-2:] == (64, 64)


def _run(scenes, out, *overrides):
    from react_dense.engines.detectron2.train import main

    cfg = demo_config(scenes, "engine=detectron2", "train.log_interval=1", *overrides)
    return main(cfg, out, eval_only=False, resume=False, weights=None)


def _curve(out) -> list[dict]:
    """The training steps of Detectron2's JSON log (its last line holds the evaluation)."""
    lines = [json.loads(line) for line in (out / "train_metrics.json").read_text().splitlines()]
    return [line for line in lines if "total_loss" in line]


def test_detectron2_trainer_losses_fall_and_its_native_config_runs_in_detectron2s_own_tools(scenes, tmp_path):  # noqa: F811
    """The run's OUT/detectron2_config.yaml is the whole detector: Detectron2's tools/train_net.py
    evaluates the run's weights with it (the evaluation set registered with register_coco_instances)
    to the AP the runner measured with COCO's rules."""
    settings = ("train.max_iters=20", "train.lr=0.002", "train.warmup_iters=2", "data.lvis_style=false")
    metrics = _run(scenes, tmp_path / "a", *settings)
    curve = _curve(tmp_path / "a")
    assert len(curve) == 20
    first = sum(c["total_loss"] for c in curve[:4]) / 4
    last = sum(c["total_loss"] for c in curve[-4:]) / 4
    assert last < 0.8 * first, (first, last)
    assert curve[-1]["loss_rpn_cls"] < curve[0]["loss_rpn_cls"]
    assert json.loads((tmp_path / "a" / "metrics.json").read_text()) == metrics
    assert "bbox/AP" in metrics and "total_loss" not in metrics
    assert "kind: detection" in (tmp_path / "a" / "config.yaml").read_text()  # ours, not Detectron2's dump
    from react_dense.engines.detectron2.train import VAL_NAME, main

    cfg = demo_config(scenes, "engine=detectron2", *settings)
    again = main(cfg, tmp_path / "again", eval_only=True, resume=False, weights=str(tmp_path / "a" / "model_final.pth"))
    assert again["bbox/AP"] == pytest.approx(metrics["bbox/AP"])

    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances

    stock = detectron2_tool("train_net.py")
    DatasetCatalog.remove(VAL_NAME)
    MetadataCatalog.remove(VAL_NAME)
    register_coco_instances(VAL_NAME, {}, str(scenes / "detection" / "val.json"), str(scenes / "detection"))
    args = stock.default_argument_parser().parse_args([
        "--config-file", str(tmp_path / "a" / "detectron2_config.yaml"), "--eval-only",
        "MODEL.WEIGHTS", str(tmp_path / "a" / "model_final.pth"), "OUTPUT_DIR", str(tmp_path / "stock"),
    ])
    results = stock.main(args)
    assert results["bbox"]["AP"] == pytest.approx(metrics["bbox/AP"], abs=0.05)


def detectron2_tool(name: str):
    """A script of Detectron2's `tools/` folder, imported as a module (a source checkout has it)."""
    import importlib.util
    from pathlib import Path

    script = Path(detectron2.__file__).resolve().parents[1] / "tools" / name
    if not script.is_file():
        pytest.skip(f"Detectron2's tools/{name} is not in this installation (installed from a wheel)")
    spec = importlib.util.spec_from_file_location(f"detectron2_tools_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_detectron2_runs_of_one_config_are_identical(scenes, tmp_path):  # noqa: F811
    settings = ("train.max_iters=4", "model.weights=null")
    assert _run(scenes, tmp_path / "a", *settings) == _run(scenes, tmp_path / "b", *settings)
    first, second = _curve(tmp_path / "a"), _curve(tmp_path / "b")
    assert [c["total_loss"] for c in first] == [c["total_loss"] for c in second]


class _Payload:
    """Unpickling this writes a file: proof that a loader ran code from a checkpoint."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_detectron2_engine_never_unpickles_weights(scenes, tmp_path):  # noqa: F811
    import pickle

    from react_core.errors import ReactError
    from react_dense.engines.detectron2.train import main

    marker = tmp_path / "code_ran"
    for suffix in (".pkl", ".pth"):
        weights = tmp_path / f"weights{suffix}"
        weights.write_bytes(pickle.dumps({"model": _Payload(marker)}))
        cfg = demo_config(scenes, "engine=detectron2")
        with pytest.raises(ReactError, match=str(weights)):
            main(cfg, tmp_path / f"eval{suffix}", eval_only=True, resume=False, weights=str(weights))
        trained = demo_config(scenes, "engine=detectron2", "train.max_iters=1", f"detectron2.MODEL.WEIGHTS={weights}")
        with pytest.raises(ReactError, match="weights"):
            main(trained, tmp_path / f"train{suffix}", eval_only=False, resume=False, weights=None)
    assert not marker.exists()


def test_detectron2_trainer_saves_and_loads_through_one_weights_only_checkpointer(scenes, tmp_path, monkeypatch):  # noqa: F811
    from detectron2.engine import hooks

    from react_dense.engines.detectron2 import train as engine

    trainers = []
    build = engine.build_trainer_class

    def recording(*args):
        class Recorded(build(*args)):
            def __init__(self, d2):
                super().__init__(d2)
                trainers.append(self)

        return Recorded

    monkeypatch.setattr(engine, "build_trainer_class", recording)
    _run(scenes, tmp_path, "train.max_iters=2", "train.checkpoint_interval=1")
    (trainer,) = trainers
    assert type(trainer.checkpointer).__name__ == "WeightsOnlyCheckpointer"
    assert [h.checkpointer for h in trainer._hooks if isinstance(h, hooks.PeriodicCheckpointer)] == [trainer.checkpointer]
    assert (tmp_path / "model_0000000.pth").is_file()


def test_detectron2_engine_calibrates_the_ensemble_it_evaluates_with(scenes, tmp_path):  # noqa: F811
    from react_dense.engines.detectron2.train import main

    settings = ("engine=detectron2", "train.max_iters=20", "train.lr=0.002", "train.warmup_iters=2", "ensemble.enabled=true",
                "data.novel=[blue circle,green circle,green square]", "ensemble.calibration_images=16")
    heldout = "ensemble.heldout=[green square]"
    chosen = main(demo_config(scenes, *settings, heldout), tmp_path / "a", eval_only=False, resume=False, weights=None)
    report = json.loads((tmp_path / "a" / "ensemble_calibration.json").read_text())
    assert set(report["novel_weight_curve"]) >= {"0.0", "1.0"} and "prior" not in report

    def evaluate(name, *overrides):
        return main(demo_config(scenes, *settings, *overrides), tmp_path / name, eval_only=True, resume=False,
                    weights=str(tmp_path / "a" / "model_final.pth"))

    # the chosen weights are the ones evaluated: set by hand they score alike, F-VLM's do not
    fixed = evaluate("fixed", f"ensemble.base_weight={report['base_weight']}", f"ensemble.novel_weight={report['novel_weight']}")
    assert fixed["bbox/AP"] == pytest.approx(chosen["bbox/AP"])
    assert not (tmp_path / "fixed" / "ensemble_calibration.json").exists()
    assert evaluate("fvlm")["bbox/AP"] != pytest.approx(chosen["bbox/AP"])
    corrected = evaluate("corrected", heldout, "ensemble.background=true", "ensemble.prior_correction=true")
    report = json.loads((tmp_path / "corrected" / "ensemble_calibration.json").read_text())
    assert len(report["prior"]) == 6 and 0 < report["background_proposals"] < report["proposals"]
    assert corrected["bbox/AP"] != pytest.approx(chosen["bbox/AP"])


@pytest.mark.slow
def test_the_lvis_recipe_becomes_a_native_detectron2_config_that_builds(scenes, tmp_path):  # noqa: F811
    """configs/lvis_react.yaml (ViT-B/16, sigmoid scores with the federated loss, 1024 pixels) as
    Detectron2 reads it, on the test's scenes in place of LVIS and a random-init tower offline."""
    from pathlib import Path

    from detectron2.modeling import build_model

    from react_dense.detection.config import load_detection_config
    from react_dense.engines.detectron2.train import native_config, register_datasets, write_classifiers

    lvis = Path(__file__).resolve().parents[1] / "configs" / "lvis_react.yaml"
    cfg = load_detection_config(str(lvis), [
        "model.pretrained=null", "backbone.freeze=frozen", "text.cache_dir=null", "text.templates=none", "train.device=cpu",
        "data.num_workers=0",
        f"data.train={scenes / 'detection' / 'train.json'}", f"data.train_images={scenes / 'detection'}",
        f"data.val={scenes / 'detection' / 'val.json'}", f"data.val_images={scenes / 'detection'}",
    ])
    split = register_datasets(cfg)
    bundle, _ = write_classifiers(cfg, tmp_path)
    d2 = native_config(cfg, tmp_path, bundle.model.visual, len(split.base_ids))
    assert (d2.MODEL.REACT.MODEL, d2.MODEL.REACT.STRIDE, d2.INPUT.MIN_SIZE_TEST) == ("ViT-B-16", 16, 1024)
    assert d2.MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE and d2.MODEL.ROI_BOX_HEAD.USE_FED_LOSS
    assert d2.MODEL.ROI_BOX_HEAD.FED_LOSS_NUM_CLASSES == 50 and d2.SOLVER.AMP.ENABLED
    model = build_model(d2)
    assert list(model.backbone.output_shape()) == ["p2", "p3", "p4", "p5", "p6"]
    predictor = model.roi_heads.box_predictor
    assert predictor.classifier.federated_classes == 50
    counts = {c["id"]: c["image_count"] for c in json.loads((scenes / "detection" / "train.json").read_text())["categories"]}
    assert predictor.image_counts.tolist() == [float(counts[i]) for i in split.base_ids]
