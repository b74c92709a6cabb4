"""The Detectron2 engine wraps the same parts (skipped where Detectron2 is not installed)."""
from __future__ import annotations

import pytest
import torch

detectron2 = pytest.importorskip("detectron2")

from test_dense_detector import demo_config, scenes  # noqa: E402,F401  (fixture)

from react_dense.build import dataset_vocabularies  # noqa: E402


@pytest.mark.parametrize("ensemble", [[], ["ensemble.enabled=true", "ensemble.regions=crops"]], ids=["plain", "crops"])
def test_detectron2_model_trains_on_base_and_swaps_vocabulary(scenes, tmp_path, ensemble):  # noqa: F811
    from detectron2.data import DatasetCatalog
    from detectron2.modeling import build_model

    import react_dense.engines.detectron2.modeling  # noqa: F401
    from react_dense.engines.detectron2.modeling import parts_for
    from react_dense.engines.detectron2.train import TRAIN_NAME, register_datasets, to_detectron2_cfg
    from test_dense_detector import CONFIG

    overrides = [f"world={scenes}", "data.num_workers=0", *ensemble]
    cfg = demo_config(scenes, *ensemble)
    split = register_datasets(cfg)
    d2 = to_detectron2_cfg(cfg, str(CONFIG), overrides, tmp_path, len(split.base_ids))
    torch.manual_seed(0)
    model = build_model(d2)
    assert type(model.backbone).__name__ == "Detectron2ClipBackbone"
    parts = parts_for(str(CONFIG), tuple(overrides))
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
