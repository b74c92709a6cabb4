"""Customized-model files: official REACT layout, adapters, full state dicts, `react convert`."""
from __future__ import annotations

import copy

import pytest
import torch
from safetensors import safe_open

import react_core.cli
from react_core.modeling import CheckpointError, load_clip, read_state_dict, save_adapter, save_full, save_official
from react_core.modeling.gated import GATED_ATTR, add_gated_blocks, gated_layers, set_trainable

from conftest import TINY_RESNET
from test_gated import _randomize_gated


def react(argv: list[str]) -> int:
    """The `react` command with only `convert` registered, so other commands' imports cannot interfere."""
    commands = react_core.cli.CORE_COMMANDS
    react_core.cli.CORE_COMMANDS = ["react_core.cli.convert_cmd"]
    try:
        return react_core.cli.main(argv)
    finally:
        react_core.cli.CORE_COMMANDS = commands


def _features(model, size: int) -> torch.Tensor:
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model.eval().encode_image(images)


@pytest.fixture(scope="module")
def official_vitb32(tmp_path_factory):
    """An official-layout file from a random-init ViT-B-32 with gated blocks in layers 6-11, and its base."""
    folder = tmp_path_factory.mktemp("official")
    torch.manual_seed(0)
    model = load_clip("ViT-B-32").model
    save_full(model, folder / "base.safetensors")
    add_gated_blocks(model, layers=list(range(6, 12)))
    _randomize_gated(model)
    save_official(model, folder / "react_vitb32.pt")
    return folder, model


@pytest.fixture
def tiny_customized(tmp_path):
    torch.manual_seed(0)
    save_full(load_clip("react-tiny").model, tmp_path / "base.safetensors")
    bundle = load_clip("react-tiny", weights=tmp_path / "base.safetensors")
    add_gated_blocks(bundle.model)
    _randomize_gated(bundle.model)
    return tmp_path, bundle


def test_official_file_has_the_released_layout(official_vitb32):
    folder, model = official_vitb32
    raw = torch.load(folder / "react_vitb32.pt", map_location="cpu", weights_only=True)
    assert set(raw) == {"state_dict"}
    state = raw["state_dict"]
    assert all(k.startswith("module.") for k in state)
    assert all(v.dtype == torch.float16 for v in state.values())
    assert "module.visual.transformer.resblocks.6.gated_attn_block.alpha_attn" in state
    assert set(state) == {"module." + k for k in model.state_dict()}


def test_official_file_loads_strictly_with_the_same_features(official_vitb32):
    folder, model = official_vitb32
    loaded = load_clip("ViT-B-32", weights=folder / "react_vitb32.pt")
    assert gated_layers(loaded.model) == list(range(6, 12))
    assert loaded.spec.gated_layers == list(range(6, 12))
    alphas = [v for k, v in loaded.model.state_dict().items() if k.endswith("alpha_attn")]
    assert len(alphas) == 6 and all(a != 0 for a in alphas)  # the blocks change the features
    expected, found = _features(model, 224), _features(loaded.model, 224)
    torch.testing.assert_close(found, expected, rtol=0, atol=1e-2 * expected.abs().max().item())


def test_official_to_adapter_and_back_keeps_every_tensor(official_vitb32, tmp_path):
    folder, _ = official_vitb32
    official, adapter, back = folder / "react_vitb32.pt", tmp_path / "adapter.safetensors", tmp_path / "back.pt"
    assert react(["convert", "--model", "ViT-B-32", str(official), str(adapter), "--to", "adapter",
                  "--base-weights", str(folder / "base.safetensors")]) == 0
    with safe_open(str(adapter), framework="pt") as handle:
        metadata, keys = handle.metadata(), set(handle.keys())
    assert metadata["mode"] == "gated-image" and metadata["model"] == "ViT-B-32"
    assert metadata["gated_layers"] == "[6, 7, 8, 9, 10, 11]"
    assert keys == {k for k in read_state_dict(official) if f".{GATED_ATTR}." in k} | {"logit_scale"}
    assert react(["convert", "--model", "ViT-B-32", str(adapter), str(back), "--to", "official"]) == 0
    original, round_trip = read_state_dict(official), read_state_dict(back)
    assert original.keys() == round_trip.keys()
    for key, value in original.items():
        assert round_trip[key].dtype == value.dtype and torch.equal(round_trip[key], value), key


