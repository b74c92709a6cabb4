"""A DataComp pool as download_upstream.py leaves it (UID.parquet beside UID.npz in metadata/)
goes through react index -> retrieve -> export as it is: features chosen once, the model checked,
DataComp's columns carried into the subset and the img2dataset command."""
from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import zipfile

import numpy as np
import pandas as pd
import pytest

from react_core.cli import main
from react_core.modeling import load_clip, save_full
from react_core.retrieval.embed import EmbeddingError, EmbeddingFolder, embed_corpus

DATACOMP_COLUMNS = ["uid", "url", "text", "original_width", "original_height", "clip_b32_similarity_score",
                    "clip_l14_similarity_score", "face_bboxes", "sha256"]


def write_pool_shard(folder, name: str, ids, captions, b32_img, b32_txt, rng, compressed: bool) -> None:
    """One parquet + npz pair in DataComp's layout (l14 features and dedup random: only b32 is used)."""
    count = len(ids)
    l14 = rng.standard_normal((2, count, 48)).astype(np.float16)
    pd.DataFrame({
        "uid": [hashlib.md5(f"uid-{i}".encode()).hexdigest() for i in ids],
        "url": [f"https://example.com/{i}.jpg" for i in ids],
        "text": captions,
        "original_width": [640] * count, "original_height": [480] * count,
        "clip_b32_similarity_score": (b32_img.astype(np.float32) * b32_txt.astype(np.float32)).sum(axis=1),
        "clip_l14_similarity_score": rng.uniform(0.1, 0.4, count),
        "face_bboxes": [[[0.1, 0.1, 0.2, 0.2]] if n % 7 == 0 else [] for n in range(count)],
        "sha256": [hashlib.sha256(f"image-{i}".encode()).hexdigest() for i in ids],
    }).to_parquet(folder / f"{name}.parquet")
    save = np.savez_compressed if compressed else np.savez
    save(folder / f"{name}.npz", b32_img=b32_img, b32_txt=b32_txt, l14_img=l14[0], l14_txt=l14[1],
         dedup=rng.standard_normal((count, 16)).astype(np.float16))


@pytest.fixture(scope="module")
def pool(retrieval_corpus, tmp_path_factory):
    """The retrieval corpus embedded by a saved react-tiny, rewritten as a DataComp pool: its
    embeddings as the b32 features, one npz stored (memory-mapped) and the others compressed."""
    root = tmp_path_factory.mktemp("datacomp")
    weights = save_full(load_clip("react-tiny").model, root / "tiny.safetensors")
    embed_corpus(load_clip("react-tiny", weights=weights), retrieval_corpus, root / "ours", workers=0, progress=False)
    ours = EmbeddingFolder(root / "ours")
    metadata = root / "pool" / "metadata"
    metadata.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for number in ours.numbers:
        rows = pd.read_parquet(root / "ours" / "metadata" / f"metadata_{number}.parquet")
        name = hashlib.md5(f"shard-{number}".encode()).hexdigest()
        write_pool_shard(metadata, name, rows["id"].tolist(), rows["caption"].tolist(), np.asarray(ours.array("image", number)),
                         np.asarray(ours.array("text", number)), rng, compressed=number > 0)
    return root / "pool", weights


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_pool_goes_through_index_retrieve_export(pool, tiny_world, tmp_path, capsys):
    source, weights = pool
    folder = tmp_path / "pool"
    shutil.copytree(source, folder)
    classes = str(tiny_world / "task" / "classes.txt")

    # features not chosen yet: one line saying how
    assert main(["index", "--emb", str(folder), "--kind", "image", "--out", str(tmp_path / "image")]) == 2
    assert "--features b32" in one_line_error(capsys)
    # DataComp's b32 features are OpenAI ViT-B/32's, 512-d: this pool's 128-d ones cannot be
    assert main(["embeddings-info", str(folder), "--features", "b32"]) == 2
    assert "512-dimensional" in one_line_error(capsys)
    assert main(["embeddings-info", str(folder), "--features", "b32", "--model", "react-tiny", "--weights", str(weights)]) == 0
    info = json.loads((folder / "embeddings.json").read_text())
    assert info["format"] == "datacomp" and info["features"] == "b32" and info["dim"] == 128
    assert not list(folder.glob("*.npy")) and sorted(p.suffix for p in (folder / "metadata").iterdir()) == [".npz"] * 3 + [".parquet"] * 3

    tune = ["--classes", classes, "--templates", "simple", "--k", "10"]
    assert main(["index", "--emb", str(folder), "--kind", "image", "--out", str(tmp_path / "image"), *tune]) == 0
    assert main(["index", "--emb", str(folder), "--kind", "text", "--out", str(tmp_path / "text"), "--factory", "IVF4,Flat",
                 *tune]) == 0
    capsys.readouterr()
    retrieve = ["retrieve", "--index", str(tmp_path / "image"), "--index", str(tmp_path / "text"), "--emb", str(folder),
                *tune, "--mode", "both", "--no-dedup"]
    # the recorded model is checked: another one is refused, naming both
    assert main(retrieve + ["--out", str(tmp_path / "other"), "--model", "react-tiny"]) == 2
    assert "embeddings.json says react-tiny weights sha256" in one_line_error(capsys)
    assert main(retrieve + ["--out", str(tmp_path / "subset")]) == 0

    subset = pd.read_parquet(tmp_path / "subset" / "subset.parquet")
    pool_rows = pd.concat([pd.read_parquet(p) for p in sorted((folder / "metadata").glob("*.parquet"))], ignore_index=True)
    assert len(subset) > 0
    assert {"uid", "url", "caption", "sha256", "clip_b32_similarity_score", "clip_l14_similarity_score",
            "face_bboxes"} <= set(subset.columns)
    assert (subset["id"] == subset["uid"]).all()
    by_uid = pool_rows.set_index("uid").loc[subset["uid"]]
    assert (by_uid["text"].to_numpy() == subset["caption"].to_numpy()).all()
    assert (by_uid["url"].to_numpy() == subset["url"].to_numpy()).all()
    assert (by_uid["sha256"].to_numpy() == subset["sha256"].to_numpy()).all()
    assert np.allclose(by_uid["clip_l14_similarity_score"].to_numpy(), subset["clip_l14_similarity_score"].to_numpy())
    # each score is the exact cosine of its own row's npz features with the class's queries
    from react_core.modeling.text import load_templates
    from react_core.retrieval.classes import build_queries, load_classes

    bundle = load_clip("react-tiny", weights=weights)
    queries = build_queries(bundle, load_classes(classes), load_templates("simple"), progress=False)
    features = {}
    for npz in sorted((folder / "metadata").glob("*.npz")):
        with np.load(npz) as arrays:
            features.update(zip(pd.read_parquet(npz.with_suffix(".parquet"))["uid"], arrays["b32_img"].astype(np.float32)))
    names = [c.name for c in load_classes(classes)]
    owners = np.asarray(queries.classes)
    for row in subset.to_dict("records"):
        vector = features[row["uid"]] / np.linalg.norm(features[row["uid"]])
        expected = (queries.embeddings[owners == names.index(row["class"])] @ vector).max()
        assert row["score_t2i"] == pytest.approx(expected, abs=1e-4)

    # export: the URL list with DataComp's columns, and the img2dataset command, quoted
    out = tmp_path / "export $(touch injected) 'quoted'"
    assert main(["export", str(tmp_path / "subset"), "--out", str(out)]) == 0
    urls = pd.read_parquet(out / "urls.parquet")
    assert sorted(urls["uid"]) == sorted(subset["uid"].unique())
    assert {"url", "caption", "id", "class", "uid", "sha256", "clip_b32_similarity_score", "face_bboxes"} <= set(urls.columns)
    argv = json.loads((out / "img2dataset.json").read_text())["argv"]
    assert argv[argv.index("--bbox_col") + 1] == "face_bboxes"
    assert json.loads(argv[argv.index("--verify_hash") + 1]) == ["sha256", "sha256"]
    assert argv[argv.index("--url_list") + 1] == str(out / "urls.parquet")
    assert shlex.split((out / "img2dataset.sh").read_text().splitlines()[-1]) == argv
    # the script hands img2dataset exactly that argument list, and the shell runs nothing else
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "img2dataset"
    fake.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    ran = subprocess.run(["sh", str(out / "img2dataset.sh")], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}, check=True)
    assert json.loads(ran.stdout) == argv[1:] and not (tmp_path / "injected").exists()


