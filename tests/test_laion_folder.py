"""LAION's embedding folders as released: no embeddings.json, LAION's metadata columns; the model
named on the command line or recorded once, and checked."""
from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from react_core.cli import main
from react_core.modeling import load_clip, save_full
from react_core.retrieval.embed import EmbeddingFolder, embed_corpus

LAION_COLUMNS = ["image_path", "caption", "NSFW", "similarity", "LICENSE", "url", "key", "status", "error_message",
                 "width", "height", "original_width", "original_height", "exif", "md5"]


@pytest.fixture(scope="module")
def laion(retrieval_corpus, tmp_path_factory):
    """The retrieval corpus embedded by a saved react-tiny, rewritten as LAION releases it:
    img_emb/text_emb float16 arrays, metadata with exactly LAION's columns, no embeddings.json."""
    root = tmp_path_factory.mktemp("laion")
    weights = save_full(load_clip("react-tiny").model, root / "tiny.safetensors")
    embed_corpus(load_clip("react-tiny", weights=weights), retrieval_corpus, root / "ours", workers=0, progress=False)
    ours = EmbeddingFolder(root / "ours")
    folder = root / "laion"
    for sub in ("img_emb", "text_emb", "metadata"):
        (folder / sub).mkdir(parents=True)
    for number in ours.numbers:
        image, text = ours.array("image", number), ours.array("text", number)
        shutil.copy(image.filename, folder / "img_emb" / f"img_emb_{number}.npy")
        shutil.copy(text.filename, folder / "text_emb" / f"text_emb_{number}.npy")
        rows = pd.read_parquet(root / "ours" / "metadata" / f"metadata_{number}.parquet")
        count = len(rows)
        pd.DataFrame({
            "image_path": [f"{number:05d}/{key}.jpg" for key in rows["id"]],
            "caption": rows["caption"],
            "NSFW": ["UNLIKELY"] * count,
            "similarity": (np.asarray(image, dtype=np.float32) * np.asarray(text, dtype=np.float32)).sum(axis=1).astype(np.float64),
            "LICENSE": ["?"] * count,
            "url": [f"https://example.com/{key}.jpg" for key in rows["id"]],
            "key": rows["id"],
            "status": ["success"] * count,
            "error_message": [None] * count,
            "width": [64] * count, "height": [64] * count, "original_width": [640] * count, "original_height": [480] * count,
            "exif": ["{}"] * count,
            "md5": [hashlib.md5(str(key).encode()).hexdigest() for key in rows["id"]],
        }).to_parquet(folder / "metadata" / f"metadata_{number}.parquet")
    return folder, weights


def copy_of(laion, tmp_path):
    folder, weights = laion
    shutil.copytree(folder, tmp_path / "laion")
    return tmp_path / "laion", weights


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_the_folder_is_laions_layout(laion):
    folder, _ = laion
    assert not (folder / "embeddings.json").exists()
    assert list(pd.read_parquet(folder / "metadata" / "metadata_0.parquet").columns) == LAION_COLUMNS
    assert np.load(folder / "text_emb" / "text_emb_0.npy").dtype == np.float16


