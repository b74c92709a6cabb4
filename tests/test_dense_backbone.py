"""The CLIP backbone adapter and vocabulary embeddings that every dense head builds on."""
from __future__ import annotations

import pytest
import torch

from react_core.modeling import load_clip
from react_core.modeling.readout import dense_readout
from react_dense.modeling.backbone import CLIP_MAP, ClipBackbone
from react_dense.modeling.vocabulary import Vocabulary, parse_vocabulary, vocabulary_embeddings

RESNET_TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def test_vit_pyramid_shapes_strides_and_any_input_size(tiny_clip):
    backbone = ClipBackbone(tiny_clip.model.visual, out_channels=32, emit_clip_map=True)
    shapes = backbone.output_shape()
    assert [(n, s.stride) for n, s in shapes.items()] == [("p1", 2), ("p2", 4), ("p3", 8), ("p4", 16), ("p5", 32), (CLIP_MAP, 8)]
    assert backbone.size_divisibility == 16
    # 72x100 is not a multiple of 16 and not the 64x64 the tower was trained at.
    features = backbone(torch.randn(2, 3, 72, 100))
    for name, spec in shapes.items():
        expected = (2, spec.channels, -(-80 // spec.stride), -(-112 // spec.stride))
        assert tuple(features[name].shape) == expected, name


def test_clip_map_is_the_dense_readout_whatever_block_feeds_the_pyramid(tiny_clip):
    visual = tiny_clip.model.visual
    images = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        expected = dense_readout(visual, images)
        for block in (-1, -2, 0):
            tokens, clip_map = ClipBackbone(visual, emit_clip_map=True, features="tokens", feature_block=block).eval().vit_features(images)
            torch.testing.assert_close(clip_map, expected)
            torch.testing.assert_close(tokens, ClipBackbone(visual, features="tokens", feature_block=block).eval().vit_features(images)[0])


def test_a_readout_pyramid_reads_the_one_dense_readout(tiny_clip):
    """features=readout: what the pyramid reads is what the dense objective trains and "clip" is."""
    visual = tiny_clip.model.visual
    images = torch.randn(2, 3, 64, 80)
    assert ClipBackbone(visual).pyramid.stages[0][0].in_channels == visual.conv1.out_channels  # tokens by default
    backbone = ClipBackbone(visual, out_channels=32, emit_clip_map=True, features="readout").eval()
    with torch.no_grad():
        pyramid_input, clip_map = backbone.vit_features(images)
        torch.testing.assert_close(pyramid_input, dense_readout(visual, images))
        assert clip_map is pyramid_input
        features = backbone(images)
        torch.testing.assert_close(features["p3"], backbone.pyramid(dense_readout(visual, images))["p3"])
    assert backbone.pyramid.stages[0][0].in_channels == visual.proj.shape[1]
    with pytest.raises(ValueError, match="features='tokens' only"):
        ClipBackbone(visual, features="readout", feature_block=-2)
    with pytest.raises(ValueError, match="features must be one of"):
        ClipBackbone(visual, features="pixels")


def test_feature_block_below_a_gated_block_reads_the_base_features(tiny_clip):
    """With one gated block before the last layer, block -2's tokens are the base tower's."""
    import copy

    from react_core.modeling.gated import add_gated_blocks, host_blocks, GATED_ATTR

    base = tiny_clip.model.visual
    customized = copy.deepcopy(base)
    add_gated_blocks(customized, k=1)
    with torch.no_grad():
        for param in getattr(host_blocks(customized)[-1], GATED_ATTR).parameters():
            param.add_(0.5)  # open the gates: the customized tower now differs from the base
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        below = ClipBackbone(customized, features="tokens", feature_block=-2).eval().vit_features(images)[0]
        base_below = ClipBackbone(base, features="tokens", feature_block=-2).eval().vit_features(images)[0]
        last = ClipBackbone(customized, features="tokens").eval().vit_features(images)[0]
        base_last = ClipBackbone(base, features="tokens").eval().vit_features(images)[0]
    torch.testing.assert_close(below, base_below)
    assert not torch.allclose(last, base_last, atol=1e-3)
    with pytest.raises(ValueError, match="feature_block=6"):
        ClipBackbone(base, features="tokens", feature_block=6)


def test_freeze_policies(tiny_clip):
    frozen = ClipBackbone(load_clip("react-tiny").model.visual, freeze="frozen")
    assert not any(p.requires_grad for p in frozen.trunk.parameters())
    assert all(p.requires_grad for p in frozen.pyramid.parameters())
    frozen.train()
    assert not frozen.trunk.training and frozen.pyramid.training
    full = ClipBackbone(load_clip("react-tiny").model.visual, freeze="full")
    assert all(p.requires_grad for p in full.trunk.parameters())
    with pytest.raises(ValueError, match="needs gated blocks"):
        ClipBackbone(load_clip("react-tiny").model.visual, freeze="gated")
    with pytest.raises(ValueError, match="freeze must be one of"):
        ClipBackbone(load_clip("react-tiny").model.visual, freeze="partly")


@pytest.mark.parametrize("features", ["readout", "tokens"])
def test_modified_resnet_gives_fpn_levels_and_clip_map(features):
    bundle = load_clip(RESNET_TINY)
    backbone = ClipBackbone(bundle.model.visual, out_channels=16, emit_clip_map=True, features=features)
    top_channels = backbone.pyramid.inner_blocks[-1][0].in_channels
    assert top_channels == (32 if features == "readout" else bundle.model.visual.layer4[-1].conv3.out_channels)
    images = torch.randn(1, 3, 70, 96)
    features = backbone(images)
    assert [n for n in features] == ["p2", "p3", "p4", "p5", "p6", CLIP_MAP]
    assert features["p2"].shape[-2:] == (24, 24) and features["p5"].shape[-2:] == (3, 3)
    assert features[CLIP_MAP].shape[1] == 32
    torch.testing.assert_close(features[CLIP_MAP], dense_readout(bundle.model.visual, images))
    from torchvision.ops import FrozenBatchNorm2d

    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in backbone.modules())


def test_vocabulary_parsing(tmp_path):
    assert parse_vocabulary("cat, red car ,").names == ["cat", "red car"]
    path = tmp_path / "v.txt"
    path.write_text("cat|kitty\n\ndog\n")
    vocab = parse_vocabulary(str(path))
    assert vocab.names == ["cat", "dog"] and vocab.synonyms[0] == ["cat", "kitty"]
    lvis = Vocabulary.from_categories([{"id": 7, "name": "aerosol_can", "synonyms": ["aerosol_can", "spray_can"]}, {"id": 3, "name": "dog"}])
    assert lvis.names == ["dog", "aerosol can"] and lvis.synonyms[1] == ["aerosol can", "spray can"]
    assert lvis.category_ids == [3, 7]
    path.write_text("cat\ncat|kitty\n")
    with pytest.raises(ValueError, match="line 2"):
        parse_vocabulary(str(path))


def test_synonyms_are_averaged_and_cached(tiny_clip, tmp_path):
    torch.save(tiny_clip.model.state_dict(), tmp_path / "weights.pt")
    named = load_clip("react-tiny", weights=tmp_path / "weights.pt")  # a random init has no identity to cache by
    vocab = Vocabulary(["cat", "dog"], [["cat", "kitty"], ["dog"]])
    cached = vocabulary_embeddings(named, vocab, "simple", tmp_path)
    assert len(list(tmp_path.glob("*.safetensors"))) == 1
    words = vocabulary_embeddings(named, Vocabulary(["cat", "kitty", "dog"]), "simple", None)
    expected_cat = torch.nn.functional.normalize(words[0] + words[1], dim=0)
    assert torch.allclose(cached[0], expected_cat, atol=1e-5)
    assert torch.allclose(cached[1], words[2], atol=1e-5)
    assert torch.allclose(vocabulary_embeddings(tiny_clip, vocab, "simple", tmp_path), cached)


