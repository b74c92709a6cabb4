"""Gated blocks: identity at initialisation, official key layout, ResNet towers, modes, training forward."""
from __future__ import annotations

import copy

import pytest
import torch

from react_core.modeling import load_clip
from react_core.modeling.gated import (
    GATED_ATTR,
    ImageTower,
    add_gated_blocks,
    default_num_gated,
    encode_image_for_training,
    gated_layers,
    host_blocks,
    set_gated_checkpointing,
    set_trainable,
    train_mode,
)

from conftest import TINY_RESNET

OFFICIAL_SUFFIXES = {
    "alpha_attn", "alpha_dense", "ln_1.weight", "ln_1.bias", "attn.in_proj_weight", "attn.in_proj_bias",
    "attn.out_proj.weight", "attn.out_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
    "mlp.c_proj.weight", "mlp.c_proj.bias",
}

# A ModifiedResNet tower small enough for CPU tests: one bottleneck per stage, 64 px.
def _image_size(model) -> int:
    size = model.visual.image_size
    return size[0] if isinstance(size, (tuple, list)) else size


def _randomize_gated(model, seed: int = 0) -> None:
    """Give gated blocks non-zero gates and random weights, so they change the features."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if f".{GATED_ATTR}." in name:
                fill = torch.randn(param.shape, generator=generator) * (0.5 if param.ndim == 0 else 0.05)
                param.copy_(fill)


@pytest.fixture(scope="module", params=["react-tiny", "resnet"])
def bundle(request):
    torch.manual_seed(0)
    return load_clip(TINY_RESNET if request.param == "resnet" else "react-tiny")


@pytest.mark.parametrize("checkpointing", [False, True])
def test_features_exactly_equal_at_initialisation(bundle, checkpointing):
    model = copy.deepcopy(bundle.model).eval()
    images = torch.randn(3, 3, _image_size(model), _image_size(model))
    texts = bundle.tokenizer(["a red square", "a blue circle"])
    with torch.no_grad():
        image_before, text_before = model.encode_image(images), model.encode_text(texts)
    layers = add_gated_blocks(model, checkpointing=checkpointing)
    assert layers and gated_layers(model) == layers
    with torch.no_grad():
        assert torch.equal(model.encode_image(images), image_before)
        assert torch.equal(model.encode_text(texts), text_before)
    _randomize_gated(model)
    with torch.no_grad():
        assert not torch.allclose(model.encode_image(images), image_before, atol=1e-4)


def test_vit_keys_follow_the_official_layout():
    model = load_clip("react-tiny").model
    layers = add_gated_blocks(model)
    assert layers == [3, 4, 5]  # half of react-tiny's 6 layers, the last ones
    gated = [k for k in model.state_dict() if GATED_ATTR in k]
    expected = {f"visual.transformer.resblocks.{i}.{GATED_ATTR}.{s}" for i in layers for s in OFFICIAL_SUFFIXES}
    assert set(gated) == expected
    # every other key is open_clip's, unchanged
    base_keys = set(load_clip("react-tiny").model.state_dict())
    assert set(model.state_dict()) - expected == base_keys


def test_layer_choice_and_errors():
    model = load_clip("react-tiny").model
    assert default_num_gated(model) == 3
    assert add_gated_blocks(copy.deepcopy(model), k=2) == [4, 5]
    assert add_gated_blocks(copy.deepcopy(model), layers=[5, 0, 0]) == [0, 5]
    with pytest.raises(ValueError, match="out of range"):
        add_gated_blocks(copy.deepcopy(model), layers=[6])
    with pytest.raises(ValueError, match="do not fit"):
        add_gated_blocks(copy.deepcopy(model), k=7)
    add_gated_blocks(model)
    with pytest.raises(ValueError, match="already has gated blocks"):
        add_gated_blocks(model)


def test_default_k_follows_the_paper():
    import open_clip

    for name, k in [("ViT-B-32", 6), ("ViT-L-14", 6), ("ViT-bigG-14", 12)]:
        layers = open_clip.get_model_config(name)["vision_cfg"]["layers"]
        fake = torch.nn.Module()
        fake.conv1 = torch.nn.Identity()
        fake.transformer = torch.nn.Module()
        fake.transformer.resblocks = torch.nn.ModuleList(torch.nn.Identity() for _ in range(layers))
        assert default_num_gated(fake) == k, name


def test_resnet_blocks_sit_in_the_last_stage():
    model = load_clip(TINY_RESNET).model
    layers = add_gated_blocks(model)
    assert layers == [3, 4]  # the two bottlenecks of layer4, numbered across stages (1 + 1 + 1 before them)
    keys = {k.split(f".{GATED_ATTR}.")[0] for k in model.state_dict() if GATED_ATTR in k}
    assert keys == {"visual.layer4.0", "visual.layer4.1"}


def test_modes_train_the_right_parameters():
    model = load_clip("react-tiny").model
    with pytest.raises(ValueError, match="add_gated_blocks"):
        set_trainable(model, "gated-image")
    add_gated_blocks(model)
    named = dict(model.named_parameters())
    gated = sum(p.numel() for n, p in named.items() if GATED_ATTR in n)
    visual = sum(p.numel() for n, p in named.items() if n.startswith("visual."))
    total = sum(p.numel() for p in named.values())

    counts = set_trainable(model, "gated-image")
    assert counts["trainable"] == gated + 1 and counts["frozen"] == total - gated - 1
    assert {n for n, p in named.items() if p.requires_grad} == {n for n in named if GATED_ATTR in n} | {"logit_scale"}
    counts = set_trainable(model, "locked-text")
    assert counts["trainable"] == visual + 1
    assert not any(p.requires_grad for n, p in named.items() if n.startswith(("transformer.", "token_embedding")))
    assert set_trainable(model, "full")["frozen"] == 0
    with pytest.raises(ValueError, match="unknown mode"):
        set_trainable(model, "half")


@pytest.mark.parametrize("mode, grad_checkpointing", [("gated-image", False), ("gated-image", True), ("locked-text", True)])
def test_training_forward_matches_plain_forward_and_gradients(bundle, mode, grad_checkpointing):
    model = copy.deepcopy(bundle.model)
    add_gated_blocks(model, checkpointing=grad_checkpointing)
    _randomize_gated(model)
    set_trainable(model, mode)
    model.set_grad_checkpointing(grad_checkpointing)
    twin = copy.deepcopy(model)
    train_mode(model)
    train_mode(twin)
    images = torch.randn(2, 3, _image_size(model), _image_size(model))
    target = torch.randn(2, model.text_projection.shape[-1])

    fast = encode_image_for_training(model, images)
    plain = twin.encode_image(images)
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
    (fast * target).sum().backward()
    (plain * target).sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad and n != "logit_scale"}
    assert grads and all(g is not None for g in grads.values())
    twin_params = dict(twin.named_parameters())
    for name, grad in grads.items():
        torch.testing.assert_close(grad, twin_params[name].grad, rtol=1e-4, atol=1e-5, msg=name)
    assert not any(p.grad is not None for p in model.parameters() if not p.requires_grad)


def test_gates_receive_gradient_at_initialisation(bundle):
    model = copy.deepcopy(bundle.model)
    add_gated_blocks(model, checkpointing=True)
    set_trainable(model, "gated-image")
    tower = ImageTower(model)
    assert set(tower.state_dict()) == {k for k in model.state_dict() if k.startswith("visual.")} | {"logit_scale"}
    images = torch.randn(4, 3, _image_size(model), _image_size(model))
    features = tower(images)
    torch.testing.assert_close(features.norm(dim=-1), torch.ones(4))
    (features @ torch.randn(features.shape[-1])).sum().backward()
    alphas = [p.grad for n, p in model.named_parameters() if n.endswith("alpha_attn")]
    assert alphas and all(g is not None and g.abs() > 0 for g in alphas)


def test_checkpointing_switch_reaches_every_gated_block():
    model = load_clip("react-tiny").model
    layers = add_gated_blocks(model)
    set_gated_checkpointing(model, True)
    assert all(getattr(host_blocks(model)[i], GATED_ATTR).checkpointing for i in layers)


def test_train_mode_keeps_frozen_batchnorm_in_eval():
    model = load_clip(TINY_RESNET).model
    add_gated_blocks(model)
    set_trainable(model, "gated-image")
    train_mode(model)
    norms = [m for m in model.visual.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and not any(m.training for m in norms)
    assert getattr(model.visual.layer4[0], GATED_ATTR).training
    set_trainable(model, "locked-text")
    train_mode(model)
    assert all(m.training for m in norms)


def test_unsupported_tower_is_a_clear_error():
    model = torch.nn.Module()
    model.visual = torch.nn.Linear(2, 2)
    with pytest.raises(TypeError, match="VisionTransformer or ModifiedResNet"):
        add_gated_blocks(model)


def _gated_transformer(batch_first: bool) -> torch.nn.Module:
    from open_clip.transformer import Transformer

    torch.manual_seed(0)
    tower = torch.nn.Module()
    tower.conv1 = torch.nn.Identity()
    tower.transformer = Transformer(32, 3, 4, batch_first=batch_first)
    add_gated_blocks(tower, layers=[1, 2])
    _randomize_gated(tower)
    return tower.transformer


def test_gated_block_runs_before_its_host_in_either_layout_and_with_a_mask():
    first, second = _gated_transformer(batch_first=True), _gated_transformer(batch_first=False)
    assert torch.equal(torch.nn.utils.parameters_to_vector(first.parameters()),
                       torch.nn.utils.parameters_to_vector(second.parameters()))
    x = torch.randn(2, 5, 32)
    mask = torch.full((5, 5), float("-inf")).triu(1)
    out = first(x, attn_mask=mask)
    torch.testing.assert_close(second(x, attn_mask=mask), out)
    reference = x
    for block in first.resblocks:
        if hasattr(block, GATED_ATTR):
            reference = getattr(block, GATED_ATTR)(reference, mask)
        reference = type(block).forward(block, reference, attn_mask=mask)  # the host without its hook
    torch.testing.assert_close(out, reference)  # fails if the hook dropped the mask or ran after the host
