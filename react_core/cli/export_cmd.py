"""`react export SUBSETDIR --to webdataset|folder --out DIR`: a retrieved subset as a training set."""
from __future__ import annotations

from react_core.cli import UserError


def register(subparsers):
    parser = subparsers.add_parser(
        "export",
        help="write a retrieved subset as a training set (webdataset shards or an image folder)",
        description="Copy the images of SUBSETDIR/subset.parquet (byte for byte, from local paths or the corpus's "
        "webdataset shards) into DIR as webdataset shards (KEY.jpg/.txt/.json) or an image folder, with "
        "DIR/manifest.parquet (id, caption, class, score, and shard+key or path): both are what `react customize` "
        "reads. A sample kept under several classes is written once. Rows with only a URL go to DIR/urls.parquet "
        "with the img2dataset command to fetch them in DIR/img2dataset.txt. An interrupted export resumes.",
    )
    parser.add_argument("subset", metavar="SUBSETDIR", help="output folder of `react retrieve`")
    parser.add_argument("--to", choices=("webdataset", "folder"), default="webdataset")
    parser.add_argument("--out", required=True, metavar="DIR")
    parser.add_argument("--shard-size", type=int, default=10_000, help="samples per tar shard or sub-folder")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from react_core.retrieval.export import ExportError, export_subset
    from react_core.retrieval.retrieve import RetrievalError

    if args.shard_size < 1:
        raise UserError(f"--shard-size must be >= 1, got {args.shard_size}")
    try:
        counts = export_subset(args.subset, args.to, args.out, shard_size=args.shard_size)
    except (ExportError, RetrievalError) as error:
        raise UserError(str(error)) from error
    print(f"{counts['written']} of {counts['samples']} samples written to {args.out} ({args.to}); "
          f"manifest: {args.out}/manifest.parquet")
    if counts["unreadable"]:
        print(f"{len(counts['unreadable'])} images could not be read (e.g. id {counts['unreadable'][0]})")
    if counts["remote"]:
        print(f"{counts['remote']} samples have only a URL: see {args.out}/img2dataset.txt")
    return 0
