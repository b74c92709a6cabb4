"""FAISS indexes over an embedding folder: chosen for the corpus size, the memory budget and the
queries that will be run, built shard by shard in parallel workers, tuned for recall, and kept
only where they beat exact search by more than the noise of measuring it.

The choice (autofaiss-like; we own it because autofaiss pins numpy<2 and clip-retrieval pins
open_clip<3). A size rule (`choose_factory`) gives the first candidate:

  * fewer than 50k vectors, or an exact index that fits in a quarter of the budget with fewer
    than 200k vectors: `Flat` (exact; nothing to train or tune), and nothing else is tried;
  * otherwise an inverted file with `nlist` = the power of two nearest 4*sqrt(n) (at least 64,
    at most 2^18), its coarse quantizer an HNSW32 graph once nlist > 16384 (a flat one below);
  * codes: the richest that fit 90% of the memory budget, counting 8 bytes of id per vector:
    `Flat` (4d bytes), `SQ8` (d bytes), then `PQ{m}x8` with m the largest divisor of d among
    256, 128, 96, 64, 48, 32, 16, 8 that fits, preceded by an `OPQ{m}` rotation when each
    sub-quantizer covers more than 4 dimensions (where the rotation pays most).

`candidates` adds what fits the same budget (`Candidate.bytes`): fast-scan PQ codes of 4 bits
(`PQ{m}x4fs`, searched with SIMD lookup tables) re-ranked exactly from the float16 embeddings,
held in memory (`Refine(SQfp16)`: lossless for float16 embeddings) or, where they do not fit,
read from the embedding folder on disk (`RefinedIndex`), preceded by an `OPQ` rotation where
each sub-quantizer covers more than 4 dimensions (as in the rule; OPQ's training cost minutes at
d 512, and on finer codes it did not pay: recall lower bound 0.92 against 0.97 without it on
60k x 32 clustered vectors); the same codes over 4x the lists with an HNSW32 coarse quantizer; an `HNSW32,Flat` graph with efConstruction 40 and 200 (up to 1M vectors); and exact
search when its float32 vectors fit 90% of the budget (half the machine's RAM without one).
Where concepts crowd (20000 overlapping concepts), the inverted file must scan a quarter of its
lists to reach recall@100 0.95 and runs only 1.5-6x exact search; the fast-scan codes scan those
lists an order of magnitude faster and the re-rank restores the order among near-ties.

Screening (`screen`): every candidate is built on a sample of the corpus (up to 100k vectors) at
the same density (nlist scaled by sample/n, so each list holds as many vectors as in the full
index) and asked for the same neighbourhood (k scaled by sample/n, at least 10), and its search
breadth is swept to the target recall. Candidates go cheapest first; a sweep stops when its
setting runs slower than the best so far without reaching the target. The efConstruction 200
graph (3-4x the build of the efConstruction 40 one) is built only when the efConstruction 40
graph missed the target at its widest search while still faster than the best so far (the graph
is the limit), or met it within 1.5x of the best. Screening has a budget: a quarter of the full
build that the first candidate's sample build projects (n / sample times its seconds), or 20 s
where that is less; once it is spent the remaining candidates are skipped, and a graph whose
build, projected from its first chunks, would overrun it is abandoned (on 100k x 256 an HNSW32
graph took 8 min to build on a loaded machine, 15x the inverted file that won), and an inverted
file whose training, projected from the first one's by points x lists, would overrun it is
skipped (the 4x-lists candidate's k-means took 80 s of a 300k x 512 screening). Only the winner
is built on the whole corpus; when the sample is the whole corpus, the winner's screening build
is kept.

Build: trained once on a sample (`training_size`), then filled shard by shard by `workers`
processes or Ray tasks (`ann.run_tasks`; each reads only its shard) and merged in shard order, in
memory or on disk when the index would take more than half the budget; the result equals a
single-process build. Graphs and exact indexes are filled in this process.

Tuning (`tune_index`, see `tuning.py`): exact neighbours of the tuning queries are the ground
truth (of 128 of them where screening already chose on all: exact search over the whole corpus
is the dearest step of tuning); the winner's breadth is swept from the value scaled from the
sample with early stopping; where plain codes miss the target, `factor * k` candidates are
re-ranked from the embeddings on disk. Then the decision that noise must not reverse: the tuned
index and the exact search a user would run within the same budget (`IndexFlatIP` in memory when
its vectors fit, else shard by shard from the folder; index.json names which) are timed in
interleaved pairs on as many queries as exact search answers in about a second (32 to 128), and
with an automatic choice the approximate index is kept only when it meets the target and, by the
wall clock and by CPU time, the lower bound of its speed ratio is above 1 and its median at least
1.3x; otherwise exact search replaces it where it fits. index.json's `tuning.seconds` splits the
tuning time into screening, exact neighbours, sweep and speed.

Text queries are not distributed like corpus vectors (the modality gap), so the queries are the
class x template text embeddings, or else caption embeddings, never corpus samples of the indexed
kind. index.json records every candidate measured, the speed ratio with its bounds, and the
seconds spent building and tuning.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from react_core.io import read_json
from react_core.machine import usable_cpus
from react_core.retrieval.ann import (
    ID_BYTES,
    INDEX_FILE,
    INFO_FILE,
    IVFDATA_FILE,
    PARTS_DIR,
    TRAINED_FILE,
    IndexBuildError,
    RefinedIndex,
    ShardTask,
    add_rows,
    finite_block,
    index_bytes,
    ivf_of,
    merge_parts,
    read_faiss,
    read_index,
    read_index_info,
    refine_of,
    run_tasks,
    search,
    uses_gpu,
    write_index,
    writing,
)
from react_core.retrieval.embed import EmbeddingFolder
from react_core.retrieval.tuning import (
    RECALL_MARGIN,
    compare_speed,
    exact_neighbours,
    per_query_recall,
    recall_at_k,
    recall_lower_bound,
    sweep,
)

__all__ = [
    "IndexBuildError", "build_index", "candidates", "choose_factory", "exact_neighbours", "parse_memory", "per_query_recall",
    "read_index", "read_index_info", "recall_at_k", "recall_lower_bound", "search", "tune_index",
]

FLAT_MAX = 50_000
PQ_SUBQUANTIZERS = (256, 128, 96, 64, 48, 32, 16, 8)
PQ_POINTS_PER_CENTROID = 64  # codebooks of 256 centroids learn from 16k residuals, not FAISS's default 65k
HNSW_FACTORY = "HNSW32,Flat"
HNSW_MAX = 1_000_000  # larger graphs take too long to build for a candidate that may be thrown away
HNSW_LINK_BYTES = 2 * 32 * 4 + 16  # level-0 neighbour ids of HNSW32, plus the upper levels' share
EF_CONSTRUCTIONS = (40, 200)
GRAPH_MARGIN = 1.5  # a graph built with efConstruction 200 searched up to ~1.5x faster at the same recall
FINE_LISTS = 4  # the larger-nlist candidate has this many times the rule's lists
OPQ_ITERATIONS = 10
OPQ_TRAIN_POINTS = 32_768
SCREEN_SAMPLE = 100_000
SCREEN_K_MIN = 10
TUNING_SHARE = 0.25  # screening may take this share of the first candidate's projected full build
SCREEN_FLOOR_SECONDS = 20.0  # ... or this long, on corpora whose builds take seconds
ADD_CHUNK = 5_000
TIMING_QUERIES = (24, 128)  # FAISS's exact search turns to BLAS from 20 queries: never time fewer
TIMING_SECONDS = 1.0  # ... and about this long a batch for exact search
FULL_SCALE_QUERIES = 128
DISK_FACTORS = (2, 4, 8, 16)

logger = logging.getLogger("react")


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
    """The index factory string the size rule gives for n vectors of dimension d."""
    budget = 0.9 * max_memory if max_memory else float("inf")
    if n < FLAT_MAX or (n < 200_000 and n * d * 4 <= budget / 4):
        return "Flat"
    nlist = _nlist(n)
    per_vector = budget / n - ID_BYTES
    if per_vector >= 4 * d:
        return f"{_quantizer(nlist)},Flat"
    if per_vector >= d:
        return f"{_quantizer(nlist)},SQ8"
    fitting = [m for m in PQ_SUBQUANTIZERS if d % m == 0 and m <= per_vector]
    if not fitting:
        raise IndexBuildError(
            f"{n} vectors of dimension {d} do not fit in {max_memory} bytes even as 8-byte codes; raise --max-memory"
        )
    m = fitting[0]
    rotation = f"OPQ{m}," if d // m > 4 else ""
    return f"{rotation}{_quantizer(nlist)},PQ{m}x8"


def _quantizer(nlist: int) -> str:
    return f"IVF{nlist}_HNSW32" if nlist > 16384 else f"IVF{nlist}"


def _physical_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def exact_budget(max_memory: int | None) -> float:
    """Bytes an index may take: 90% of --max-memory, else half of this machine's RAM."""
    return 0.9 * max_memory if max_memory else _physical_memory() / 2


