"""Dense-aware customization: the dense objective, its one-pass features, checkpoints, configs."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from react_core.config import load
from react_core.engine.config import CustomizeConfig, DenseConfig, PretrainConfig
from react_core.engine.model import ContrastiveCLIP
from react_core.modeling import load_clip, save_official
from react_core.modeling.dense_objective import DenseObjective, crop_boxes, image_and_dense, random_grid_boxes, tile_mosaics
from react_core.modeling.gated import GATED_ATTR, add_gated_blocks, bypass_gated, set_trainable
from react_core.modeling.readout import dense_readout

from conftest import TINY_RESNET
from test_gated import _randomize_gated

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
LAB_CONFIGS = Path(__file__).resolve().parents[1] / "react_dense" / "lab" / "configs"
def _images(count: int = 4) -> torch.Tensor:
    return torch.randn(count, 3, 64, 64, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module", params=["vit", "resnet"])
def base_and_gated(request):
    torch.manual_seed(0)
    base = load_clip("react-tiny" if request.param == "vit" else TINY_RESNET).model.eval().requires_grad_(False)
    gated = copy.deepcopy(base)
    add_gated_blocks(gated, k=2)
    set_trainable(gated, "gated-image")
    return base, gated


def test_closed_gates_give_the_base_features_and_readout_bit_for_bit(base_and_gated):
    base, gated = base_and_gated
    images = _images()
    with torch.no_grad():
        pooled, dense = image_and_dense(gated.visual, images)
        assert torch.equal(dense, dense_readout(base.visual, images))
        assert torch.equal(pooled, base.visual(images))


def test_one_pass_equals_the_tower_and_the_readout_with_open_gates(base_and_gated):
    base, gated = base_and_gated
    gated = copy.deepcopy(gated)
    _randomize_gated(gated)
    images = _images()
    with torch.no_grad():
        pooled, dense = image_and_dense(gated.visual, images)
        torch.testing.assert_close(dense, dense_readout(gated.visual, images), rtol=0, atol=1e-6)
        torch.testing.assert_close(pooled, gated.visual(images), rtol=0, atol=1e-6)
        assert not torch.allclose(pooled, base.visual(images), atol=1e-4)


def test_bypass_gives_the_base_tower_and_restores(base_and_gated):
    base, gated = base_and_gated
    gated = copy.deepcopy(gated)
    _randomize_gated(gated)
    images = _images()
    with torch.no_grad():
        opened = gated.visual(images)
        with bypass_gated(gated):
            assert torch.equal(gated.visual(images), base.visual(images))
            assert torch.equal(image_and_dense(gated.visual, images)[1], dense_readout(base.visual, images))
        assert torch.equal(gated.visual(images), opened)


def test_random_grid_boxes_are_cells_of_a_grid_and_crops_have_the_input_size():
    boxes = random_grid_boxes(50, 64, 64, max_grid=4, per_image=2, generator=torch.Generator().manual_seed(0))
    assert all(1 <= len(b) <= 2 for b in boxes)
    every = torch.cat(boxes)
    widths, heights = every[:, 2] - every[:, 0], every[:, 3] - every[:, 1]
    assert set(torch.round(64 / widths).tolist()) == {1.0, 2.0, 3.0, 4.0}
    assert set(torch.round(64 / heights).tolist()) == {1.0, 2.0, 3.0, 4.0}
    assert every.min() >= 0 and every.max() <= 64
    images = _images(2)
    crops = crop_boxes(images, [torch.tensor([[0.0, 0.0, 64.0, 64.0]]), torch.tensor([[0.0, 0.0, 32.0, 32.0]])], 64)
    assert crops.shape == (2, 3, 64, 64)
    torch.testing.assert_close(crops[0], images[0], rtol=0, atol=1e-5)  # the whole box is the image itself


def test_mosaics_tile_the_images_row_major_and_their_boxes_are_the_tiles():
    images = _images(8)
    mosaics, tiles = tile_mosaics(images, 2)
    assert mosaics.shape == (2, 3, 128, 128)
    for i in range(8):
        x1, y1, x2, y2 = (int(v) for v in tiles[i % 4])
        assert torch.equal(mosaics[i // 4, :, y1:y2, x1:x2], images[i])
    crops = crop_boxes(mosaics, [tiles, tiles], 64)
    torch.testing.assert_close(crops, images, rtol=0, atol=1e-5)  # a tile's crop is its own image
    with pytest.raises(ValueError, match="do not fill mosaics"):
        tile_mosaics(images[:6], 2)


def test_the_self_teacher_of_a_tile_is_its_images_class_token(base_and_gated):
    _, gated = base_and_gated
    objective = DenseObjective(DenseConfig(enabled=True, mosaic=2))
    images = _images(4)
    with torch.no_grad():
        pooled, dense = objective.features(gated.visual, images)
        assert dense is None  # the mosaics are read by the objective itself
        torch.testing.assert_close(objective.tile_teacher(gated.visual, images, pooled), objective.teacher(gated.visual, images))


@pytest.mark.parametrize("keep,mosaic", [("close", 1), ("norm", 1), ("none", 2), ("close", 2)])
def test_the_dense_objective_lowers_its_own_loss(base_and_gated, keep, mosaic):
    _, gated = base_and_gated
    model = copy.deepcopy(gated)
    cfg = DenseConfig(enabled=True, teacher="base", keep=keep, keep_weight=0.1, contrastive=False, mosaic=mosaic)
    objective = DenseObjective(cfg)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("alpha_attn", "alpha_dense")):
                param.fill_(0.3)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=3e-3)
    images = _images(8)

    def loss() -> torch.Tensor:
        objective.generator.manual_seed(0)  # the same boxes every step
        pooled, dense = objective.features(model.visual, images)
        terms = objective(model.visual, images, dense, pooled)
        return terms["loss_region"] + terms.get("loss_keep", 0.0)

    first = loss()
    for _ in range(15):
        optimizer.zero_grad()
        value = loss()
        value.backward()
        optimizer.step()
    with torch.no_grad():
        assert loss().item() < 0.9 * first.item()


def test_official_checkpoint_loads_strictly_and_round_trips_with_dense_on(tmp_path):
    torch.manual_seed(0)
    model = load_clip("react-tiny").model
    add_gated_blocks(model, k=2)
    _randomize_gated(model)
    save_official(model, tmp_path / "react_tiny.pt")
    loaded = load_clip("react-tiny", weights=tmp_path / "react_tiny.pt")  # strict
    reference = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    set_trainable(loaded.model, "gated-image")
    wrapped = ContrastiveCLIP(loaded.model, text_locked=True, dense=DenseObjective(DenseConfig(enabled=True)))
    images = _images(2)
    text = torch.nn.functional.normalize(torch.randn(2, 128), dim=-1)
    terms = wrapped(images, text_features=text)
    assert {"loss_contrastive", "loss_region", "loss_keep"} <= terms.keys()
    assert set(loaded.model.state_dict()) == set(reference)  # the objective adds no keys
    assert all(torch.equal(loaded.model.state_dict()[k], v) for k, v in reference.items())
    save_official(loaded.model, tmp_path / "again.pt")
    again = load_clip("react-tiny", weights=tmp_path / "again.pt")
    with torch.no_grad():
        torch.testing.assert_close(again.model.eval().encode_image(images), model.eval().encode_image(images), rtol=0, atol=1e-3)


def test_the_imagenet_dense_recipe_loads():
    gpu = load(CONFIGS / "customize" / "imagenet_gated_dense_vitb16.yaml", schema=CustomizeConfig)
    assert gpu.dense.enabled and gpu.train.mode == "gated-image" and gpu.model.name == "ViT-B-16-quickgelu"


def test_dense_needs_gated_image_mode():
    from react_core.config import ConfigError

    with pytest.raises(ConfigError, match="gated-image"):
        DenseConfig(enabled=True).check("locked-text")
    DenseConfig(enabled=False).check("locked-text")
    with pytest.raises(ConfigError, match="do not fill one 2 x 2 mosaic"):
        DenseConfig(enabled=True, images=3, mosaic=2).check("gated-image")


def test_manifest_sample_draws_as_many_rows_at_random(tiny_world):
    from react_core.data.pairs import ManifestPairs, PairDataError

    manifest = tiny_world / "corpus" / "manifest.parquet"
    everything = ManifestPairs(str(manifest))
    drawn = ManifestPairs(str(manifest), sample=100)
    assert len(drawn) == 100 and set(drawn.ids) <= set(everything.ids)
    assert drawn.ids == ManifestPairs(str(manifest), sample=100).ids  # seeded
    assert drawn.ids != ManifestPairs(str(manifest), sample=100, sample_seed=1).ids
    assert drawn.ids == sorted(drawn.ids, key=everything.ids.index)  # manifest order kept
    with pytest.raises(PairDataError, match="sample"):
        ManifestPairs(str(manifest), sample=len(everything) + 1)


@pytest.fixture(scope="module")
def pretrain_yaml(tiny_world, tmp_path_factory) -> Path:
    """The lab's pretrain config, two iterations in the tiny world."""
    root = tmp_path_factory.mktemp("pretrain")
    path = root / "pretrain.yaml"
    path.write_text(
        f"_base_: {LAB_CONFIGS / 'pretrain.yaml'}\n"
        f"vars: {{world: {tiny_world}}}\nout: {root / 'out'}\n"
        "data: {batch_size: 32, workers: 0}\ntrain: {max_iters: 2, warmup_iters: 1, checkpoint_interval: 2}\n"
    )
    return path


