"""Per-class retrieval: class-name queries -> FAISS hits -> an exact re-score -> filters -> subset.

Candidates are every hit of every query of a class (k per query, as the official code does),
from the image index (t2i), the caption index (t2t) or both. Every candidate is then re-scored
exactly against all of its class's queries (max over queries) from the stored embeddings, so
scores do not depend on the index's approximation. `both` ranks the union of the two modes' hits
by a fusion of their scores (`fuse`; text-image and text-text cosines differ in scale, so each is
measured against the same class's scores of random corpus samples); the default requires a
pair's caption to match the class and its image to look like the images whose captions match it
best (`exemplar_z`). Then, in this order,
each filter drops rows and is counted in stats.json: score threshold, blocklist, safety hook,
decontamination, cross-class assignment, near-duplicates (at a threshold scaled to how close
distinct corpus images lie), per-class cap / balance.

Blocklists (Re-LAION-style safety lists: sample ids, URLs, hashes of URLs or of image bytes, as
files) apply here, again at export, and to a subset made before a list existed (`refilter`, the
`react filter` command), so a list published later never needs a new retrieval.

FAISS marks "fewer than k found" with id -1: such hits are dropped, never mapped to a sample.
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import logging
import operator
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Callable

import numpy as np

from react_core.errors import ReactError
from react_core.io import atomic_path, atomic_write_json, file_sha256, output_errors, read_json, read_text
from react_core.retrieval.classes import ClassSpec, Queries
from react_core.retrieval.embed import EmbeddingFolder
from react_core.retrieval.index import search

MODES = {"t2i": ("image",), "t2t": ("text",), "both": ("image", "text")}
MODE_OF_KIND = {"image": "t2i", "text": "t2t"}
SUBSET_FILE = "subset.parquet"
STATS_FILE = "stats.json"
# metadata columns carried into the subset: ours; LAION's md5 (of the image) and similarity (CLIP image-caption);
# DataComp's uid, CLIP scores and face boxes (img2dataset blurs them when downloading)
SUBSET_METADATA = ("id", "caption", "path", "url", "key", "shard", "sha256", "md5", "similarity", "uid",
                   "clip_b32_similarity_score", "clip_l14_similarity_score", "face_bboxes")

logger = logging.getLogger("react")
NEAR_DUPLICATE_WARNING = 0.5  # share of samples whose removal suggests the threshold, not the data, is wrong
FUSIONS = ("exemplar", "min-z", "rrf", "mean")
RRF_K = 60  # reciprocal-rank fusion's constant (Cormack et al. 2009)
BACKGROUND_SAMPLES = 5000  # random corpus samples that calibrate fusion and the near-duplicate threshold
DEDUP_FLOOR = 0.95  # the automatic near-duplicate threshold never goes below this cosine
DEDUP_QUANTILE = 0.99  # ... and is this quantile of distinct random samples' nearest-neighbour cosines


class RetrievalError(ReactError):
    """Bad retrieval input; names the option or file."""


@dataclass
class RetrievalOptions:
    k: int = 100
    mode: str = "t2i"
    threshold: float | None = None
    assign: str = "best"
    dedup_threshold: float | str | None = "auto"
    per_class: int | None = None
    balance: bool = False
    decontaminate_threshold: float = 0.9
    blocklist: Blocklist | None = None
    safety_filter: str | None = None
    fusion: str = "exemplar"

    def check(self) -> None:
        if self.mode not in MODES:
            raise RetrievalError(f"--mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.assign not in ("best", "all"):
            raise RetrievalError(f"--assign must be best or all, not {self.assign!r}")
        if self.fusion not in FUSIONS:
            raise RetrievalError(f"--fusion must be one of {', '.join(FUSIONS)}, not {self.fusion!r}")
        if self.k < 1:
            raise RetrievalError(f"--k must be >= 1, got {self.k}")
        if isinstance(self.dedup_threshold, str) and self.dedup_threshold != "auto":
            raise RetrievalError(f"--dedup-threshold must be a cosine or 'auto', not {self.dedup_threshold!r}")


def load_safety_filter(spec: str) -> Callable:
    """`package.module:function`, called with the candidate rows (a DataFrame with id, caption,
    url/path, sha256, class, score) and returning a boolean keep-mask of the same length."""
    module_name, _, function = spec.partition(":")
    if not function:
        raise RetrievalError(f"--safety-filter {spec!r}: expected 'package.module:function'")
    try:
        return getattr(importlib.import_module(module_name), function)
    except (ImportError, AttributeError) as error:
        raise RetrievalError(f"--safety-filter {spec!r}: {error}") from None


# columns of a parquet blocklist, in the order they are looked for (else its only column)
BLOCKLIST_COLUMNS = ("id", "uid", "key", "url", "url_hash", "hash", "sha256", "md5", "sha1")
ID_COLUMNS = ("id", "uid", "key")
IMAGE_HASH_COLUMNS = ("sha256", "md5")  # LAION's metadata has the MD5 of the image bytes, ours and DataComp's the SHA-256


@dataclass(frozen=True)
class Blocklist:
    """The entries of one or more safety lists and the files they came from (path, sha256, entries)."""

    entries: frozenset[str]
    files: tuple[dict, ...] = ()

    def __len__(self) -> int:
        return len(self.entries)

    def __or__(self, other: "Blocklist") -> "Blocklist":
        return Blocklist(self.entries | other.entries, self.files + other.files)

    def describe(self) -> dict:
        """What stats.json records of the lists: files (path, sha256, entries) and the total."""
        return {"files": list(self.files), "entries": len(self.entries)}


def read_blocklist(path: str | Path) -> Blocklist:
    """A safety list: a text file, one entry per line (blank lines and lines starting with `#`
    ignored), or a parquet file (its first column among BLOCKLIST_COLUMNS, else its only one).
    An entry is a sample id (`id`, DataComp's `uid`, LAION's `key`), a URL, the SHA-256, MD5 or
    SHA-1 hex digest of a URL, or an image's hash as the corpus stores it (its `sha256` or `md5`
    column); digests match in either case."""
    path = Path(path)
    if not path.is_file():
        raise RetrievalError(f"blocklist not found: {path}")
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        try:
            names = pq.ParquetFile(path).schema_arrow.names
            column = next((c for c in BLOCKLIST_COLUMNS if c in names), names[0] if len(names) == 1 else None)
            if column is None:
                raise RetrievalError(f"{path}: a blocklist needs one of the columns {', '.join(BLOCKLIST_COLUMNS)} "
                                     f"(it has {', '.join(names)})")
            values = pq.read_table(path, columns=[column]).column(0).to_pylist()
        except (OSError, ValueError) as error:
            if isinstance(error, RetrievalError):
                raise
            raise RetrievalError(f"{path}: not a readable parquet file ({str(error).splitlines()[0]})") from None
        entries = {str(v).strip() for v in values if v is not None and str(v).strip()}
    else:
        lines = (line.strip() for line in read_text(path).splitlines())
        entries = {line for line in lines if line and not line.startswith("#")}
    return Blocklist(frozenset(entries), ({"path": str(path.resolve()), "sha256": file_sha256(path), "entries": len(entries)},))


def read_blocklists(paths: list[str | Path]) -> Blocklist | None:
    """The union of the lists in `paths`; None when there are none."""
    lists = [read_blocklist(path) for path in paths]
    return functools.reduce(operator.or_, lists) if lists else None


def _url_digests(url: str) -> tuple[str, str, str]:
    data = url.encode("utf-8")
    return hashlib.sha256(data).hexdigest(), hashlib.md5(data).hexdigest(), hashlib.sha1(data).hexdigest()


def blocked_rows(table, blocklist: Blocklist) -> tuple[np.ndarray, dict]:
    """Rows of `table` that a list names, and how many rows each kind of entry matched (a row can
    match several kinds): `id` (its id, uid or key), `url`, `url_hash` (SHA-256, MD5 or SHA-1 of
    the URL) and `image_hash` (its sha256 or md5 column)."""
    lowered = {entry.lower() for entry in blocklist.entries}
    matched = {}
    ids = np.zeros(len(table), dtype=bool)
    for column in ID_COLUMNS:
        if column in table.columns:
            ids |= table[column].astype("string").isin(blocklist.entries).fillna(False).to_numpy(dtype=bool)
    matched["id"] = ids
    images = np.zeros(len(table), dtype=bool)
    for column in IMAGE_HASH_COLUMNS:
        if column in table.columns:
            images |= table[column].astype("string").str.lower().isin(lowered).fillna(False).to_numpy(dtype=bool)
    matched["image_hash"] = images
    urls = table["url"].astype("string").fillna("") if "url" in table.columns else None
    matched["url"] = urls.str.lower().isin(lowered).to_numpy(dtype=bool) if urls is not None else np.zeros(len(table), bool)
    if urls is not None:
        unique = [u for u in urls.unique() if u]
        hit = {u for u in unique if lowered.intersection(_url_digests(u))}
        matched["url_hash"] = urls.isin(hit).to_numpy(dtype=bool)
    else:
        matched["url_hash"] = np.zeros(len(table), dtype=bool)
    mask = np.logical_or.reduce(list(matched.values()))
    return mask, {kind: int(hits.sum()) for kind, hits in matched.items()}


def safety_mask(table, spec: str) -> np.ndarray:
    """The rows a `--safety-filter` hook keeps (a boolean mask, one flag per row)."""
    keep = np.asarray(load_safety_filter(spec)(table.copy()), dtype=bool)
    if keep.shape != (len(table),):
        raise RetrievalError(f"--safety-filter {spec} returned {keep.shape}, not one flag per row")
    return keep


def candidates(indexes: dict, queries: Queries, k: int, ntotal: int):
    """Union of the k hits of every query in every index: (class, row, mode, query) rows."""
    import pandas as pd

    frames = []
    owners = np.asarray(queries.classes)
    for kind, index in indexes.items():
        scores, rows = search(index, queries.embeddings, min(k, ntotal), ntotal)
        query_of = np.repeat(np.arange(len(owners)), rows.shape[1])
        flat_rows = rows.reshape(-1)
        valid = flat_rows >= 0
        frames.append(pd.DataFrame({
            "class_index": owners[query_of[valid]],
            "row": flat_rows[valid],
            "ann_score": scores.reshape(-1)[valid],
            "query_index": query_of[valid],
            "mode": MODE_OF_KIND[kind],
        }))
    return pd.concat(frames, ignore_index=True)


def rescore(table, folder: EmbeddingFolder, queries: Queries, kinds: tuple[str, ...]):
    """Exact per-class scores of each unique (class, row): max over the class's queries, per kind;
    `query` is the query text giving the best score of the first kind."""
    found_by = table.groupby(["class_index", "row"])["mode"].agg(lambda m: ",".join(sorted(set(m))))
    pairs = found_by.rename("found_by").reset_index()
    owners = np.asarray(queries.classes)
    for kind in ("image", "text"):
        pairs[f"score_{MODE_OF_KIND[kind]}"] = np.nan
    pairs["query"] = ""
    for class_index, group in pairs.groupby("class_index"):
        own = np.flatnonzero(owners == class_index)
        q = queries.embeddings[own]
        for position, kind in enumerate(kinds):
            similarity = folder.gather(kind, group["row"].to_numpy()) @ q.T
            pairs.loc[group.index, f"score_{MODE_OF_KIND[kind]}"] = similarity.max(axis=1)
            if position == 0:
                pairs.loc[group.index, "query"] = [queries.texts[own[i]] for i in similarity.argmax(axis=1)]
    return pairs


def _near_duplicates(vectors: np.ndarray, order: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean mask of rows to drop: in `order` (best first), a row whose image embedding has
    cosine >= threshold with an earlier kept row is a near-duplicate. Exact below 50k rows, an
    IVF approximation (nprobe 8) above."""
    import faiss

    n, d = vectors.shape
    if n < 2:
        return np.zeros(n, dtype=bool)
    if n < 50_000:
        index = faiss.IndexFlatIP(d)
    else:
        nlist = int(4 * np.sqrt(n))
        index = faiss.index_factory(d, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
        index.train(vectors[np.random.default_rng(0).choice(n, min(n, 50 * nlist), replace=False)])
        faiss.extract_index_ivf(index).nprobe = 8
    index.add(vectors)
    lims, _, neighbours = index.range_search(vectors, threshold)
    dropped = np.zeros(n, dtype=bool)
    for i in order:
        if dropped[i]:
            continue
        others = neighbours[lims[i]:lims[i + 1]]
        dropped[others[others != i]] = True
    return dropped


def automatic_dedup_threshold(folder: EmbeddingFolder) -> float:
    """A cosine above which two images count as near-duplicates, scaled to how close this model puts
    distinct images: the DEDUP_QUANTILE of random corpus samples' nearest-neighbour cosines among
    themselves, never below DEDUP_FLOOR. A fixed 0.95 suits CLIPs that spread images out; a small or
    domain-mismatched model maps distinct images to cosines above 0.99, and 0.95 would call them all
    duplicates."""
    import faiss

    vectors = np.ascontiguousarray(folder.gather("image", background_rows(len(folder))), dtype=np.float32)
    if len(vectors) < 2:
        return DEDUP_FLOOR
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    scores, _ = index.search(vectors, 2)
    return max(DEDUP_FLOOR, float(np.quantile(scores[:, 1], DEDUP_QUANTILE)))


def _decontaminated(vectors: np.ndarray, evaluation: np.ndarray, threshold: float) -> np.ndarray:
    """Rows whose image is a near-duplicate (cosine >= threshold) of an evaluation image."""
    import faiss

    index = faiss.IndexFlatIP(evaluation.shape[1])
    index.add(np.ascontiguousarray(evaluation, dtype=np.float32))
    scores, _ = index.search(np.ascontiguousarray(vectors, dtype=np.float32), 1)
    return scores[:, 0] >= threshold


def background_rows(ntotal: int) -> np.ndarray:
    """The random corpus rows (seeded, so reruns agree) that stand for "unrelated" samples."""
    return np.sort(np.random.default_rng(0).choice(ntotal, min(ntotal, BACKGROUND_SAMPLES), replace=False))


def background_scores(folder: EmbeddingFolder, queries: Queries, kinds: tuple[str, ...], n_classes: int) -> dict:
    """Per mode, the mean and standard deviation over random corpus samples of each class's score
    (max over its queries): what a score of that class and mode is when the sample is unrelated."""
    rows = background_rows(len(folder))
    owners = np.asarray(queries.classes)
    result = {}
    for kind in kinds:
        vectors = folder.gather(kind, rows)
        mean, std = np.zeros(n_classes), np.ones(n_classes)
        for class_index in np.unique(owners):
            scores = (vectors @ queries.embeddings[owners == class_index].T).max(axis=1)
            mean[class_index], std[class_index] = scores.mean(), max(float(scores.std()), 1e-6)
        result[MODE_OF_KIND[kind]] = (mean, std)
    return result


def exemplar_z(pairs, folder: EmbeddingFolder, k: int) -> np.ndarray:
    """Per candidate (class, row): the cosine of its image with its class's visual exemplar, in
    standard deviations above random corpus images' cosines with that exemplar. The exemplar is the
    normalised mean image of the class's k best caption matches (t2t hits by exact score): what
    images captioned with the class's name look like. It asks the image tower only which images
    resemble each other, not to match an image to the class's text, which is what a small or
    domain-mismatched tower gets wrong (the demo's base cannot tell `purple ring` from the text,
    t2i precision 1 %, yet puts purple rings' images together). A class without caption hits keeps
    the text-image z (min-z's image side)."""
    background = np.ascontiguousarray(folder.gather("image", background_rows(len(folder))), dtype=np.float32)
    z = np.full(len(pairs), np.nan)
    by_caption = pairs["found_by"].str.contains("t2t").to_numpy()
    for class_index, group in pairs.groupby("class_index"):
        exemplars = group[by_caption[pairs.index.get_indexer(group.index)]].nlargest(k, "score_t2t")["row"].to_numpy()
        if not len(exemplars):
            continue
        centre = folder.gather("image", exemplars).astype(np.float32).mean(axis=0)
        centre /= max(float(np.linalg.norm(centre)), 1e-12)
        reference = background @ centre
        cosines = folder.gather("image", group["row"].to_numpy()).astype(np.float32) @ centre
        z[pairs.index.get_indexer(group.index)] = (cosines - reference.mean()) / max(float(reference.std()), 1e-6)
    return z


def _z(pairs, mode: str, background: dict) -> np.ndarray:
    classes = pairs["class_index"].to_numpy()
    return (pairs[f"score_{mode}"].to_numpy() - background[mode][0][classes]) / background[mode][1][classes]


def fuse(pairs, method: str, background: dict | None = None, exemplar: np.ndarray | None = None):
    """The `both` score of each (class, row) from its exact t2i and t2t scores:

    exemplar  the lower of two standard scores: the caption's (t2t, z above the class's scores of
              random corpus samples, `background`) and the image's resemblance to the images whose
              captions match the class best (`exemplar`, from `exemplar_z`; NaN: the t2i z). A pair
              counts as far as its caption names the class and its image looks like that class's.
    min-z     the lower of the t2i and t2t z: a pair counts as far as both its image and its caption
              match the class's queries (the two modes fail on different pairs: t2i on images that
              look like the class beside unrelated captions, t2t on captions naming the class beside
              other images); it fails where the image tower cannot match the class's text at all;
    rrf       reciprocal-rank fusion: 1/(60 + rank) summed over the two modes, each candidate ranked
              within its class by each mode's score (one mode's top rank alone lifts a pair);
    mean      the mean of the two cosines (text-image cosines are lower and narrower than text-text ones).

    Measured on the demo world (calibrated base, precision@200 / @600 against ground truth):
    exemplar 98.6 / 78.1 %, min-z 96.0 / 72.3 %, mean 84.8 / 67.6 %, rrf 60.0 / 53.8 %;
    t2t alone 83.3 / 76.2 %, t2i alone 27.9 / 24.0 %."""
    import pandas as pd

    columns = ["score_t2i", "score_t2t"]
    if method == "mean":
        return pairs[columns].mean(axis=1)
    if method == "rrf":
        ranks = pairs.groupby("class_index")[columns].rank(ascending=False, method="min")
        return (1.0 / (RRF_K + ranks)).sum(axis=1)
    if method == "min-z":
        return pd.Series(np.minimum(_z(pairs, "t2i", background), _z(pairs, "t2t", background)), index=pairs.index)
    if method == "exemplar":
        image = _z(pairs, "t2i", background) if exemplar is None else np.where(
            np.isnan(exemplar), _z(pairs, "t2i", background), exemplar)
        return pd.Series(np.minimum(image, _z(pairs, "t2t", background)), index=pairs.index)
    raise RetrievalError(f"--fusion must be one of {', '.join(FUSIONS)}, not {method!r}")


def precision_at_k(pairs, classes: list[ClassSpec], truth, k: int) -> dict:
    """Per mode: mean over classes of the share of the top-k (by that mode's score, `score_{mode}`,
    among that mode's hits; for `both` among all candidates) whose image's ground-truth class is the
    query class, overall and per class; plus the random baseline's expected precision (the class's
    share of the corpus), and the share of correct hits whose caption also matches (not `mismatched`)."""
    result = {}
    names = np.array([c.name for c in classes])
    truth_class = truth["class"].to_numpy()
    mismatched = truth["mismatched"].to_numpy() if "mismatched" in truth.columns else np.zeros(len(truth), dtype=bool)
    for mode in ("t2i", "t2t", "both"):
        column = f"score_{mode}"
        if column not in pairs.columns or not pairs[column].notna().any():
            continue
        found = pairs if mode == "both" else pairs[pairs["found_by"].str.contains(mode)]
        per_class = dict.fromkeys(names.tolist(), 0.0)
        pair_correct = []
        for class_index, group in found.groupby("class_index"):
            top = group.nlargest(k, column)
            rows = top["row"].to_numpy()
            correct = truth_class[rows] == names[class_index]
            per_class[names[class_index]] = float(correct.sum() / k)
            pair_correct.append((correct & ~mismatched[rows]).sum() / k)
        result[mode] = {
            "precision": float(np.sum(list(per_class.values())) / len(classes)),
            "pair_precision": float(np.sum(pair_correct) / len(classes)),
            "classes_without_hits": int(len(classes) - found["class_index"].nunique()),
            "per_class": per_class,
        }
    share = {c.name: float((truth_class == c.name).mean()) for c in classes}
    result["random"] = {"precision": float(np.mean(list(share.values()))),
                        "pair_precision": float(np.mean([((truth_class == c.name) & ~mismatched).mean() for c in classes])),
                        "per_class": share}
    result["k"] = k
    return result


def aligned_truth(metadata, truth):
    """Ground truth (`id`, `class`, optional `mismatched`) in the folder's row order."""
    if not {"id", "class"} <= set(truth.columns):
        raise RetrievalError(f"ground truth needs 'id' and 'class' columns, has {', '.join(truth.columns)}")
    columns = [c for c in ("id", "class", "mismatched") if c in truth.columns]
    truth = truth[columns].assign(id=truth["id"].astype(str)).drop_duplicates("id")
    aligned = metadata[["id", "row"]].assign(id=metadata["id"].astype(str)).merge(truth, on="id", how="left")
    aligned = aligned.sort_values("row").reset_index(drop=True)
    unknown = aligned["class"].isna()
    if unknown.any():
        raise RetrievalError(f"ground truth has no class for {int(unknown.sum())} samples (e.g. id {aligned['id'][unknown].iloc[0]!r})")
    if "mismatched" in aligned.columns:
        aligned["mismatched"] = aligned["mismatched"].fillna(False).astype(bool)
    return aligned


def retrieve(
    folder: EmbeddingFolder,
    indexes: dict,
    queries: Queries,
    classes: list[ClassSpec],
    options: RetrievalOptions,
    out: str | Path,
    *,
    evaluation_embeddings: np.ndarray | None = None,
    ground_truth=None,
    settings: dict | None = None,
) -> dict:
    """Retrieve the pairs of each class from indexed embeddings: the work of `react retrieve`.

    Args:
        folder: the corpus's embeddings (`EmbeddingFolder`).
        indexes: `{"image": index, "text": index}` as `read_index` returns them; the mode says
            which it needs.
        queries: the class x template text queries (`build_queries`).
        classes: the classes the queries were built from (`load_classes`).
        options: k, mode, fusion, thresholds, de-duplication, blocklists (`RetrievalOptions`).
        out: the subset folder.
        evaluation_embeddings: image embeddings of an evaluation set; corpus images closer than
            `options.decontaminate_threshold` to any of them are dropped.
        ground_truth: a table with `id` and `class` columns (`mismatched` optional); when given, precision@k is measured
            against it and against random pairs.
        settings: more entries for stats.json (what the subset was made from).

    Returns:
        The statistics also written to `out/stats.json`: rows, unique samples, rows per class,
        empty classes, what each filter removed, the de-duplication threshold and the evaluation.
    """
    options.check()
    kinds = MODES[options.mode]
    missing = [kind for kind in kinds if kind not in indexes]
    if missing:
        raise RetrievalError(f"--mode {options.mode} needs an index of {' and '.join(missing)} embeddings (--index)")
    ntotal = len(folder)
    if options.k > ntotal:  # precision@k would count hits that cannot exist, and fall below random
        logger.warning("--k %d is more hits per query than the corpus has samples (%d): using --k %d",
                       options.k, ntotal, ntotal)
        options = replace(options, k=ntotal)
    found = candidates(indexes, queries, options.k, ntotal)
    # every available kind is scored (the mode's first, for `query`), so stats can compare modes
    scored = kinds + tuple(kind for kind in indexes if kind not in kinds)
    pairs = rescore(found, folder, queries, scored)
    if len(scored) == 2:
        background = background_scores(folder, queries, scored, len(classes)) \
            if options.fusion in ("min-z", "exemplar") else None
        exemplar = exemplar_z(pairs, folder, options.k) if options.fusion == "exemplar" else None
        pairs["score_both"] = fuse(pairs, options.fusion, background, exemplar)
    pairs["score"] = pairs[f"score_{options.mode}"]
    metadata = folder.metadata(list(SUBSET_METADATA))
    evaluation = None
    if ground_truth is not None:
        evaluation = precision_at_k(pairs, classes, aligned_truth(metadata, ground_truth), options.k)
        if "both" in evaluation:
            evaluation["both"]["fusion"] = options.fusion
    if options.mode != "both":
        pairs = pairs[pairs["found_by"].str.contains(options.mode)]
    keep_columns = [c for c in SUBSET_METADATA if c in metadata.columns]
    pairs = pairs.merge(metadata[keep_columns + ["row"]], on="row", how="left")
    pairs["class"] = [classes[i].name for i in pairs["class_index"]]
    counts = {"candidates": int(len(pairs))}

    def drop(mask, name):
        nonlocal pairs
        counts[name] = int(mask.sum())
        pairs = pairs[~mask].reset_index(drop=True)

    if options.threshold is not None:
        drop((pairs["score"] < options.threshold).to_numpy(), "below_threshold")
    blocklist = None
    if options.blocklist is not None:
        mask, matched = blocked_rows(pairs, options.blocklist)
        blocklist = options.blocklist.describe() | {"matched": matched}
        drop(mask, "blocklisted")
    if options.safety_filter:
        drop(~safety_mask(pairs, options.safety_filter), "safety_filter")
    if evaluation_embeddings is not None and len(pairs):
        unique_rows = np.unique(pairs["row"].to_numpy())
        contaminated = unique_rows[_decontaminated(folder.gather("image", unique_rows), evaluation_embeddings,
                                                   options.decontaminate_threshold)]
        drop(pairs["row"].isin(contaminated).to_numpy(), "decontaminated")
    if options.assign == "best":
        best = pairs.sort_values(["score", "class_index"], ascending=[False, True]).drop_duplicates("row")
        drop(~pairs.index.isin(best.index), "other_class_better")
    dedup_threshold = options.dedup_threshold
    if dedup_threshold == "auto":
        dedup_threshold = automatic_dedup_threshold(folder)
    if dedup_threshold is not None and len(pairs):
        by_row = pairs.groupby("row")["score"].max().sort_values(ascending=False)
        unique_rows = by_row.index.to_numpy()
        duplicate = _near_duplicates(folder.gather("image", unique_rows), np.arange(len(unique_rows)),
                                     dedup_threshold)
        drop(pairs["row"].isin(unique_rows[duplicate]).to_numpy(), "near_duplicates")
        if duplicate.mean() > NEAR_DUPLICATE_WARNING:
            logger.warning(
                "near-duplicate removal at image cosine %.4f dropped %d of %d samples: this model's image "
                "embeddings lie too close together for that threshold (weak or domain-mismatched models do); "
                "raise --dedup-threshold, leave it 'auto', or pass --no-dedup", dedup_threshold, int(duplicate.sum()),
                len(unique_rows),
            )
    pairs = pairs.sort_values(["class_index", "score"], ascending=[True, False]).reset_index(drop=True)
    pairs["rank"] = pairs.groupby("class_index").cumcount()
    cap = options.per_class
    if options.balance and len(pairs):
        sizes = pairs.groupby("class_index").size()
        cap = min(cap or sizes.min(), int(sizes.min()))
    if cap is not None:
        drop((pairs["rank"] >= cap).to_numpy(), "over_class_cap")
    ordered = ["id", "class", "score", "rank", "query", "caption"] + [c for c in ("path", "url", "key", "shard") if c in pairs.columns]
    extra = [c for c in ("score_t2i", "score_t2t", "score_both", "found_by", *SUBSET_METADATA, "row")
             if c in pairs.columns and c not in ordered]
    subset = pairs[ordered + list(dict.fromkeys(extra))].copy()
    subset["rank"] = subset["rank"].astype("int64")
    options_recorded = {f.name: getattr(options, f.name) for f in fields(options)}
    stats = {
        "mode": options.mode,
        "options": options_recorded | {"blocklist": len(options.blocklist) if options.blocklist is not None else 0},
        "queries": len(queries.texts),
        "corpus": ntotal,
        "filters": counts,
        "blocklist": blocklist,
        "dedup_threshold": dedup_threshold,
        **subset_counts(subset, [c.name for c in classes]),
        "evaluation": evaluation,
        **(settings or {}),
    }
    write_subset(out, subset, stats)
    return stats


def subset_counts(subset, class_names: list[str]) -> dict:
    """The sizes stats.json records of a subset: rows, unique samples, per class, empty classes."""
    per_class = subset.groupby("class").size().reindex(class_names, fill_value=0)
    return {
        "rows": int(len(subset)),
        "unique_samples": int(subset["id"].nunique()),
        "per_class": {str(k): int(v) for k, v in per_class.items()},
        "empty_classes": [str(k) for k, v in per_class.items() if v == 0],
    }


def write_subset(out: str | Path, subset, stats: dict) -> None:
    """SUBSETDIR/subset.parquet, then stats.json, each written whole or not at all; an unwritable
    folder or a full disk is an `OutputError` naming the file."""
    out = Path(out)
    with output_errors(out):
        out.mkdir(parents=True, exist_ok=True)
    with output_errors(out / SUBSET_FILE), atomic_path(out / SUBSET_FILE) as tmp:
        subset.to_parquet(tmp, index=False)
    with output_errors(out / STATS_FILE):
        atomic_write_json(out / STATS_FILE, stats)


def refilter(subset_dir: str | Path, out: str | Path, blocklist: Blocklist | None = None,
             safety_filter: str | None = None) -> dict:
    """Apply blocklists (and a safety hook) to a subset made earlier, without retrieving again:
    writes OUT/subset.parquet and OUT/stats.json (the subset's stats with the drops added to its
    filter counts, ranks within each class renumbered, and a `refiltered` entry); returns them.

    Args:
        subset_dir: the output folder of `react retrieve` (or of an earlier refilter).
        out: a new folder; one holding a subset already is refused.
        blocklist: the lists to apply (see `read_blocklist`).
        safety_filter: a `module:function` hook as `react retrieve --safety-filter` takes.

    Returns:
        the new stats.
    """
    if blocklist is None and not safety_filter:
        raise RetrievalError("nothing to apply: give --blocklist FILE or --safety-filter MODULE:FUNCTION")
    if (Path(out) / SUBSET_FILE).exists():
        raise RetrievalError(f"{Path(out) / SUBSET_FILE} exists already: give a new --out (the subset is never overwritten)")
    subset, stats = read_subset(subset_dir), read_stats(subset_dir)
    counts = dict(stats.get("filters") or {})
    applied: dict = {"from": str(Path(subset_dir).resolve()), "rows_before": int(len(subset))}
    if blocklist is not None:
        mask, matched = blocked_rows(subset, blocklist)
        applied["blocklist"] = blocklist.describe() | {"matched": matched, "dropped": int(mask.sum())}
        counts["blocklisted"] = counts.get("blocklisted", 0) + int(mask.sum())
        subset = subset[~mask]
    if safety_filter:
        keep = safety_mask(subset.reset_index(drop=True), safety_filter)
        applied["safety_filter"] = {"hook": safety_filter, "dropped": int((~keep).sum())}
        counts["safety_filter"] = counts.get("safety_filter", 0) + int((~keep).sum())
        subset = subset[keep]
    subset = subset.sort_values(["class", "rank"]).reset_index(drop=True)
    subset["rank"] = subset.groupby("class").cumcount().astype("int64")
    class_names = list(stats.get("per_class") or {}) or sorted(subset["class"].unique())
    stats = stats | {"filters": counts, **subset_counts(subset, class_names),
                     "refiltered": [*(stats.get("refiltered") or []), applied]}
    write_subset(out, subset, stats)
    return stats


def read_subset(subset_dir: str | Path):
    import pandas as pd

    path = Path(subset_dir) / SUBSET_FILE
    if not path.is_file():
        raise RetrievalError(f"{path} not found (make it with `react retrieve`)")
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as error:
        raise RetrievalError(f"{path}: not a readable parquet file ({str(error).splitlines()[0]})") from None


def read_stats(subset_dir: str | Path) -> dict:
    path = Path(subset_dir) / STATS_FILE
    if not path.is_file():
        return {}
    stats = read_json(path, RetrievalError)
    if not isinstance(stats, dict):
        raise RetrievalError(f"{path}: expected a JSON object")
    return stats
