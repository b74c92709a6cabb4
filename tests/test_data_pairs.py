"""Pair datasets: three sources, one interface; unreadable images skipped and counted."""
import io
import random
import tarfile

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from react_core.data import (
    CaptionedFolderPairs,
    ManifestPairs,
    PairCollate,
    PairDataError,
    ResumableSampler,
    SeededSamples,
    WebDatasetPairs,
    build_pairs,
)
from react_core.data.classification import ClassificationFolder, read_classnames

COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def jpeg(color) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buffer, "JPEG")
    return buffer.getvalue()


def add_member(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def shard(tmp_path):
    """Three good samples, one corrupt image, one caption without image, one image without caption."""
    path = tmp_path / "shard-000.tar"
    with tarfile.open(path, "w") as tar:
        for i, name in enumerate(COLORS):
            add_member(tar, f"s{i}.jpg", jpeg(COLORS[name]))
            add_member(tar, f"s{i}.txt", f"a {name} square".encode())
            add_member(tar, f"s{i}.json", f'{{"id": "pair-{i}"}}'.encode())
        add_member(tar, "bad.jpg", b"not a jpeg at all")
        add_member(tar, "bad.txt", b"a broken image")
        add_member(tar, "noimage.txt", b"a caption alone")
        add_member(tar, "nocaption.jpg", jpeg((0, 0, 0)))
    return path


def to_tensor(image):
    return torch.tensor(list(image.getpixel((8, 8))), dtype=torch.float32)


def test_webdataset_indexes_captions_and_skips_unreadable(shard):
    pairs = WebDatasetPairs(str(shard.parent / "shard-*.tar"), transform=to_tensor)
    assert len(pairs) == 5  # nocaption.jpg is left out at indexing
    assert pairs.ids[:3] == ["pair-0", "pair-1", "pair-2"]
    assert pairs.captions[0] == "a red square"
    assert pairs[0]["image"][0] > 150 and pairs[0]["image"][2] < 100
    bad = pairs.captions.index("a broken image")
    alone = pairs.captions.index("a caption alone")
    assert pairs[bad] is None and pairs[alone] is None
    batch = PairCollate(pairs.captions)([pairs[i] for i in range(len(pairs))])
    assert batch["skipped"] == 2
    assert batch["images"].shape == (3, 3)
    assert batch["index"].tolist() == [0, 1, 2]


def test_manifest_reads_paths_urls_and_shard_members(tmp_path, shard):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.jpg").write_bytes(jpeg(COLORS["green"]))
    table = pd.DataFrame(
        {
            "id": ["a", "b", "c"],
            "caption": ["green", "blue from url", "missing"],
            "path": ["img/a.jpg", None, "img/gone.jpg"],
            "url": [None, (tmp_path / "img" / "a.jpg").as_uri(), None],
        }
    )
    table.to_parquet(tmp_path / "pairs.parquet")
    pairs = ManifestPairs(str(tmp_path / "pairs.parquet"), transform=to_tensor)
    assert pairs[0]["image"][1] > 150
    assert pairs[1] is not None
    assert pairs[2] is None

    members = pd.DataFrame({"id": ["x", "y"], "key": ["s1", "bad"], "shard": [shard.name, shard.name], "caption": ["g", "b"]})
    members.to_parquet(tmp_path / "members.parquet")
    from_shards = build_pairs({"type": "PairManifest", "manifest": str(tmp_path / "members.parquet")}, to_tensor)
    assert from_shards[0]["image"][1] > 150 and from_shards[1] is None


def test_manifest_errors_name_file_and_columns(tmp_path):
    pd.DataFrame({"id": [1], "text": ["x"]}).to_parquet(tmp_path / "p.parquet")
    with pytest.raises(PairDataError, match=r"p\.parquet: no 'caption' column \(columns: id, text\)"):
        ManifestPairs(str(tmp_path / "p.parquet"))
    pd.DataFrame({"caption": ["x"]}).to_parquet(tmp_path / "q.parquet")
    with pytest.raises(PairDataError, match=r"q\.parquet: needs a 'path' or 'url' column"):
        ManifestPairs(str(tmp_path / "q.parquet"))
    with pytest.raises(PairDataError, match="no webdataset shards match"):
        WebDatasetPairs(str(tmp_path / "none-*.tar"))


def test_captioned_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "one.png").write_bytes(jpeg(COLORS["blue"]))
    (tmp_path / "sub" / "one.txt").write_text("a blue square\n")
    (tmp_path / "two.jpg").write_bytes(jpeg(COLORS["red"]))  # no caption: not a pair
    pairs = CaptionedFolderPairs(str(tmp_path), transform=to_tensor)
    assert pairs.captions == ["a blue square"] and pairs.ids == ["sub/one"]
    assert pairs[0]["image"][2] > 150


def test_sampler_starts_anywhere_and_shards_ranks():
    full = ResumableSampler(10, seed=3)
    keys = [key for _, key in zip(range(35), iter(full))]
    stream = [index for index, _ in keys]
    assert sorted(stream[:10]) == list(range(10)) and stream[:10] != stream[10:20]
    resumed = ResumableSampler(10, seed=3)
    resumed.start_at(17)
    assert [key for _, key in zip(range(18), iter(resumed))] == keys[17:35]  # the sample seeds too
    assert len({seed for _, seed in keys}) == len(keys)  # one per place, not per index
    ranks = [ResumableSampler(10, seed=3, rank=r, world_size=3) for r in range(3)]
    epoch = [[key for _, key in zip(range(4), iter(s))] for s in ranks]
    assert all(len(e) == 4 for e in epoch) and {i for e in epoch for i, _ in e} == set(range(10))
    assert len({seed for e in epoch for _, seed in e}) == 12


