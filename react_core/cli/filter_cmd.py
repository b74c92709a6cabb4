"""`react filter SUBSETDIR --blocklist FILE --out NEWDIR`: apply safety lists to a subset made earlier."""
from __future__ import annotations

from react_core.cli import UserError
from react_core.outputs import add_overwrite_argument


def register(subparsers):
    parser = subparsers.add_parser(
        "filter",
        help="apply blocklists (or a safety hook) to a retrieved subset without retrieving again",
        description="Safety lists keep growing (Re-LAION-style lists of sample ids, URLs, and hashes of URLs or "
        "images). This drops the rows of SUBSETDIR/subset.parquet that the lists name, or that a --safety-filter hook "
        "rejects, and writes NEWDIR/subset.parquet and NEWDIR/stats.json: the subset's stats with the drops added to "
        "its filter counts, what each kind of entry matched, ranks within each class renumbered, and a 'refiltered' "
        "entry naming the lists (path and sha256). SUBSETDIR is left as it is; `react export` of NEWDIR applies the "
        "same lists again, read afresh.",
    )
    parser.add_argument("subset", metavar="SUBSETDIR", help="output folder of `react retrieve` (or of `react filter`)")
    parser.add_argument("--blocklist", action="append", default=[], metavar="FILE",
                        help="a safety list (repeatable): a text file, one entry per line ('#' comments), or a parquet "
                        "file; entries are sample ids (id, DataComp uid, LAION key), URLs, SHA-256/MD5/SHA-1 "
                        "digests of URLs, or the image hash the corpus stores (its sha256 or md5 column)")
    parser.add_argument("--safety-filter", metavar="MODULE:FUNCTION",
                        help="callable taking the subset's rows (DataFrame) and returning a keep-mask")
    parser.add_argument("--out", required=True, metavar="NEWDIR", help="a new folder for the filtered subset")
    add_overwrite_argument(parser)
    parser.set_defaults(handler=run)


def run(args) -> int:
    from react_core.outputs import argument_settings, claim_output
    from react_core.retrieval.retrieve import RetrievalError, read_blocklists, refilter

    try:
        with claim_output(args.out, "react filter", argument_settings(args), args.overwrite):
            stats = refilter(args.subset, args.out, read_blocklists(args.blocklist), args.safety_filter)
    except RetrievalError as error:
        raise UserError(str(error)) from error
    step = stats["refiltered"][-1]
    dropped = {name: step[name]["dropped"] for name in ("blocklist", "safety_filter") if name in step}
    print(f"{step['rows_before']} rows -> {stats['rows']} ({', '.join(f'{k} dropped {v}' for k, v in dropped.items())}) "
          f"in {args.out}/subset.parquet")
    return 0
