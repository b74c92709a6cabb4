"""Class lists: duplicates merged with a warning, empty names rejected, non-ASCII kept, all sources."""
from __future__ import annotations

import json
import logging

import pytest

from react_core.retrieval.classes import ClassListError, load_classes


def test_duplicates_are_merged_with_a_warning(tmp_path, caplog):
    path = tmp_path / "classes.txt"
    path.write_text("red square\nblue circle | blue disc\nred square | crimson square\n\n\n")
    with caplog.at_level(logging.WARNING, logger="react"):
        classes = load_classes(str(path))
    assert [c.name for c in classes] == ["red square", "blue circle"]
    assert classes[0].synonyms == ["red square", "crimson square"] and classes[1].synonyms == ["blue circle", "blue disc"]
    assert "line 3" in caplog.text and "merged" in caplog.text


def test_an_empty_line_between_names_is_an_error_naming_it(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("red square\n\nblue circle\n")
    with pytest.raises(ClassListError, match=r"classes.txt, line 2: empty class name"):
        load_classes(str(path))
    listed = tmp_path / "classes.json"
    listed.write_text(json.dumps(["red square", " "]))
    with pytest.raises(ClassListError, match="entry 2: empty class name"):
        load_classes(str(listed))


def test_non_ascii_names_are_kept_as_they_are(tmp_path):
    path = tmp_path / "classes.json"
    path.write_text(json.dumps(["café au lait", "żółw", "猫"]), encoding="utf-8")
    assert [c.name for c in load_classes(str(path))] == ["café au lait", "żółw", "猫"]


def test_lvis_categories_with_synonyms_and_definitions(tmp_path):
    path = tmp_path / "lvis.json"
    path.write_text(json.dumps({"categories": [
        {"id": 2, "name": "aerosol_can", "synonyms": ["aerosol_can", "spray_can"], "def": "a dispenser that holds a substance under pressure"},
        {"id": 1, "name": "air_conditioner", "synonyms": ["air_conditioner"]},
    ]}))
    classes = load_classes(str(path))
    assert [c.name for c in classes] == ["air_conditioner", "aerosol_can"]
    assert classes[1].synonyms == ["aerosol can", "spray can"] and classes[1].description.startswith("a dispenser")


def test_imagenet_and_missing_files(caplog):
    # CLIP's ImageNet names repeat 'missile' and 'sunglasses': identical queries that would
    # collide (a fault of the official code), so they are merged, with a warning.
    with caplog.at_level(logging.WARNING, logger="react"):
        assert len(load_classes("imagenet")) == 998
    assert "'missile'" in caplog.text and "'sunglasses'" in caplog.text
    with pytest.raises(ClassListError, match="neither 'imagenet' nor 'lvis' nor a file"):
        load_classes("no/such/classes.txt")


def test_queries_per_template_average_and_descriptions():
    from react_core.modeling import load_clip
    from react_core.retrieval.classes import ClassSpec, build_queries

    bundle = load_clip({"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
                        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}})
    classes = [ClassSpec("a", ["a", "alpha"], "the first letter"), ClassSpec("b", ["b"])]
    per_template = build_queries(bundle, classes, ["{}", "a photo of {}"], descriptions=True)
    assert per_template.classes == [0, 0, 0, 0, 1, 1, 0] and per_template.embeddings.shape == (7, 16)
    assert per_template.texts[1] == "a photo of a" and per_template.texts[-1] == "a, the first letter"
    averaged = build_queries(bundle, classes, ["{}", "a photo of {}"])
    assert averaged.classes == [0, 0, 0, 0, 1, 1]
    averaged = build_queries(bundle, classes, ["{}", "a photo of {}"], average=True)
    assert averaged.classes == [0, 0, 1] and averaged.embeddings.shape == (3, 16)