def test_the_run_key_ignores_where_files_lie_not_what_they_hold(pretrain_yaml):
    """Moving an adapter's base (`model.base_weights`, whose hash the adapter checks) keeps a run's
    key, so a cached result still serves it; a setting that changes the result does not."""
    from types import SimpleNamespace

    from react_core.engine.common import run_key

    pairs = SimpleNamespace(ids=[1, 2], captions=["a red circle", "a blue star"])
    key = run_key(load(pretrain_yaml, schema=PretrainConfig), pairs)
    assert run_key(load(pretrain_yaml, ["model.base_weights=/moved/base.safetensors"], schema=PretrainConfig), pairs) == key
    assert run_key(load(pretrain_yaml, ["train.lr=2e-3"], schema=PretrainConfig), pairs) != key
    assert run_key(load(pretrain_yaml, schema=PretrainConfig), SimpleNamespace(ids=[1, 2], captions=["a red circle", "x"])) != key


def test_customize_dense_writes_the_adapter_and_target_and_generic_metrics(tiny_world, tiny_base, tmp_path):
    import json

    from react_core.cli import main

    out = tmp_path / "dense"
    overrides = [f"vars.world={tiny_world}", f"model.weights={tiny_base}",
                 "data.batch_size=16", "data.workers=0", "train.max_iters=2", "train.warmup_iters=1", "dense.images=4"]
    assert main(["customize", "--config", str(LAB_CONFIGS / "customize_dense.yaml"), "--out", str(out), *overrides]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    keys = {"zeroshot_top1_before", "zeroshot_top1_after", "generic_top1_before", "generic_top1_after"}
    assert keys <= metrics.keys() and metrics["dense"]["enabled"]
    assert metrics["generic_before"]["classes"] == 52
    assert (out / "adapter.safetensors").is_file()