def test_adapter_size_is_the_trainable_share(tiny_customized):
    folder, bundle = tiny_customized
    save_adapter(bundle.model, folder / "a.safetensors", spec=bundle.spec, mode="gated-image")
    save_full(bundle.model, folder / "full.safetensors")
    adapter_bytes, full_bytes = (folder / "a.safetensors").stat().st_size, (folder / "full.safetensors").stat().st_size
    counts = set_trainable(copy.deepcopy(bundle.model), "gated-image")
    # the file holds the gated blocks and logit_scale, nothing else
    assert adapter_bytes / full_bytes == pytest.approx(counts["trainable"] / counts["total"], abs=0.005)


def test_single_block_adapter_is_a_few_percent(tmp_path):
    torch.manual_seed(0)
    base = load_clip("react-tiny")
    save_full(base.model, tmp_path / "base.safetensors")
    based = load_clip("react-tiny", weights=tmp_path / "base.safetensors")
    add_gated_blocks(based.model, k=1)
    save_adapter(based.model, tmp_path / "a.safetensors", spec=based.spec, mode="gated-image")
    save_full(based.model, tmp_path / "full.safetensors")
    assert (tmp_path / "a.safetensors").stat().st_size < 0.10 * (tmp_path / "full.safetensors").stat().st_size


@pytest.mark.parametrize("mode", ["gated-image", "locked-text", "full"])
def test_adapter_round_trip_through_load_clip(tiny_customized, mode):
    folder, bundle = tiny_customized
    with torch.no_grad():
        bundle.model.logit_scale.fill_(3.0)
        bundle.model.visual.proj.mul_(1.5)  # a change only locked-text and full adapters keep
    save_adapter(bundle.model, folder / "a.safetensors", spec=bundle.spec, mode=mode)
    loaded = load_clip("react-tiny", weights=folder / "a.safetensors")
    assert loaded.spec.adapter and loaded.spec.weights_sha256 == bundle.spec.weights_sha256
    own = loaded.model.state_dict()
    for key, value in bundle.model.state_dict().items():
        kept = mode != "gated-image" or key != "visual.proj"
        assert torch.equal(own[key], value) == kept, key
    assert loaded.model.logit_scale.item() == 3.0


@pytest.mark.parametrize("mode", ["locked-text", "full"])
def test_adapter_of_a_tower_without_gated_blocks_loads(tmp_path, mode):
    torch.manual_seed(0)
    save_full(load_clip("react-tiny").model, tmp_path / "base.safetensors")
    tuned = load_clip("react-tiny", weights=tmp_path / "base.safetensors")
    with torch.no_grad():
        tuned.model.visual.proj.mul_(1.5)
    save_adapter(tuned.model, tmp_path / "a.safetensors", spec=tuned.spec, mode=mode)
    loaded = load_clip("react-tiny", weights=tmp_path / "a.safetensors")
    assert gated_layers(loaded.model) == []
    assert torch.equal(loaded.model.visual.proj, tuned.model.visual.proj)


def test_adapter_checks_its_base(tiny_customized, tmp_path_factory):
    folder, bundle = tiny_customized
    save_adapter(bundle.model, folder / "a.safetensors", spec=bundle.spec, mode="gated-image")
    moved = tmp_path_factory.mktemp("moved") / "base.safetensors"
    (folder / "base.safetensors").rename(moved)
    with pytest.raises(CheckpointError, match="are not there"):
        load_clip("react-tiny", weights=folder / "a.safetensors")
    loaded = load_clip("react-tiny", weights=folder / "a.safetensors", base_weights=moved)
    assert gated_layers(loaded.model) == [3, 4, 5]
    save_full(load_clip("react-tiny").model, folder / "other.safetensors")
    with pytest.raises(CheckpointError, match="SHA-256 differs"):
        load_clip("react-tiny", weights=folder / "a.safetensors", base_weights=folder / "other.safetensors")
    with pytest.raises(CheckpointError, match="adapter for 'react-tiny', not for 'react-small'"):
        load_clip("react-small", weights=folder / "a.safetensors", base_weights=moved)


