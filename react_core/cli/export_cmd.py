"""`react export SUBSETDIR --to webdataset|folder --out DIR`: a retrieved subset as a training set."""
from __future__ import annotations

from react_core.cli import UserError
from react_core.outputs import add_overwrite_argument


def register(subparsers):
    parser = subparsers.add_parser(
        "export",
        help="write a retrieved subset as a training set (webdataset shards or an image folder)",
        description="Copy the images of SUBSETDIR/subset.parquet (byte for byte, from local paths or the corpus's "
        "webdataset shards) into DIR as webdataset shards (KEY.jpg/.txt/.json) or an image folder, with "
        "DIR/manifest.parquet (id, caption, class, score, and shard+key or path): both are what `react customize` "
        "reads. A sample kept under several classes is written once. Rows with only a URL (LAION's and DataComp's "
        "metadata) go to DIR/urls.parquet (url, caption, id, class, and uid, sha256, similarity scores where the "
        "corpus has them), with the img2dataset command that fetches them: DIR/img2dataset.json (the argument list) "
        "and DIR/img2dataset.sh (the same, every argument quoted); nothing is downloaded here. It blurs DataComp's "
        "face boxes and checks the images' sha256, as DataComp's own download does. Blocklists given here, and "
        "those the subset was retrieved or re-filtered with (read again: they may have grown), drop samples before "
        "anything is written; DIR/stats.json counts them. An interrupted export resumes; an unwritable DIR or a "
        "full disk is a one-line error naming the file, with no partial file left.",
    )
    parser.add_argument("subset", metavar="SUBSETDIR", help="output folder of `react retrieve`")
    parser.add_argument("--to", choices=("webdataset", "folder"), default="webdataset")
    parser.add_argument("--out", required=True, metavar="DIR")
    parser.add_argument("--shard-size", type=int, default=10_000, help="samples per tar shard or sub-folder")
    parser.add_argument("--blocklist", action="append", default=[], metavar="FILE",
                        help="a safety list to apply as well (repeatable; the formats of `react retrieve --blocklist`)")
    add_overwrite_argument(parser)
    parser.set_defaults(handler=run)


def run(args) -> int:
    from react_core.outputs import argument_settings, claim_output
    from react_core.retrieval.export import ExportError, export_subset
    from react_core.retrieval.retrieve import RetrievalError, read_blocklists

    if args.shard_size < 1:
        raise UserError(f"--shard-size must be >= 1, got {args.shard_size}")
    try:
        with claim_output(args.out, "react export", argument_settings(args), args.overwrite):
            counts = export_subset(args.subset, args.to, args.out, shard_size=args.shard_size,
                                   blocklist=read_blocklists(args.blocklist))
    except (ExportError, RetrievalError) as error:
        raise UserError(str(error)) from error
    if counts["blocklisted"]:
        print(f"{counts['blocklisted']} samples dropped by blocklists")
    print(f"{counts['written']} of {counts['samples']} samples written to {args.out} ({args.to}); "
          f"manifest: {args.out}/manifest.parquet")
    if counts["unreadable"]:
        print(f"{len(counts['unreadable'])} images could not be read (e.g. id {counts['unreadable'][0]})")
    if counts["remote"]:
        print(f"{counts['remote']} samples have only a URL: fetch them with {args.out}/img2dataset.sh")
    return 0
