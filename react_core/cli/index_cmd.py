"""`react index --emb EMBDIR --kind {image,text} --out INDEXDIR`: a tuned FAISS index."""
from __future__ import annotations

from react_core.cli import UserError
from react_core.cli.embeddings_info_cmd import add_model_arguments


def register(subparsers):
    parser = subparsers.add_parser(
        "index",
        help="FAISS index of an embedding folder, tuned for recall on the real queries",
        description="Build INDEXDIR/index.faiss (readable with faiss.read_index) over the image or caption "
        "embeddings of EMBDIR, from a FAISS factory string or a choice made from the corpus size and --max-memory "
        "(Flat below 50k vectors; else IVF with nlist ~ 4 sqrt(n), HNSW32 coarse quantizer above 16384 lists, and "
        "the richest codes that fit: Flat, SQ8, or [OPQ]PQm, measured against exact IndexFlatIP on the tuning "
        "queries, with an HNSW32 graph up to 1M vectors: the fastest that reaches --target-recall within the budget "
        "is kept, exact search when nothing approximate is faster). Trained on a sample, filled shard by shard, merged "
        "on disk (index.ivfdata) when larger than half the budget, searched memory-mapped. nprobe/efSearch are "
        "tuned with faiss.ParameterSpace so that recall@K against exact search reaches --target-recall on the "
        "queries that will be run: the class x template text embeddings of --classes (with EMBDIR's model), or "
        "else a sample of caption embeddings. INDEXDIR/index.json records the factory, parameters, achieved "
        "recall and the embedding model.",
    )
    parser.add_argument("--emb", required=True, metavar="EMBDIR",
                        help="embedding folder from `react embed`, or one of LAION's as released")
    parser.add_argument("--kind", choices=("image", "text"), default="image", help="embeddings to index (default: image)")
    parser.add_argument("--out", required=True, metavar="INDEXDIR")
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--factory", help="FAISS index factory string, e.g. 'IVF4096,PQ64x8' or 'Flat'")
    choice.add_argument("--max-memory", metavar="SIZE", help="memory budget for the automatic choice, e.g. 8G")
    parser.add_argument("--target-recall", type=float, default=0.95, help="recall@K to reach when tuning (default 0.95)")
    parser.add_argument("--k", type=int, default=100, help="K of the recall to tune for: the k of `react retrieve`")
    parser.add_argument("--classes", help="class list whose queries tune the index (see `react retrieve --classes`)")
    parser.add_argument("--templates", default="imagenet", help="templates for --classes: imagenet, simple, none, or a file")
    add_model_arguments(parser, "for --classes")
    parser.add_argument("--tuning-queries", type=int, default=1000, help="at most this many queries for tuning")
    parser.add_argument("--on-disk", action="store_true", default=None, help="merge shards on disk even when it would fit")
    parser.add_argument("--no-rerank", dest="rerank", action="store_false",
                        help="never re-rank candidates with the embeddings on disk, even when plain search misses "
                             "--target-recall (by default tuning tries 2-16x candidates, re-scored exactly)")
    parser.set_defaults(handler=run)


def tuning_queries(args, folder):
    """Class x template text embeddings of --classes, or a sample of caption embeddings."""
    import numpy as np

    from react_core.modeling.text import load_templates
    from react_core.retrieval.classes import build_queries, load_classes
    from react_core.retrieval.embed import resolve_model

    if args.classes:
        bundle = resolve_model(args.emb, args.model, args.pretrained, args.weights)
        queries = build_queries(bundle, load_classes(args.classes), load_templates(args.templates))
        return queries.embeddings, f"{len(queries.texts)} class x template queries of {args.classes}"
    from pathlib import Path

    if not Path(args.emb, "text_emb").is_dir():
        raise UserError(f"{args.emb} has no caption embeddings (text_emb/) to tune with: give --classes (the queries "
                        "that will be run), with --model when the folder has no embeddings.json")
    rows = np.sort(np.random.default_rng(2).choice(len(folder), min(len(folder), args.tuning_queries), replace=False))
    return folder.gather("text", rows), f"{len(rows)} caption embeddings (no --classes given)"


def run(args) -> int:
    from react_core.modeling.text import VocabularyError
    from react_core.retrieval.classes import ClassListError
    from react_core.retrieval.embed import EmbeddingError, EmbeddingFolder
    from react_core.retrieval.index import IndexBuildError, build_index, parse_memory

    if not 0 < args.target_recall <= 1:
        raise UserError(f"--target-recall must be in (0, 1], got {args.target_recall}")
    try:
        folder = EmbeddingFolder(args.emb, require_info=False)
        queries, source = tuning_queries(args, folder)
        info = build_index(args.emb, args.kind, args.out, factory=args.factory, max_memory=parse_memory(args.max_memory),
                           queries=queries, queries_source=source, target_recall=args.target_recall, k=args.k,
                           max_tuning_queries=args.tuning_queries, on_disk=args.on_disk, refine=args.rerank)
    except (EmbeddingError, IndexBuildError, ClassListError, VocabularyError) as error:
        raise UserError(str(error)) from error
    recall = "exact" if info["factory"] == "Flat" else (
        "unknown" if info["recall"] is None else f"{info['recall']:.3f} at {info['search_parameters'] or 'defaults'}"
        + (f", re-ranking {info['refine_factor']}x candidates from {args.emb}" if info["refine_factor"] > 1 else ""))
    speed = f"; {info['speed_vs_exact']:.2f}x exact search's queries/s" if "exact_seconds_per_query" in info else ""
    print(f"{info['factory']} index of {info['ntotal']} {args.kind} embeddings in {args.out} "
          f"({info['index_bytes'] / 1e6:.1f} MB, built in {info['build_seconds']:.1f} s); recall@{args.k}: {recall}{speed}")
    return 0
