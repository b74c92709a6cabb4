"""Retrieval at scale: exact IndexFlatIP vs the index `react index` builds, on generated embeddings.

    python benchmarks/retrieval.py                       # 1M x 512, 1000 concepts, 1/8 of exact's memory
    python benchmarks/retrieval.py --n 200000 --eval-queries 200 --classes 200   # a small machine
    python benchmarks/retrieval.py --n 1000000 --classes 20000 --spread 1.5 --templates 10 --memory-fraction 0.5 \
        --eval-queries 200 --k 0                         # one cell of the grid where concepts crowd
    python benchmarks/retrieval.py --work DIR --distributed 2   # the index of DIR built by 2 workers vs 1 process
    python benchmarks/retrieval.py --embed WORLD_DIR --model react-tiny   # embedding throughput only
    python benchmarks/retrieval.py --embed WORLD_DIR --embed-batch-sizes 256 64   # react embed at each batch size

Generator (fixed, seed 0): CLIP embeddings are anisotropic (a few directions carry most of the
variance) and clustered by concept, and text queries sit apart from the images they match (the
modality gap). So, with a random rotation R and per-dimension scales s_j = (1 + j)^-1/2:
  concept centres   c = normalise(z * s @ R),                   z ~ N(0, I), `--classes` of them
  corpus vectors    x = normalise(c_label + spread normalise(z * s @ R)), label uniform, spread 0.8
                    unless --spread (larger: concepts overlap more, less structure for an index)
  --uniform         corpus and queries i.i.d. uniform on the sphere: no structure at all
  queries           q = normalise(c_class + 0.6 g + 0.4 t_template), g a fixed unit "gap" vector,
                    t_template = normalise(z * s @ R), `--templates` of them per class
The corpus is written as a LAION-layout embedding folder (float16 shards of 100k), so the index
is built by the same code as `react index`, with --max-memory = 1/8 of the exact index's bytes (--memory-fraction),
tuned on one sample of the queries and evaluated on a disjoint one.

Building and tuning: `build_seconds` (the chosen index trained and filled) and `tuning_seconds`
(screening the candidates on a sample, exact neighbours of the tuning queries, the breadth sweep
and the interleaved timing against exact search) as index.json records them, and their ratio.

`--distributed W` builds the index already chosen in `--work` (same factory and search
parameters) with 1 and with W worker processes, alternating which goes first over `--repeats`
rounds, and reports the wall-clock ratio and whether the W-worker index returns the same ids and
scores as the single-process one for every evaluation query.

Measured, each search in its own subprocess (so peak RSS is that search's process alone):
recall@10 and @100 (|ANN ∩ exact| / k), queries/s (median and spread of interleaved repeats:
exact, ours, exact, ours, ...), index bytes, peak RSS, build time; then the per-class retrieval
(all class x template queries, k hits each, union per class) with our index. OMP_WAIT_POLICY is
PASSIVE in the children because busy-waiting OpenMP threads collapse on a shared machine.
Where plain search over the codes misses the target recall, tuning turns on re-ranking from the
float16 embeddings on disk (positioned reads, see react_core/retrieval/index.py): index bytes
count what the index adds (codes, ids, lists), not those embeddings, which the LAION layout keeps
on disk anyway; peak RSS is what the searching process holds.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHARD = 100_000


def _rotation_and_scale(d: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    rotation = np.linalg.qr(rng.standard_normal((d, d)))[0].astype(np.float32)
    return rotation, (1.0 + np.arange(d, dtype=np.float32)) ** -0.5


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def generate(folder: Path, n: int, d: int, classes: int, templates: int, seed: int = 0, spread: float = 0.8,
             uniform: bool = False) -> np.ndarray:
    """Write the corpus as an embedding folder; return the [classes * templates, d] queries."""
    import pandas as pd

    from react_core.io import atomic_write_json

    rng = np.random.default_rng(seed)
    rotation, scale = _rotation_and_scale(d, rng)
    centres = _normalise((rng.standard_normal((classes, d)).astype(np.float32) * scale) @ rotation)
    (folder / "img_emb").mkdir(parents=True, exist_ok=True)
    (folder / "metadata").mkdir(exist_ok=True)
    (folder / "skipped").mkdir(exist_ok=True)
    names = []
    for number, start in enumerate(range(0, n, SHARD)):
        stop = min(n, start + SHARD)
        labels = rng.integers(0, classes, stop - start)
        noise = _normalise((rng.standard_normal((stop - start, d)).astype(np.float32) * scale) @ rotation)
        vectors = _normalise(rng.standard_normal((stop - start, d)).astype(np.float32)) if uniform else \
            _normalise(centres[labels] + spread * noise)
        np.save(folder / "img_emb" / f"img_emb_{number}.npy", vectors.astype(np.float16))
        pd.DataFrame({"id": np.arange(start, stop).astype(str), "label": labels}).to_parquet(
            folder / "metadata" / f"metadata_{number}.parquet")
        pd.DataFrame({"id": []}).to_parquet(folder / "skipped" / f"skipped_{number}.parquet")
        names.append(f"generated[{start}:{stop}]")
    gap = _normalise(rng.standard_normal(d).astype(np.float32))
    styles = _normalise((rng.standard_normal((templates, d)).astype(np.float32) * scale) @ rotation)
    queries = _normalise(centres[:, None, :] + 0.6 * gap + 0.4 * styles[None]).reshape(-1, d)
    if uniform:
        queries = _normalise(rng.standard_normal(queries.shape).astype(np.float32))
    atomic_write_json(folder / "embeddings.json", {
        "format": "laion", "identity": {"model": "generated", "seed": seed}, "model": None, "dim": d,
        "dtype": "float16", "normalized": True, "source": "benchmarks/retrieval.py generator", "shards": names})
    return queries


def _peak_rss() -> int:
    """This process's peak resident set (VmHWM). Not getrusage's ru_maxrss: Linux carries that
    over exec from the forking parent, so every child would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _child(args) -> None:
    """One measurement in a fresh process: build the searched index, search, report JSON."""
    import faiss

    from react_core.retrieval.embed import EmbeddingFolder
    from react_core.retrieval.index import read_index

    queries = np.load(args.queries)
    started = time.perf_counter()
    if args.child == "exact":
        folder = EmbeddingFolder(args.emb)
        index = faiss.IndexFlatIP(folder.dim)
        for _, block in folder.iter_arrays("image"):
            index.add(block)
        index_bytes = index.ntotal * index.d * 4
    else:
        index = read_index(args.index)
        index_bytes = sum(p.stat().st_size for p in Path(args.index).glob("index.*") if p.suffix in (".faiss", ".ivfdata"))
    load_seconds = time.perf_counter() - started
    result = {"load_seconds": load_seconds, "index_bytes": int(index_bytes)}
    if args.per_class:
        started = time.perf_counter()
        _, rows = index.search(queries, args.k)
        search_seconds = time.perf_counter() - started
        owners = np.repeat(np.arange(len(queries) // args.templates), args.templates * args.k)
        flat = rows.reshape(-1)
        valid = flat >= 0
        unique = np.unique(owners[valid].astype(np.int64) * (flat.max() + 1) + flat[valid])
        result.update(seconds=time.perf_counter() - started, search_seconds=search_seconds,
                      queries=len(queries), unique_class_samples=int(len(unique)))
    else:
        started = time.perf_counter()
        _, rows = index.search(queries, 100)
        result["seconds"] = time.perf_counter() - started
        result["queries_per_s"] = len(queries) / result["seconds"]
        np.save(args.result, rows)
    result["peak_rss_bytes"] = _peak_rss()
    print(json.dumps(result))


def _run_child(kind: str, work: Path, extra: list[str]) -> dict:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    command = [sys.executable, __file__, "--child", kind, "--emb", str(work / "emb"), "--index", str(work / "index"),
               "--result", str(work / f"rows_{kind}.npy"), *extra]
    output = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(output.strip().splitlines()[-1])


def _recall(found: np.ndarray, exact: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(found, exact)]))


