"""`react report SUBSETDIR --out DIR`: an HTML page to look at a retrieved subset."""
from __future__ import annotations

from react_core.cli import UserError
from react_core.outputs import add_overwrite_argument


def register(subparsers):
    parser = subparsers.add_parser(
        "report",
        help="HTML page with the top images and captions per class, score histograms and filter counts",
        description="Write DIR/index.html and PNGs for SUBSETDIR (from `react retrieve`): how many candidates each "
        "filter removed, the score histograms, precision@k per mode when ground truth was known, and for each "
        "class its top images with captions and scores. Look at them before training on the subset.",
    )
    parser.add_argument("subset", metavar="SUBSETDIR")
    parser.add_argument("--out", required=True, metavar="DIR")
    parser.add_argument("--per-class", type=int, default=8, help="images shown per class (default 8)")
    parser.add_argument("--max-classes", type=int, default=100, help="classes shown (default 100)")
    add_overwrite_argument(parser)
    parser.set_defaults(handler=run)


def run(args) -> int:
    import matplotlib

    matplotlib.use("Agg")
    from react_core.outputs import argument_settings, claim_output
    from react_core.retrieval.report import write_report
    from react_core.retrieval.retrieve import RetrievalError

    if args.per_class < 1 or args.max_classes < 1:
        raise UserError("--per-class and --max-classes must be >= 1")
    try:
        with claim_output(args.out, "react report", argument_settings(args), args.overwrite):
            page = write_report(args.subset, args.out, args.per_class, args.max_classes)
    except RetrievalError as error:
        raise UserError(str(error)) from error
    print(f"report: {page}")
    return 0
