"""react embed: LAION layout, model identity, unreadable images listed, resume after interruption."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from react_core.cli import main
from react_core.modeling import load_clip, save_full
from react_core.retrieval import embed as embed_module
from react_core.retrieval.embed import EmbeddingFolder, embed_corpus, matches_model, read_embedding_info, skipped_samples

MICRO = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="module")
def micro():
    return load_clip(MICRO)


def test_layout_identity_and_unreadable_images(retrieval_corpus, micro, tmp_path):
    summary = embed_corpus(micro, retrieval_corpus, tmp_path, batch_size=16, workers=0, progress=False)
    assert summary["shards"] == 3 and summary["rows"] == 89
    folder = EmbeddingFolder(tmp_path)
    assert len(folder) == 89 and folder.counts == [30, 29, 30]
    for kind in ("image", "text"):
        array = np.load(tmp_path / f"{'img' if kind == 'image' else 'text'}_emb" / f"{'img' if kind == 'image' else 'text'}_emb_1.npy")
        assert array.dtype == np.float16 and array.shape == (29, 32)
        assert np.allclose(np.linalg.norm(array.astype(np.float32), axis=1), 1, atol=2e-3)
    metadata = folder.metadata()
    assert metadata["id"].is_unique and {"id", "caption", "key", "shard", "sha256"} <= set(metadata.columns)
    skipped = skipped_samples(tmp_path)
    assert len(skipped) == 1 and skipped["output_shard"].tolist() == [1]
    assert skipped["id"].iloc[0] not in set(metadata["id"]) and "decodable" in skipped["reason"].iloc[0]
    info = read_embedding_info(tmp_path)
    assert info["identity"] == micro.spec.identity() and info["dtype"] == "float16" and info["dim"] == 32
    assert matches_model(tmp_path, micro.spec)
    assert not matches_model(tmp_path, load_clip("react-tiny").spec)


def test_caption_embeddings_are_the_text_tower_of_the_named_model(retrieval_corpus, micro, tmp_path):
    from react_core.engine.caption_embeddings import caption_embeddings, embeddings_from_folder

    embed_corpus(micro, retrieval_corpus, tmp_path, batch_size=16, workers=0, progress=False)
    metadata = EmbeddingFolder(tmp_path).metadata()
    reused = embeddings_from_folder(tmp_path, metadata["id"].tolist()[:5], micro.spec.identity())
    direct = caption_embeddings(micro, metadata["caption"].tolist()[:5], None)
    assert np.allclose(reused.numpy(), direct.numpy(), atol=5e-3)


def test_interrupted_embed_resumes_with_every_shard_once(retrieval_corpus, micro, tmp_path, monkeypatch):
    real_write = embed_module._write_parquet
    written = []

    def interrupted(path, frame):
        if path.name == "metadata_1.parquet":
            raise KeyboardInterrupt  # killed after shard 1's arrays, before its metadata
        written.append(path.name)
        real_write(path, frame)

    monkeypatch.setattr(embed_module, "_write_parquet", interrupted)
    with pytest.raises(KeyboardInterrupt):
        embed_corpus(micro, retrieval_corpus, tmp_path, batch_size=16, workers=0, progress=False)
    assert not embed_module.shard_done(tmp_path, 1) and embed_module.shard_done(tmp_path, 0)
    monkeypatch.setattr(embed_module, "_write_parquet", real_write)
    summary = embed_corpus(micro, retrieval_corpus, tmp_path, batch_size=16, workers=0, progress=False)
    assert summary["already_done"] == 1 and summary["shards"] == 2
    assert sorted(p.name for p in (tmp_path / "metadata").iterdir()) == [f"metadata_{n}.parquet" for n in range(3)]
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    ids = EmbeddingFolder(tmp_path).metadata()["id"]
    assert len(ids) == 89 and ids.is_unique
    again = embed_corpus(micro, retrieval_corpus, tmp_path, batch_size=16, workers=0, progress=False)
    assert again["shards"] == 0 and again["already_done"] == 3


def test_ranks_split_shards(retrieval_corpus, micro, tmp_path):
    first = embed_corpus(micro, retrieval_corpus, tmp_path, workers=0, rank=0, world_size=2, progress=False)
    second = embed_corpus(micro, retrieval_corpus, tmp_path, workers=0, rank=1, world_size=2, progress=False)
    assert (first["shards"], second["shards"]) == (2, 1)
    assert len(EmbeddingFolder(tmp_path)) == 89


def test_other_model_into_same_folder_is_refused(retrieval_corpus, micro, tiny_clip, tmp_path, capsys):
    from react_core.retrieval.embed import EmbeddingError

    embed_corpus(micro, retrieval_corpus, tmp_path, workers=0, progress=False)
    with pytest.raises(EmbeddingError, match="another model"):
        embed_corpus(tiny_clip, retrieval_corpus, tmp_path, workers=0, progress=False)
    # the command refuses a folder no react run recorded before it loads any model
    assert main(["embed", "--data", str(retrieval_corpus), "--out", str(tmp_path), "--workers", "0"]) == 2
    assert "no react run recorded" in capsys.readouterr().err


def test_cli_manifest_source_with_weights(tiny_world, tmp_path, capsys):
    manifest = pd.read_parquet(tiny_world / "corpus" / "manifest.parquet").head(30)
    manifest["shard"] = [str(tiny_world / "corpus" / s) for s in manifest["shard"]]
    manifest.to_parquet(tmp_path / "pairs.parquet")
    weights = save_full(load_clip(MICRO).model, tmp_path / "micro.safetensors")
    model_file = tmp_path / "micro.json"
    model_file.write_text(json.dumps(MICRO))
    bundle = load_clip(MICRO, weights=weights)
    embed_corpus(bundle, tmp_path / "pairs.parquet", tmp_path / "emb", shard_size=12, workers=0, progress=False)
    folder = EmbeddingFolder(tmp_path / "emb")
    assert folder.counts == [12, 12, 6]
    assert folder.metadata()["id"].tolist() == [str(i) for i in manifest["id"]]
    rebuilt = embed_module.load_model_of(tmp_path / "emb")
    assert rebuilt.spec.identity() == bundle.spec.identity()