def test_seeded_samples_draw_from_their_own_seed_and_leave_the_process_streams_alone():
    class RandomDraws(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, index):
            return index, random.random(), float(np.random.rand()), float(torch.rand(()))

    samples = SeededSamples(RandomDraws())
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    expected = (random.random(), float(np.random.rand()), float(torch.rand(())))
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    first = samples[2, 7]
    assert samples[2, 7] == first and samples[2, 8][1:] != first[1:] and first[0] == 2
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == expected


def test_classification_folder_follows_class_list_order(tmp_path):
    (tmp_path / "classes.txt").write_text("zebra stripe\napple\n")
    for folder, color in (("zebra_stripe", (0, 0, 0)), ("apple", (255, 0, 0))):
        (tmp_path / "val" / folder).mkdir(parents=True)
        (tmp_path / "val" / folder / "0.jpg").write_bytes(jpeg(color))
    names = read_classnames(tmp_path / "classes.txt")
    dataset = ClassificationFolder(tmp_path / "val", names)
    assert sorted(label for _, label in dataset.samples) == [0, 1]
    assert dict((p.split("/")[-2], label) for p, label in dataset.samples) == {"zebra_stripe": 0, "apple": 1}
    (tmp_path / "val" / "pear").mkdir()
    with pytest.raises(PairDataError, match="pear: folder name matches no class"):
        ClassificationFolder(tmp_path / "val", names)
    (tmp_path / "dup.txt").write_text("a\nb\na\n")
    with pytest.raises(PairDataError, match=r"dup\.txt, line 3: class 'a' repeats line 1"):
        read_classnames(tmp_path / "dup.txt")


def test_manifest_class_filter_and_official_augmentation(tmp_path):
    from react_core.data import official_augmentation

    (tmp_path / "a.jpg").write_bytes(jpeg(COLORS["red"]))
    pd.DataFrame({"caption": ["x", "y", "z"], "path": ["a.jpg"] * 3, "class": ["cat", "dog", "cat"]}).to_parquet(
        tmp_path / "m.parquet"
    )
    augment = official_augmentation(32)
    pairs = ManifestPairs(str(tmp_path / "m.parquet"), classes=["cat"], transform=augment)
    assert pairs.captions == ["x", "z"]
    torch.manual_seed(0)
    first, second = pairs[0]["image"], pairs[0]["image"]
    assert first.shape == (3, 32, 32) and not torch.equal(first, second)  # random crops, RandAugment, erasing


def test_manifest_keeps_rows_whose_caption_names_a_class(tmp_path):
    (tmp_path / "a.jpg").write_bytes(jpeg(COLORS["red"]))
    captions = ["A Pink Star on a table", "magenta star", "pink stars and a pink ring", "a dog"]
    pd.DataFrame({"caption": captions, "path": ["a.jpg"] * 4}).to_parquet(tmp_path / "m.parquet")
    pairs = ManifestPairs(str(tmp_path / "m.parquet"), classes=["pink star", "pink ring"], class_match="caption")
    assert pairs.captions == ["A Pink Star on a table", "pink stars and a pink ring"]
    with pytest.raises(PairDataError, match="class_match must be 'label' or 'caption'"):
        ManifestPairs(str(tmp_path / "m.parquet"), classes=["pink star"], class_match="image")


def test_shard_index_is_reused_until_the_file_changes(shard):
    from react_core.data.images import index_shard

    first = index_shard(shard)
    assert index_shard(shard) is first
    with tarfile.open(shard, "a") as tar:
        add_member(tar, "late.txt", b"a sample added later")
    assert "late" in index_shard(shard) and "late" not in first


def test_replay_pairs_follow_the_training_pairs_as_one_dataset(tmp_path, shard):
    for name, color in COLORS.items():
        (tmp_path / f"{name}.jpg").write_bytes(jpeg(color))
    pd.DataFrame({"caption": [f"a {n} disc" for n in COLORS], "path": [f"{n}.jpg" for n in COLORS]}).to_parquet(
        tmp_path / "m.parquet")
    train = {"type": "PairManifest", "manifest": str(tmp_path / "m.parquet"), "classes": ["red", "blue"],
             "class_match": "caption"}
    replay = {"type": "WebDatasetPairs", "shards": str(shard)}
    pairs = build_pairs(train, to_tensor, replay=replay)
    alone = build_pairs(replay, to_tensor)
    assert pairs.captions == ["a red disc", "a blue disc", *alone.captions]
    assert pairs.ids[2:] == alone.ids and len(pairs) == 2 + len(alone)
    assert pairs.image_locations()[2:] == alone.image_locations()
    assert pairs[1]["index"] == 1 and pairs[1]["image"].tolist()[2] > 150  # blue, from the manifest
    for local in range(len(alone)):
        sample, expected = pairs[2 + local], alone[local]
        if expected is None:
            assert sample is None  # the corrupt image is skipped in the replay part too
        else:
            assert sample["index"] == 2 + local and torch.equal(sample["image"], expected["image"])