# --------------------------------------------------------------------------------------------
# Candidates


@dataclass(frozen=True)
class Candidate:
    """One index to consider: a FAISS factory string, the efConstruction of a graph, and whether
    its hits are re-ranked from the embeddings on disk (codes whose float16 copy does not fit)."""

    factory: str
    ef_construction: int | None = None
    rerank_from_disk: bool = False

    @property
    def name(self) -> str:
        extras = [f"efConstruction {self.ef_construction}"] if self.ef_construction else []
        extras += ["re-ranked from disk"] if self.rerank_from_disk else []
        return self.factory + (f" ({', '.join(extras)})" if extras else "")

    def bytes(self, n: int, d: int) -> int:
        """Memory of the index over n vectors: codes, ids, coarse quantizer, graph links."""
        return index_size(self.factory, n, d)

    def as_dict(self) -> dict:
        return {"factory": self.factory, "ef_construction": self.ef_construction, "rerank_from_disk": self.rerank_from_disk}


def index_size(factory: str, n: int, d: int) -> int:
    """Bytes of a `factory` index over n vectors of dimension d, from FAISS's own code sizes."""
    import faiss

    if factory == "Flat":
        return 4 * n * d
    if factory.startswith("HNSW"):
        return n * (4 * d + HNSW_LINK_BYTES)
    index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    ivf = ivf_of(index)
    refine = refine_of(index)
    per_vector = ivf.code_size + ID_BYTES + (refine.refine_index.sa_code_size() if refine is not None else 0)
    quantizer = ivf.nlist * 4 * d + (ivf.nlist * HNSW_LINK_BYTES if "_HNSW" in factory else 0)
    return int(n * per_vector + quantizer)


