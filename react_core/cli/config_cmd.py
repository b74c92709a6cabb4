"""`react config show CONFIG [key=value ...]`: print the merged, validated config."""
from __future__ import annotations

import dataclasses

from react_core.config import load, to_yaml


def register(subparsers):
    parser = subparsers.add_parser("config", help="inspect configs", description="Inspect configs.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    show = actions.add_parser(
        "show",
        help="print the merged, validated config as YAML",
        description="Merge CONFIG with its _base_ files and the key=value overrides, resolve "
        "${...} interpolations, validate against the schema named by its `kind:`, and print "
        "the result. Exit status 2 names the bad key, its value and the file it came from.",
    )
    show.add_argument("config", help="a YAML config file")
    show.add_argument("overrides", nargs="*", metavar="key=value", help="overrides, e.g. train.lr=1e-4")
    show.set_defaults(handler=run_show)


def run_show(args) -> int:
    cfg = load(args.config, args.overrides)
    print(to_yaml(dataclasses.asdict(cfg)), end="")
    return 0
