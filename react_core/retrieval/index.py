"""FAISS indexes over an embedding folder: chosen for the corpus size and memory, built shard by
shard, tuned for recall on the queries that will actually be run.

The automatic choice (`choose_factory`, autofaiss-like; we own it because autofaiss pins
numpy<2 and clip-retrieval pins open_clip<3):

  * fewer than 50k vectors, or an exact index that fits in a quarter of the budget with fewer
    than 200k vectors: `Flat` (exact; nothing to train or tune);
  * otherwise an inverted file with `nlist` = the power of two nearest 4*sqrt(n) (at least 64,
    at most 2^18), its coarse quantizer an HNSW32 graph once nlist > 16384 (a flat one below);
  * codes: the richest that fit 90% of the memory budget, counting 8 bytes of id per vector:
    `Flat` (4d bytes), `SQ8` (d bytes), then `PQ{m}x8` with m the largest divisor of d among
    256, 128, 96, 64, 48, 32, 16, 8 that fits, preceded by an `OPQ{m}` rotation when each
    sub-quantizer covers more than 4 dimensions (where the rotation pays most).

That rule only proposes a candidate; measurement decides. Tuning also times exact search
(`IndexFlatIP`) on the same queries, in memory when its float32 vectors fit 90% of the budget
(half the machine's RAM without one), and with an automatic choice also an `HNSW32,Flat` graph
(up to 1M vectors, when it fits; efSearch tuned like nprobe); the fastest candidate that reaches
the target recall is kept, exact search whenever nothing approximate is faster (on data without
structure, e.g. uniformly random vectors, an inverted file must scan most lists and loses).
index.json lists both candidates with their recall, seconds per query and `speed_vs_exact`; when
nothing within the budget reaches the target, `verdict` says so with the best recall reached and
the budget that exact search would need.

Vectors are added shard by shard with their global row numbers as ids. When the index would not
fit in half the memory budget, each shard is added to its own copy of the trained empty index,
written to disk, and the copies are merged with `faiss.contrib.ondisk.merge_ondisk` into one
`index.ivfdata` file beside `index.faiss`, which is then searched memory-mapped. Finished parts
are kept until the merge, so an interrupted build resumes.

Tuning: exact neighbours of the tuning queries (by blocks, never the whole corpus in memory) are
the ground truth; `faiss.ParameterSpace` explores nprobe / efSearch; the fastest setting whose
recall@k (|ANN ∩ exact| / k) reaches the target with a margin is kept in `index.json` with the
recall it achieved: the mean over the tuning queries less two standard errors
(`recall_lower_bound`), so that other queries of the same distribution reach the target too (a
setting chosen on the bare mean reaches it on other queries about half the time). Text queries are not distributed like corpus vectors (the modality gap), so the queries
are the class x template text embeddings, or else caption embeddings, never corpus samples of
the indexed kind.

Re-ranking: compressed codes order a query's near-ties badly (at 1M x 512, PQ codes at 1/8 of
the float32 bytes reach recall@100 0.84 at best). When no setting reaches the target, tuning
tries searching `factor` x k candidates and re-scoring them exactly with the float16 corpus
embeddings, read from disk by positioned reads (`EmbeddingFolder.gather`), so memory stays that
of the codes. The smallest factor and breadth reaching the target are kept (`refine_factor`);
`read_index` then returns a `RefinedIndex`.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np

from react_core.errors import ReactError
from react_core.io import atomic_path, atomic_write_json
from react_core.retrieval.embed import EmbeddingFolder

INDEX_FILE = "index.faiss"
INFO_FILE = "index.json"
IVFDATA_FILE = "index.ivfdata"
PARTS_DIR = "parts"
FLAT_MAX = 50_000
ID_BYTES = 8
PQ_SUBQUANTIZERS = (256, 128, 96, 64, 48, 32, 16, 8)
PQ_POINTS_PER_CENTROID = 64  # codebooks of 256 centroids learn from 16k residuals, not FAISS's default 65k

logger = logging.getLogger("react")


class IndexBuildError(ReactError):
    """An index folder or build request that cannot be used; names the file or option."""


def parse_memory(text: str | int | None) -> int | None:
    """`8G`, `512M`, `1.5T`, or a byte count."""
    if text is None or isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?)i?B?\s*", str(text), flags=re.IGNORECASE)
    if not match:
        raise IndexBuildError(f"memory size {text!r}: expected a number with an optional K, M, G or T suffix (e.g. 8G)")
    return int(float(match.group(1)) * 1024 ** "BKMGT".index((match.group(2) or "B").upper()))


def _nlist(n: int) -> int:
    return int(min(2 ** 18, max(64, 2 ** round(math.log2(4 * math.sqrt(n))))))


def choose_factory(n: int, d: int, max_memory: int | None = None) -> str:
    """The index factory string the rule above gives for n vectors of dimension d."""
    budget = 0.9 * max_memory if max_memory else float("inf")
    if n < FLAT_MAX or (n < 200_000 and n * d * 4 <= budget / 4):
        return "Flat"
    nlist = _nlist(n)
    quantizer = f"IVF{nlist}_HNSW32" if nlist > 16384 else f"IVF{nlist}"
    per_vector = budget / n - ID_BYTES
    if per_vector >= 4 * d:
        return f"{quantizer},Flat"
    if per_vector >= d:
        return f"{quantizer},SQ8"
    fitting = [m for m in PQ_SUBQUANTIZERS if d % m == 0 and m <= per_vector]
    if not fitting:
        raise IndexBuildError(
            f"{n} vectors of dimension {d} do not fit in {max_memory} bytes even as 8-byte codes; raise --max-memory"
        )
    m = fitting[0]
    rotation = f"OPQ{m}," if d // m > 4 else ""
    return f"{rotation}{quantizer},PQ{m}x8"


def _uses_gpu() -> bool:
    import faiss

    return hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


def train_index(index, sample: np.ndarray) -> None:
    """Train on a sample; k-means of an inverted file runs on the GPUs when FAISS has them."""
    import faiss

    if index.is_trained:
        return
    ivf = _ivf_of(index)
    if ivf is not None and _uses_gpu():
        ivf.clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatL2(ivf.d))
    pq = getattr(faiss.downcast_index(ivf), "pq", None) if ivf is not None else None
    if pq is not None:
        pq.cp.max_points_per_centroid = PQ_POINTS_PER_CENTROID
    index.train(sample)


def _ivf_of(index):
    import faiss

    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def training_size(factory: str, n: int) -> int:
    """Enough vectors for k-means (40 per list, FAISS's lower bound) and PQ codebooks (256 * 40), capped by n."""
    match = re.search(r"IVF(\d+)", factory)
    need = 40 * int(match.group(1)) if match else 0
    if "PQ" in factory or "SQ" in factory:
        need = max(need, 256 * 40)
    return int(min(n, max(need, 10_000)))


def _sample_rows(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def exact_neighbours(folder: EmbeddingFolder, kind: str, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k over the whole folder, shard by shard (scores, rows)."""
    import faiss
    from faiss.contrib.exhaustive_search import knn_ground_truth

    blocks = (block for _, block in folder.iter_arrays(kind))
    return knn_ground_truth(np.ascontiguousarray(queries, dtype=np.float32), blocks, k, metric_type=faiss.METRIC_INNER_PRODUCT)


def per_query_recall(found: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """|found ∩ exact| / k of each query (ids < 0 never count)."""
    k = exact.shape[1]
    return np.array([len(set(a[a >= 0].tolist()) & set(b[b >= 0].tolist())) / k for a, b in zip(found, exact)])


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean |found ∩ exact| / k over queries (ids < 0 never count)."""
    recalls = per_query_recall(found, exact)
    return float(recalls.mean()) if len(recalls) else 1.0


RECALL_MARGIN = 2.0  # standard errors: a setting is kept when mean - 2 SE of its per-query recall reaches the target


def recall_lower_bound(recalls: np.ndarray) -> float:
    """Mean per-query recall less RECALL_MARGIN standard errors of that mean: what other queries
    from the same distribution reach with about 98% confidence. Tuned to the bare mean, the
    fastest setting that just reaches the target on the tuning queries misses it on others as often
    as not (HNSW at 20000 concepts: 0.956 on the tuning queries, 0.948 on held-out ones)."""
    if len(recalls) < 2:
        return float(recalls.mean()) if len(recalls) else 1.0
    return float(recalls.mean() - RECALL_MARGIN * recalls.std(ddof=1) / math.sqrt(len(recalls)))


TUNED_PARAMETERS = ("nprobe", "efSearch", "quantizer_efSearch")
EF_SEARCH_MAX = 4096
REFINE_FACTORS = (2, 4, 8, 16)
REFINE_BATCH = 64
HNSW_FACTORY = "HNSW32,Flat"
HNSW_MAX = 1_000_000  # larger graphs take too long to build for a candidate that may be thrown away
HNSW_LINK_BYTES = 2 * 32 * 4 + 16  # level-0 neighbour ids of HNSW32, plus the upper levels' share


class RefinedIndex:
    """A FAISS index whose `factor * k` candidates are re-scored exactly with the corpus
    embeddings on disk; `search` and `ntotal` as FAISS's."""

    def __init__(self, index, folder: EmbeddingFolder, kind: str, factor: int):
        self.index = index
        self.folder = folder
        self.kind = kind
        self.factor = factor

    @property
    def ntotal(self) -> int:
        return self.index.ntotal

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        _, candidates = self.index.search(queries, min(k * self.factor, self.index.ntotal))
        return rerank(self.folder, self.kind, queries, candidates, k)


def rerank(folder: EmbeddingFolder, kind: str, queries: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k among each query's candidate rows (-1: none): (scores, rows), -1 / -inf padded."""
    scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    rows = np.full((len(queries), k), -1, dtype=np.int64)
    for start in range(0, len(queries), REFINE_BATCH):
        block = candidates[start:start + REFINE_BATCH]
        valid = block >= 0
        unique, position = np.unique(block[valid], return_inverse=True)
        vectors = folder.gather(kind, unique)
        index_of = np.zeros(block.shape, dtype=np.int64)
        index_of[valid] = position
        exact = np.take_along_axis(queries[start:start + REFINE_BATCH] @ vectors.T, index_of, axis=1)
        exact[~valid] = -np.inf
        top = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        taken = min(k, block.shape[1])
        scores[start:start + len(block), :taken] = np.take_along_axis(exact, top, axis=1)
        rows[start:start + len(block), :taken] = np.where(valid, block, -1)[np.arange(len(block))[:, None], top]
    rows[~np.isfinite(scores)] = -1
    return scores, rows


def _breadth_space(index):
    """FAISS's parameter grid for `index`, kept to the search-breadth knobs (nprobe, efSearch):
    the others (polysemous `ht`, ...) trade recall for speed in ways a target recall never needs.
    efSearch goes on doubling past FAISS's last value (512) up to EF_SEARCH_MAX: over 1M vectors
    of 20000 overlapping concepts an HNSW32 graph reached recall@100 0.834 at 512 while running 57x
    exact search, so the graph needs a wider search, not to be ruled out."""
    import faiss

    full = faiss.ParameterSpace()
    full.initialize(index)
    space = faiss.ParameterSpace()
    for i in range(full.parameter_ranges.size()):
        source = full.parameter_ranges.at(i)
        if source.name in TUNED_PARAMETERS:
            target = space.add_range(source.name)
            values = [source.values.at(j) for j in range(source.values.size())]
            if source.name in ("efSearch", "quantizer_efSearch") and values:
                while values[-1] * 2 <= EF_SEARCH_MAX:
                    values.append(values[-1] * 2)
            for value in values:
                target.values.push_back(value)
    return space


def _explore(space, index, queries: np.ndarray, exact: np.ndarray) -> list[tuple[float, float, str]]:
    """faiss's `ParameterSpace.explore`: recall (an intersection criterion against the exact
    neighbours) and time over the whole grid (bounded by timing pruning), the Pareto-optimal
    settings as (recall, seconds, parameter string)."""
    import faiss

    criterion = faiss.IntersectionCriterion(len(queries), exact.shape[1])
    criterion.set_groundtruth(None, np.ascontiguousarray(exact, dtype=np.int64))
    space.n_experiments = 0
    space.verbose = 0
    points = space.explore(index, np.ascontiguousarray(queries, dtype=np.float32), criterion)
    return [(points.all_pts.at(i).perf, points.all_pts.at(i).t, points.all_pts.at(i).key) for i in range(points.all_pts.size())]


def tune(index, queries: np.ndarray, exact: np.ndarray, target: float) -> tuple[str, float, float, float]:
    """Fastest search parameters whose recall@k reaches `target` with a margin (`recall_lower_bound`
    of the per-query recalls): (parameter string, recall, its lower bound, s/query). FAISS's
    exploration gives the Pareto-optimal settings by mean recall; from the fastest of those reaching
    the target up, each is checked query by query until one's lower bound reaches it. None does:
    the setting of highest recall."""
    space = _breadth_space(index)
    k = exact.shape[1]
    if space.n_combinations() <= 1:
        _, found = index.search(queries, k)
        recalls = per_query_recall(found, exact)
        return "", float(recalls.mean()), recall_lower_bound(recalls), time_search(index, queries, k, repeats=1)
    optimal = sorted(_explore(space, index, queries, exact), key=lambda p: p[1])
    checked = []
    for perf, seconds, key in [p for p in optimal if p[0] >= target] or [max(optimal, key=lambda p: p[0])]:
        space.set_index_parameters(index, key)
        _, found = index.search(queries, k)
        recalls = per_query_recall(found, exact)
        checked.append((key, float(recalls.mean()), recall_lower_bound(recalls), float(seconds) / len(queries)))
        if checked[-1][2] >= target:
            break
    key, recall, bound, seconds = checked[-1] if checked[-1][2] >= target else max(checked, key=lambda c: c[2])
    space.set_index_parameters(index, key)
    return key, recall, bound, seconds


def _breadth_keys(index, queries: np.ndarray, exact: np.ndarray) -> list[str]:
    """Search settings to try with re-ranking, cheapest first: every value of a single knob
    (nprobe); for several knobs, the Pareto-optimal settings (recall vs time) of plain search."""
    space = _breadth_space(index)
    if space.n_combinations() <= 1:
        return [""]
    if space.parameter_ranges.size() == 1:
        return [space.combination_name(i) for i in range(space.n_combinations())]
    return [key for _, _, key in sorted(_explore(space, index, queries, exact), key=lambda p: p[1])]


def tune_refined(index, folder: EmbeddingFolder, kind: str, queries: np.ndarray, exact: np.ndarray,
                 target: float) -> tuple[str, int, float, float, float]:
    """Fastest (search parameters, refine factor) whose re-ranked recall@k reaches `target` with the
    margin of `tune`: (parameters, factor, recall, its lower bound, s/query); the best found when none does."""
    import faiss

    k = exact.shape[1]
    keys = _breadth_keys(index, queries, exact)
    space = faiss.ParameterSpace()
    tried = []
    for factor in REFINE_FACTORS:
        refined = RefinedIndex(index, folder, kind, factor)
        for key in keys:
            if key:
                space.set_index_parameters(index, key)
            started = time.perf_counter()
            _, found = refined.search(queries, k)
            seconds = (time.perf_counter() - started) / len(queries)
            recalls = per_query_recall(found, exact)
            tried.append((float(recalls.mean()), recall_lower_bound(recalls), seconds, key, factor))
            if tried[-1][1] >= target:
                break
    reaching = [t for t in tried if t[1] >= target]
    recall, bound, seconds, key, factor = min(reaching, key=lambda t: t[2]) if reaching else max(tried, key=lambda t: t[1])
    if key:
        space.set_index_parameters(index, key)
    return key, factor, recall, bound, seconds


def build_index(
    emb_dir: str | Path,
    kind: str,
    out: str | Path,
    *,
    factory: str | None = None,
    max_memory: int | None = None,
    queries: np.ndarray | None = None,
    queries_source: str = "",
    target_recall: float = 0.95,
    k: int = 100,
    max_tuning_queries: int = 1000,
    on_disk: bool | None = None,
    refine: bool = True,
    progress: bool = True,
) -> dict:
    """Build, tune and save an index of `kind` ('image' or 'text') embeddings; returns index.json's content.

    `refine`: when plain search cannot reach `target_recall`, tune exact re-ranking of more
    candidates from the embeddings on disk (see the module docstring)."""
    import faiss
    from tqdm import tqdm

    if kind not in ("image", "text"):
        raise IndexBuildError(f"--kind must be image or text, not {kind!r}")
    folder = EmbeddingFolder(emb_dir, require_info=False)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n, d = len(folder), folder.dim
    if n == 0:
        raise IndexBuildError(f"{emb_dir}: no embeddings to index")
    automatic = factory is None
    factory = factory or choose_factory(n, d, max_memory)
    try:
        index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as error:
        raise IndexBuildError(f"FAISS cannot build index factory {factory!r}: {str(error).splitlines()[-1]}") from None
    started = time.perf_counter()
    train_rows = _sample_rows(n, training_size(factory, n))
    if not index.is_trained:
        logger.info("training %s on %d of %d vectors", factory, len(train_rows), n)
        train_index(index, folder.gather(kind, train_rows))
    estimated = _estimated_bytes(index, n, d)
    ivf = _ivf_of(index)
    if on_disk is None:
        on_disk = ivf is not None and max_memory is not None and estimated > max_memory / 2
    if on_disk and ivf is None:
        raise IndexBuildError(f"{factory!r} is not an inverted-file index; only those can be merged on disk")
    bar = tqdm(total=n, desc=f"index {kind}", unit="vec", disable=not progress)
    if on_disk:
        _build_on_disk(index, folder, kind, out, bar)
    else:
        for start, block in folder.iter_arrays(kind):
            if ivf is not None:
                index.add_with_ids(block, np.arange(start, start + len(block), dtype=np.int64))
            else:
                index.add(block)
            bar.update(len(block))
        with atomic_path(out / INDEX_FILE) as tmp:
            faiss.write_index(index, str(tmp))
    bar.close()
    build_seconds = time.perf_counter() - started

    info = {
        "factory": factory,
        "kind": kind,
        "metric": "inner_product",
        "ntotal": int(n),
        "dim": int(d),
        "on_disk": bool(on_disk),
        "build_seconds": round(build_seconds, 2),
        "index_bytes": _index_bytes(out),
        "embeddings": str(Path(emb_dir).resolve()),
        "identity": folder.info.get("identity"),
        "faiss_version": faiss.__version__,
    }
    return tune_index(out, folder, info, queries, queries_source, target_recall, k, max_tuning_queries, refine,
                      max_memory=max_memory, choose_exact=automatic)


def _physical_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def exact_budget(max_memory: int | None) -> float:
    """Bytes an exact index may take: 90% of --max-memory, else half of this machine's RAM."""
    return 0.9 * max_memory if max_memory else _physical_memory() / 2


def time_search(index, queries: np.ndarray, k: int, repeats: int = 2) -> float:
    """Seconds per query of one batched search of `queries` (the best of `repeats`)."""
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        index.search(queries, k)
        best = min(best, time.perf_counter() - started)
    return best / len(queries)


def exact_index(folder: EmbeddingFolder, kind: str):
    """IndexFlatIP over the whole folder, in memory (row numbers are its ids)."""
    import faiss

    flat = faiss.IndexFlatIP(folder.dim)
    for _, block in folder.iter_arrays(kind):
        flat.add(block)
    return flat


def tune_index(
    out: str | Path,
    folder: EmbeddingFolder,
    info: dict,
    queries: np.ndarray | None,
    queries_source: str = "",
    target_recall: float = 0.95,
    k: int = 100,
    max_tuning_queries: int = 1000,
    refine: bool = True,
    max_memory: int | None = None,
    choose_exact: bool = False,
) -> dict:
    """Tune the built index in `out` for `queries` and write `info` with the outcome as index.json
    (also to re-tune an existing index for other queries or another target).

    Exact search is measured on the same queries: an in-memory `IndexFlatIP` when its float32
    vectors fit `exact_budget(max_memory)`, else shard by shard from disk. `choose_exact`: replace
    the built index by the exact one when that fits and the tuned index is slower or misses the
    target. index.json records both candidates (`candidates`), `speed_vs_exact` and `meets_target`."""
    import faiss

    out = Path(out)
    started_tuning = time.perf_counter()
    kind, factory = info["kind"], info["factory"]
    parameters, recall, recall_bound, seconds_per_query, refine_factor = "", 1.0, 1.0, None, 1
    tuning = {"queries": 0, "source": queries_source}
    extra: dict = {"speed_vs_exact": 1.0} if factory == "Flat" else {}
    if factory != "Flat" and queries is not None and len(queries):
        picked = queries if len(queries) <= max_tuning_queries else queries[_sample_rows(len(queries), max_tuning_queries, 1)]
        picked = np.ascontiguousarray(picked, dtype=np.float32)
        k_tune = min(k, len(folder))
        started = time.perf_counter()
        _, exact = exact_neighbours(folder, kind, picked, k_tune)
        exact_from_disk = (time.perf_counter() - started) / len(picked)
        searchable = read_index(out, parameters="", rerank=False)
        parameters, recall, recall_bound, seconds_per_query = tune(searchable, picked, exact, target_recall)
        tuning = {"queries": len(picked), "source": queries_source, "k": k_tune, "plain_recall": recall,
                  "margin_standard_errors": RECALL_MARGIN}
        if recall_bound < target_recall and refine:
            logger.info("plain search reaches recall@%d %.3f < %.3f: tuning exact re-ranking", k_tune, recall, target_recall)
            parameters, refine_factor, recall, recall_bound, seconds_per_query = tune_refined(
                searchable, folder, kind, picked, exact, target_recall
            )
        tuned = RefinedIndex(searchable, folder, kind, refine_factor) if refine_factor > 1 else searchable
        seconds_per_query = time_search(tuned, picked, k_tune)
        exact_bytes = len(folder) * folder.dim * 4
        fits = exact_bytes <= exact_budget(max_memory)
        flat = exact_index(folder, kind) if fits else None
        exact_seconds = time_search(flat, picked, k_tune) if fits else exact_from_disk
        candidates = [{"factory": factory, "search_parameters": parameters, "refine_factor": refine_factor,
                       "recall": recall, "recall_lower_bound": recall_bound, "seconds_per_query": seconds_per_query,
                       "index_bytes": info["index_bytes"],
                       "speed_vs_exact": exact_seconds / seconds_per_query}]
        alternatives = {}  # how to get each candidate other than the index built in `out`
        if fits:
            del flat  # rebuilt if kept: the HNSW candidate below needs the memory
            alternatives["Flat"] = lambda: exact_index(folder, kind)
            candidates.append({"factory": "Flat", "search_parameters": "", "refine_factor": 1, "recall": 1.0,
                               "recall_lower_bound": 1.0, "seconds_per_query": exact_seconds, "index_bytes": exact_bytes, "speed_vs_exact": 1.0})
        hnsw_bytes = len(folder) * (folder.dim * 4 + HNSW_LINK_BYTES)
        if choose_exact and len(folder) <= HNSW_MAX and hnsw_bytes <= exact_budget(max_memory):
            hnsw = faiss.index_factory(folder.dim, HNSW_FACTORY, faiss.METRIC_INNER_PRODUCT)
            for _, block in folder.iter_arrays(kind):
                hnsw.add(block)
            hnsw_parameters, hnsw_recall, hnsw_bound, _ = tune(hnsw, picked, exact, target_recall)
            hnsw_seconds = time_search(hnsw, picked, k_tune)
            alternatives[HNSW_FACTORY] = lambda: hnsw
            candidates.append({"factory": HNSW_FACTORY, "search_parameters": hnsw_parameters, "refine_factor": 1,
                               "recall": hnsw_recall, "recall_lower_bound": hnsw_bound, "seconds_per_query": hnsw_seconds, "index_bytes": hnsw_bytes,
                               "speed_vs_exact": exact_seconds / hnsw_seconds})
        if choose_exact:
            meeting = [c for c in candidates if c["recall_lower_bound"] >= target_recall]
            best = min(meeting, key=lambda c: c["seconds_per_query"]) if meeting else \
                max(candidates, key=lambda c: c["recall_lower_bound"])
            if best["factory"] != factory:
                logger.info("%s (%.2g s/query, recall %.3f) beats %s (%.2g s/query, recall %.3f): keeping it",
                            best["factory"], best["seconds_per_query"], best["recall"], factory, seconds_per_query, recall)
                with atomic_path(out / INDEX_FILE) as tmp:
                    faiss.write_index(alternatives[best["factory"]](), str(tmp))
                (out / IVFDATA_FILE).unlink(missing_ok=True)
                factory = best["factory"]
                info = {**info, "factory": factory, "on_disk": False, "index_bytes": _index_bytes(out)}
                parameters, refine_factor = best["search_parameters"], 1
                recall, recall_bound, seconds_per_query = best["recall"], best["recall_lower_bound"], best["seconds_per_query"]
        extra = {
            "speed_vs_exact": exact_seconds / seconds_per_query,
            "exact_seconds_per_query": exact_seconds,
            "exact_measured": "IndexFlatIP in memory" if fits else
                              "IndexFlatIP shard by shard from disk (its vectors do not fit the memory budget)",
            "candidates": candidates,
            "recall_lower_bound": recall_bound,
            "meets_target": recall_bound >= target_recall,
        }
        if recall_bound < target_recall:
            extra["verdict"] = (
                f"no index within the memory budget reaches recall@{k_tune} {target_recall} (with a margin of "
                f"{RECALL_MARGIN:g} standard errors over the tuning queries): the best is {recall:.3f} "
                f"({factory}{', ' + parameters if parameters else ''}"
                f"{f', re-ranking {refine_factor}x candidates' if refine_factor > 1 else ''}; lower bound {recall_bound:.3f}); exact search reaches it with "
                f"{exact_bytes / 1e6:,.0f} MB of vectors (--max-memory {math.ceil(exact_bytes / 0.9 / 2**20)}M)")
            logger.warning(extra["verdict"])
        elif extra["speed_vs_exact"] < 1:
            extra["verdict"] = (f"{factory} searches at {extra['speed_vs_exact']:.2f}x exact's queries/s on these queries: "
                                f"exact search (--factory Flat) is faster")
            logger.warning(extra["verdict"])
    elif factory != "Flat":
        logger.warning("no tuning queries: search parameters are FAISS defaults and recall is unknown")
        recall = None
    info = {
        **info,
        "search_parameters": parameters,
        "refine_factor": refine_factor,
        "target_recall": target_recall,
        "recall": recall,
        "recall_k": tuning.get("k"),
        "tuning": tuning,
        "seconds_per_query": seconds_per_query,
        "tuning_seconds": round(time.perf_counter() - started_tuning, 2),
        **extra,
    }
    atomic_write_json(out / INFO_FILE, info)
    return info


def _estimated_bytes(index, n: int, d: int) -> int:
    ivf = _ivf_of(index)
    code = ivf.code_size if ivf is not None else 4 * d
    return int(n * (code + (ID_BYTES if ivf is not None else 0)))


def _build_on_disk(index, folder: EmbeddingFolder, kind: str, out: Path, bar) -> None:
    import faiss
    from faiss.contrib.ondisk import merge_ondisk

    parts = out / PARTS_DIR
    parts.mkdir(exist_ok=True)
    trained = parts / "trained.faiss"
    with atomic_path(trained) as tmp:
        faiss.write_index(index, str(tmp))
    names = []
    for number, (start, block) in zip(folder.numbers, folder.iter_arrays(kind)):
        part = parts / f"part_{number}.faiss"
        names.append(str(part))
        if not part.is_file():
            shard_index = faiss.read_index(str(trained))
            shard_index.add_with_ids(block, np.arange(start, start + len(block), dtype=np.int64))
            with atomic_path(part) as tmp:
                faiss.write_index(shard_index, str(tmp))
        bar.update(len(block))
    merged = faiss.read_index(str(trained))
    (out / IVFDATA_FILE).unlink(missing_ok=True)
    merge_ondisk(merged, names, str(out / IVFDATA_FILE))
    with atomic_path(out / INDEX_FILE) as tmp:
        faiss.write_index(merged, str(tmp))
    shutil.rmtree(parts)


def _index_bytes(out: Path) -> int:
    return sum(p.stat().st_size for p in (out / INDEX_FILE, out / IVFDATA_FILE) if p.is_file())


def read_index_info(index_dir: str | Path) -> dict:
    path = Path(index_dir) / INFO_FILE
    if not path.is_file():
        raise IndexBuildError(f"{path} not found (build the index with `react index`)")
    return json.loads(path.read_text(encoding="utf-8"))


def read_index(index_dir: str | Path, parameters: str | None = None, gpu: bool = False,
               emb_dir: str | Path | None = None, rerank: bool = True):
    """The index, memory-mapped (on-disk inverted lists read from the same folder), with its
    tuned search parameters applied; on the GPUs when asked and FAISS has them. A `RefinedIndex`
    when tuning chose re-ranking (unless `rerank` is false): it reads the embeddings from
    `emb_dir`, by default the folder the index was built from."""
    import faiss

    path = Path(index_dir) / INDEX_FILE
    if not path.is_file():
        raise IndexBuildError(f"{path} not found (build the index with `react index`)")
    info = read_index_info(index_dir) if (Path(index_dir) / INFO_FILE).is_file() else {}
    # On-disk inverted lists are memory-mapped by themselves (IO_FLAG_MMAP on top of them crashes).
    on_disk = (Path(index_dir) / IVFDATA_FILE).is_file()
    index = faiss.read_index(str(path), faiss.IO_FLAG_ONDISK_SAME_DIR if on_disk else faiss.IO_FLAG_MMAP)
    if parameters is None:
        parameters = info.get("search_parameters") or ""
    if gpu and _uses_gpu() and not on_disk:
        index = faiss.index_cpu_to_all_gpus(index)
    if parameters:
        space = faiss.GpuParameterSpace() if gpu and _uses_gpu() else faiss.ParameterSpace()
        space.set_index_parameters(index, parameters)
    if not rerank or info.get("refine_factor", 1) <= 1:
        return index
    source = Path(emb_dir or info["embeddings"])
    if not (source / "metadata").is_dir():
        raise IndexBuildError(
            f"{index_dir}: the index re-ranks with the embeddings it was built from, and {source} holds none; "
            "pass the embedding folder (--emb)"
        )
    folder = EmbeddingFolder(source, require_info=False)
    if len(folder) != index.ntotal:
        raise IndexBuildError(f"{source} holds {len(folder)} embeddings and the index {index.ntotal}: not its corpus")
    return RefinedIndex(index, folder, info["kind"], int(info["refine_factor"]))


def search(index, queries: np.ndarray, k: int, ntotal: int | None = None, batch: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores, rows) in batches; FAISS's -1 (fewer than k found) stays -1 with score -inf,
    and any id outside [0, ntotal) is an error, never a silently wrong sample."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    scores = np.empty((len(queries), k), dtype=np.float32)
    rows = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), batch):
        scores[start:start + batch], rows[start:start + batch] = index.search(queries[start:start + batch], k)
    missing = rows < 0
    scores[missing] = -np.inf
    limit = ntotal if ntotal is not None else index.ntotal
    if ((rows >= limit) & ~missing).any():
        raise IndexBuildError(f"the index returned ids beyond its {limit} vectors: index and embeddings do not match")
    return scores, rows
