"""react index: shards added by parallel workers (processes or Ray tasks) give the index one process
builds, and an interrupted build resumes from its parts."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from react_core.retrieval.ann import read_index, search
from react_core.retrieval.embed import EmbeddingFolder
from react_core.retrieval.index import Candidate, fill_index


def write_folder(root: Path, n: int = 6000, d: int = 32, shard: int = 2000, seed: int = 0) -> np.ndarray:
    """A LAION-layout folder (image and caption embeddings, metadata, embeddings.json) of clustered
    unit vectors; returns text-like queries."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, d)).astype(np.float32)
    x = centres[rng.integers(0, 40, n)] + 0.7 * rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    for name in ("img_emb", "text_emb", "metadata"):
        (root / name).mkdir(parents=True)
    for number, start in enumerate(range(0, n, shard)):
        np.save(root / "img_emb" / f"img_emb_{number}.npy", x[start:start + shard].astype(np.float16))
        np.save(root / "text_emb" / f"text_emb_{number}.npy", x[start:start + shard].astype(np.float16))
        pd.DataFrame({"id": [str(i) for i in range(start, min(n, start + shard))]}).to_parquet(
            root / "metadata" / f"metadata_{number}.parquet")
    (root / "embeddings.json").write_text(json.dumps({"identity": {"model": "test"}, "model": None, "dim": d,
                                                      "shards": [str(i) for i in range(-(-n // shard))]}))
    queries = centres[rng.integers(0, 40, 200)] + 0.5 * rng.standard_normal((200, d)).astype(np.float32)
    return (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Parallel workers


@pytest.mark.parametrize("factory, parameters, on_disk", [
    ("IVF32,Flat", "nprobe=8", False),
    ("IVF32,PQ16x4fs,Refine(SQfp16)", "nprobe=8,k_factor_rf=4", False),
    ("IVF32,SQ8", "nprobe=8", True),
])
def test_two_workers_build_the_index_one_process_builds(tmp_path, factory, parameters, on_disk):
    """Trained once, each of three shards added by one of two worker processes to its own copy,
    merged in shard order: the same lists, so the same ids and scores for every query."""
    queries = write_folder(tmp_path / "emb")
    folder = EmbeddingFolder(tmp_path / "emb")
    single = fill_index(Candidate(factory), folder, "image", tmp_path / "one", on_disk=on_disk, workers=1)
    double = fill_index(Candidate(factory), folder, "image", tmp_path / "two", on_disk=on_disk, workers=2)
    assert single["backend"] == "this process" and double["backend"] == "processes"
    assert double["shards_added"] == 3 and double["worker_peak_rss_bytes"] > 0
    assert (tmp_path / "two" / "index.ivfdata").is_file() == on_disk and not (tmp_path / "two" / "parts").exists()
    one = search(read_index(tmp_path / "one", parameters), queries, 50)
    two = search(read_index(tmp_path / "two", parameters), queries, 50)
    assert np.array_equal(one[1], two[1]) and np.array_equal(one[0], two[0])
    assert (one[1] >= 0).all()


def test_ray_tasks_build_the_index_one_process_builds(tmp_path):
    ray = pytest.importorskip("ray")
    queries = write_folder(tmp_path / "emb")
    folder = EmbeddingFolder(tmp_path / "emb")
    try:
        fill_index(Candidate("IVF32,Flat"), folder, "image", tmp_path / "one", on_disk=False)
        filled = fill_index(Candidate("IVF32,Flat"), folder, "image", tmp_path / "ray", on_disk=False, workers=2,
                            ray_address="local")
    finally:
        ray.shutdown()
    assert filled["backend"] == "ray" and filled["shards_added"] == 3
    one = search(read_index(tmp_path / "one", "nprobe=8"), queries, 50)
    other = search(read_index(tmp_path / "ray", "nprobe=8"), queries, 50)
    assert np.array_equal(one[1], other[1]) and np.array_equal(one[0], other[0])


def test_an_interrupted_build_resumes_from_its_parts(tmp_path, monkeypatch):
    """Killed after two of three shards: the trained index and the two parts stay, and the next
    run adds only the third shard and ends with the index an uninterrupted build makes."""
    from react_core.retrieval import ann

    queries = write_folder(tmp_path / "emb")
    folder = EmbeddingFolder(tmp_path / "emb")
    fill_index(Candidate("IVF32,Flat"), folder, "image", tmp_path / "whole", on_disk=False)
    added = []
    real_add_part = ann.add_part

    def killed_after_two(task):
        if len(added) == 2:
            raise KeyboardInterrupt
        added.append(task.number)
        return real_add_part(task)

    monkeypatch.setattr(ann, "add_part", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        fill_index(Candidate("IVF32,Flat"), folder, "image", tmp_path / "index", on_disk=False)
    parts = tmp_path / "index" / "parts"
    assert sorted(p.name for p in parts.iterdir()) == ["build.json", "part_0.faiss", "part_1.faiss", "trained.faiss"]
    assert not (tmp_path / "index" / "index.faiss").exists()
    monkeypatch.setattr(ann, "add_part", real_add_part)
    filled = fill_index(Candidate("IVF32,Flat"), folder, "image", tmp_path / "index", on_disk=False)
    assert filled["shards_added"] == 1 and not parts.exists()
    resumed = search(read_index(tmp_path / "index", "nprobe=8"), queries, 50)
    whole = search(read_index(tmp_path / "whole", "nprobe=8"), queries, 50)
    assert np.array_equal(resumed[1], whole[1]) and np.array_equal(resumed[0], whole[0])


def test_parts_of_another_index_are_not_merged(tmp_path):
    """parts/ left by a build of another factory were added to another quantizer: they are dropped."""
    queries = write_folder(tmp_path / "emb")
    folder = EmbeddingFolder(tmp_path / "emb")
    parts = tmp_path / "index" / "parts"
    parts.mkdir(parents=True)
    (parts / "build.json").write_text(json.dumps({"index": Candidate("IVF16,Flat").as_dict()}))
    (parts / "trained.faiss").write_bytes(b"stale")
    (parts / "part_0.faiss").write_bytes(b"stale")
    filled = fill_index(Candidate("IVF32,Flat"), folder, "image", tmp_path / "index", on_disk=False)
    assert filled["shards_added"] == 3
    _, rows = search(read_index(tmp_path / "index", "nprobe=32"), queries, 10)
    assert (rows >= 0).all()


def test_a_graph_is_built_with_the_efconstruction_asked(tmp_path, capsys):
    import faiss

    from react_core.cli import main
    from react_core.retrieval.index import build_index

    queries = write_folder(tmp_path / "emb")
    info = build_index(tmp_path / "emb", "image", tmp_path / "graph", factory="HNSW32,Flat", ef_construction=80,
                       queries=queries, k=10, progress=False)
    assert info["ef_construction"] == 80 and "efSearch" in info["search_parameters"]
    assert faiss.read_index(str(tmp_path / "graph" / "index.faiss")).hnsw.efConstruction == 80
    assert main(["index", "--emb", str(tmp_path / "emb"), "--out", str(tmp_path / "ivf"), "--factory", "IVF16,Flat",
                 "--ef-construction", "80"]) == 2
    assert "efConstruction applies to HNSW graphs" in capsys.readouterr().err


def test_react_index_claims_its_out_and_a_killed_build_resumes_there(tmp_path, monkeypatch, capsys):
    """`react index` into a folder holding another run's index is refused unless --overwrite; a
    killed build is the same run and resumes, with other --workers, from the parts it left."""
    from react_core.cli import main
    from react_core.retrieval import ann

    write_folder(tmp_path / "emb")
    out = tmp_path / "index"
    command = ["index", "--emb", str(tmp_path / "emb"), "--out", str(out), "--factory", "IVF32,Flat"]
    real_add_part = ann.add_part
    added = []

    def killed_after_one(task):
        if added:
            raise KeyboardInterrupt
        added.append(task.number)
        return real_add_part(task)

    monkeypatch.setattr(ann, "add_part", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        main(command)
    assert sorted(p.name for p in (out / "parts").iterdir()) == ["build.json", "part_0.faiss", "trained.faiss"]
    monkeypatch.setattr(ann, "add_part", real_add_part)
    assert main([*command, "--workers", "2"]) == 0
    info = json.loads((out / "index.json").read_text())
    assert info["build"]["shards_added"] == 2 and info["ntotal"] == 6000 and not (out / "parts").exists()

    capsys.readouterr()
    assert main([*command[:-1], "IVF16,Flat"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(out) in err and "factory" in err and "--overwrite" in err
    assert json.loads((out / "index.json").read_text())["factory"] == "IVF32,Flat"
    assert main([*command[:-1], "IVF16,Flat", "--overwrite"]) == 0
    assert json.loads((out / "index.json").read_text())["factory"] == "IVF16,Flat"
