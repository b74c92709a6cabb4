"""The REACT tower in the detectors users already have: Detectron2 yacs and LazyConfig, torchvision,
and Detic-format classifier files (the Detectron2 tests are skipped without Detectron2)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from test_dense_detector import CONFIG, scenes, write_scenes  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["red square", "blue square", "red circle", "green square", "blue circle", "green circle"]


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> Path:
    """COCO-format scenes of coloured shapes (train 16, val 6 images, 64 pixels, masks)."""
    root = tmp_path_factory.mktemp("coco")
    write_scenes(root, "train", 16, seed=0)
    write_scenes(root, "val", 6, seed=1)
    return root


def _register(coco: Path) -> tuple[str, str]:
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances

    names = ("react_shapes_train", "react_shapes_val")
    for name, split in zip(names, ("train", "val")):
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_coco_instances(name, {}, str(coco / f"{split}.json"), str(coco))
    return names


def _stock_cfg(coco: Path, tower: Path, *keys, config: str = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"):
    """A stock config of Detectron2's model zoo (Mask R-CNN R50-FPN) with the REACT tower swapped in
    (the first three keys), on the shapes at a size a CPU trains in seconds."""
    import react_dense.detectron2 as face

    train, val = _register(coco)
    cfg = face.model_zoo.get_config(config)
    face.add_react_config(cfg)
    cfg.merge_from_list([
        "MODEL.BACKBONE.NAME", "build_react_backbone", "MODEL.REACT.WEIGHTS", str(tower), "MODEL.WEIGHTS", "",
        "DATASETS.TRAIN", f"('{train}',)", "DATASETS.TEST", f"('{val}',)", "MODEL.ROI_HEADS.NUM_CLASSES", "6",
        "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64", "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64",
        "MODEL.RPN.BATCH_SIZE_PER_IMAGE", "64", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "64", "MODEL.DEVICE", "cpu",
        "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "300", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "100",
        "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.BASE_LR", "0.01", "SOLVER.WARMUP_ITERS", "2",
        "SOLVER.MAX_ITER", "20", "SOLVER.STEPS", "()", "SEED", "0", *keys,
    ])
    return cfg


@pytest.mark.slow
def test_stock_model_zoo_mask_rcnn_trains_with_the_react_tower_in_detectron2s_default_trainer(coco, gated_towers, tmp_path):
    pytest.importorskip("detectron2")
    from detectron2.engine import DefaultTrainer, hooks

    cfg = _stock_cfg(coco, gated_towers / "open.safetensors", "OUTPUT_DIR", str(tmp_path), "DATASETS.TEST", "()")
    trainer = DefaultTrainer(cfg)
    assert type(trainer.model.backbone).__name__ == "ReactSimpleFeaturePyramid"
    assert list(trainer.model.backbone.output_shape()) == ["p2", "p3", "p4", "p5", "p6"]  # the stock FPN's levels
    assert trainer.model.backbone.net.tower.trunk.transformer.resblocks[5].gated_attn_block is not None
    losses = []
    trainer.register_hooks([hooks.CallbackHook(after_step=lambda t: losses.append(t.storage.history("total_loss").latest()))])
    trainer.train()
    assert len(losses) == 20
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses
    assert all(not p.requires_grad for p in trainer.model.backbone.net.tower.trunk.parameters())  # frozen by default


def test_the_react_keys_swap_the_tower_in_a_stock_config_and_contradicting_input_is_converted(gated_towers):
    """Three keys swap the tower; stock Detectron2 statistics (BGR, caffe mean, std 1) reach the
    tower as the same CLIP-normalised pixels as add_react_config's."""
    pytest.importorskip("detectron2")
    import react_dense.detectron2 as face
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    stock = face.model_zoo.get_config("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml")
    ours = stock.clone()
    face.add_react_config(ours)
    changed = {"MODEL.BACKBONE.NAME": "build_react_backbone", "MODEL.REACT.WEIGHTS": str(gated_towers / "open.safetensors"),
               "MODEL.WEIGHTS": ""}
    for cfg in (stock, ours):
        cfg.merge_from_list([item for pair in changed.items() for item in pair] + ["MODEL.DEVICE", "cpu"])
    assert "REACT" in get_cfg().MODEL  # importing react_dense.detectron2 made the keys known to get_cfg()
    assert (stock.INPUT.FORMAT, ours.INPUT.FORMAT) == ("BGR", "RGB")
    torch.manual_seed(0)
    rgb = torch.randint(0, 256, (1, 3, 64, 64)).float()
    seen, nets = [], []
    for cfg, image in ((stock, rgb.flip(1)), (ours, rgb)):
        model = build_model(cfg).eval()
        nets.append(model.backbone.net)
        normalised = (image - model.pixel_mean) / model.pixel_std
        with torch.no_grad():
            seen.append(nets[-1].input(normalised))
    assert not nets[0].input.identity and nets[1].input.identity
    torch.testing.assert_close(seen[0], seen[1])
    stock.merge_from_list(["INPUT.FORMAT", "YUV-BT.601"])
    from react_core.errors import ReactError

    with pytest.raises(ReactError, match="INPUT.FORMAT='YUV-BT.601'"):
        build_model(stock)