def _bare_loop(bundle, shards: list[str], batch_size: int, workers: int) -> int:
    """The baseline: decode + preprocess in DataLoader workers, encode images and captions, keep nothing."""
    import torch
    from torch.utils.data import DataLoader

    from react_core.data import WebDatasetPairs

    pairs = WebDatasetPairs(shards, transform=bundle.preprocess_val)

    def collate(samples):
        kept = [s for s in samples if s is not None]
        return torch.stack([s["image"] for s in kept]), [pairs.captions[s["index"]] for s in kept]

    count = 0
    with torch.no_grad():
        for images, captions in DataLoader(pairs, batch_size=batch_size, num_workers=workers, collate_fn=collate):
            bundle.model.encode_image(images)
            bundle.model.encode_text(bundle.tokenizer(captions))
            count += len(images)
    return count


def embed_throughput(world: Path, model: str, shards: int, batch_size: int, workers: int, repeats: int) -> dict:
    """Images/s of `embed_corpus` (writing the LAION layout) over a bare open_clip loop on the same
    shards, interleaved repeats; the ratio is the median of per-repeat ratios."""
    import shutil

    import torch

    from react_core.modeling import load_clip
    from react_core.retrieval.embed import embed_corpus

    torch.manual_seed(0)
    bundle = load_clip(model)
    bundle.model.eval()
    files = [str(p) for p in sorted((world / "corpus" / "shards").glob("*.tar"))[:shards]]
    source = Path(tempfile.mkdtemp(prefix="react-embed-src-"))
    for file in files:
        (source / Path(file).name).symlink_to(file)
    ours, bare = [], []
    count = 0

    def run_bare():
        nonlocal count
        started = time.perf_counter()
        count = _bare_loop(bundle, files, batch_size, workers)
        bare.append(count / (time.perf_counter() - started))

    def run_ours():
        out = Path(tempfile.mkdtemp(prefix="react-embed-bench-"))
        started = time.perf_counter()
        summary = embed_corpus(bundle, source, out, batch_size=batch_size, workers=workers, progress=False)
        ours.append((summary["rows"] + len(summary["failed"])) / (time.perf_counter() - started))
        shutil.rmtree(out)

    for repeat in range(repeats):  # alternate which goes first, so neither always gets the warm cache
        for measure in (run_bare, run_ours) if repeat % 2 == 0 else (run_ours, run_bare):
            measure()
        print(f"repeat {repeat}: bare {bare[-1]:.1f} img/s, react embed {ours[-1]:.1f} img/s", flush=True)
    ratios = [o / b for o, b in zip(ours, bare)]
    return {"model": model, "images": count, "batch_size": batch_size, "workers": workers,
            "bare_img_per_s_median": statistics.median(bare), "ours_img_per_s_median": statistics.median(ours),
            "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)}


def embed_batch_sizes(world: Path, model: str, shards: int, sizes: list[int], workers: int, repeats: int) -> dict:
    """Images/s of `embed_corpus` at each batch size on the same shards, interleaved repeats; ratios
    are the medians of per-repeat ratios against the first size."""
    import shutil

    import torch

    from react_core.modeling import load_clip
    from react_core.retrieval.embed import embed_corpus

    torch.manual_seed(0)
    bundle = load_clip(model)
    source = Path(tempfile.mkdtemp(prefix="react-embed-src-"))
    for file in sorted((world / "corpus" / "shards").glob("*.tar"))[:shards]:
        (source / file.name).symlink_to(file)
    rates: dict[int, list[float]] = {size: [] for size in sizes}
    for repeat in range(repeats):
        for size in sizes if repeat % 2 == 0 else sizes[::-1]:
            out = Path(tempfile.mkdtemp(prefix="react-embed-bench-"))
            started = time.perf_counter()
            summary = embed_corpus(bundle, source, out, batch_size=size, workers=workers, progress=False)
            rates[size].append((summary["rows"] + len(summary["failed"])) / (time.perf_counter() - started))
            shutil.rmtree(out)
        print(f"repeat {repeat}: " + ", ".join(f"batch {size} {rates[size][-1]:.1f} img/s" for size in sizes), flush=True)
    first = rates[sizes[0]]
    return {"model": model, "workers": workers, "threads": torch.get_num_threads(),
            **{f"batch_{size}": {"img_per_s_median": statistics.median(rate),
                                 "ratio_median": statistics.median([r / f for r, f in zip(rate, first)])}
               for size, rate in rates.items()}}


def _build_child(args) -> None:
    """Build --index's factory over --emb with --build-workers in a fresh process; print the seconds."""
    from react_core.retrieval.index import Candidate, fill_index
    from react_core.retrieval.embed import EmbeddingFolder

    info = json.loads(Path(args.result).read_text())
    started = time.perf_counter()
    filled = fill_index(Candidate(info["factory"], info.get("ef_construction")), EmbeddingFolder(args.emb), "image",
                   Path(args.index), on_disk=info["on_disk"], workers=args.build_workers, ray_address=None, progress=False)
    print(json.dumps({"seconds": time.perf_counter() - started, **filled}))


def distributed_build(work: Path, workers: int, repeats: int) -> dict:
    """Wall time of building the chosen index of `work` with `workers` processes against one, in
    fresh processes, alternating which goes first; and whether both return the same results."""
    import shutil

    from react_core.retrieval.index import read_index, read_index_info, search

    info = read_index_info(work / "index")
    queries = np.load(work / "eval_queries.npy")
    times: dict[int, list[float]] = {1: [], workers: []}
    reports = {}
    for repeat in range(repeats):
        for count in (1, workers) if repeat % 2 == 0 else (workers, 1):
            out = work / f"index_{count}w"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            (out / "index.json").write_text(json.dumps(info))
            command = [sys.executable, __file__, "--child", "build", "--emb", str(work / "emb"), "--index", str(out),
                       "--result", str(work / "index" / "index.json"), "--build-workers", str(count)]
            env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
            report = json.loads(subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout.strip().splitlines()[-1])
            times[count].append(report["seconds"])
            reports[count] = report
            print(f"repeat {repeat}: {count} worker(s) {report['seconds']:.1f} s", flush=True)
    results = {}
    for count in (1, workers):
        index = read_index(work / f"index_{count}w", parameters=info["search_parameters"], rerank=False)
        results[count] = search(index, queries, 100)
    same_ids = bool(np.array_equal(results[1][1], results[workers][1]))
    same_scores = bool(np.array_equal(results[1][0], results[workers][0]))
    ratios = [t1 / tw for t1, tw in zip(times[1], times[workers])]
    return {"factory": info["factory"], "n": info["ntotal"], "workers": workers, "seconds_1": times[1],
            f"seconds_{workers}": times[workers], "speedup_median": statistics.median(ratios), "speedups": ratios,
            "same_ids": same_ids, "same_scores": same_scores, "queries": len(queries),
            "peak_rss_bytes_1": reports[1].get("worker_peak_rss_bytes"),
            f"worker_peak_rss_bytes_{workers}": reports[workers].get("worker_peak_rss_bytes")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--templates", type=int, default=80)
    parser.add_argument("--k", type=int, default=1000, help="hits per query in the per-class retrieval")
    parser.add_argument("--eval-queries", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-fraction", type=float, default=8,
                        help="--max-memory = exact index bytes / this (below 1/0.9: exact search fits and is a candidate)")
    parser.add_argument("--spread", type=float, default=0.8, help="within-concept spread of the generator")
    parser.add_argument("--uniform", action="store_true", help="uniformly random corpus and queries instead")
    parser.add_argument("--work", help="folder for the generated data (default: a temporary one)")
    parser.add_argument("--retune", action="store_true", help="re-tune the index reused from --work")
    parser.add_argument("--no-rerank", action="store_true", help="tune plain search only (no re-ranking from disk)")
    parser.add_argument("--embed", metavar="WORLD_DIR", help="measure embedding throughput on this synthetic world instead")
    parser.add_argument("--model", default="react-tiny", help="model for --embed (random init)")
    parser.add_argument("--shards", type=int, default=1, help="corpus shards for --embed")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--embed-batch-sizes", type=int, nargs="+", metavar="N",
                        help="with --embed: time react embed at each of these batch sizes instead")
    parser.add_argument("--workers", type=int, default=2, help="loader workers for --embed")
    parser.add_argument("--build-workers", type=int, default=1, help="processes adding shards when building the index")
    parser.add_argument("--distributed", type=int, metavar="W",
                        help="build the index of --work with W workers and with 1, compare wall time and results")
    parser.add_argument("--child", choices=("exact", "ours", "per-class", "build"), help=argparse.SUPPRESS)
    parser.add_argument("--emb", help=argparse.SUPPRESS)
    parser.add_argument("--index", help=argparse.SUPPRESS)
    parser.add_argument("--queries", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--per-class", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "build":
        _build_child(args)
        return
    if args.child:
        _child(args)
        return
    if args.embed and args.embed_batch_sizes:
        print(json.dumps(embed_batch_sizes(Path(args.embed), args.model, args.shards, args.embed_batch_sizes, args.workers,
                                           args.repeats), indent=2))
        return
    if args.embed:
        print(json.dumps(embed_throughput(Path(args.embed), args.model, args.shards, args.batch_size, args.workers,
                                          args.repeats), indent=2))
        return
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    if args.distributed:
        print(json.dumps(distributed_build(Path(args.work), args.distributed, args.repeats), indent=2))
        return
    from react_core.retrieval.embed import EmbeddingFolder
    from react_core.retrieval.index import build_index, read_index_info, tune_index

    work = Path(args.work or tempfile.mkdtemp(prefix="react-bench-"))
    reuse = (work / "index" / "index.json").is_file() and (work / "all_queries.npy").is_file()
    if reuse:
        print(f"reusing the data and index in {work} (delete it to regenerate)", flush=True)
        queries = np.load(work / "all_queries.npy")
    else:
        print(f"generating {args.n} x {args.d} in {work}", flush=True)
        queries = generate(work / "emb", args.n, args.d, args.classes, args.templates, spread=args.spread, uniform=args.uniform)
        np.save(work / "all_queries.npy", queries)
    if len(queries) < 2 * args.eval_queries:
        parser.error(f"--classes x --templates gives {len(queries)} queries: fewer than the {2 * args.eval_queries} "
                     "that tuning and the held-out evaluation (--eval-queries each) need")
    picked = np.random.default_rng(1).permutation(len(queries))
    tuning, evaluation = queries[picked[: args.eval_queries]], queries[picked[args.eval_queries: 2 * args.eval_queries]]
    np.save(work / "eval_queries.npy", evaluation)
    tuning_args = dict(queries=tuning, queries_source="generated class x template queries", k=100, refine=not args.no_rerank)
    if not reuse:
        flat_bytes = args.n * args.d * 4
        print("building our index", flush=True)
        info = build_index(work / "emb", "image", work / "index", max_memory=int(flat_bytes / args.memory_fraction),
                           progress=False, workers=args.build_workers, **tuning_args)
    elif args.retune:
        print("re-tuning the reused index", flush=True)
        info = tune_index(work / "index", EmbeddingFolder(work / "emb"), read_index_info(work / "index"), **tuning_args)
    else:
        info = read_index_info(work / "index")
    print(json.dumps({k: info.get(k) for k in ("factory", "search_parameters", "refine_factor", "recall", "build_seconds",
                                               "tuning_seconds", "index_bytes", "speed_vs_exact", "speed_vs_exact_bounds",
                                               "screening")}), flush=True)

    runs: dict[str, list[dict]] = {"exact": [], "ours": []}
    for repeat in range(args.repeats):
        for kind in ("exact", "ours"):
            runs[kind].append(_run_child(kind, work, ["--queries", str(work / "eval_queries.npy")]))
            print(kind, repeat, json.dumps(runs[kind][-1]), flush=True)
    exact_rows, our_rows = np.load(work / "rows_exact.npy"), np.load(work / "rows_ours.npy")
    per_class = _run_child("ours", work, ["--queries", str(work / "all_queries.npy"), "--per-class", "--k", str(args.k),
                                         "--templates", str(args.templates)]) if args.k else None

    def summary(kind):
        qps = [r["queries_per_s"] for r in runs[kind]]
        return {"qps_median": statistics.median(qps), "qps_min": min(qps), "qps_max": max(qps),
                "index_bytes": runs[kind][0]["index_bytes"],
                "peak_rss_bytes": statistics.median(r["peak_rss_bytes"] for r in runs[kind])}

    exact, ours = summary("exact"), summary("ours")
    ratios = [o["queries_per_s"] / e["queries_per_s"] for e, o in zip(runs["exact"], runs["ours"])]
    report = {
        "n": args.n, "d": args.d, "eval_queries": len(evaluation), "factory": info["factory"],
        "search_parameters": info["search_parameters"], "refine_factor": info.get("refine_factor", 1),
        "tuned_recall@100": info["recall"], "tuned_plain_recall@100": info.get("tuning", {}).get("plain_recall"),
        "build_seconds": info["build_seconds"], "tuning_seconds": info.get("tuning_seconds"),
        "tuning_over_build": info.get("tuning_seconds", 0) / max(info["build_seconds"], 1e-9),
        "spread": args.spread, "classes": args.classes,
        "tuning_speed_vs_exact": info.get("speed_vs_exact"), "tuning_speed_bounds": info.get("speed_vs_exact_bounds"),
        "exact_measured": info.get("exact_measured"), "candidates": info.get("candidates"),
        "screening": info.get("screening"),
        "recall@10": _recall(our_rows, exact_rows, 10), "recall@100": _recall(our_rows, exact_rows, 100),
        "exact": exact, "ours": ours,
        "qps_ratio_median": statistics.median(ratios), "qps_ratio_min": min(ratios), "qps_ratio_max": max(ratios),
        "index_bytes_ratio": ours["index_bytes"] / exact["index_bytes"],
        "peak_rss_ratio": ours["peak_rss_bytes"] / exact["peak_rss_bytes"],
        "per_class": per_class and {**per_class, "classes": args.classes, "templates": args.templates, "k": args.k},
    }
    print(json.dumps(report, indent=2))
    (work / "report.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
