"""`react index --emb EMBDIR --kind {image,text} --out INDEXDIR`: a tuned FAISS index;
`react index --plan NxD --max-memory SIZE`: what it would build, and how long it would take."""
from __future__ import annotations

from react_core.cli import UserError
from react_core.cli.embeddings_info_cmd import add_model_arguments
from react_core.outputs import add_overwrite_argument


def register(subparsers):
    parser = subparsers.add_parser(
        "index",
        help="FAISS index of an embedding folder, tuned for recall on the real queries",
        description="Build INDEXDIR/index.faiss (readable with faiss.read_index) over the image or caption "
        "embeddings of EMBDIR. With --max-memory (or no --factory), candidates that fit the budget are built on a "
        "sample of up to 100k vectors and measured on the tuning queries: the size rule's inverted file (nlist ~ "
        "4 sqrt(n); Flat, SQ8 or [OPQ]PQ codes), fast-scan 4-bit PQ codes re-ranked exactly from the float16 "
        "embeddings (in memory with Refine(SQfp16), or from EMBDIR on disk when they do not fit; OPQ-rotated where "
        "codes are coarse), the same over 4x the lists with an HNSW coarse quantizer, HNSW32 graphs (efConstruction 40 "
        "and 200, up to 1M vectors) and exact search; the fastest that reaches --target-recall is built on every "
        "vector. Screening stops after a quarter of the full build it projects (20 s at least). The index is trained once "
        "on a sample, its shards are added by --workers processes or Ray tasks (--ray) and merged in shard order "
        "(on disk, index.ivfdata, when larger than half the budget): the same index as one process builds; the same "
        "command run again resumes an interrupted build from its finished parts. nprobe, "
        "efSearch and re-ranking are tuned so that recall@K against exact search reaches --target-recall, less two "
        "standard errors, on the queries that will be run: the class x template text embeddings of --classes (with "
        "EMBDIR's model), or else a sample of caption embeddings. Exact search within the same budget is timed in "
        "interleaved pairs against the index, by the wall clock and by CPU time, and an automatic choice keeps the "
        "index only when, by both, the lower bound of its speed ratio is above 1 and the median at least 1.3x. "
        "INDEXDIR/index.json records the candidates, the chosen parameters, recall, "
        "speed ratio and bounds, the exact search compared against, and build and tuning seconds. "
        "--plan NxD prints what would be built for N vectors of dimension D within --max-memory, with training and "
        "adding times extrapolated from a small build on this machine, and builds nothing.",
    )
    parser.add_argument("--emb", metavar="EMBDIR", help="embedding folder from `react embed`, one of LAION's as released, or a DataComp pool")
    parser.add_argument("--kind", choices=("image", "text"), default="image", help="embeddings to index (default: image)")
    parser.add_argument("--out", metavar="INDEXDIR", help="index folder to write (required unless --plan)")
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--factory", help="FAISS index factory string, e.g. 'IVF4096,PQ64x8' or 'Flat'")
    choice.add_argument("--max-memory", metavar="SIZE", help="memory budget for the automatic choice, e.g. 8G")
    parser.add_argument("--plan", metavar="NxD", help="print the plan for N vectors of dimension D (e.g. 2000000000x768) "
                        "within --max-memory, and build nothing")
    parser.add_argument("--target-recall", type=float, default=0.95, help="recall@K to reach when tuning (default 0.95)")
    parser.add_argument("--k", type=int, default=100, help="K of the recall to tune for: the k of `react retrieve`")
    parser.add_argument("--classes", help="class list whose queries tune the index (see `react retrieve --classes`)")
    parser.add_argument("--templates", default="imagenet", help="templates for --classes: imagenet, simple, none, or a file")
    add_model_arguments(parser, "for --classes")
    parser.add_argument("--tuning-queries", type=int, default=300,
                        help="at most this many queries (a random sample) tune and time the index (default 300)")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes adding shards in parallel on this machine (default 1: this process)")
    parser.add_argument("--ray", metavar="ADDRESS", help="add shards as Ray tasks of one CPU each: 'auto' (a running "
                        "cluster), an address, or 'local' (a Ray started here with --workers CPUs); EMBDIR and INDEXDIR "
                        "must be on storage every node reads. Needs pip install -e \".[ray]\"")
    parser.add_argument("--ef-construction", type=int, help="efConstruction of an HNSW --factory (FAISS's default 40)")
    parser.add_argument("--on-disk", action="store_true", default=None, help="merge shards on disk even when it would fit")
    parser.add_argument("--no-rerank", dest="rerank", action="store_false",
                        help="never re-rank candidates with the embeddings on disk, even when plain search misses "
                             "--target-recall (by default tuning tries 2-16x candidates, re-scored exactly)")
    add_overwrite_argument(parser)
    parser.set_defaults(handler=run)


