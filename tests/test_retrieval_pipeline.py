"""embed -> index -> retrieve -> export -> report on the synthetic world, and the filters."""
from __future__ import annotations

import glob
import html
import json

import numpy as np
import pandas as pd
import pytest

from react_core.cli import main
from react_core.modeling import load_clip, save_full
from react_core.retrieval.embed import EmbeddingFolder, embed_corpus

MICRO = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="module")
def indexed(retrieval_corpus, tmp_path_factory):
    """Embedded with a saved (so reproducible) micro CLIP; an image and a caption index."""
    root = tmp_path_factory.mktemp("retrieval")
    weights = save_full(load_clip(MICRO).model, root / "micro.safetensors")
    embed_corpus(load_clip(MICRO, weights=weights), retrieval_corpus, root / "emb", workers=0, progress=False)
    assert main(["index", "--emb", str(root / "emb"), "--kind", "image", "--out", str(root / "image")]) == 0
    assert main(["index", "--emb", str(root / "emb"), "--kind", "text", "--out", str(root / "text"),
                 "--factory", "IVF4,Flat", "--k", "10"]) == 0
    return root


def retrieve(indexed, tiny_world, out, *extra):
    argv = ["retrieve", "--index", str(indexed / "image"), "--index", str(indexed / "text"), "--emb", str(indexed / "emb"),
            "--classes", str(tiny_world / "task" / "classes.txt"), "--templates", "simple", "--k", "10",
            "--ground-truth", str(tiny_world / "corpus" / "manifest.parquet"), "--out", str(out), *extra]
    return main(argv)


def test_pipeline_produces_a_training_set(indexed, tiny_world, tmp_path):
    from react_core.data import ManifestPairs, WebDatasetPairs

    assert retrieve(indexed, tiny_world, tmp_path / "subset", "--mode", "both", "--assign", "all") == 0
    subset = pd.read_parquet(tmp_path / "subset" / "subset.parquet")
    stats = json.loads((tmp_path / "subset" / "stats.json").read_text())
    metadata = EmbeddingFolder(indexed / "emb").metadata()
    assert {"id", "class", "score", "rank", "query", "caption", "key", "shard"} <= set(subset.columns)
    assert len(subset) > 0 and subset["row"].between(0, len(metadata) - 1).all()
    assert (metadata.set_index("row").loc[subset["row"], "id"].to_numpy() == subset["id"].to_numpy()).all()
    removed = sum(v for k, v in stats["filters"].items() if k != "candidates")
    assert stats["filters"]["candidates"] - removed == len(subset)
    truth = pd.read_parquet(tiny_world / "corpus" / "manifest.parquet")
    corpus_classes = truth.set_index(truth["id"].astype(str)).loc[metadata["id"], "class"]
    names = [line for line in (tiny_world / "task" / "classes.txt").read_text().splitlines() if line]
    expected_random = np.mean([(corpus_classes == name).mean() for name in names])
    evaluation = stats["evaluation"]
    assert evaluation["random"]["precision"] == pytest.approx(expected_random)
    for mode in ("t2i", "t2t", "both"):
        assert 0 <= evaluation[mode]["pair_precision"] <= evaluation[mode]["precision"] <= 1

    assert main(["export", str(tmp_path / "subset"), "--to", "webdataset", "--out", str(tmp_path / "wds"), "--shard-size", "10"]) == 0
    shards = WebDatasetPairs(sorted(glob.glob(str(tmp_path / "wds" / "shards" / "*.tar"))))
    assert len(shards) == subset["id"].nunique()
    assert all(shards.load_image(i) is not None for i in range(len(shards)))
    captions = dict(zip(subset["id"], subset["caption"]))
    assert sorted(shards.ids) == sorted(captions) and all(captions[i] == c for i, c in zip(shards.ids, shards.captions))
    assert len(ManifestPairs(str(tmp_path / "wds" / "manifest.parquet"))) == len(shards)

    assert main(["export", str(tmp_path / "subset"), "--to", "folder", "--out", str(tmp_path / "folder")]) == 0
    pairs = ManifestPairs(str(tmp_path / "folder" / "manifest.parquet"))
    assert len(pairs) == len(shards) and pairs.load_image(0) is not None

    assert main(["report", str(tmp_path / "subset"), "--out", str(tmp_path / "report")]) == 0
    page = (tmp_path / "report" / "index.html").read_text()
    assert "precision@10" in page and (tmp_path / "report" / "scores.png").stat().st_size > 0
    assert page.count("<h3>") == subset["class"].nunique() and "precision 0." in page  # the world's ground truth
    shown = subset.groupby("class").head(8)
    assert len(list((tmp_path / "report" / "images").iterdir())) == len(shown)
    assert all(caption in page for caption in shown["caption"].map(lambda c: html.escape(c)))


