"""CLIP loading: names, dicts, local files in every released layout, tags offline, activations."""
from __future__ import annotations

import pytest
import torch
from open_clip.transformer import QuickGELU
from safetensors.torch import save_file

from react_core.modeling import CheckpointError, PretrainedUnavailableError, load_clip
from react_core.modeling.clip import pinned_quick_gelu

TINY_DICT = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def _save(layout: str, state: dict, folder):
    if layout == "bare":
        path = folder / "bare.pt"
        torch.save(state, path)
    elif layout == "wrapped-prefixed-fp16":
        path = folder / "wrapped.bin"
        torch.save({"state_dict": {f"module.{k}": v.half() for k, v in state.items()}, "epoch": 3}, path)
    else:
        path = folder / "weights.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


@pytest.mark.parametrize("layout", ["bare", "wrapped-prefixed-fp16", "safetensors"])
def test_saved_random_model_loads_back_equal(tiny_clip, tmp_path, layout):
    state = tiny_clip.model.state_dict()
    loaded = load_clip("react-tiny", weights=_save(layout, state, tmp_path))
    for key, tensor in loaded.model.state_dict().items():
        expected = state[key].half().float() if layout.endswith("fp16") else state[key]
        assert torch.equal(tensor, expected), key
    assert loaded.spec.weights_sha256 and loaded.spec.identity() != tiny_clip.spec.identity()


def test_loaded_model_gives_the_same_features(tiny_clip, tmp_path):
    loaded = load_clip("react-tiny", weights=_save("bare", tiny_clip.model.state_dict(), tmp_path))
    images = torch.randn(2, 3, 64, 64)
    tokens = tiny_clip.tokenizer(["a red star", "a blue ring"])
    tiny_clip.model.eval(), loaded.model.eval()
    assert torch.equal(tiny_clip.model.encode_image(images), loaded.model.encode_image(images))
    assert torch.equal(tiny_clip.model.encode_text(tokens), loaded.model.encode_text(tokens))


def test_missing_and_unexpected_keys_are_named(tiny_clip, tmp_path):
    state = dict(tiny_clip.model.state_dict())
    state.pop("ln_final.weight")
    state["visual.extra.weight"] = torch.zeros(1)
    path = _save("bare", state, tmp_path)
    with pytest.raises(CheckpointError) as error:
        load_clip("react-tiny", weights=path)
    assert "ln_final.weight" in str(error.value) and "visual.extra.weight" in str(error.value)


def test_unsafe_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": object()}, path)
    with pytest.raises(CheckpointError, match="weights-only"):
        load_clip("react-tiny", weights=path)


def test_custom_architecture_dict_and_tokenizer():
    bundle = load_clip(TINY_DICT)
    assert bundle.model.visual.image_size == (32, 32)
    assert bundle.tokenizer(["a cat"]).shape == (1, 16)
    with torch.no_grad():
        assert bundle.model.encode_image(torch.randn(1, 3, 32, 32)).shape == (1, 32)


class _Holder(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _torchscript_archive(state: dict, path) -> None:
    """A TorchScript file holding `state` under OpenAI's key names, like OpenAI's releases."""
    root = _Holder()
    for key, tensor in state.items():
        *parents, leaf = key.split(".")
        node = root
        for part in parents:
            if not hasattr(node, part):
                node.add_module(part, _Holder())
            node = getattr(node, part)
        node.register_parameter(leaf, torch.nn.Parameter(tensor.clone(), requires_grad=False))
    torch.jit.save(torch.jit.script(root), str(path))


def test_openai_torchscript_archive_goes_through_open_clip(tmp_path):
    source = load_clip("react-tiny", quick_gelu=True)
    path = tmp_path / "openai.pt"
    _torchscript_archive(source.model.state_dict(), path)
    loaded = load_clip("react-tiny", weights=path)
    assert loaded.spec.quick_gelu
    original = source.model.state_dict()
    for key, tensor in loaded.model.state_dict().items():
        assert torch.allclose(tensor.float(), original[key].float(), rtol=1e-3, atol=1e-3), key


def test_activation_is_pinned_from_tags():
    assert pinned_quick_gelu("ViT-B-32", "openai") is True
    assert pinned_quick_gelu("ViT-B-32", "laion2b_s34b_b79k") is False
    assert pinned_quick_gelu("ViT-B-32", "react_clip_ret_laion400m") is True
    assert pinned_quick_gelu("ViT-B-32", "react_openclip_laion2b_ret_laion2b") is False
    assert pinned_quick_gelu("ViT-B-32", None) is None
    bundle = load_clip("ViT-B-32-quickgelu")
    assert isinstance(bundle.model.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)


def test_offline_tag_fails_with_a_message_naming_it(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PretrainedUnavailableError) as error:
        load_clip("RN50", pretrained="openai")
    assert "'openai'" in str(error.value) and "--weights" in str(error.value)


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model 'ViT-Q-99'"):
        load_clip("ViT-Q-99")