def parse_plan(text: str) -> tuple[int, int]:
    """`2000000000x768` (underscores and commas allowed in N) -> (N, D)."""
    import re

    match = re.fullmatch(r"\s*([0-9][0-9_,]*)\s*[xX]\s*([0-9]+)\s*", text)
    if not match or int(match.group(1).replace("_", "").replace(",", "")) < 1 or int(match.group(2)) < 1:
        raise UserError(f"--plan {text!r}: expected N x D as NxD, e.g. 2000000000x768")
    return int(match.group(1).replace("_", "").replace(",", "")), int(match.group(2))


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
    if not folder.has("text"):
        raise UserError(f"{args.emb} has no caption embeddings to tune with: give --classes (the queries "
                        "that will be run), with --model when the folder has no embeddings.json")
    rows = np.sort(np.random.default_rng(2).choice(len(folder), min(len(folder), args.tuning_queries), replace=False))
    return folder.gather("text", rows), f"{len(rows)} caption embeddings (no --classes given)"


def run(args) -> int:
    from react_core.modeling.text import VocabularyError
    from react_core.outputs import argument_settings, claim_output
    from react_core.retrieval.classes import ClassListError
    from react_core.retrieval.embed import EmbeddingError, EmbeddingFolder
    from react_core.retrieval.index import IndexBuildError, build_index, parse_memory
    from react_core.retrieval.planning import format_plan, plan

    if not 0 < args.target_recall <= 1:
        raise UserError(f"--target-recall must be in (0, 1], got {args.target_recall}")
    if args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    if args.ef_construction is not None and not args.factory:
        raise UserError("--ef-construction needs --factory (an HNSW graph, e.g. HNSW32,Flat)")
    try:
        if args.plan:
            n, d = parse_plan(args.plan)
            print(format_plan(plan(n, d, parse_memory(args.max_memory), workers=args.workers)))
            return 0
        if not args.emb or not args.out:
            raise UserError("--emb and --out are required (unless --plan)")
        max_memory = parse_memory(args.max_memory)
        folder = EmbeddingFolder(args.emb, require_info=False)
        queries, source = tuning_queries(args, folder)
        # where the shards are added does not change the index: a build resumed with other workers is the same run
        with claim_output(args.out, "react index", argument_settings(args, "workers", "ray", "plan"), args.overwrite):
            info = build_index(args.emb, args.kind, args.out, factory=args.factory, max_memory=max_memory,
                               queries=queries, queries_source=source, target_recall=args.target_recall, k=args.k,
                               max_tuning_queries=args.tuning_queries, on_disk=args.on_disk, refine=args.rerank,
                               workers=args.workers, ray_address=args.ray, ef_construction=args.ef_construction)
    except (EmbeddingError, IndexBuildError, ClassListError, VocabularyError) as error:
        raise UserError(str(error)) from error
    recall = "exact" if info["factory"] == "Flat" else (
        "unknown" if info["recall"] is None else f"{info['recall']:.3f} at {info['search_parameters'] or 'defaults'}"
        + (f", re-ranking {info['refine_factor']}x candidates from {args.emb}" if info["refine_factor"] > 1 else ""))
    speed = ""
    if "exact_seconds_per_query" in info and info["factory"] != "Flat":
        low, high = info["speed_vs_exact_bounds"]
        speed = f"; {info['speed_vs_exact']:.2f}x the queries/s of {info['exact_measured']} ({low:.2f}-{high:.2f}x)"
    print(f"{info['factory']} index of {info['ntotal']} {args.kind} embeddings in {args.out} "
          f"({info['index_bytes'] / 1e6:.1f} MB, built in {info['build_seconds']:.1f} s, tuned in {info['tuning_seconds']:.1f} s); "
          f"recall@{args.k}: {recall}{speed}")
    return 0