def test_pool_files_in_the_folder_itself_stored_or_compressed(tmp_path):
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((4, 5, 8)).astype(np.float16)
    write_pool_shard(tmp_path, "b", ["3", "4", "5", "6", "7"], list("abcde"), vectors[0], vectors[1], rng, compressed=True)
    write_pool_shard(tmp_path, "a", ["0", "1", "2", "8", "9"], list("fghij"), vectors[2], vectors[3], rng, compressed=False)
    with pytest.raises(EmbeddingError, match="--features b32"):
        EmbeddingFolder(tmp_path, require_info=False)
    folder = EmbeddingFolder(tmp_path, require_info=False, features="b32")
    assert folder.numbers == [0, 1] and folder.counts == [5, 5] and folder.dim == 8 and folder.has("text")
    assert isinstance(folder.array("image", 0), np.memmap) and not isinstance(folder.array("image", 1), np.memmap)
    expected = np.concatenate([vectors[2], vectors[0]]).astype(np.float32)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    rows = np.array([7, 0, 4, 5])
    assert np.allclose(folder.gather("image", rows), expected[rows], atol=1e-6)
    assert np.allclose(np.concatenate([block for _, block in folder.iter_arrays("image")]), expected, atol=1e-6)
    metadata = folder.metadata(["id", "caption", "url"])
    assert metadata["caption"].tolist() == list("fghijabcde") and "text" not in metadata.columns
    assert metadata["id"].tolist() == [hashlib.md5(f"uid-{i}".encode()).hexdigest() for i in "01289"] + \
        [hashlib.md5(f"uid-{i}".encode()).hexdigest() for i in "34567"]
    assert EmbeddingFolder(tmp_path, require_info=False, features="l14").dim == 48


def test_damaged_npz_names_the_file(tmp_path, capsys):
    rng = np.random.default_rng(2)
    vectors = rng.standard_normal((2, 5, 8)).astype(np.float16)
    write_pool_shard(tmp_path, "a", list("01234"), list("abcde"), vectors[0], vectors[1], rng, compressed=False)
    data = (tmp_path / "a.npz").read_bytes()
    (tmp_path / "a.npz").write_bytes(data[: len(data) // 2])
    assert main(["embeddings-info", str(tmp_path), "--features", "b32", "--model", "react-tiny"]) == 2
    assert f"{tmp_path / 'a.npz'}: not a readable .npz file" in one_line_error(capsys)
    with zipfile.ZipFile(tmp_path / "a.npz", "w") as archive:  # an npz without DataComp's arrays
        archive.writestr("other.npy", b"")
    assert main(["embeddings-info", str(tmp_path), "--features", "b32", "--model", "react-tiny"]) == 2
    assert "no array 'b32_img' (it holds other)" in one_line_error(capsys)
