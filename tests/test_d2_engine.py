"""The Detectron2 engine wraps the same parts (skipped where Detectron2 is not installed)."""
from __future__ import annotations

import json

import pytest
import torch

detectron2 = pytest.importorskip("detectron2")

from test_dense_detector import demo_config, scenes  # noqa: E402,F401  (fixture)

from react_dense.detection.build import dataset_vocabularies  # noqa: E402


@pytest.mark.parametrize("ensemble", [[], ["ensemble.enabled=true", "ensemble.regions=crops"]], ids=["plain", "crops"])
def test_detectron2_model_trains_on_base_and_swaps_vocabulary(scenes, tmp_path, ensemble):  # noqa: F811
    from detectron2.data import DatasetCatalog
    from detectron2.modeling import build_model

    from react_dense.detection.build import build_parts
    from react_dense.engines.detectron2.modeling import parts_of, register_parts
    from react_core.config import write_run_config
    from react_dense.engines.detectron2.train import TRAIN_NAME, register_datasets, to_detectron2_cfg

    cfg = demo_config(scenes, *ensemble)
    split = register_datasets(cfg)
    config_file = write_run_config(cfg, tmp_path)
    parts = build_parts(cfg)
    register_parts(str(config_file), parts)
    d2 = to_detectron2_cfg(cfg, parts, config_file, tmp_path, len(split.base_ids))
    torch.manual_seed(0)
    model = build_model(d2)
    assert type(model.backbone).__name__ == "Detectron2ClipBackbone"
    assert model.backbone.clip_backbone is parts.backbone and parts_of(d2) is parts
    train_vocab, eval_vocab, _ = dataset_vocabularies(parts.bundle, cfg, cfg.data.train)
    model.roi_heads.box_predictor.set_vocabulary(train_vocab.embeddings, train_vocab.is_base)

    records = DatasetCatalog.get(TRAIN_NAME)
    rare = set(split.novel_ids)
    assert records and all(cfg_id not in rare for r in records for cfg_id in (split.base_ids[a["category_id"]] for a in r["annotations"]))
    from detectron2.data import DatasetMapper

    mapper = DatasetMapper(d2, is_train=True)
    batch = [mapper(records[0]), mapper(records[1])]
    from detectron2.utils.events import EventStorage

    model.train()
    with EventStorage():
        losses = model(batch)
    assert {"loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc"} <= set(losses)
    sum(losses.values()).backward()
    assert all(p.grad is None for p in model.backbone.clip_backbone.trunk.parameters())

    model.eval()
    model.roi_heads.box_predictor.set_vocabulary(eval_vocab.embeddings, eval_vocab.is_base)
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


def test_detectron2_trainer_losses_fall_and_files_do_not_clash(scenes, tmp_path):  # noqa: F811
    metrics = _run(scenes, tmp_path / "a", "train.max_iters=20", "train.lr=0.002", "train.warmup_iters=2")
    curve = _curve(tmp_path / "a")
    assert len(curve) == 20
    first = sum(c["total_loss"] for c in curve[:4]) / 4
    last = sum(c["total_loss"] for c in curve[-4:]) / 4
    assert last < 0.8 * first, (first, last)
    assert curve[-1]["loss_rpn_cls"] < curve[0]["loss_rpn_cls"]
    assert json.loads((tmp_path / "a" / "metrics.json").read_text()) == metrics
    assert "bbox/AP" in metrics and "total_loss" not in metrics
    from react_dense.engines.detectron2.train import main

    cfg = demo_config(scenes, "engine=detectron2", "train.max_iters=20", "train.lr=0.002", "train.warmup_iters=2")
    again = main(cfg, tmp_path / "again", eval_only=True, resume=False, weights=str(tmp_path / "a" / "model_final.pth"))
    assert again["bbox/AP"] == pytest.approx(metrics["bbox/AP"])


def test_detectron2_resolved_config_builds_the_same_parts(scenes, tmp_path):  # noqa: F811
    from detectron2.config import get_cfg

    from react_dense.engines.detectron2.modeling import parts_of
    from react_core.config import write_run_config
    from react_dense.engines.detectron2.train import add_react_config

    config_file = write_run_config(demo_config(scenes, "backbone.out_channels=32"), tmp_path)
    d2 = get_cfg()
    add_react_config(d2)
    d2.REACT.CONFIG = str(config_file)
    assert parts_of(d2).backbone.output_shape()["p2"].channels == 32


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
