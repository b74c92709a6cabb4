"""Vocabulary -> text embeddings: templates, averaging, and the on-disk cache."""
from __future__ import annotations

import pytest
import torch

from react_core.modeling import load_clip
from react_core.modeling.text import (
    VocabularyError,
    cached_class_embeddings,
    class_embeddings,
    encode_texts,
    imagenet_classnames,
    load_templates,
)


def test_builtin_template_sets_and_imagenet_names():
    assert len(load_templates("imagenet")) == 80
    assert all(t.count("{}") == 1 for t in load_templates("simple"))
    assert len(imagenet_classnames()) == 1000


def test_template_file_errors_name_file_and_line(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("a photo of a {}.\n\nno placeholder here\n")
    with pytest.raises(VocabularyError, match=rf"{path}, line 3"):
        load_templates(str(path))
    with pytest.raises(VocabularyError, match="neither a built-in set"):
        load_templates("imagenett")


def test_class_embeddings_are_normalised_means_over_templates(tiny_clip):
    templates = ["a photo of a {}.", "{}"]
    names = ["red star", "blue ring", "green cross"]
    averaged = class_embeddings(tiny_clip.model, tiny_clip.tokenizer, names, templates)
    per_template = class_embeddings(tiny_clip.model, tiny_clip.tokenizer, names, templates, average=False)
    assert averaged.shape == (3, 128) and per_template.shape == (3, 2, 128)
    assert torch.allclose(averaged.norm(dim=-1), torch.ones(3), atol=1e-5)
    direct = encode_texts(tiny_clip.model, tiny_clip.tokenizer, ["a photo of a blue ring.", "blue ring"])
    expected = torch.nn.functional.normalize(direct.mean(0), dim=0)
    assert torch.allclose(averaged[1], expected, atol=1e-5)


def test_cache_is_keyed_by_vocabulary_and_model(tiny_clip, tmp_path):
    names = ["red star", "blue ring"]
    cached_class_embeddings(tiny_clip, names, ["{}"], tmp_path)
    assert not list(tmp_path.glob("*.safetensors")), "a random-init model has no identity to cache under"
    torch.save(tiny_clip.model.state_dict(), tmp_path / "w.pt")
    named = load_clip("react-tiny", weights=tmp_path / "w.pt")
    first = cached_class_embeddings(named, names, ["{}"], tmp_path)
    assert len(list(tmp_path.glob("text_*.safetensors"))) == 1
    again = cached_class_embeddings(named, names, ["{}"], tmp_path)
    assert torch.equal(first, again)
    cached_class_embeddings(named, names[::-1], ["{}"], tmp_path)
    assert len(list(tmp_path.glob("text_*.safetensors"))) == 2
