"""Safety lists (ids, URLs, hashes of URLs or images, as files) at retrieval, on a subset made
before the list existed (`react filter`), and again at export; stats.json counts the drops."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from react_core.cli import main
from react_core.modeling import load_clip, save_full
from react_core.retrieval.embed import embed_corpus
from react_core.retrieval.retrieve import RetrievalError, blocked_rows, read_blocklist

MICRO = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def test_every_kind_of_entry_matches_its_column(tmp_path):
    urls = ["https://example.com/A.jpg", "https://example.com/b.jpg", "https://example.com/c.jpg",
            "https://example.com/d.jpg", "https://example.com/e.jpg", None, "https://example.com/g.jpg", "",
            "https://example.com/i.jpg"]
    table = pd.DataFrame({
        "id": [str(i) for i in range(9)],
        "uid": [None] * 6 + ["f" * 32, None, "e" * 32],
        "key": [f"k{i}" for i in range(9)],
        "url": urls,
        "sha256": [hashlib.sha256(f"image {i}".encode()).hexdigest() for i in range(9)],
        "md5": [hashlib.md5(f"image {i}".encode()).hexdigest() for i in range(9)],
    })
    (tmp_path / "list.txt").write_text("\n".join([
        "# a Re-LAION-style list",
        "1",  # an id
        "https://EXAMPLE.com/a.jpg",  # a URL (case does not matter)
        hashlib.sha256(urls[2].encode()).hexdigest().upper(),  # URL hashes: SHA-256, MD5, SHA-1
        hashlib.md5(urls[3].encode()).hexdigest(),
        "",
        hashlib.sha1(urls[4].encode()).hexdigest(),
        hashlib.sha256(b"image 5").hexdigest(),  # image hashes: SHA-256, MD5
        "f" * 32,  # a DataComp uid
        hashlib.md5(b"image 7").hexdigest(),
        "k9",  # names nothing here
    ]) + "\n")
    blocklist = read_blocklist(tmp_path / "list.txt")
    assert len(blocklist) == 9 and blocklist.files[0]["entries"] == 9
    mask, matched = blocked_rows(table, blocklist)
    assert mask.tolist() == [True] * 8 + [False]
    assert matched == {"id": 2, "image_hash": 2, "url": 1, "url_hash": 3}
    keyed = table.assign(key=["k9"] + [f"x{i}" for i in range(8)])  # LAION's key is an id too
    assert blocked_rows(keyed.iloc[[0, 8]].assign(url=None), blocklist)[0].tolist() == [True, False]


def test_list_files_parquet_and_text(tmp_path):
    pd.DataFrame({"url_hash": ["AB", "cd"], "note": ["x", "y"]}).to_parquet(tmp_path / "hashes.parquet")
    assert read_blocklist(tmp_path / "hashes.parquet").entries == {"AB", "cd"}
    pd.DataFrame({"a": [1], "b": [2]}).to_parquet(tmp_path / "unknown.parquet")
    with pytest.raises(RetrievalError, match="needs one of the columns"):
        read_blocklist(tmp_path / "unknown.parquet")
    (tmp_path / "bad.txt").write_bytes(b"ok\n\xff\xfe\n")
    from react_core.io import TextFileError

    with pytest.raises(TextFileError, match=r"bad.txt, line 2: not UTF-8"):
        read_blocklist(tmp_path / "bad.txt")


@pytest.fixture(scope="module")
def indexed(retrieval_corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("blocklist")
    weights = save_full(load_clip(MICRO).model, root / "micro.safetensors")
    embed_corpus(load_clip(MICRO, weights=weights), retrieval_corpus, root / "emb", workers=0, progress=False)
    assert main(["index", "--emb", str(root / "emb"), "--kind", "image", "--out", str(root / "image"), "--factory", "Flat"]) == 0
    return root


def retrieve(indexed, tiny_world, out, *extra):
    return main(["retrieve", "--index", str(indexed / "image"), "--emb", str(indexed / "emb"), "--classes",
                 str(tiny_world / "task" / "classes.txt"), "--templates", "simple", "--k", "10", "--no-dedup",
                 "--out", str(out), *extra])


def test_retrieval_counts_what_each_list_dropped(indexed, tiny_world, tmp_path):
    assert retrieve(indexed, tiny_world, tmp_path / "plain") == 0
    plain = pd.read_parquet(tmp_path / "plain" / "subset.parquet")
    listed = plain.drop_duplicates("id").iloc[:3]
    pd.DataFrame({"id": listed["id"].iloc[:2]}).to_parquet(tmp_path / "ids.parquet")
    (tmp_path / "images.txt").write_text(listed["sha256"].iloc[2] + "\n")
    assert retrieve(indexed, tiny_world, tmp_path / "listed", "--blocklist", str(tmp_path / "ids.parquet"),
                    "--blocklist", str(tmp_path / "images.txt")) == 0
    subset = pd.read_parquet(tmp_path / "listed" / "subset.parquet")
    stats = json.loads((tmp_path / "listed" / "stats.json").read_text())
    assert not set(listed["id"]) & set(subset["id"])
    assert stats["filters"]["blocklisted"] >= 3 and stats["blocklist"]["entries"] == 3
    assert stats["blocklist"]["matched"]["id"] >= 2 and stats["blocklist"]["matched"]["image_hash"] >= 1
    assert [f["sha256"] for f in stats["blocklist"]["files"]] == [
        hashlib.sha256((tmp_path / name).read_bytes()).hexdigest() for name in ("ids.parquet", "images.txt")]


def test_an_older_subset_is_refiltered_and_export_applies_the_lists_again(indexed, tiny_world, tmp_path, capsys):
    assert retrieve(indexed, tiny_world, tmp_path / "old", "--assign", "all") == 0
    old = pd.read_parquet(tmp_path / "old" / "subset.parquet")
    old_stats = json.loads((tmp_path / "old" / "stats.json").read_text())
    samples = old.drop_duplicates("id")["id"].tolist()
    published = tmp_path / "published.txt"
    published.write_text(f"{samples[0]}\n{samples[1]}\n")

    assert main(["filter", str(tmp_path / "old"), "--blocklist", str(published), "--out", str(tmp_path / "new")]) == 0
    new = pd.read_parquet(tmp_path / "new" / "subset.parquet")
    stats = json.loads((tmp_path / "new" / "stats.json").read_text())
    dropped = old["id"].isin(samples[:2])
    assert len(new) == len(old) - dropped.sum() and not new["id"].isin(samples[:2]).any()
    assert stats["filters"]["blocklisted"] == old_stats["filters"].get("blocklisted", 0) + dropped.sum()
    assert stats["rows"] == len(new) and sum(stats["per_class"].values()) == len(new)
    step = stats["refiltered"][-1]
    assert step["blocklist"]["dropped"] == dropped.sum() and step["blocklist"]["files"][0]["path"] == str(published)
    assert (new.groupby("class")["rank"].apply(lambda r: list(r) == list(range(len(r))))).all()
    assert pd.read_parquet(tmp_path / "old" / "subset.parquet").equals(old)  # the older subset is left as it was
    capsys.readouterr()
    assert main(["filter", str(tmp_path / "old"), "--blocklist", str(published), "--out", str(tmp_path / "new")]) == 2
    assert "exists already" in capsys.readouterr().err

    # the list grows after filtering; export reads it again, and applies one more given to it
    published.write_text(f"{samples[0]}\n{samples[1]}\n{samples[2]}\n")
    extra = tmp_path / "extra.txt"
    extra.write_text(f"# local list\n{samples[3]}\n")
    assert main(["export", str(tmp_path / "new"), "--out", str(tmp_path / "export"), "--blocklist", str(extra)]) == 0
    exported = pd.read_parquet(tmp_path / "export" / "manifest.parquet")
    counts = json.loads((tmp_path / "export" / "stats.json").read_text())
    assert not exported["id"].isin(samples[:4]).any()
    assert counts["blocklisted"] == 2 and counts["written"] == new["id"].nunique() - 2
    assert counts["blocklist"]["matched"]["id"] == 2 and counts["blocklist"]["entries"] == 4
    assert np.isin(samples[4:], exported["id"]).all()
