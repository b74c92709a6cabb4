"""`react retrieve --index INDEXDIR --emb EMBDIR --classes FILE --out SUBSETDIR`: per-class retrieval."""
from __future__ import annotations

import argparse
from pathlib import Path

from react_core.cli import UserError
from react_core.cli.embeddings_info_cmd import add_model_arguments
from react_core.outputs import add_overwrite_argument


def register(subparsers):
    parser = subparsers.add_parser(
        "retrieve",
        help="retrieve the pairs most relevant to a task's class names",
        description="Queries are every prompt name of every class in every template (text embeddings from "
        "EMBDIR's model), searched in the image index (t2i), the caption index (t2t) or both, k hits per query. "
        "Hits are re-scored exactly from the stored embeddings (max over the class's queries; in 'both' mode the "
        "two similarities fused by --fusion), then filtered, each filter counted in stats.json: --threshold, --blocklist, "
        "--safety-filter, --decontaminate, cross-class assignment (--assign), near-duplicates, --per-class / "
        "--balance. Writes SUBSETDIR/subset.parquet (id, class, score, rank, query, caption, path/url, ...) and "
        "SUBSETDIR/stats.json (with precision@k per mode, per class and for random samples against ground truth when known). Class lists: 'imagenet', 'lvis' (LVIS v1, shipped), "
        "a text file (one class per line, synonyms after '|'), a JSON list, or COCO/LVIS categories; a duplicate "
        "name is merged with a warning, an empty name is an error, non-ASCII names are kept.",
    )
    parser.add_argument("--index", required=True, action="append", metavar="INDEXDIR",
                        help="index from `react index`; give it twice (image and text) for --mode both")
    parser.add_argument("--emb", required=True, metavar="EMBDIR", help="the embedding folder the indexes were built from")
    add_model_arguments(parser, "to embed the queries with")
    parser.add_argument("--classes", required=True, help="imagenet, lvis, a .txt file, a .json list or COCO/LVIS categories")
    parser.add_argument("--templates", default="imagenet", help="imagenet (80 CLIP templates), simple, none, or a file")
    parser.add_argument("--average-templates", action="store_true",
                        help="one query per class name (template-averaged embedding) instead of one per template")
    parser.add_argument("--descriptions", action="store_true", help="add each LVIS 'def' as an extra query")
    parser.add_argument("--k", type=int, default=100, help="hits per query (default 100)")
    parser.add_argument("--mode", choices=("t2i", "t2t", "both"), default="t2i")
    parser.add_argument("--fusion", choices=("exemplar", "min-z", "rrf", "mean"), default="exemplar",
                        help="how --mode both ranks the union of the two modes' hits: exemplar (default: the lower of "
                        "the caption's score and the image's resemblance to the mean image of the class's k best caption "
                        "matches, each in standard deviations above random corpus samples), min-z (the lower of the "
                        "image's and the caption's score against the queries, likewise standardised, so a pair must match "
                        "by image and by caption), rrf (reciprocal-rank fusion) or mean (of the two cosines); the subset's "
                        "score is the fused one")
    parser.add_argument("--out", required=True, metavar="SUBSETDIR")
    parser.add_argument("--threshold", type=float, help="drop hits whose score is below this")
    parser.add_argument("--assign", choices=("best", "all"), default="best",
                        help="a sample hit by several classes goes to its best class, or stays in all (default best)")
    parser.add_argument("--dedup-threshold", type=_cosine_or_auto, default="auto",
                        help="image-embedding cosine at which two samples are near-duplicates; auto (default): the 99th "
                        "percentile of random corpus images' nearest-neighbour cosines, at least 0.95 (stats.json "
                        "records the value used)")
    parser.add_argument("--no-dedup", action="store_true", help="keep near-duplicates")
    parser.add_argument("--per-class", type=int, help="keep at most this many samples per class")
    parser.add_argument("--balance", action="store_true", help="cap every class at the size of the smallest")
    parser.add_argument("--decontaminate", metavar="PATH",
                        help="evaluation images to keep out: an embedding folder of the same model, or an image folder")
    parser.add_argument("--decontaminate-threshold", type=float, default=0.9)
    parser.add_argument("--blocklist", action="append", default=[], metavar="FILE",
                        help="a safety list to apply (repeatable): a text file, one entry per line ('#' comments), or a "
                        "parquet file; entries are sample ids (id, DataComp uid, LAION key), URLs, SHA-256/MD5/SHA-1 "
                        "digests of URLs, or the image hash the corpus stores (its sha256 or md5 column). stats.json counts what each kind matched. A subset made "
                        "before a list existed is re-filtered with `react filter`, without retrieving again")
    parser.add_argument("--safety-filter", metavar="MODULE:FUNCTION",
                        help="callable taking the candidate rows (DataFrame) and returning a keep-mask")
    parser.add_argument("--ground-truth", metavar="PARQUET",
                        help="id + class (+ mismatched) per corpus sample: stats.json then reports precision@k per mode")
    parser.add_argument("--batch-size", type=int, default=256)
    add_overwrite_argument(parser)
    parser.set_defaults(handler=run)


def _cosine_or_auto(value: str):
    if value == "auto":
        return value
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a cosine or 'auto', not {value!r}") from None