def test_vitdet_lazyconfig_takes_react_vit_and_runs_a_training_step(coco, gated_towers):
    pytest.importorskip("detectron2")
    from detectron2.config import LazyCall as L
    from detectron2.config import instantiate
    from detectron2.data import DatasetCatalog, DatasetMapper
    from detectron2.utils.events import EventStorage

    from react_dense.detectron2 import CLIP_PIXEL_MEAN, CLIP_PIXEL_STD, ReactViT, model_zoo

    model = model_zoo.get_config("common/models/mask_rcnn_vitdet.py").model
    model.backbone.net = L(ReactViT)(weights=str(gated_towers / "closed.safetensors"), out_feature="last_feat", freeze="gated")
    model.pixel_mean, model.pixel_std = CLIP_PIXEL_MEAN, CLIP_PIXEL_STD
    model.backbone.square_pad = 64
    model.roi_heads.num_classes = 6
    detector = instantiate(model)
    assert type(detector.backbone.net).__name__ == "ReactViT"
    assert [n for n, p in detector.backbone.net.named_parameters() if p.requires_grad] and all(
        "gated_attn_block" in n for n, p in detector.backbone.net.named_parameters() if p.requires_grad)
    train, _ = _register(coco)
    from detectron2.config import get_cfg

    cfg = get_cfg()
    cfg.INPUT.FORMAT, cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.MODEL.MASK_ON = "RGB", (64,), 64, True
    mapper = DatasetMapper(cfg, is_train=True)
    batch = [mapper(record) for record in DatasetCatalog.get(train)[:2]]
    detector.train()
    optimizer = torch.optim.AdamW([p for p in detector.parameters() if p.requires_grad], lr=1e-4)
    with EventStorage():
        losses = detector(batch)
    assert {"loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc"} <= set(losses)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    gated = next(p for n, p in detector.backbone.net.named_parameters() if n.endswith("alpha_attn"))
    assert gated.grad is not None
    before = gated.detach().clone()
    optimizer.step()
    assert not torch.equal(before, gated.detach())


