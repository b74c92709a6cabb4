"""FAISS indexes as files: read with checks, searched, filled shard by shard in parallel workers,
merged, and re-ranked from the embeddings on disk.

An index folder holds `index.faiss` (what `faiss.read_index` reads), `index.json` (what
`react index` chose and measured) and, for inverted lists merged on disk, `index.ivfdata`. Every
fault found while reading one (a truncated or empty file, malformed JSON, an index whose dimension
or size is not the one `index.json` or the queries say) is an `IndexBuildError` naming the file.

Filling: the empty index is trained once and written to `parts/trained.faiss`; each shard of the
embedding folder is then added to its own copy of it by a worker that reads only that shard
(`add_part`), which writes `parts/part_N.faiss`. Workers are this process (one worker), local
processes, or Ray tasks on a cluster whose machines share the folders. The parts are merged in
shard order into one index (not N sub-indices searched together), in memory or on disk
(`faiss.contrib.ondisk.merge_ondisk`, one `index.ivfdata`), so it holds the same inverted lists,
in the same order, as adding every shard in one process: its search results are the same. Finished parts are kept until the merge, so an
interrupted build resumes.
"""
from __future__ import annotations

import contextlib
import functools
import re
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from react_core.errors import ReactError
from react_core.io import atomic_path, read_json
from react_core.retrieval.embed import EmbeddingError, EmbeddingFolder

INDEX_FILE = "index.faiss"
INFO_FILE = "index.json"
IVFDATA_FILE = "index.ivfdata"
PARTS_DIR = "parts"
TRAINED_FILE = "trained.faiss"
ID_BYTES = 8
REQUIRED_INFO = {"factory": str, "kind": str, "ntotal": int, "dim": int}
REFINE_BATCH = 64

_SOURCES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # index object -> the file it was read from


class IndexBuildError(ReactError):
    """An index folder or build request that cannot be used; names the file or option."""


# --------------------------------------------------------------------------------------------
# Kinds of index


def ivf_of(index):
    """The inverted file inside `index` (through OPQ, Refine, ...), or None."""
    import faiss

    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def refine_of(index):
    """The `IndexRefine` that `index` is (a `...,Refine(SQfp16)` factory), or None."""
    import faiss

    index = faiss.downcast_index(index)
    return index if isinstance(index, faiss.IndexRefine) else None


def is_fast_scan(index) -> bool:
    import faiss

    ivf = ivf_of(index)
    return ivf is not None and isinstance(faiss.downcast_index(ivf), faiss.IndexIVFFastScan)


def add_rows(index, block: np.ndarray, start: int) -> None:
    """Add `block` as global rows start, start + 1, ...: ids of an inverted file, positions of a
    flat or graph index (which must then be filled in row order), both for a refined one."""
    ids = np.arange(start, start + len(block), dtype=np.int64)
    refine = refine_of(index)
    if refine is not None:
        refine.base_index.add_with_ids(block, ids)
        refine.refine_index.add(block)
        refine.ntotal = refine.base_index.ntotal
    elif ivf_of(index) is not None:
        index.add_with_ids(block, ids)
    else:
        if index.ntotal != start:
            raise IndexBuildError(f"rows must be added in order: the index holds {index.ntotal}, the block starts at {start}")
        index.add(block)


