"""Segmentation layouts: published folder structures with a few fake files each."""
import numpy as np
import pytest
import torch
from PIL import Image

from react_dense.segmentation.data import (
    COCO_STUFF_171,
    IGNORE_INDEX,
    PASCAL_CONTEXT_59,
    VOC_20,
    RandomScaleCropFlip,
    SegmentationDataError,
    SegmentationDataset,
    open_source,
)
from react_dense.segmentation.common import vocabulary_of


def _image(path, size=(6, 4)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (10, 20, 30)).save(path)


def _label(path, values, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.zeros((4, 6), dtype=np.uint16 if mode == "I;16" else np.uint8)
    array[0, : len(values)] = values
    image = Image.fromarray(array)
    if mode == "P":
        image = image.convert("P")
        image.putpalette([0, 0, 0] * 256)
    image.save(path)


def _first_row(source, count):
    label = SegmentationDataset(source)[0][1]
    return label[0, :count].tolist()


def test_builtin_vocabularies_have_their_published_sizes():
    assert (len(COCO_STUFF_171), len(PASCAL_CONTEXT_59), len(VOC_20)) == (171, 59, 20)
    assert len(set(COCO_STUFF_171)) == 171


def test_ade20k_150_shifts_labels_and_reads_synonyms(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    rows = ["Idx\tRatio\tTrain\tVal\tName"] + [f"{i}\t0.1\t1\t1\tname{i};alias{i}" for i in range(1, 151)]
    (root).mkdir()
    (root / "objectInfo150.txt").write_text("\n".join(rows))
    _image(root / "images" / "validation" / "a.jpg")
    _label(root / "annotations" / "validation" / "a.png", [0, 1, 150])
    source = open_source("ade20k-150", tmp_path, "validation")
    assert len(source.class_names) == 150
    assert _first_row(source, 3) == [IGNORE_INDEX, 0, 149]
    vocabulary = vocabulary_of(source.class_names)
    assert vocabulary.names[0] == "name1" and vocabulary.synonyms[0] == ["name1", "alias1"]


def test_coco_stuff_released_maps_drop_unused_ids(tmp_path):
    _image(tmp_path / "coco" / "val2017" / "b.jpg")
    # Raw value = COCO id - 1: person (0), id 12 (unused, 11), banner (id 92 -> 91), unlabelled 255.
    _label(tmp_path / "coco" / "stuffthingmaps_trainval2017" / "val2017" / "b.png", [0, 11, 91, 255])
    source = open_source("coco-stuff-171", tmp_path, "val")
    assert _first_row(source, 4) == [0, IGNORE_INDEX, COCO_STUFF_171.index("banner"), IGNORE_INDEX]
    assert COCO_STUFF_171.index("banner") == 80


def test_voc_20_ignores_background_and_border(tmp_path):
    folder = tmp_path / "VOCdevkit" / "VOC2012"
    (folder / "ImageSets" / "Segmentation").mkdir(parents=True)
    (folder / "ImageSets" / "Segmentation" / "val.txt").write_text("c\n")
    _image(folder / "JPEGImages" / "c.jpg")
    _label(folder / "SegmentationClass" / "c.png", [0, 1, 20, 255], mode="P")
    source = open_source("voc-20", tmp_path, "val")
    assert _first_row(source, 4) == [IGNORE_INDEX, 0, 19, IGNORE_INDEX]


def test_ade20k_847_reads_uint16_maps_and_needs_names(tmp_path):
    folder = tmp_path / "ADE20K_2021_17_01"
    _image(folder / "images_detectron2" / "validation" / "d.jpg")
    _label(folder / "annotations_detectron2" / "validation" / "d.tif", [300, 846, 65535], mode="I;16")
    with pytest.raises(SegmentationDataError, match="847 names"):
        open_source("ade20k-847", tmp_path, "validation")
    names = tmp_path / "ade847.txt"
    names.write_text("\n".join(f"thing {i}" for i in range(847)))
    source = open_source("ade20k-847", tmp_path, "validation", classes=str(names))
    assert _first_row(source, 3) == [300, 846, IGNORE_INDEX]


def test_errors_name_the_missing_file_or_class(tmp_path):
    with pytest.raises(SegmentationDataError, match="label folder not found: .*pc59_val"):
        open_source("pascal-context-59", tmp_path, "val")
    with pytest.raises(SegmentationDataError, match="unknown segmentation layout 'ade'"):
        open_source("ade", tmp_path, "val")
    folder = tmp_path / "ADEChallengeData2016"
    _label(folder / "annotations" / "validation" / "e.png", [1])
    (folder / "images" / "validation").mkdir(parents=True)
    with pytest.raises(SegmentationDataError, match="objectInfo150.txt not found"):
        open_source("ade20k-150", tmp_path, "validation")
    names = tmp_path / "names.txt"
    names.write_text("\n".join(f"c{i}" for i in range(150)))
    with pytest.raises(SegmentationDataError, match="have no image, e.g. .*e.jpg"):
        open_source("ade20k-150", tmp_path, "validation", classes=str(names))


def test_a_folder_with_classes_json_names_its_unseen_and_background_classes(tiny_world):
    train = open_source("folder", tiny_world / "semseg", "train")
    val = open_source("folder", tiny_world / "semseg", "val", max_images=3)
    assert train.background == "background" and len(train.unseen) > 0
    assert set(train.unseen) < set(train.class_names)
    unseen_ids = [train.class_names.index(n) for n in train.unseen]
    train_labels = torch.cat([label.flatten() for _, label in SegmentationDataset(train)])
    val_labels = torch.cat([label.flatten() for _, label in SegmentationDataset(val)])
    assert len(SegmentationDataset(val)) == 3
    assert not torch.isin(train_labels, torch.tensor(unseen_ids)).any()
    assert torch.isin(val_labels, torch.tensor(unseen_ids)).any()


def test_random_scale_crop_flip_keeps_pairs_aligned():
    torch.manual_seed(0)
    image = torch.arange(40.0).reshape(1, 5, 8).expand(3, 5, 8).contiguous()
    label = torch.arange(40).reshape(5, 8)
    augment = RandomScaleCropFlip(crop_size=6, scale_range=(1.0, 1.0), hflip=True)
    for _ in range(5):
        crop_image, crop_label = augment(image, label)
        assert crop_image.shape == (3, 6, 6) and crop_label.shape == (6, 6)
    padded_image, padded_label = RandomScaleCropFlip(crop_size=12, scale_range=(0.5, 0.5))(image, label)
    assert padded_image.shape[-2:] == (12, 12) and (padded_label == IGNORE_INDEX).any()