def test_best_class_assignment_keeps_each_sample_once(indexed, tiny_world, tmp_path):
    assert retrieve(indexed, tiny_world, tmp_path, "--mode", "t2i", "--no-dedup") == 0
    subset = pd.read_parquet(tmp_path / "subset.parquet")
    assert subset["id"].is_unique
    assert (subset.groupby("class")["rank"].apply(lambda r: list(r) == list(range(len(r))))).all()


def test_blocklist_safety_hook_decontamination_and_cap(indexed, tiny_world, tmp_path, monkeypatch):
    assert retrieve(indexed, tiny_world, tmp_path / "plain", "--no-dedup") == 0
    plain = pd.read_parquet(tmp_path / "plain" / "subset.parquet")
    blocked = plain.iloc[0]
    (tmp_path / "block.txt").write_text(f"{blocked['sha256'].upper()}\n")
    hook = tmp_path / "hooks" / "unsafe_filter.py"
    hook.parent.mkdir()
    hook.write_text("def keep(rows):\n    return ~rows['caption'].str.contains('sale')\n")
    monkeypatch.syspath_prepend(str(hook.parent))
    assert retrieve(indexed, tiny_world, tmp_path / "filtered", "--no-dedup", "--blocklist", str(tmp_path / "block.txt"),
                    "--safety-filter", "unsafe_filter:keep", "--per-class", "2") == 0
    filtered = pd.read_parquet(tmp_path / "filtered" / "subset.parquet")
    stats = json.loads((tmp_path / "filtered" / "stats.json").read_text())
    assert blocked["id"] not in set(filtered["id"]) and stats["filters"]["blocklisted"] >= 1
    assert not filtered["caption"].str.contains("sale").any()
    # filters count candidate (class, sample) rows, before cross-class assignment
    assert stats["filters"]["safety_filter"] >= plain["caption"].str.contains("sale").sum() - ("sale" in blocked["caption"])
    assert filtered.groupby("class").size().max() <= 2

    assert retrieve(indexed, tiny_world, tmp_path / "clean", "--decontaminate", str(indexed / "emb")) == 0
    stats = json.loads((tmp_path / "clean" / "stats.json").read_text())
    assert stats["rows"] == 0 and stats["filters"]["decontaminated"] == stats["filters"]["candidates"]


def test_mode_without_its_index_is_a_clear_error(indexed, tiny_world, tmp_path, capsys):
    argv = ["retrieve", "--index", str(indexed / "image"), "--emb", str(indexed / "emb"), "--classes",
            str(tiny_world / "task" / "classes.txt"), "--mode", "t2t", "--out", str(tmp_path)]
    assert main(argv) == 2
    assert "needs an index of text embeddings" in capsys.readouterr().err


def test_precision_counts_ground_truth_classes():
    from react_core.retrieval.classes import ClassSpec
    from react_core.retrieval.retrieve import precision_at_k

    truth = pd.DataFrame({"class": ["a", "a", "b", "b", "b", "c"], "mismatched": [False, True, False, False, False, False]})
    pairs = pd.DataFrame({
        "class_index": [0, 0, 1, 1], "row": [0, 2, 2, 3], "found_by": ["t2i"] * 4,
        "score_t2i": [0.9, 0.8, 0.7, 0.6], "score_t2t": [np.nan] * 4,
    })
    result = precision_at_k(pairs, [ClassSpec("a", ["a"]), ClassSpec("b", ["b"])], truth, k=2)
    assert result["t2i"]["precision"] == pytest.approx((1 / 2 + 2 / 2) / 2)
    assert result["t2i"]["pair_precision"] == pytest.approx((1 / 2 + 2 / 2) / 2)
    assert result["random"]["precision"] == pytest.approx((2 / 6 + 3 / 6) / 2)
    assert "t2t" not in result


def test_fusion_ranks_by_both_modes_whatever_their_scale():
    """Text-image cosines are lower and narrower than text-text ones: their mean lets the text-text
    mode decide alone; reciprocal-rank fusion counts the two rankings alike."""
    from react_core.retrieval.retrieve import fuse

    pairs = pd.DataFrame({"class_index": [0, 0, 0, 1, 1],
                          "score_t2i": [0.30, 0.31, 0.29, 0.2, 0.1],  # prefers row 1
                          "score_t2t": [0.95, 0.70, 0.90, 0.5, 0.6]})  # prefers row 0, then 2
    mean, rrf = fuse(pairs, "mean"), fuse(pairs, "rrf")
    assert mean[:3].idxmax() == 0
    assert rrf[0] == pytest.approx(1 / 62 + 1 / 61) and rrf[1] == pytest.approx(1 / 61 + 1 / 63)
    assert rrf[0] > rrf[2] and rrf[3] == rrf[4]  # ranks within each class: a tie of one first and one second
    from react_core.retrieval.retrieve import RetrievalError

    with pytest.raises(RetrievalError, match="--fusion"):
        fuse(pairs, "max")