def finite_block(block: np.ndarray, source: str, start: int) -> np.ndarray:
    """`block` as float32, or an error naming the file and the first row that is not finite."""
    block = np.ascontiguousarray(block, dtype=np.float32)
    bad = ~np.isfinite(block).all(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise IndexBuildError(f"{source}: row {row} (global row {start + row}) holds NaN or infinite values")
    return block


# --------------------------------------------------------------------------------------------
# Writing


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[Path]:
    """`atomic_path` whose write failures (a read-only or full disk) are one line naming the file;
    the temporary file is removed, so nothing half-written is left."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            yield tmp
    except OSError as error:
        raise IndexBuildError(f"{path}: cannot write ({error.strerror or error})") from None
    except RuntimeError as error:  # FAISS's writers report fwrite/open failures as RuntimeError
        system = re.search(r"\(([^()]+)\)\s*$", _faiss_reason(error))  # "... 65491 != 768000 (File too large)"
        raise IndexBuildError(f"{path}: cannot write ({system.group(1) if system else _faiss_reason(error)})") from None


def write_index(index, path: str | Path) -> None:
    import faiss

    with writing(path) as tmp:
        faiss.write_index(index, str(tmp))


def _faiss_reason(error: Exception) -> str:
    """The last line of a FAISS exception, without the C++ function and source location."""
    line = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
    located = re.match(r"Error in .*? at \S+:\d+: (.*)$", line)
    return located.group(1) if located else line


# --------------------------------------------------------------------------------------------
# Filling in parallel workers


@dataclass(frozen=True)
class ShardTask:
    """One shard to add to a copy of the trained index: what a worker needs, and nothing of the
    rest of the corpus (its memory is the trained index, this shard and its codes)."""

    emb_dir: str
    kind: str
    number: int
    start: int
    trained: str
    part: str
    threads: int = 0


@functools.lru_cache(maxsize=4)
def _worker_folder(emb_dir: str) -> EmbeddingFolder:
    """The folder as a worker sees it (shard offsets only; arrays are opened one at a time)."""
    return EmbeddingFolder(emb_dir, require_info=False)


def _peak_rss() -> int:
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def add_part(task: ShardTask) -> dict:
    """Add one shard to a copy of the trained index and write it as `task.part` (atomically);
    run by each worker. Returns the shard number, its rows, seconds and the worker's peak RSS."""
    import faiss

    started = time.perf_counter()
    if task.threads:
        faiss.omp_set_num_threads(task.threads)
    index = read_faiss(task.trained)
    folder = _worker_folder(task.emb_dir)
    try:
        array = folder.as_vectors(folder.array(task.kind, task.number))
    except EmbeddingError as error:
        raise IndexBuildError(str(error)) from None
    add_rows(index, finite_block(array, folder.layout.array_source(task.kind, task.number), task.start), task.start)
    write_index(index, task.part)
    return {"number": task.number, "rows": int(len(array)), "seconds": time.perf_counter() - started,
            "peak_rss_bytes": _peak_rss()}


def run_tasks(tasks: list[ShardTask], workers: int = 1, ray_address: str | None = None, progress=None) -> list[dict]:
    """`add_part` of every task: in this process (one worker), in `workers` local processes, or
    as Ray tasks of one CPU each (`ray_address`: "auto", an address, or "local" for a Ray started
    here with `workers` CPUs). `progress` is called with each finished task's result."""
    results = []

    def done(result: dict) -> None:
        results.append(result)
        if progress is not None:
            progress(result)

    if ray_address:
        return _run_on_ray(tasks, workers, ray_address, done) or results
    if workers <= 1:
        for task in tasks:
            done(add_part(task))
        return results
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # spawn: a forked child of a process whose OpenMP threads have run can hang in FAISS
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(add_part, task) for task in tasks]
        try:
            for future in as_completed(futures):
                done(future.result())
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return results