def evaluation_embeddings(path: str, emb_dir: str, bundle):
    """Image embeddings of the evaluation set: from an embedding folder of the same model, or
    computed here from an image folder."""
    import numpy as np
    import torch

    from react_core.data.images import IMAGE_EXTENSIONS, load_image
    from react_core.retrieval.embed import INFO_FILE, EmbeddingFolder, read_embedding_info

    if (Path(path) / INFO_FILE).is_file():
        if read_embedding_info(path).get("identity") != bundle.spec.identity():
            raise UserError(f"--decontaminate {path}: embeddings of another model than {emb_dir}'s")
        folder = EmbeddingFolder(path)
        return np.concatenate([block for _, block in folder.iter_arrays("image")])
    if not Path(path).is_dir():
        raise UserError(f"--decontaminate {path}: neither an embedding folder nor an image folder")
    files = sorted(p for p in Path(path).rglob("*") if p.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS)
    images = [image for image in (load_image(str(f)) for f in files) if image is not None]
    if not images:
        raise UserError(f"--decontaminate {path}: no readable images")
    vectors = []
    with torch.no_grad():
        for start in range(0, len(images), 128):
            batch = torch.stack([bundle.preprocess_val(i) for i in images[start:start + 128]])
            vectors.append(torch.nn.functional.normalize(bundle.model.encode_image(batch).float(), dim=-1))
    return torch.cat(vectors).numpy()


def read_ground_truth(path: str):
    """The --ground-truth parquet, or a one-line error naming it."""
    import pandas as pd

    from react_core.retrieval.retrieve import RetrievalError

    if not Path(path).is_file():
        raise RetrievalError(f"--ground-truth {path}: file not found")
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as error:
        raise RetrievalError(f"--ground-truth {path}: not a readable parquet file ({str(error).splitlines()[0]})") from None


def run(args) -> int:
    from react_core.console import printable
    from react_core.modeling.text import VocabularyError, load_templates
    from react_core.outputs import argument_settings, claim_output
    from react_core.retrieval.classes import ClassListError, build_queries, load_classes
    from react_core.retrieval.embed import EmbeddingError, EmbeddingFolder, resolve_model
    from react_core.retrieval.index import IndexBuildError, read_index, read_index_info
    from react_core.retrieval.retrieve import RetrievalError, RetrievalOptions, read_blocklists, retrieve

    try:
        options = RetrievalOptions(
            k=args.k, mode=args.mode, threshold=args.threshold, assign=args.assign,
            dedup_threshold=None if args.no_dedup else args.dedup_threshold, per_class=args.per_class,
            balance=args.balance, decontaminate_threshold=args.decontaminate_threshold,
            blocklist=read_blocklists(args.blocklist),
            safety_filter=args.safety_filter, fusion=args.fusion,
        )
        options.check()
        folder = EmbeddingFolder(args.emb, require_info=False)
        indexes = {}
        for index_dir in args.index:
            info = read_index_info(index_dir)
            if None not in (info.get("identity"), folder.info.get("identity")) and info["identity"] != folder.info["identity"] \
                    or info["ntotal"] != len(folder):
                raise UserError(f"{index_dir} was not built from {args.emb} ({info['ntotal']} vectors of {info.get('identity')})")
            if info["kind"] in indexes:
                raise UserError(f"two --index folders hold {info['kind']} embeddings; give one per kind")
            indexes[info["kind"]] = read_index(index_dir, gpu=True, emb_dir=args.emb)
        bundle = resolve_model(args.emb, args.model, args.pretrained, args.weights, base_weights=args.base_weights)
        classes = load_classes(args.classes)
        queries = build_queries(bundle, classes, load_templates(args.templates), average=args.average_templates,
                                descriptions=args.descriptions, batch_size=args.batch_size)
        truth_path = args.ground_truth
        truth = read_ground_truth(truth_path) if truth_path else None
        evaluation = evaluation_embeddings(args.decontaminate, args.emb, bundle) if args.decontaminate else None
        with claim_output(args.out, "react retrieve", argument_settings(args, "batch_size"), args.overwrite):
            stats = retrieve(folder, indexes, queries, classes, options, args.out, evaluation_embeddings=evaluation,
                             ground_truth=truth, settings={
                                 "classes_file": args.classes, "templates": args.templates,
                                 "average_templates": args.average_templates, "indexes": args.index,
                                 "embeddings": args.emb, "ground_truth": str(truth_path) if truth_path else None})
    except (EmbeddingError, IndexBuildError, ClassListError, VocabularyError, RetrievalError) as error:
        raise UserError(str(error)) from error
    if stats["blocklist"]:
        matched = ", ".join(f"{kind} {count}" for kind, count in stats["blocklist"]["matched"].items() if count)
        print(f"blocklists ({stats['blocklist']['entries']} entries) dropped {stats['filters']['blocklisted']} rows"
              + (f" (matched by {matched})" if matched else ""))
    print(f"{stats['rows']} rows ({stats['unique_samples']} samples) for {len(classes)} classes in {args.out}/subset.parquet")
    print("removed: " + ", ".join(f"{k} {v}" for k, v in stats["filters"].items() if k != "candidates")
          + f" (of {stats['filters']['candidates']} candidates"
          + (f"; near-duplicates at image cosine {stats['dedup_threshold']:.4f})" if stats["dedup_threshold"] else ")"))
    if stats["empty_classes"]:
        print(f"classes with no sample: {printable(', '.join(stats['empty_classes'][:20]))}")
    if stats["evaluation"]:
        evaluation = stats["evaluation"]
        print(f"precision@{evaluation['k']}: " + ", ".join(
            f"{mode} {evaluation[mode]['precision']:.3f}" for mode in ("t2i", "t2t", "both", "random") if mode in evaluation))
    return 0