def test_min_z_fusion_ranks_pairs_both_modes_find_above_pairs_one_mode_finds():
    """Each mode fails on other pairs (t2i: a look-alike image beside an unrelated caption; t2t: a
    caption naming the class beside another image): a pair both modes score well comes first, and
    neither mode's top score alone, nor its cosine scale, lifts a pair above it."""
    from react_core.retrieval.retrieve import fuse

    background = {"t2i": (np.array([0.40, 0.10]), np.array([0.05, 0.05])),  # narrow text-image cosines
                  "t2t": (np.array([0.60, 0.10]), np.array([0.20, 0.05]))}  # wide text-text ones
    pairs = pd.DataFrame({"class_index": [0, 0, 0, 0, 1],
                          "score_t2i": [0.55, 0.70, 0.42, 0.45, 0.30],  # row 1: the best image, unrelated caption
                          "score_t2t": [0.95, 0.62, 0.99, 0.70, 0.30]})  # row 2: the best caption, unrelated image
    fused = fuse(pairs, "min-z", background)
    assert list(fused[:4].sort_values(ascending=False).index) == [0, 3, 2, 1]
    assert fused[0] == pytest.approx(min((0.55 - 0.40) / 0.05, (0.95 - 0.60) / 0.20))
    assert fused[4] == pytest.approx(4.0)  # each class against its own background
    rrf = fuse(pairs, "rrf")
    assert rrf[1] > rrf[3] and rrf[2] > rrf[3]  # what min-z fixes: one mode's first rank alone lifts a pair


def test_exemplar_fusion_follows_the_captions_where_the_image_query_is_noise():
    """A class the image tower cannot match to its text: its t2i scores are noise for the right
    pairs and high for look-alikes with half-matching captions. min-z then ranks the look-alikes
    first; the exemplar fusion judges images by their resemblance to the images of the best
    caption matches, so the class's own pairs come first. The image tower still separates the two
    groups of images from each other (the right ones lie along one direction, the look-alikes
    along another), which is all the exemplar asks of it."""
    from react_core.retrieval.retrieve import exemplar_z, fuse

    class Folder:  # the two calls exemplar_z makes of an EmbeddingFolder
        def __init__(self, images):
            self.images = images

        def __len__(self):
            return len(self.images)

        def gather(self, kind, rows):
            assert kind == "image"
            return self.images[np.asarray(rows)]

    rng = np.random.default_rng(0)
    d, n = 16, 600
    images = rng.standard_normal((n, d)).astype(np.float32)
    images[:20] = 5 * np.eye(d, dtype=np.float32)[0] + rng.standard_normal((20, d))  # the class's images
    images[20:40] = 5 * np.eye(d, dtype=np.float32)[1] + rng.standard_normal((20, d))  # look-alikes
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    right, wrong = np.arange(20), np.arange(20, 40)
    pairs = pd.DataFrame({
        "class_index": 0, "row": np.r_[right, wrong],
        "found_by": ["t2t"] * 15 + ["t2i,t2t"] * 5 + ["t2i"] * 20,
        "score_t2i": np.r_[0.40 + 0.02 * rng.standard_normal(20), 0.70 + 0.02 * rng.standard_normal(20)],  # noise vs look-alikes
        "score_t2t": np.r_[0.99 + 0.002 * rng.standard_normal(20), 0.97 + 0.002 * rng.standard_normal(20)],  # full vs half match
    })
    background = {"t2i": (np.array([0.40]), np.array([0.05])), "t2t": (np.array([0.60]), np.array([0.20]))}
    exemplar = exemplar_z(pairs, Folder(images), k=20)
    assert exemplar[:20].min() > exemplar[20:].max()  # the right images resemble the caption matches' images
    top = lambda scores: set(pairs["row"][scores.sort_values(ascending=False).index[:20]])
    assert top(fuse(pairs, "exemplar", background, exemplar)) == set(right)
    assert len(top(fuse(pairs, "min-z", background)) & set(right)) < 5  # what the exemplar fixes
    both_fine = fuse(pairs.assign(score_t2i=0.70), "exemplar", background, exemplar)  # an image tower that works
    assert top(both_fine) == set(right)
    no_captions = fuse(pairs, "exemplar", background, np.full(len(pairs), np.nan))  # no caption hits: min-z
    assert np.allclose(no_captions, fuse(pairs, "min-z", background))


