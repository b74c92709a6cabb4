"""`react index --plan NxD --max-memory M`: what would be built for n x d vectors within a budget,
and how long it would take, without building it.

The factory is the size rule's (`react index` then measures the other candidates on the data);
its bytes come from FAISS's own code sizes; training and adding times are EXTRAPOLATED from a
small build of the same kind of index on this machine (`PLAN_LISTS` lists, `PLAN_ADDED` vectors
of dimension d standing in for embeddings): assigning a vector to its list grows with the lists
(a flat coarse quantizer) or their logarithm (an HNSW one, which k-means then uses as well),
k-means with training points x that cost, and codebook training (PQ, OPQ, on capped samples) and
encoding not at all. Adding is spread over workers; training is done once, on one machine.
"""
from __future__ import annotations

import math
import time

import numpy as np

from react_core.machine import usable_cpus
from react_core.retrieval.ann import ivf_of
from react_core.retrieval.index import (
    Candidate,
    candidates,
    choose_factory,
    clustering_index,
    index_size,
    new_index,
    scaled_factory,
    train_index,
    training_size,
)

PLAN_LISTS = 256
PLAN_ADDED = 20_000
DAY_SECONDS = 86_400


def _plan_vectors(count: int, d: int, seed: int = 0) -> np.ndarray:
    """Clustered unit vectors standing in for embeddings in the plan's small build."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((512, d)).astype(np.float32)
    x = centres[rng.integers(0, 512, count)] + rng.standard_normal((count, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def plan(n: int, d: int, max_memory: int | None = None, workers: int = 1) -> dict:
    """What `react index` would build for n x d vectors within `max_memory`, without building it
    (see the module docstring).

    Args:
        n, d: vectors and their dimension.
        max_memory: the memory budget in bytes.
        workers: processes adding shards on this machine (each worker of a cluster a machine like it).

    Returns:
        A dict (`format_plan` prints it).
    """
    import faiss

    factory = choose_factory(n, d, max_memory)
    options = candidates(n, d, max_memory) if factory != "Flat" else [Candidate("Flat")]
    result = {"n": n, "d": d, "max_memory": max_memory, "factory": factory,
              "index_bytes": index_size(factory, n, d), "training_vectors": 0 if factory == "Flat" else training_size(factory, n),
              "candidates": [{"name": c.name, "bytes": c.bytes(n, d)} for c in options],
              "cpus": usable_cpus(), "workers": workers}
    ivf_probe = ivf_of(new_index(Candidate(factory), d)) if factory != "Flat" else None
    if ivf_probe is None:
        result.update(train_seconds=0.0, add_seconds=0.0, extrapolated_from=None)
        return result
    nlist = ivf_probe.nlist
    small_lists = min(nlist, PLAN_LISTS)
    small_factory = scaled_factory(factory, small_lists / nlist)
    small_train = training_size(small_factory, 10 * PLAN_ADDED)
    vectors = _plan_vectors(small_train + PLAN_ADDED, d)
    index = new_index(Candidate(small_factory), d)
    started = time.perf_counter()
    train_index(index, vectors[:small_train])
    train_seconds = time.perf_counter() - started
    ivf = ivf_of(index)
    coarse = faiss.Clustering(ivf.d, small_lists, ivf.cp)
    started = time.perf_counter()
    coarse.train(_pre_transformed(index, vectors[:small_train]), clustering_index(ivf) or faiss.IndexFlatL2(ivf.d))
    kmeans_seconds = time.perf_counter() - started
    added = vectors[small_train:]
    started = time.perf_counter()
    ivf.quantizer.search(_pre_transformed(index, added), 1)
    assign_seconds = time.perf_counter() - started
    started = time.perf_counter()
    index.add(added)
    add_seconds = time.perf_counter() - started
    encode_per_vector = max(0.0, add_seconds - assign_seconds) / len(added)
    graph = "_HNSW" in factory  # assignments through a graph: log(lists) per point, for k-means too
    assign_scale = math.log2(nlist) / math.log2(small_lists) if graph else nlist / small_lists
    full_train = training_size(factory, n)
    # k-means grows with points x assignment cost; codebooks (PQ, OPQ) train on capped samples: constant
    train_full = kmeans_seconds * (full_train * assign_scale) / small_train + max(0.0, train_seconds - kmeans_seconds)
    add_full = n * (encode_per_vector + assign_seconds / len(added) * assign_scale)
    per_worker = add_full / max(1, workers)
    spare = DAY_SECONDS - train_full
    result.update(
        train_seconds=train_full, add_seconds=add_full, add_seconds_per_worker=per_worker,
        workers_for_a_day=None if spare <= 0 else max(1, math.ceil(add_full / spare)),
        on_disk=bool(max_memory is not None and result["index_bytes"] > max_memory / 2 and "x4fs" not in factory),
        extrapolated_from={"factory": small_factory, "training_vectors": small_train, "added_vectors": len(added),
                           "train_seconds": train_seconds, "kmeans_seconds": kmeans_seconds,
                           "assign_seconds": assign_seconds, "add_seconds": add_seconds,
                           "faiss_version": faiss.__version__},
    )
    return result


def _pre_transformed(index, vectors: np.ndarray) -> np.ndarray:
    """`vectors` as the coarse quantizer sees them (after an OPQ rotation, if any)."""
    import faiss

    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexPreTransform):
        for position in range(index.chain.size()):
            vectors = faiss.downcast_VectorTransform(index.chain.at(position)).apply(vectors)
    return vectors


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * DAY_SECONDS:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / DAY_SECONDS:.1f} days"


def format_plan(result: dict) -> str:
    """The plan as lines a user reads before building."""
    budget = f"within {result['max_memory'] / 2**30:.1f} GiB" if result["max_memory"] else "without a memory budget"
    lines = [f"plan for {result['n']:,} x {result['d']} vectors {budget} (nothing is built)",
             f"  index:           {result['factory']} (the size rule's; `react index` measures these candidates on the "
             f"data and keeps the fastest that reaches the target recall)"]
    lines += [f"                   - {c['name']}: {c['bytes'] / 1e9:,.2f} GB" for c in result["candidates"]]
    lines.append(f"  index bytes:     {result['index_bytes'] / 1e9:,.2f} GB ({result['index_bytes']:,} bytes)"
                 + (", lists merged on disk" if result.get("on_disk") else ""))
    if result.get("extrapolated_from") is None:
        lines.append("  training:        none (exact search: the vectors are copied as they are)")
        return "\n".join(lines)
    small = result["extrapolated_from"]
    lines += [
        f"  training sample: {result['training_vectors']:,} vectors",
        f"  EXTRAPOLATED from a small build on this machine ({small['factory']}, {small['training_vectors']:,} training and "
        f"{small['added_vectors']:,} added vectors of dimension {result['d']}, {result['cpus']} CPUs: trained in "
        f"{small['train_seconds']:.2f} s, added in {small['add_seconds']:.2f} s); real times may differ by a factor of several:",
        f"  training:        ~{_duration(result['train_seconds'])} (once, on one machine; FAISS trains on the GPUs where it has them)",
        f"  adding:          ~{_duration(result['add_seconds'])} in one process"
        + (f", ~{_duration(result['add_seconds_per_worker'])} with {result['workers']} workers" if result["workers"] > 1 else ""),
    ]
    if result["workers_for_a_day"] is None:
        lines.append("  in a day:        training alone takes more than a day here: train on a GPU, or give a smaller "
                     "--max-memory budget's coarser index")
    else:
        lines.append(f"  in a day:        {result['workers_for_a_day']} worker(s) like this machine add the vectors within the "
                     "day left after training (`react index --workers N` on one machine, `--ray ADDRESS` on a cluster)")
    return "\n".join(lines)