def _run_on_ray(tasks: list[ShardTask], workers: int, address: str, done) -> list[dict]:
    try:
        import ray
    except ImportError:
        raise IndexBuildError("--ray needs Ray: pip install -e \".[ray]\"") from None
    if not ray.is_initialized():
        if address == "local":
            ray.init(num_cpus=max(1, workers), include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    remote = ray.remote(add_part).options(num_cpus=1)
    pending = [remote.remote(task) for task in tasks]
    results = []
    while pending:
        finished, pending = ray.wait(pending, num_returns=1)
        result = ray.get(finished[0])
        results.append(result)
        done(result)
    return results


def merge_parts(trained: str | Path, parts: list[str | Path], ivfdata: str | Path | None = None):
    """The trained index with every part's vectors, in the order of `parts`: inverted lists
    merged in memory, or on disk into `ivfdata` (`faiss.contrib.ondisk.merge_ondisk`)."""
    import faiss

    merged = read_faiss(trained)
    if ivfdata is not None:
        from faiss.contrib.ondisk import merge_ondisk

        Path(ivfdata).unlink(missing_ok=True)
        try:
            merge_ondisk(merged, [str(p) for p in parts], str(ivfdata))
        except RuntimeError as error:
            raise IndexBuildError(f"{ivfdata}: cannot merge the parts on disk ({_faiss_reason(error)})") from None
        return merged
    refine = refine_of(merged)
    for path in parts:
        part = read_faiss(path)
        part_refine = refine_of(part)
        if refine is not None:
            refine.base_index.merge_from(part_refine.base_index, 0)
            faiss.downcast_index(refine.refine_index).merge_from(faiss.downcast_index(part_refine.refine_index))
            refine.ntotal = refine.base_index.ntotal
        else:
            merged.merge_from(part, 0)
        del part_refine, part
    return merged


# --------------------------------------------------------------------------------------------
# Reading


def read_faiss(path: str | Path, flags: int | None = None):
    """`faiss.read_index`, a damaged file being an error that names it."""
    import faiss

    path = Path(path)
    if not path.is_file():
        raise IndexBuildError(f"{path} not found (build the index with `react index`)")
    if path.stat().st_size == 0:
        raise IndexBuildError(f"{path}: empty file, not a FAISS index (rebuild it with `react index`)")
    try:
        index = faiss.read_index(str(path), flags) if flags is not None else faiss.read_index(str(path))
    except (RuntimeError, MemoryError) as error:
        raise IndexBuildError(f"{path}: not a readable FAISS index, truncated or damaged "
                              f"({_faiss_reason(error)}); rebuild it with `react index`") from None
    _SOURCES[index] = str(path)
    return index


def read_index_info(index_dir: str | Path) -> dict:
    """index.json of an index folder, checked for the keys every reader needs."""
    path = Path(index_dir) / INFO_FILE
    if not path.is_file():
        raise IndexBuildError(f"{path} not found (build the index with `react index`)")
    info = read_json(path, IndexBuildError)
    if not isinstance(info, dict):
        raise IndexBuildError(f"{path}: expected a JSON object, found {type(info).__name__}")
    for key, kind in REQUIRED_INFO.items():
        if not isinstance(info.get(key), kind) or isinstance(info.get(key), bool):
            raise IndexBuildError(f"{path}: key {key!r} missing or not {'an integer' if kind is int else 'a string'}")
    return info


def _check_ondisk_lists(index, index_dir: Path) -> None:
    """A truncated index.ivfdata would be read past its end (SIGBUS) while searching: compare its
    size with the extent of the lists index.faiss records."""
    import faiss

    ivf = ivf_of(index)
    lists = faiss.downcast_InvertedLists(ivf.invlists) if ivf is not None else None
    if not isinstance(lists, faiss.OnDiskInvertedLists):
        return
    path = index_dir / IVFDATA_FILE
    if path.stat().st_size < lists.totsize:
        raise IndexBuildError(f"{path}: {path.stat().st_size} bytes where the index's lists take {lists.totsize}: "
                              "truncated; rebuild the index with `react index`")


def read_index(index_dir: str | Path, parameters: str | None = None, gpu: bool = False,
               emb_dir: str | Path | None = None, rerank: bool = True):
    """The index, memory-mapped (on-disk inverted lists read from the same folder), with its
    tuned search parameters applied; on the GPUs when asked and FAISS has them.

    Args:
        index_dir: a folder written by `react index`.
        parameters: FAISS search parameters to use instead of the tuned ones.
        gpu: copy the index to the GPUs when FAISS has them.
        emb_dir: the embedding folder to re-rank from, by default the one the index was built
            from; when given, its dimension is checked against the index's.
        rerank: return the plain index even when tuning chose re-ranking from disk.

    Returns:
        A FAISS index, or a `RefinedIndex` when tuning chose re-ranking from disk.
    """
    import faiss

    index_dir = Path(index_dir)
    path = index_dir / INDEX_FILE
    info = read_index_info(index_dir) if (index_dir / INFO_FILE).is_file() else {}
    # On-disk inverted lists are memory-mapped by themselves (IO_FLAG_MMAP on top of them crashes).
    on_disk = (index_dir / IVFDATA_FILE).is_file()
    if info.get("on_disk") and not on_disk:
        raise IndexBuildError(f"{index_dir / IVFDATA_FILE} not found: {index_dir / INFO_FILE} says the lists are on disk")
    index = read_faiss(path, faiss.IO_FLAG_ONDISK_SAME_DIR if on_disk else faiss.IO_FLAG_MMAP)
    if on_disk:
        _check_ondisk_lists(index, index_dir)
    if info and (index.d != info["dim"] or index.ntotal != info["ntotal"]):
        raise IndexBuildError(f"{path} holds {index.ntotal} vectors of dimension {index.d}, {index_dir / INFO_FILE} "
                              f"says {info['ntotal']} of dimension {info['dim']}: not the index it describes")
    folder = None
    if emb_dir is not None:
        folder = _folder(emb_dir)
        if folder.dim != index.d:
            raise IndexBuildError(f"{path} holds vectors of dimension {index.d}, the embeddings of {emb_dir} "
                                  f"are {folder.dim}-dimensional: not their index")
    if parameters is None:
        parameters = info.get("search_parameters") or ""
    if gpu and uses_gpu() and not on_disk:
        index = faiss.index_cpu_to_all_gpus(index)
        _SOURCES[index] = str(path)
    if parameters:
        space = faiss.GpuParameterSpace() if gpu and uses_gpu() else faiss.ParameterSpace()
        try:
            space.set_index_parameters(index, parameters)
        except RuntimeError as error:
            raise IndexBuildError(f"search parameters {parameters!r} do not apply to {path} ({_faiss_reason(error)})") from None
    if not rerank or info.get("refine_factor", 1) <= 1:
        return index
    source = Path(emb_dir or info.get("embeddings", ""))
    if folder is None:
        try:
            folder = EmbeddingFolder(source, require_info=False)
        except EmbeddingError as error:
            raise IndexBuildError(f"{index_dir}: the index re-ranks with the embeddings it was built from, and "
                                  f"{source} cannot be read ({error}); pass the embedding folder (--emb)") from None
    if len(folder) != index.ntotal:
        raise IndexBuildError(f"{source} holds {len(folder)} embeddings and the index {index.ntotal}: not its corpus")
    refined = RefinedIndex(index, folder, info["kind"], int(info["refine_factor"]))
    _SOURCES[refined] = str(path)
    return refined


def _folder(emb_dir: str | Path) -> EmbeddingFolder:
    try:
        return EmbeddingFolder(emb_dir, require_info=False)
    except EmbeddingError as error:
        raise IndexBuildError(str(error)) from None


def uses_gpu() -> bool:
    import faiss

    return hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


def search(index, queries: np.ndarray, k: int, ntotal: int | None = None, batch: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores, rows) in batches; FAISS's -1 (fewer than k found) stays -1 with score -inf,
    and any id outside [0, ntotal) is an error, never a silently wrong sample. Queries of another
    dimension than the index's are an error naming the index file."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if queries.ndim != 2 or queries.shape[1] != index.d:
        source = _SOURCES.get(index, "the index")
        raise IndexBuildError(f"{source} holds vectors of dimension {index.d}, the queries are "
                              f"{queries.shape[-1] if queries.ndim else 0}-dimensional: they come from another model")
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


# --------------------------------------------------------------------------------------------
# Re-ranking from disk


class RefinedIndex:
    """A FAISS index whose `factor * k` candidates are re-scored exactly with the corpus
    embeddings on disk; `search`, `d` and `ntotal` as FAISS's."""

    def __init__(self, index, folder: EmbeddingFolder, kind: str, factor: int):
        self.index = index
        self.folder = folder
        self.kind = kind
        self.factor = factor

    @property
    def ntotal(self) -> int:
        return self.index.ntotal

    @property
    def d(self) -> int:
        return self.index.d

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


def index_bytes(out: str | Path) -> int:
    return sum(p.stat().st_size for p in (Path(out) / INDEX_FILE, Path(out) / IVFDATA_FILE) if p.is_file())