def candidates(n: int, d: int, max_memory: int | None = None, rerank: bool = True) -> list[Candidate]:
    """Every index `react index` considers for n x d vectors within `max_memory`, cheapest to
    build and most promising first (see the module docstring); the size rule's is among them."""
    rule = choose_factory(n, d, max_memory)
    if rule == "Flat":
        return [Candidate("Flat")]
    budget = exact_budget(max_memory)
    nlist = _nlist(n)
    found: list[Candidate] = []

    def add(candidate: Candidate) -> None:
        if candidate not in found and candidate.bytes(n, d) <= budget:
            found.append(candidate)

    fast_scan = [m for m in (d // 2, d // 4, d // 8) if m % 2 == 0 and d % m == 0]
    for m in fast_scan:  # the richest 4-bit codes whose float16 re-rank copy fits in memory
        rotation = f"OPQ{m}," if d // m > 4 else ""
        if Candidate(f"{rotation}{_quantizer(nlist)},PQ{m}x4fs,Refine(SQfp16)").bytes(n, d) <= budget:
            add(Candidate(f"{rotation}{_quantizer(nlist)},PQ{m}x4fs,Refine(SQfp16)"))
            break
    else:
        if rerank:
            for m in fast_scan:  # else codes alone in memory, re-ranked from the folder on disk
                if Candidate(f"{_quantizer(nlist)},PQ{m}x4fs").bytes(n, d) <= budget:
                    rotation = f"OPQ{m}," if d // m > 4 else ""
                    add(Candidate(f"{rotation}{_quantizer(nlist)},PQ{m}x4fs", rerank_from_disk=True))
                    break
    add(Candidate(rule))
    fine = FINE_LISTS * nlist
    if fine <= 2 ** 18 and n >= 32 * fine and found and "x4fs" in found[0].factory:
        add(replace(found[0], factory=found[0].factory.replace(f"{_quantizer(nlist)},", f"IVF{fine}_HNSW32,")))
    if n <= HNSW_MAX:
        for ef in EF_CONSTRUCTIONS:
            add(Candidate(HNSW_FACTORY, ef_construction=ef))
    add(Candidate("Flat"))
    return found


def training_size(factory: str, n: int) -> int:
    """Enough vectors for k-means (40 per list, FAISS's lower bound) and PQ codebooks (256 * 40), capped by n."""
    match = re.search(r"IVF(\d+)", factory)
    need = 40 * int(match.group(1)) if match else 0
    if "PQ" in factory or "SQ" in factory:
        need = max(need, 256 * 40)
    return int(min(n, max(need, 10_000)))


def _sample_rows(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def scaled_factory(factory: str, scale: float) -> str:
    """`factory` with its number of lists scaled by `scale` (a power of two, at least 16), so a
    sample of scale * n vectors puts as many in each list as the full index does."""
    def lists(match: re.Match) -> str:
        nlist = int(match.group(1))
        return f"IVF{int(max(16, 2 ** round(math.log2(max(1.0, nlist * scale)))))}"

    return re.sub(r"IVF(\d+)", lists, factory)


def new_index(candidate: Candidate, d: int, factory: str | None = None):
    """An empty FAISS index of `candidate` (with `factory` instead of its own, e.g. a scaled one)."""
    import faiss

    factory = factory or candidate.factory
    try:
        index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as error:
        raise IndexBuildError(f"FAISS cannot build index factory {factory!r}: {str(error).splitlines()[-1]}") from None
    if candidate.ef_construction:
        if not isinstance(index, faiss.IndexHNSW):
            raise IndexBuildError(f"efConstruction applies to HNSW graphs (e.g. HNSW32,Flat), not to {factory!r}")
        index.hnsw.efConstruction = candidate.ef_construction
    ivf = ivf_of(index)
    if isinstance(faiss.downcast_index(ivf) if ivf is not None else None, faiss.IndexIVFPQ):
        # polysemous codes serve Hamming-filtered search (`ht`), which tuning never uses; training
        # them took 95% of an IVF256,PQ16x8 training at d 768 (92 s against 5 s)
        faiss.downcast_index(ivf).do_polysemous_training = False
    if ivf is not None and isinstance(faiss.downcast_index(ivf), faiss.IndexIVFFastScan):
        # FAISS's factory encodes inner-product fast-scan codes without the residual to their list
        # centre; with it, 4-bit codes order a list as well as 8-bit PQ4 codes do (recall@20 0.92
        # against 0.68 on the tests' clustered vectors)
        ivf.by_residual = True
    if isinstance(index, faiss.IndexPreTransform):
        for position in range(index.chain.size()):
            opq = faiss.downcast_VectorTransform(index.chain.at(position))
            if isinstance(opq, faiss.OPQMatrix):  # FAISS's 50 rounds on 65k points took minutes at d 512
                opq.niter, opq.max_train_points = OPQ_ITERATIONS, OPQ_TRAIN_POINTS
    return index


def clustering_index(ivf):
    """The index k-means assigns training points with: the GPUs' when FAISS has them; an HNSW
    graph over the centroids for an inverted file with an HNSW coarse quantizer (log(nlist) per
    point instead of nlist: 16384 lists trained on 655k points of d 512 would take hours of
    exact assignments on two cores); None (FAISS's exact flat one) otherwise."""
    import faiss

    if uses_gpu():
        return faiss.index_cpu_to_all_gpus(faiss.IndexFlatL2(ivf.d))
    if isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexHNSW):
        return faiss.IndexHNSWFlat(ivf.d, 32)
    return None


def train_index(index, sample: np.ndarray) -> None:
    """Train on a sample (k-means assignments through `clustering_index`)."""
    import faiss

    if index.is_trained:
        return
    ivf = ivf_of(index)
    assigner = clustering_index(ivf) if ivf is not None else None
    if assigner is not None:
        ivf.clustering_index = assigner
    pq = getattr(faiss.downcast_index(ivf), "pq", None) if ivf is not None else None
    if pq is not None and hasattr(pq, "cp"):
        pq.cp.max_points_per_centroid = PQ_POINTS_PER_CENTROID
    try:
        index.train(sample)
    finally:
        if assigner is not None:
            ivf.clustering_index = None  # FAISS keeps a bare pointer; the assigner dies with this frame


# --------------------------------------------------------------------------------------------
# Screening on a sample


def _remapped(index, rows: np.ndarray):
    """`index.search` answering with the corpus rows of the sample positions it holds."""
    def search(queries: np.ndarray, k: int):
        scores, positions = index.search(queries, k)
        return scores, np.where(positions >= 0, rows[np.maximum(positions, 0)], -1)

    return search


@dataclass
class Screened:
    """The winner of screening: its search parameters and factory on the sample, and the built
    index itself when the sample was the whole corpus."""

    candidate: Candidate
    parameters: str
    sample_factory: str
    index: object = None
    build_seconds: float = 0.0


def screen(folder: EmbeddingFolder, kind: str, options: list[Candidate], queries: np.ndarray, k: int, target: float,
           sample_size: int = SCREEN_SAMPLE) -> tuple[Screened | None, list[dict], dict]:
    """Build each candidate on a sample of the corpus and sweep its breadth to `target` (see the
    module docstring).

    Returns:
        The winner (None when exact search is the fastest or nothing meets the target), a record
        per candidate, and the sample's figures.
    """
    import faiss

    n, d = len(folder), folder.dim
    rows = _sample_rows(n, min(n, sample_size), seed=3)
    scale = len(rows) / n
    k_sample = min(len(rows), k if scale == 1 else max(SCREEN_K_MIN, round(k * scale)))
    vectors = folder.gather(kind, rows)
    flat = faiss.IndexFlatIP(d)
    flat.add(vectors)
    started = time.perf_counter()
    _, positions = flat.search(queries, k_sample)
    exact_seconds = (time.perf_counter() - started) / len(queries)  # a first estimate: the sweeps prune by it
    exact = rows[positions]
    del flat
    fastest = exact_seconds if Candidate("Flat") in options else math.inf
    winner, records = None, []
    graph_worth_refining = False
    screening_started = time.perf_counter()
    budget = math.inf
    trained = None  # (factory, training points, seconds) of the first inverted file trained
    for candidate in (c for c in options if c.factory != "Flat"):
        if candidate.ef_construction and candidate.ef_construction > EF_CONSTRUCTIONS[0] and not graph_worth_refining:
            records.append({**candidate.as_dict(), "skipped": f"the efConstruction {EF_CONSTRUCTIONS[0]} graph neither "
                            f"missed the target at its widest search nor came within {GRAPH_MARGIN}x of the best"})
            continue
        left = budget - (time.perf_counter() - screening_started)
        if left <= 0:
            records.append({**candidate.as_dict(), "skipped": f"the tuning budget ({budget:.0f} s) was spent"})
            continue
        factory = scaled_factory(candidate.factory, scale)
        training = training_size(factory, len(rows))
        expected = _expected_training(factory, training, trained)
        if expected > left:
            records.append({**candidate.as_dict(), "skipped": f"its training on the sample would take ~{expected:.0f} s "
                            f"(projected from the first candidate's), more than the {left:.0f} s left of the tuning budget"})
            continue
        started = time.perf_counter()
        index = new_index(candidate, d, factory)
        train_index(index, vectors[_sample_rows(len(rows), training, seed=4)])
        if trained is None and ivf_of(index) is not None:
            trained = (factory, training, time.perf_counter() - started)
        by_rows = ivf_of(index) is not None and refine_of(index) is None  # ids are corpus rows: re-rank from disk works
        if by_rows:
            index.add_with_ids(vectors, rows)
        elif not _add_within(index, vectors, started + left):
            records.append({**candidate.as_dict(), "skipped": f"its build on the sample would take longer than the "
                            f"{left:.0f} s left of the tuning budget"})
            del index
            continue
        build_seconds = time.perf_counter() - started
        if budget == math.inf:  # what the full build of the first (the likeliest) candidate will take
            budget = max(SCREEN_FLOOR_SECONDS, TUNING_SHARE * build_seconds / scale)
        result = sweep(index, queries, exact, target, beat=fastest, search=None if by_rows else _remapped(index, rows),
                       folder=folder, kind=kind, disk_factors=DISK_FACTORS if candidate.rerank_from_disk else ())
        best = result.best
        if candidate.ef_construction == EF_CONSTRUCTIONS[0]:  # would a better-built graph win?
            graph_worth_refining = (not best.meets(target) and not result.pruned) or (
                best.meets(target) and best.seconds_per_query <= GRAPH_MARGIN * fastest)
        records.append({**candidate.as_dict(), "sample_factory": factory, "search_parameters": best.parameters,
                        "refine_factor": best.refine_factor, "recall": best.recall,
                        "recall_lower_bound": best.recall_lower_bound, "seconds_per_query": best.seconds_per_query,
                        "speed_vs_exact": exact_seconds / best.seconds_per_query, "build_seconds": round(build_seconds, 2),
                        "settings_measured": len(result.tried), "meets_target": best.meets(target),
                        **({"stopped": result.stopped} if result.stopped and not best.meets(target) else {})})
        if best.meets(target) and best.seconds_per_query < fastest:
            # a sample that is the whole corpus holds the index itself: kept, not built again
            fastest, winner = best.seconds_per_query, Screened(candidate, best.parameters, factory,
                                                               index if scale == 1 else None, build_seconds)
        del index
    sample = {"vectors": len(rows), "k": k_sample, "exact_seconds_per_query": exact_seconds}
    return winner, records, sample


def _expected_training(factory: str, points: int, trained: tuple[str, int, float] | None) -> float:
    """Seconds an inverted file's training on `points` should take, from the first one trained:
    k-means grows with points x lists. 0 when nothing was trained yet, or for a graph."""
    match = re.search(r"IVF(\d+)", factory)
    if trained is None or match is None:
        return 0.0
    first_factory, first_points, seconds = trained
    lists, first_lists = int(match.group(1)), int(re.search(r"IVF(\d+)", first_factory).group(1))
    return seconds * (points * lists) / (first_points * first_lists)


def _add_within(index, vectors: np.ndarray, deadline: float) -> bool:
    """Add `vectors` (as rows 0, 1, ...) in chunks, giving up once the time the whole would take,
    projected from the chunks so far, passes `deadline` (a graph's build can cost more than all
    the rest of the tuning)."""
    started = time.perf_counter()
    for start in range(0, len(vectors), ADD_CHUNK):
        add_rows(index, vectors[start:start + ADD_CHUNK], start)
        done = start + len(vectors[start:start + ADD_CHUNK])
        elapsed = time.perf_counter() - started
        if done < len(vectors) and started + elapsed * len(vectors) / done > deadline:
            return False
    return True


def scaled_start(parameters: str, sample_factory: str, factory: str) -> dict[str, int]:
    """Breadth to start the full index's sweep at: the sample's nprobe times the ratio of lists."""
    values = dict(part.split("=") for part in parameters.split(",")) if parameters else {}
    start = {"k_factor_rf": int(values["k_factor_rf"])} if "k_factor_rf" in values else {}
    if "nprobe" in values:
        full, sample = (int(re.search(r"IVF(\d+)", f).group(1)) for f in (factory, sample_factory))
        start["nprobe"] = max(1, int(values["nprobe"]) * full // sample)
    if "efSearch" in values:
        start["efSearch"] = int(values["efSearch"])
    return start


# --------------------------------------------------------------------------------------------
# Building

BUILD_FILE = "build.json"  # in parts/: what trained.faiss was trained for, so a resumed build reuses it


def open_folder(emb_dir: str | Path, kind: str) -> EmbeddingFolder:
    """The embedding folder, checked before anything is built: readable arrays of `kind`, their
    rows against the metadata, their dimension against embeddings.json."""
    if kind not in ("image", "text"):
        raise IndexBuildError(f"--kind must be image or text, not {kind!r}")
    folder = EmbeddingFolder(emb_dir, require_info=False)
    folder.check(kind)
    if len(folder) == 0:
        raise IndexBuildError(f"{emb_dir}: no embeddings to index")
    return folder


def _check_writable(out: Path) -> None:
    """Fail before any work, naming the folder, where --out cannot be written (read-only disk)."""
    import tempfile

    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as error:
        raise IndexBuildError(f"{out}: cannot write ({error.strerror or error})") from None


def _trained(candidate: Candidate, folder: EmbeddingFolder, kind: str, parts: Path):
    """The trained empty index: read from `parts` when an interrupted build of the same index
    left it there (its parts were added to it), else trained on a sample and written there."""
    record = {"index": candidate.as_dict(), "ntotal": len(folder), "dim": folder.dim, "kind": kind}
    if (parts / TRAINED_FILE).is_file() and (parts / BUILD_FILE).is_file():
        try:
            if read_json(parts / BUILD_FILE, IndexBuildError) == record:
                return read_faiss(parts / TRAINED_FILE)
        except IndexBuildError:
            pass  # a damaged record or trained index: trained again below
    if parts.exists():
        shutil.rmtree(parts)  # parts of another index or a damaged record: added to another quantizer
    index = new_index(candidate, folder.dim)
    rows = _sample_rows(len(folder), training_size(candidate.factory, len(folder)))
    logger.info("training %s on %d of %d vectors", candidate.factory, len(rows), len(folder))
    train_index(index, folder.gather(kind, rows))
    write_index(index, parts / TRAINED_FILE)
    with writing(parts / BUILD_FILE) as tmp:
        tmp.write_text(json.dumps(record), encoding="utf-8")
    return index


def fill_index(candidate: Candidate, folder: EmbeddingFolder, kind: str, out: Path, *, on_disk: bool, workers: int = 1,
               ray_address: str | None = None, progress: bool = False) -> dict:
    """Train and fill the index of `candidate` and write it as `out`/index.faiss.

    Args:
        candidate: the index to build.
        folder, kind: the embeddings to add.
        out: the index folder; `out`/parts holds the trained index and the shards' parts until
            they are merged (a build interrupted there resumes).
        on_disk: merge inverted lists on disk (index.ivfdata).
        workers: processes adding shards (1: this process); ray_address: Ray tasks instead.
        progress: a progress bar.

    Returns:
        How it was filled: workers, backend, shards added, the workers' peak resident memory.
    """
    from tqdm import tqdm

    out = Path(out)
    with tqdm(total=len(folder), desc=f"index {kind}", unit="vec", disable=not progress) as bar:  # closed before any error
        probe = new_index(candidate, folder.dim)
        if ivf_of(probe) is None:  # exact or graph: one process, rows in order
            if not probe.is_trained:
                train_index(probe, folder.gather(kind, _sample_rows(len(folder), training_size(candidate.factory, len(folder)))))
            for number, (start, block) in zip(folder.numbers, folder.iter_arrays(kind)):
                add_rows(probe, finite_block(block, folder.layout.array_source(kind, number), start), start)
                bar.update(len(block))
            bar.close()
            write_index(probe, out / INDEX_FILE)
            return {"workers": 1, "backend": "this process"}
        parts = out / PARTS_DIR
        _trained(candidate, folder, kind, parts)
        # local workers share this machine's CPUs; a Ray task takes one CPU of whichever node runs it
        threads = 1 if ray_address else (max(1, usable_cpus() // workers) if workers > 1 else 0)
        tasks = []
        for number, start, count in zip(folder.numbers, folder.offsets[:-1], folder.counts):
            part = parts / f"part_{number}.faiss"
            if part.is_file():
                bar.update(count)
            else:
                tasks.append(ShardTask(str(folder.root), kind, int(number), int(start), str(parts / TRAINED_FILE),
                                       str(part), threads))
        results = run_tasks(tasks, workers, ray_address, progress=lambda result: bar.update(result["rows"]))
    merged = merge_parts(parts / TRAINED_FILE, [parts / f"part_{number}.faiss" for number in folder.numbers],
                         out / IVFDATA_FILE if on_disk else None)
    write_index(merged, out / INDEX_FILE)
    shutil.rmtree(parts)
    return {"workers": workers, "backend": "ray" if ray_address else ("processes" if workers > 1 else "this process"),
            "shards_added": len(tasks), "worker_peak_rss_bytes": max((r["peak_rss_bytes"] for r in results), default=0)}


def _merge_on_disk(candidate: Candidate, n: int, d: int, max_memory: int | None, on_disk: bool | None) -> bool:
    """On-disk lists when asked, or by default when the index takes more than half the budget;
    fast-scan codes and a float16 re-rank copy stay in memory (FAISS keeps no on-disk form of them)."""
    import faiss

    probe = new_index(candidate, d)
    ivf = ivf_of(probe)
    mergeable = ivf is not None and refine_of(probe) is None and not isinstance(faiss.downcast_index(ivf), faiss.IndexIVFFastScan)
    if on_disk and not mergeable:
        raise IndexBuildError(f"{candidate.factory!r}: only inverted files of plain codes (not fast-scan x4fs codes, "
                              "not Refine) can be merged on disk; drop --on-disk")
    if on_disk is None:
        return bool(mergeable and max_memory is not None and candidate.bytes(n, d) > max_memory / 2)
    return bool(on_disk)


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
    max_tuning_queries: int = 300,
    on_disk: bool | None = None,
    refine: bool = True,
    workers: int = 1,
    ray_address: str | None = None,
    ef_construction: int | None = None,
    progress: bool = True,
) -> dict:
    """Choose, build, tune and save an index of `kind` embeddings (see the module docstring).

    Args:
        emb_dir: embedding folder (LAION layout).
        kind: "image" or "text".
        out: index folder to write (index.faiss, index.json, index.ivfdata when on disk).
        factory: a FAISS factory string instead of the automatic choice.
        max_memory: memory budget in bytes for the automatic choice.
        queries: tuning queries (the text embeddings that will be searched).
        queries_source: what the queries are, for index.json.
        target_recall: recall@k to reach.
        k: hits per query that will be asked.
        max_tuning_queries: at most this many queries tune (a random sample of them).
        on_disk: merge the lists on disk (None: when the index takes more than half the budget).
        refine: allow re-ranking from the embeddings on disk.
        workers: processes adding shards in parallel (1: this process).
        ray_address: add shards as Ray tasks instead ("auto", an address, or "local").
        ef_construction: efConstruction of an HNSW `factory`.
        progress: show progress bars.

    Returns:
        index.json's content.
    """
    folder = open_folder(emb_dir, kind)
    out = Path(out)
    _check_writable(out)
    n, d = len(folder), folder.dim
    picked = None
    if queries is not None and len(queries):
        picked = queries if len(queries) <= max_tuning_queries else queries[_sample_rows(len(queries), max_tuning_queries, 1)]
        picked = np.ascontiguousarray(picked, dtype=np.float32)
        if picked.ndim != 2 or picked.shape[1] != d:
            raise IndexBuildError(f"the tuning queries are {picked.shape[-1]}-dimensional and the embeddings of {emb_dir} "
                                  f"{d}-dimensional: they come from another model")
    started = time.perf_counter()
    automatic = factory is None
    screening, start, screened = None, None, None
    if not automatic:
        candidate = Candidate(factory, ef_construction=ef_construction)
        new_index(candidate, d)
    else:
        options = candidates(n, d, max_memory, refine)
        candidate = options[0] if len(options) == 1 else Candidate(choose_factory(n, d, max_memory))
        if len(options) > 1 and picked is not None:
            screened, records, sample = screen(folder, kind, options, picked, k, target_recall)
            if screened is not None:
                candidate = screened.candidate
                start = scaled_start(screened.parameters, screened.sample_factory, candidate.factory)
            elif Candidate("Flat") in options:
                candidate = Candidate("Flat")
            screening = {"sample": sample, "candidates": records, "chosen": candidate.name,
                         "seconds": round(time.perf_counter() - started, 2)}
    screen_seconds = time.perf_counter() - started
    merge_on_disk = _merge_on_disk(candidate, n, d, max_memory, on_disk)
    if screened is not None and screened.index is not None and not merge_on_disk:
        write_index(screened.index, out / INDEX_FILE)
        filled, build_seconds = {"workers": 1, "built_while_screening": True}, screened.build_seconds
        screen_seconds -= screened.build_seconds
    else:
        started = time.perf_counter()
        filled = fill_index(candidate, folder, kind, out, on_disk=merge_on_disk, workers=workers, ray_address=ray_address,
                       progress=progress)
        build_seconds = time.perf_counter() - started
    import faiss

    info = {
        "factory": candidate.factory,
        "ef_construction": candidate.ef_construction,
        "kind": kind,
        "metric": "inner_product",
        "ntotal": int(n),
        "dim": int(d),
        "on_disk": merge_on_disk,
        "build_seconds": round(build_seconds, 2),
        "build": filled,
        "index_bytes": index_bytes(out),
        "embeddings": str(Path(emb_dir).resolve()),
        "identity": folder.info.get("identity"),
        "faiss_version": faiss.__version__,
        **({"screening": screening} if screening else {}),
    }
    return tune_index(out, folder, info, picked, queries_source, target_recall, k, max_tuning_queries, refine,
                      max_memory=max_memory, choose_exact=automatic, start=start, spent_seconds=screen_seconds)


# --------------------------------------------------------------------------------------------
# Tuning the built index


class ExactSearch:
    """The exact search a user would run within the memory budget: `IndexFlatIP` in memory when
    the float32 vectors fit, else shard by shard from the embedding folder."""

    def __init__(self, folder: EmbeddingFolder, kind: str, max_memory: int | None):
        import faiss

        self.folder, self.kind = folder, kind
        self.bytes = len(folder) * folder.dim * 4
        self.in_memory = self.bytes <= exact_budget(max_memory)
        self.index = None
        if self.in_memory:
            self.index = faiss.IndexFlatIP(folder.dim)
            for _, block in folder.iter_arrays(kind):
                self.index.add(block)
        self.name = "IndexFlatIP in memory" if self.in_memory else \
            "IndexFlatIP shard by shard from disk (its vectors do not fit the memory budget)"

    def search(self, queries: np.ndarray, k: int):
        if self.index is not None:
            return self.index.search(queries, k)
        return exact_neighbours(self.folder, self.kind, queries, k)


def timing_batch(exact: ExactSearch, exact_seconds_per_query: float, available: int) -> int:
    """Queries to time per search: as many as exact search in memory answers in about
    `TIMING_SECONDS`, within `TIMING_QUERIES`; every one available for exact search from disk,
    which reads the whole corpus per search whatever the batch."""
    fewest, most = TIMING_QUERIES
    if not exact.in_memory:
        return min(available, most)
    return int(min(available, most, max(fewest, TIMING_SECONDS / max(exact_seconds_per_query, 1e-9))))


def tune_index(
    out: str | Path,
    folder: EmbeddingFolder,
    info: dict,
    queries: np.ndarray | None,
    queries_source: str = "",
    target_recall: float = 0.95,
    k: int = 100,
    max_tuning_queries: int = 300,
    refine: bool = True,
    max_memory: int | None = None,
    choose_exact: bool = False,
    start: dict[str, int] | None = None,
    spent_seconds: float = 0.0,
) -> dict:
    """Tune the built index in `out` for `queries` and write `info` with the outcome as index.json
    (also to re-tune an existing index for other queries or another target).

    Args:
        out: the index folder.
        folder: the embedding folder it was built from.
        info: index.json's content so far (factory, kind, ...).
        queries: tuning queries, or None (FAISS defaults are kept and recall is unknown).
        queries_source: what the queries are.
        target_recall: recall@k to reach.
        k: hits per query.
        max_tuning_queries: at most this many queries tune.
        refine: allow re-ranking from the embeddings on disk when the codes miss the target.
        max_memory: the memory budget (what exact search may use).
        choose_exact: replace the index by exact search when that fits and the index misses the
            target or is not faster by more than its measured spread.
        start: breadth to start the sweep at (scaled from screening).
        spent_seconds: tuning seconds already spent (screening), added to `tuning_seconds`.

    Returns:
        index.json's content.
    """
    out = Path(out)
    started = time.perf_counter()
    kind, factory = info["kind"], info["factory"]
    parameters, refine_factor, recall, recall_bound, seconds_per_query = "", 1, 1.0, 1.0, None
    tuning: dict = {"queries": 0, "source": queries_source}
    extra: dict = {"speed_vs_exact": 1.0, "recall_lower_bound": 1.0, "meets_target": True} if factory == "Flat" else {}
    if factory != "Flat" and queries is not None and len(queries):
        picked = queries if len(queries) <= max_tuning_queries else queries[_sample_rows(len(queries), max_tuning_queries, 1)]
        if start is not None:  # screening chose on every query; checking its choice at full scale needs fewer
            picked = picked[:FULL_SCALE_QUERIES]
        picked = np.ascontiguousarray(picked, dtype=np.float32)
        k_tune = min(k, len(folder))
        phase = time.perf_counter()
        exact = ExactSearch(folder, kind, max_memory)
        searched = time.perf_counter()
        _, truth = exact.search(picked, k_tune)
        exact_per_query = (time.perf_counter() - searched) / len(picked)  # sizes the timing batch below
        phases = {"exact_neighbours": time.perf_counter() - phase}
        phase = time.perf_counter()
        searchable = read_index(out, parameters="", rerank=False)
        result = sweep(searchable, picked, truth, target_recall, start=start, folder=folder, kind=kind,
                       disk_factors=DISK_FACTORS if refine else ())
        phases["sweep"] = time.perf_counter() - phase
        best = result.best
        parameters, refine_factor = best.parameters, best.refine_factor
        recall, recall_bound, seconds_per_query = best.recall, best.recall_lower_bound, best.seconds_per_query
        tuned = RefinedIndex(searchable, folder, kind, refine_factor) if refine_factor > 1 else searchable
        phase = time.perf_counter()
        speed = compare_speed(tuned.search, exact.search, picked[:timing_batch(exact, exact_per_query, len(picked))], k_tune)
        phases["speed"] = time.perf_counter() - phase
        tuning = {"queries": len(picked), "source": queries_source, "k": k_tune, "margin_standard_errors": RECALL_MARGIN,
                  "settings_measured": len(result.tried),
                  "plain_recall": max((t.recall for t in result.tried if t.refine_factor == 1), default=None),
                  "speed_pairs": speed.pairs, "timed_queries": speed.queries,
                  "seconds": {"screening": round(spent_seconds, 2), **{name: round(v, 2) for name, v in phases.items()}}}
        candidate = {"factory": factory, "search_parameters": parameters, "refine_factor": refine_factor,
                     "recall": recall, "recall_lower_bound": recall_bound, "seconds_per_query": speed.index_seconds_per_query,
                     "index_bytes": info["index_bytes"], "speed_vs_exact": speed.median,
                     "speed_vs_exact_bounds": [speed.lower_bound, speed.upper_bound]}
        extra = {"exact_seconds_per_query": speed.exact_seconds_per_query, "exact_measured": exact.name,
                 "speed_vs_exact": speed.median, "speed_vs_exact_bounds": [speed.lower_bound, speed.upper_bound],
                 "speed_vs_exact_cpu": speed.cpu_median,
                 "speed_vs_exact_cpu_bounds": [speed.cpu_lower_bound, speed.cpu_upper_bound],
                 "faster_than_exact": speed.faster, "candidates": [candidate]}
        seconds_per_query = speed.index_seconds_per_query
        if exact.in_memory:
            extra["candidates"].append({"factory": "Flat", "search_parameters": "", "refine_factor": 1, "recall": 1.0,
                                        "recall_lower_bound": 1.0, "seconds_per_query": speed.exact_seconds_per_query,
                                        "index_bytes": exact.bytes, "speed_vs_exact": 1.0})
        keep = best.meets(target_recall) and speed.faster
        if choose_exact and not keep and exact.in_memory:
            logger.info("%s (recall %.3f, %.2fx exact, lower bound %.2fx) is not surely faster than exact search at the "
                        "target: keeping exact search", factory, recall, speed.median, speed.lower_bound)
            write_index(exact.index, out / INDEX_FILE)
            (out / IVFDATA_FILE).unlink(missing_ok=True)
            factory, parameters, refine_factor = "Flat", "", 1
            recall, recall_bound, seconds_per_query = 1.0, 1.0, speed.exact_seconds_per_query
            info = {**info, "factory": factory, "ef_construction": None, "on_disk": False, "index_bytes": index_bytes(out)}
            extra.update(speed_vs_exact=1.0, speed_vs_exact_bounds=[1.0, 1.0], speed_vs_exact_cpu=1.0,
                         speed_vs_exact_cpu_bounds=[1.0, 1.0], faster_than_exact=False)
        extra |= {"recall_lower_bound": recall_bound, "meets_target": recall_bound >= target_recall}
        if recall_bound < target_recall:
            extra["verdict"] = (
                f"no index within the memory budget reaches recall@{k_tune} {target_recall} (with a margin of "
                f"{RECALL_MARGIN:g} standard errors over the tuning queries): the best is {recall:.3f} "
                f"({factory}{', ' + parameters if parameters else ''}"
                f"{f', re-ranking {refine_factor}x candidates' if refine_factor > 1 else ''}; lower bound {recall_bound:.3f}); "
                f"exact search reaches it with {exact.bytes / 1e6:,.0f} MB of vectors (--max-memory "
                f"{math.ceil(exact.bytes / 0.9 / 2**20)}M)")
            logger.warning(extra["verdict"])
        elif factory != "Flat" and not speed.faster:
            extra["verdict"] = (f"{factory} is not surely faster than exact search ({exact.name}) on these queries: "
                                f"{speed.median:.2f}x its queries/s (lower bound {speed.lower_bound:.2f}x; by CPU time "
                                f"{speed.cpu_median:.2f}x, lower bound {speed.cpu_lower_bound:.2f}x) over {speed.pairs} "
                                f"interleaved timings" + ("" if choose_exact else "; --factory Flat may serve as well"))
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
        "tuning_seconds": round(spent_seconds + time.perf_counter() - started, 2),
        **extra,
    }
    with writing(out / INFO_FILE) as tmp:
        tmp.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return info