def test_random_init_base_cannot_make_an_adapter(tmp_path):
    bundle = load_clip("react-tiny")
    add_gated_blocks(bundle.model)
    with pytest.raises(ValueError, match="randomly initialised"):
        save_adapter(bundle.model, tmp_path / "a.safetensors", spec=bundle.spec, mode="gated-image")


def test_missing_and_unexpected_keys_are_named(tiny_customized):
    folder, bundle = tiny_customized
    state = {k: v.half() for k, v in bundle.model.state_dict().items()}
    dropped = "visual.transformer.resblocks.4.gated_attn_block.mlp.c_fc.bias"
    del state[dropped]
    state["visual.transformer.resblocks.4.gated_attn_block.extra"] = torch.zeros(1, dtype=torch.half)
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, folder / "broken.pt")
    with pytest.raises(CheckpointError) as error:
        load_clip("react-tiny", weights=folder / "broken.pt")
    assert dropped in str(error.value) and "gated_attn_block.extra" in str(error.value)
    assert str(folder / "broken.pt") in str(error.value)


def test_adapter_with_wrong_keys_is_named(tiny_customized):
    from safetensors.torch import load_file, save_file

    folder, bundle = tiny_customized
    path = folder / "a.safetensors"
    save_adapter(bundle.model, path, spec=bundle.spec, mode="gated-image")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(path))
    del tensors["logit_scale"]
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(CheckpointError, match="missing keys: logit_scale"):
        load_clip("react-tiny", weights=path)


def test_convert_refuses_an_adapter_that_would_drop_changes(tiny_customized, capsys):
    folder, bundle = tiny_customized
    with torch.no_grad():
        bundle.model.transformer.resblocks[0].mlp.c_fc.weight.add_(1.0)
    save_full(bundle.model, folder / "changed.pt")
    status = react(["convert", "--model", "react-tiny", str(folder / "changed.pt"), str(folder / "a.safetensors"),
                    "--to", "adapter", "--base-weights", str(folder / "base.safetensors")])
    assert status == 2
    assert "transformer.resblocks.0.mlp.c_fc.weight" in capsys.readouterr().err
    assert not (folder / "a.safetensors").exists()
    assert react(["convert", "--model", "react-tiny", str(folder / "changed.pt"), str(folder / "a.safetensors"),
                  "--to", "adapter"]) == 2
    assert "--pretrained TAG or --base-weights FILE" in capsys.readouterr().err


def test_resnet_files_round_trip(tmp_path):
    torch.manual_seed(0)
    save_full(load_clip(TINY_RESNET).model, tmp_path / "base.pt")
    bundle = load_clip(TINY_RESNET, weights=tmp_path / "base.pt")
    add_gated_blocks(bundle.model)
    _randomize_gated(bundle.model)
    expected = _features(bundle.model, 64)
    save_official(bundle.model, tmp_path / "official.pt", fp16=False)
    save_adapter(bundle.model, tmp_path / "a.safetensors", spec=bundle.spec, mode="locked-text")
    for path in ("official.pt", "a.safetensors"):
        loaded = load_clip(TINY_RESNET, weights=tmp_path / path)
        assert gated_layers(loaded.model) == [3, 4]
        torch.testing.assert_close(_features(loaded.model, 64), expected)


def test_model_config_loads_an_adapter_over_its_moved_base_in_eval_mode(tiny_customized, tmp_path_factory):
    from react_core.config.common import ModelConfig

    folder, bundle = tiny_customized
    save_adapter(bundle.model, folder / "a.safetensors", spec=bundle.spec, mode="gated-image")
    moved = tmp_path_factory.mktemp("moved") / "base.safetensors"
    (folder / "base.safetensors").rename(moved)
    loaded = ModelConfig(name="react-tiny", weights=str(folder / "a.safetensors"), base_weights=str(moved)).load()
    assert not loaded.model.training and not any(m.training for m in loaded.model.modules())
    bundle.model.eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.encode_image(images), bundle.model.encode_image(images))