@pytest.mark.slow
def test_detectron2s_lazyconfig_train_net_trains_a_react_vitdet(coco, gated_towers, tmp_path):
    """Detectron2's tools/lazyconfig_train_net.py (its do_train) on a LazyConfig saved to YAML,
    whose `model.backbone.net` is ReactViT."""
    pytest.importorskip("detectron2")
    from detectron2.config import LazyCall as L
    from detectron2.config import LazyConfig
    from detectron2.data import transforms as T

    from react_dense.detectron2 import CLIP_PIXEL_MEAN, CLIP_PIXEL_STD, ReactViT, model_zoo
    from test_d2_engine import detectron2_tool

    train, val = _register(coco)
    cfg = LazyConfig.load(model_zoo.get_config_file("common/data/coco.py"))
    cfg.model = model_zoo.get_config("common/models/mask_rcnn_vitdet.py").model
    cfg.model.backbone.net = L(ReactViT)(weights=str(gated_towers / "open.safetensors"), out_feature="last_feat")
    cfg.model.pixel_mean, cfg.model.pixel_std = CLIP_PIXEL_MEAN, CLIP_PIXEL_STD
    cfg.model.backbone.square_pad, cfg.model.roi_heads.num_classes = 64, 6
    cfg.optimizer = model_zoo.get_config("common/optim.py").AdamW
    cfg.optimizer.lr = 1e-4
    cfg.lr_multiplier = model_zoo.get_config("common/coco_schedule.py").lr_multiplier_1x
    cfg.train = model_zoo.get_config("common/train.py").train
    cfg.train.update(max_iter=3, device="cpu", output_dir=str(tmp_path), init_checkpoint="", eval_period=0, log_period=1)
    cfg.dataloader.train.dataset.names, cfg.dataloader.test.dataset.names = train, val
    cfg.dataloader.train.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=64, max_size=64)]
    cfg.dataloader.train.mapper.image_format = "RGB"
    del cfg.dataloader.evaluator  # training only
    cfg.dataloader.train.total_batch_size, cfg.dataloader.train.num_workers = 2, 0
    LazyConfig.save(cfg, str(tmp_path / "react_vitdet.yaml"))
    tool = detectron2_tool("lazyconfig_train_net.py")
    saved = LazyConfig.load(str(tmp_path / "react_vitdet.yaml"))
    assert saved.model.backbone.net._target_ in ("react_dense.detectron2.ReactViT", "react_dense.detectron2.backbone.ReactViT")
    tool.do_train(tool.default_argument_parser().parse_args(["--config-file", str(tmp_path / "react_vitdet.yaml")]), saved)
    rows = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    assert [row["iteration"] for row in rows if "total_loss" in row] == [0, 1, 2]
    assert (tmp_path / "model_final.pth").is_file()