def test_index_and_retrieve_with_the_model_named(laion, tiny_world, tmp_path, capsys):
    folder, weights = copy_of(laion, tmp_path)
    assert main(["index", "--emb", str(folder), "--kind", "image", "--out", str(tmp_path / "image")]) == 0
    assert main(["index", "--emb", str(folder), "--kind", "text", "--out", str(tmp_path / "text")]) == 0
    retrieve = ["retrieve", "--index", str(tmp_path / "image"), "--index", str(tmp_path / "text"), "--emb", str(folder),
                "--classes", str(tiny_world / "task" / "classes.txt"), "--templates", "simple", "--k", "10",
                "--mode", "both", "--ground-truth", str(tiny_world / "corpus" / "manifest.parquet")]
    capsys.readouterr()
    assert main(retrieve + ["--out", str(tmp_path / "unnamed")]) == 2
    assert "embeddings-info" in one_line_error(capsys)
    assert main(retrieve + ["--out", str(tmp_path / "subset"), "--model", "react-tiny", "--weights", str(weights)]) == 0
    capsys.readouterr()  # its progress bar, shown when encoding the class names took over a second
    subset = pd.read_parquet(tmp_path / "subset" / "subset.parquet")
    assert len(subset) > 0 and {"url", "caption", "key", "similarity", "md5"} <= set(subset.columns)
    assert (subset["id"] == subset["key"]).all()
    metadata = pd.concat([pd.read_parquet(p) for p in sorted((folder / "metadata").glob("*.parquet"))], ignore_index=True)
    by_key = metadata.set_index("key")
    assert (by_key.loc[subset["key"], "url"].to_numpy() == subset["url"].to_numpy()).all()
    assert np.allclose(by_key.loc[subset["key"], "similarity"].to_numpy(), subset["similarity"].to_numpy())
    stats = json.loads((tmp_path / "subset" / "stats.json").read_text())
    # ground truth found through LAION's key (the id): a precision per mode and per class
    assert set(stats["evaluation"]["both"]["per_class"]) == set(stats["per_class"])

    # an unknown pretrained tag, and a model of another dimension, are refused in one line
    assert main(retrieve + ["--out", str(tmp_path / "wrong"), "--model", "react-tiny", "--pretrained", "nosuchtag"]) == 2
    assert "nosuchtag" in one_line_error(capsys)
    assert main(retrieve + ["--out", str(tmp_path / "wrong"), "--model", "react-small"]) == 2
    assert "256-dimensional" in one_line_error(capsys)

    # LAION's URLs become the img2dataset list
    assert main(["export", str(tmp_path / "subset"), "--out", str(tmp_path / "export")]) == 0
    urls = pd.read_parquet(tmp_path / "export" / "urls.parquet")
    assert set(urls["id"]) == set(subset["id"]) and {"url", "caption", "class", "key", "similarity", "md5"} <= set(urls.columns)
    argv = json.loads((tmp_path / "export" / "img2dataset.json").read_text())["argv"]
    assert argv[argv.index("--url_col") + 1] == "url" and argv[argv.index("--caption_col") + 1] == "caption"
    assert "similarity" in json.loads(argv[argv.index("--save_additional_columns") + 1])
    assert "--bbox_col" not in argv  # LAION has no face boxes


def test_recorded_model_is_used_and_checked(laion, tiny_world, tmp_path, capsys):
    folder, weights = copy_of(laion, tmp_path)
    assert main(["embeddings-info", str(folder), "--release", "laion400m"]) == 2
    assert "512-dimensional" in one_line_error(capsys)
    assert main(["embeddings-info", str(folder), "--model", "react-tiny", "--weights", str(weights)]) == 0
    info = json.loads((folder / "embeddings.json").read_text())
    assert info["identity"] == load_clip("react-tiny", weights=weights).spec.identity() and info["dim"] == 128
    assert main(["embeddings-info", str(folder), "--model", "react-tiny"]) == 2
    assert "exists already" in one_line_error(capsys)
    classes = str(tiny_world / "task" / "classes.txt")
    assert main(["index", "--emb", str(folder), "--kind", "text", "--out", str(tmp_path / "text"), "--factory", "IVF4,Flat",
                 "--k", "10", "--classes", classes, "--templates", "simple"]) == 0
    assert "class x template" in json.loads((tmp_path / "text" / "index.json").read_text())["tuning"]["source"]
    retrieve = ["retrieve", "--index", str(tmp_path / "text"), "--emb", str(folder), "--classes", classes,
                "--templates", "simple", "--k", "10", "--mode", "t2t"]
    assert main(retrieve + ["--out", str(tmp_path / "subset")]) == 0
    capsys.readouterr()
    # same architecture, other weights (a fresh random initialisation): refused, naming both
    assert main(retrieve + ["--out", str(tmp_path / "other"), "--model", "react-tiny"]) == 2
    err = one_line_error(capsys)
    assert "embeddings.json says react-tiny weights sha256" in err and "not react-tiny GELU" in err


def test_known_release_names_its_model(tmp_path, capsys):
    """A 512-d folder recorded as LAION-400M names OpenAI ViT-B-32 (QuickGELU); another model is refused."""
    (tmp_path / "img_emb").mkdir()
    (tmp_path / "metadata").mkdir()
    np.save(tmp_path / "img_emb" / "img_emb_0.npy", np.zeros((2, 512), dtype=np.float16))
    pd.DataFrame({c: [None, None] for c in LAION_COLUMNS}).to_parquet(tmp_path / "metadata" / "metadata_0.parquet")
    assert main(["embeddings-info", str(tmp_path), "--release", "laion400m", "--model", "ViT-L-14"]) == 2
    assert "ViT-B-32" in one_line_error(capsys)
    assert main(["embeddings-info", str(tmp_path), "--release", "laion2b"]) == 2
    assert "768-dimensional" in one_line_error(capsys)