def test_stats_report_precision_per_mode_per_class_and_random(indexed, tiny_world, tmp_path):
    assert retrieve(indexed, tiny_world, tmp_path, "--mode", "both", "--no-dedup") == 0
    evaluation = json.loads((tmp_path / "stats.json").read_text())["evaluation"]
    names = [line for line in (tiny_world / "task" / "classes.txt").read_text().splitlines() if line]
    for mode in ("t2i", "t2t", "both", "random"):
        per_class = evaluation[mode]["per_class"]
        assert sorted(per_class) == sorted(names)
        assert evaluation[mode]["precision"] == pytest.approx(np.mean(list(per_class.values())))
    subset = pd.read_parquet(tmp_path / "subset.parquet")
    assert (subset["score"] == subset["score_both"]).all()


def test_k_beyond_the_corpus_is_clamped_with_one_warning(indexed, tiny_world, tmp_path, caplog):
    """More hits per query than samples used to report a precision@k below random: --k is cut to the
    corpus size, and one warning says so (the default --k 100 exceeds a small corpus too)."""
    size = len(EmbeddingFolder(indexed / "emb"))
    with caplog.at_level("WARNING", logger="react"):
        assert retrieve(indexed, tiny_world, tmp_path, "--mode", "t2i", "--no-dedup", "--k", str(size + 1)) == 0
    warnings = [r.getMessage() for r in caplog.records if "--k" in r.getMessage()]
    assert warnings == [f"--k {size + 1} is more hits per query than the corpus has samples ({size}): using --k {size}"]
    stats = json.loads((tmp_path / "stats.json").read_text())
    evaluation = stats["evaluation"]
    assert stats["options"]["k"] == evaluation["k"] == size
    assert evaluation["t2i"]["precision"] == pytest.approx(evaluation["random"]["precision"])  # the whole corpus


class _Vectors:
    """The two things the automatic near-duplicate threshold reads of an embedding folder."""

    def __init__(self, vectors):
        self.vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    def __len__(self):
        return len(self.vectors)

    def gather(self, kind, rows):
        return self.vectors[rows]


def test_automatic_dedup_threshold_follows_how_close_distinct_images_lie():
    """A small model puts distinct images at cosine > 0.99, where a fixed 0.95 calls them all
    duplicates; the automatic threshold keeps them and still drops a real duplicate."""
    from react_core.retrieval.retrieve import DEDUP_FLOOR, _near_duplicates, automatic_dedup_threshold

    rng = np.random.default_rng(0)
    crowded = np.ones((2000, 64)) + 0.01 * rng.standard_normal((2000, 64))  # all in a narrow cone
    crowded[1999] = crowded[0] + 1e-5  # one true near-duplicate
    folder = _Vectors(crowded)
    threshold = automatic_dedup_threshold(folder)
    order = np.arange(len(folder))
    assert threshold > 0.99
    assert _near_duplicates(folder.vectors, order, DEDUP_FLOOR).mean() > 0.9
    dropped = _near_duplicates(folder.vectors, order, threshold)
    assert dropped[1999] and dropped.mean() < 0.05
    assert automatic_dedup_threshold(_Vectors(rng.standard_normal((2000, 64)))) == DEDUP_FLOOR  # spread out: the floor


def test_near_duplicate_removal_that_empties_the_subset_warns(indexed, tiny_world, tmp_path, caplog):
    """A threshold every pair of images meets keeps one sample and says the threshold is to blame."""
    with caplog.at_level("WARNING", logger="react"):
        assert retrieve(indexed, tiny_world, tmp_path / "all_alike", "--dedup-threshold", "-1") == 0
    stats = json.loads((tmp_path / "all_alike" / "stats.json").read_text())
    assert stats["unique_samples"] == 1
    assert any("--no-dedup" in record.getMessage() for record in caplog.records)


def test_default_near_duplicate_removal_keeps_distinct_images_of_a_small_clip(indexed, tiny_world, tmp_path):
    """The README's example with defaults: this micro CLIP, like the demo's base, puts distinct
    images within cosine 0.95 of each other, where a fixed 0.95 kept a handful of samples."""
    stats = {}
    for name, extra in (("auto", []), ("fixed", ["--dedup-threshold", "0.95"])):
        assert retrieve(indexed, tiny_world, tmp_path / name, "--mode", "both", *extra) == 0
        stats[name] = json.loads((tmp_path / name / "stats.json").read_text())
    auto, fixed = stats["auto"], stats["fixed"]
    assert fixed["filters"]["near_duplicates"] > 0.5 * (fixed["unique_samples"] + fixed["filters"]["near_duplicates"])
    assert auto["dedup_threshold"] > 0.95 and auto["filters"]["near_duplicates"] <= 0.05 * auto["unique_samples"]
    assert auto["unique_samples"] > 5 * fixed["unique_samples"]