@pytest.mark.slow
def test_torchvision_mask_rcnn_with_the_tower_trains_and_losses_fall(coco, gated_towers):
    from torchvision.models.detection import MaskRCNN

    from react_dense.detection.data import DetectionDataset
    from react_dense.torchvision import react_backbone

    torch.manual_seed(0)
    backbone = react_backbone(weights=str(gated_towers / "open.safetensors"), out_channels=64)
    assert backbone.out_channels == 64
    detector = MaskRCNN(backbone, num_classes=7, min_size=64, max_size=64, image_mean=backbone.image_mean,
                        image_std=backbone.image_std, rpn_batch_size_per_image=64, box_batch_size_per_image=64,
                        rpn_pre_nms_top_n_train=300, rpn_post_nms_top_n_train=100)
    dataset = DetectionDataset(str(coco / "train.json"), str(coco), list(range(1, 7)), with_masks=True, skip_empty=True)
    samples = [dataset[i] for i in range(len(dataset))]
    trainable = [p for p in detector.parameters() if p.requires_grad]
    assert not any(p.requires_grad for p in backbone.body.trunk.parameters())
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    detector.train()
    losses = []
    for step in range(20):
        batch = [samples[(2 * step + k) % len(samples)] for k in range(2)]
        images = [image for image, _ in batch]
        targets = [{"boxes": t["boxes"], "labels": t["labels"] + 1, "masks": t["masks"]} for _, t in batch]
        loss = sum(detector(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses
    detector.eval()
    with torch.no_grad():
        output = detector([samples[0][0]])[0]
    assert set(output) == {"boxes", "labels", "scores", "masks"}


def _text_embed(*args) -> int:
    from react_core.cli import main

    return main(["text-embed", *map(str, args)])


def test_text_embed_output_is_the_zero_shot_predictors_vocabulary_and_swapping_it_changes_the_classes(coco, gated_towers, tmp_path):
    pytest.importorskip("detectron2")
    import react_dense.detectron2 as face
    from detectron2.modeling import build_model

    from react_core.modeling import load_clip
    from react_dense.modeling.vocabulary import Vocabulary, vocabulary_embeddings

    tower = gated_towers / "open.safetensors"
    (tmp_path / "shapes.txt").write_text("".join(f"{name}\n" for name in CLASSES))
    (tmp_path / "reversed.txt").write_text("".join(f"{name}\n" for name in reversed(CLASSES)))
    for name in ("shapes", "reversed"):
        assert _text_embed("--classes", tmp_path / f"{name}.txt", "--templates", "simple", "--weights", tower,
                           "--out", tmp_path / f"{name}.npy") == 0
    written = np.load(tmp_path / "shapes.npy")
    assert written.dtype == np.float32 and written.shape == (6, 128)
    expected = vocabulary_embeddings(load_clip("react-tiny", weights=tower), Vocabulary(CLASSES), "simple")
    np.testing.assert_allclose(written, expected.numpy(), atol=1e-6)
    other_templates = ["--classes", tmp_path / "shapes.txt", "--weights", tower, "--out", tmp_path / "shapes.npy"]
    assert _text_embed(*other_templates) == 2  # another run's file is kept
    np.testing.assert_array_equal(np.load(tmp_path / "shapes.npy"), written)
    assert _text_embed("--classes", tmp_path / "shapes.txt", "--templates", "simple", "--weights", tower,
                       "--out", tmp_path / "shapes.npy") == 0  # the same run may write it again
    assert _text_embed(*other_templates, "--overwrite") == 0
    assert not np.allclose(np.load(tmp_path / "shapes.npy"), written)
    assert _text_embed("--classes", tmp_path / "shapes.txt", "--templates", "simple", "--weights", tower,
                       "--out", tmp_path / "shapes.npy", "--overwrite") == 0

    cfg = _stock_cfg(coco, tower, "MODEL.ROI_HEADS.NAME", "ZeroShotROIHeads",
                     "MODEL.REACT.ZEROSHOT.WEIGHT_PATH", str(tmp_path / "shapes.npy"), "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    image = {"image": torch.randint(0, 256, (3, 64, 64)).float(), "height": 64, "width": 64}
    with torch.no_grad():
        first = model([image])[0]["instances"]
        face.set_vocabulary(model, tmp_path / "reversed.npy")
        swapped = model([image])[0]["instances"]
    assert len(first) > 10 and len(first) == len(swapped)
    order = torch.argsort(first.scores, descending=True)
    swapped_order = torch.argsort(swapped.scores, descending=True)
    torch.testing.assert_close(first.scores[order], swapped.scores[swapped_order])
    assert torch.equal(first.pred_classes[order], 5 - swapped.pred_classes[swapped_order])
    assert not torch.equal(first.pred_classes[order], swapped.pred_classes[swapped_order])

    cfg.defrost()
    cfg.MODEL.REACT.ZEROSHOT.TEST_WEIGHT_PATH = str(tmp_path / "reversed.npy")  # the same swap, by config
    torch.manual_seed(0)
    with torch.no_grad():
        by_config = build_model(cfg).eval()([image])[0]["instances"]
    torch.testing.assert_close(by_config.scores, swapped.scores)
    assert torch.equal(by_config.pred_classes, swapped.pred_classes)


def test_text_embed_explains_itself_and_refuses_bad_input_in_one_line(tmp_path, capsys):
    from react_core.cli import main

    with pytest.raises(SystemExit):
        main(["text-embed", "--help"])
    assert "Detic's" in capsys.readouterr().out
    assert _text_embed("--classes", "no_such_list", "--out", tmp_path / "a.npy") == 2
    assert "no_such_list" in capsys.readouterr().err
    (tmp_path / "bad.txt").write_text("cat\n{}\n")
    (tmp_path / "templates.txt").write_text("a photo of a cat\n")
    assert _text_embed("--classes", tmp_path / "bad.txt", "--templates", tmp_path / "templates.txt", "--out", tmp_path / "b.npy") == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "templates.txt, line 1" in error[0]
    assert _text_embed("--classes", tmp_path / "bad.txt", "--out", tmp_path / "c.json") == 2
    assert not list(tmp_path.glob("*.npy"))


def test_the_lvis_class_list_ships_with_the_package():
    from react_core.retrieval.classes import load_classes

    classes = load_classes("lvis")
    assert len(classes) == 1203
    assert classes[0].name == "aerosol_can" and classes[0].synonyms == ["aerosol can", "spray can"]
    assert classes[-1].name == "zucchini"


def test_cascade_heads_take_the_zero_shot_predictor_at_every_stage(coco, gated_towers, tmp_path):
    pytest.importorskip("detectron2")
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    np.save(tmp_path / "six.npy", np.random.default_rng(0).standard_normal((6, 128)).astype(np.float32))
    np.save(tmp_path / "two.npy", np.random.default_rng(1).standard_normal((2, 128)).astype(np.float32))
    cfg = _stock_cfg(coco, gated_towers / "open.safetensors", "MODEL.ROI_HEADS.NAME", "ZeroShotCascadeROIHeads",
                     "MODEL.REACT.ZEROSHOT.WEIGHT_PATH", str(tmp_path / "six.npy"),
                     "MODEL.REACT.ZEROSHOT.TEST_WEIGHT_PATH", str(tmp_path / "two.npy"), "DATASETS.TEST", "()",
                     "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", config="Misc/cascade_mask_rcnn_R_50_FPN_1x.yaml")
    model = build_model(cfg)
    predictors = model.roi_heads.box_predictor
    assert len(predictors) == 3 and all(type(p).__name__ == "ZeroShotBoxPredictor" for p in predictors)
    from detectron2.data import DatasetCatalog, DatasetMapper

    batch = [DatasetMapper(cfg, is_train=True)(r) for r in DatasetCatalog.get("react_shapes_train")[:2]]
    with EventStorage():
        losses = model(batch)
    assert {f"loss_cls_stage{k}" for k in range(3)} <= set(losses)
    model.eval()
    with torch.no_grad():
        instances = model([{"image": batch[0]["image"], "height": 64, "width": 64}])[0]["instances"]
    assert len(instances) and set(instances.pred_classes.tolist()) <= {0, 1}


RESNET_TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def test_resnet_towers_give_detectron2s_fpn_or_their_stages(tmp_path):
    pytest.importorskip("detectron2")
    from detectron2.modeling import FPN

    from react_dense.detectron2.backbone import ReactResNet, react_pyramid
    from react_dense.modeling.backbone import ClipTower
    from react_core.modeling import load_clip

    visual = load_clip(RESNET_TINY).model.visual
    fpn = react_pyramid(ClipTower(visual, emit_clip_map=True), out_channels=16)
    assert isinstance(fpn, FPN)
    features = fpn(torch.randn(1, 3, 70, 96))
    assert list(features) == ["p2", "p3", "p4", "p5", "p6", "clip"]
    assert features["p2"].shape[-2:] == (24, 24) and features["clip"].shape[1] == 32
    c4 = react_pyramid(ClipTower(visual, features="readout"), stage_features=["res4"])
    assert isinstance(c4, ReactResNet) and list(c4.output_shape()) == ["res4"]
    assert c4.output_shape()["res4"].stride == 16


# -- bad input: one line naming the key and the file --------------------------------------------


def _adapter_with_moved_base(folder: Path) -> tuple[Path, Path]:
    """A gated adapter whose base file has moved since: (the adapter, where the base is now)."""
    from react_core.modeling import add_gated_blocks, load_clip, save_adapter, save_full

    (folder / "before").mkdir()
    save_full(load_clip("react-tiny").model, folder / "before" / "base.safetensors")
    bundle = load_clip("react-tiny", weights=folder / "before" / "base.safetensors")
    add_gated_blocks(bundle.model, layers=[5])
    save_adapter(bundle.model, folder / "adapter.safetensors", spec=bundle.spec, mode="gated-image")
    moved = folder / "base_moved.safetensors"
    (folder / "before" / "base.safetensors").rename(moved)
    return folder / "adapter.safetensors", moved


def _d2_error(cfg) -> str:
    from detectron2.modeling import build_model

    from react_core.errors import ReactError

    with pytest.raises(ReactError) as error:
        build_model(cfg)
    message = str(error.value)
    assert "\n" not in message
    return message


def test_bad_react_settings_are_one_line_naming_the_key_and_the_file(coco, gated_towers, tmp_path):
    pytest.importorskip("detectron2")
    from react_core.modeling import load_clip, save_full

    small = tmp_path / "small.safetensors"
    save_full(load_clip("react-small").model, small)
    message = _d2_error(_stock_cfg(coco, small, "MODEL.REACT.MODEL", "react-tiny"))
    assert message.startswith("MODEL.REACT.WEIGHTS: ") and str(small) in message and "react-tiny" in message

    adapter, base = _adapter_with_moved_base(tmp_path)
    message = _d2_error(_stock_cfg(coco, adapter))
    assert message.startswith("MODEL.REACT.WEIGHTS: ") and str(adapter) in message and "MODEL.REACT.BASE_WEIGHTS" in message
    other = tmp_path / "other.safetensors"
    save_full(load_clip("react-tiny").model, other)
    message = _d2_error(_stock_cfg(coco, adapter, "MODEL.REACT.BASE_WEIGHTS", str(other)))
    assert message.startswith("MODEL.REACT.BASE_WEIGHTS: ") and str(other) in message and "SHA-256 differs" in message
    assert _stock_cfg(coco, adapter, "MODEL.REACT.BASE_WEIGHTS", str(base)).MODEL.REACT.BASE_WEIGHTS == str(base)

    message = _d2_error(_stock_cfg(coco, gated_towers / "base.safetensors", "MODEL.REACT.MODEL", "react-tiny",
                                   "MODEL.REACT.FREEZE", "gated"))
    assert message.startswith("MODEL.REACT.FREEZE='gated'") and "base.safetensors" in message

    np.save(tmp_path / "wide.npy", np.zeros((6, 512), dtype=np.float32))
    np.save(tmp_path / "eighty.npy", np.zeros((80, 128), dtype=np.float32))
    for name, expected in (("wide", "512-wide"), ("eighty", "80 classes")):
        message = _d2_error(_stock_cfg(coco, gated_towers / "open.safetensors", "MODEL.ROI_HEADS.NAME", "ZeroShotROIHeads",
                                       "MODEL.REACT.ZEROSHOT.WEIGHT_PATH", str(tmp_path / f"{name}.npy")))
        assert message.startswith("MODEL.REACT.ZEROSHOT.WEIGHT_PATH: ") and f"{name}.npy" in message and expected in message
    message = _d2_error(_stock_cfg(coco, gated_towers / "open.safetensors", "MODEL.ROI_HEADS.NAME", "ZeroShotROIHeads",
                                   "MODEL.REACT.ZEROSHOT.TEST_WEIGHT_PATH", str(tmp_path / "eighty.npy")))
    assert message.startswith("MODEL.REACT.ZEROSHOT.TEST_WEIGHT_PATH: ") and "react_shapes_val" in message and "has 6" in message


def _train_net(*argv) -> int:
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from train_net import main
    finally:
        sys.path.pop(0)
    return main([str(a) for a in argv])


def _one_error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("train_net: error:")]
    assert len(lines) == 1
    return lines[0]


def test_bad_input_to_the_runner_is_one_line_and_exit_status_2(scenes, gated_towers, tmp_path, capsys):  # noqa: F811
    """tools/train_net.py with engine=detectron2: the same mistakes, exit status 2 and one line."""
    pytest.importorskip("detectron2")
    from react_core.modeling import load_clip, save_full

    run = ["--config", CONFIG, f"vars.world={scenes}", "engine=detectron2", "train.max_iters=1", "data.num_workers=0"]
    small = tmp_path / "small.safetensors"
    save_full(load_clip("react-small").model, small)
    assert _train_net(*run, "--out", tmp_path / "a", f"model.weights={small}") == 2
    line = _one_error_line(capsys)
    assert "model.weights" in line and str(small) in line

    assert _train_net(*run, "--out", tmp_path / "b", f"model.weights={gated_towers / 'base.safetensors'}",
                      "backbone.freeze=gated") == 2
    line = _one_error_line(capsys)
    assert "MODEL.REACT.FREEZE='gated'" in line and "base.safetensors" in line

    np.save(tmp_path / "wide.npy", np.zeros((4, 512), dtype=np.float32))
    assert _train_net(*run, "--out", tmp_path / "c", "model.weights=null", f"detectron2.MODEL.REACT.ZEROSHOT.WEIGHT_PATH={tmp_path / 'wide.npy'}") == 2
    line = _one_error_line(capsys)
    assert "MODEL.REACT.ZEROSHOT.WEIGHT_PATH" in line and "wide.npy" in line and "512-wide" in line
