"""No silently wrong data: a world is not replaced unasked, and images are checked against the
sha256 a subset recorded (all of them on export, a sample when customization reads them)."""
from __future__ import annotations

import hashlib
import io
import tarfile
from dataclasses import replace

import pandas as pd
import pytest
from PIL import Image

from react_core.cli import main
from react_core.data import ManifestPairs, PairDataError
from react_dense.lab.world import PRESETS, WorldError, generate_world, load_world

MICRO = replace(
    PRESETS["tiny"], corpus_pairs=60, pretrain_pairs=60, shard_size=60, task_train_per_class=1,
    task_val_per_class=1, det_val_images=40, semseg_train_images=2, semseg_val_images=2,
)


def test_synth_refuses_to_replace_another_world_unless_asked(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(PRESETS, "micro", MICRO)
    first = generate_world("micro", tmp_path, seed=1, workers=1)
    with pytest.raises(WorldError, match="--overwrite"):
        generate_world("micro", tmp_path, seed=2, workers=1)
    assert main(["synth", "--preset", "tiny", "--out", str(tmp_path), "--seed", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "preset micro, seed 1" in err and "--overwrite" in err
    assert load_world(tmp_path).content_sha256 == first["content_sha256"]
    second = generate_world("micro", tmp_path, seed=2, workers=1, overwrite=True)
    assert load_world(tmp_path).seed == 2 and second["content_sha256"] != first["content_sha256"]


def _jpeg(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (value, 255 - value, 0)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _write_shard(path, images: list[bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for number, data in enumerate(images):
            info = tarfile.TarInfo(f"{number:04d}.jpg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def changed_corpus(tmp_path):
    """A subset recorded from one shard whose last image was replaced afterwards."""
    images = [_jpeg(10 * i) for i in range(5)]
    shard = tmp_path / "corpus.tar"
    _write_shard(shard, images)
    subset = pd.DataFrame({
        "id": [str(i) for i in range(5)], "caption": [f"caption {i}" for i in range(5)], "class": "a",
        "score": [1.0 - i / 10 for i in range(5)], "rank": list(range(5)),
        "shard": str(shard), "key": [f"{i:04d}" for i in range(5)],
        "sha256": [hashlib.sha256(data).hexdigest() for data in images],
    })
    (tmp_path / "subset").mkdir()
    subset.to_parquet(tmp_path / "subset" / "subset.parquet", index=False)
    assert len(ManifestPairs(str(tmp_path / "subset" / "subset.parquet"))) == 5  # unchanged: accepted
    _write_shard(shard, images[:4] + [_jpeg(200)])
    return tmp_path


def test_customize_data_refuses_images_that_changed_since_the_subset(changed_corpus):
    with pytest.raises(PairDataError, match="sample 4.*sha256"):
        ManifestPairs(str(changed_corpus / "subset" / "subset.parquet"))


def test_export_checks_every_image_against_the_subset(changed_corpus, capsys):
    out = changed_corpus / "train_set"
    assert main(["export", str(changed_corpus / "subset"), "--to", "webdataset", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.count("error:") == 1  # besides the progress bar
    assert "corpus.tar:0004" in err and "sha256" in err
    assert not (out / "manifest.parquet").exists()


def test_a_subset_finds_its_images_from_any_folder(tmp_path, monkeypatch):
    """Embedding records where the images are as absolute paths, so a manifest cut from its
    metadata (what `react retrieve` writes) needs no `root` to be read from elsewhere."""
    (tmp_path / "corpus").mkdir()
    _write_shard(tmp_path / "corpus" / "000000.tar", [_jpeg(10), _jpeg(90)])
    with tarfile.open(tmp_path / "corpus" / "000000.tar", "a") as tar:
        for number in range(2):
            data = f"caption {number}".encode()
            info = tarfile.TarInfo(f"{number:04d}.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    monkeypatch.chdir(tmp_path)
    assert main(["embed", "--data", "corpus", "--out", "emb", "--workers", "0"]) == 0
    metadata = pd.read_parquet(tmp_path / "emb" / "metadata" / "metadata_0.parquet")
    (tmp_path / "subset").mkdir()
    metadata.assign(**{"class": "a", "score": 1.0}).to_parquet(tmp_path / "subset" / "subset.parquet")
    monkeypatch.chdir(tmp_path / "subset")
    pairs = ManifestPairs("subset.parquet")
    assert [pairs.load_image(i) is not None for i in range(len(pairs))] == [True, True]
