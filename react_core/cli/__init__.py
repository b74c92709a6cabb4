"""The `react` command.

Each subcommand lives in a module with `register(subparsers)`, which adds its parser and sets
`handler` to a function `(args) -> exit status`. Core commands are listed here; other
packages (`react_dense`) add theirs through the `react.commands` entry-point group, so
`react_core` never imports them.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from importlib.metadata import entry_points

from react_core.errors import ReactError, UserError  # noqa: F401  (UserError: the commands raise it)

CORE_COMMANDS = [
    "react_core.cli.config_cmd",
    "react_core.cli.pretrain_cmd",
    "react_core.cli.customize_cmd",
    "react_core.cli.eval_cmd",
    "react_core.cli.convert_cmd",
    "react_core.cli.embed_cmd",
    "react_core.cli.embeddings_info_cmd",
    "react_core.cli.index_cmd",
    "react_core.cli.retrieve_cmd",
    "react_core.cli.filter_cmd",
    "react_core.cli.export_cmd",
    "react_core.cli.report_cmd",
    "react_core.cli.text_embed_cmd",
]


def _command_modules():
    for name in CORE_COMMANDS:
        yield importlib.import_module(name)
    for entry in entry_points(group="react.commands"):
        yield entry.load()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="react",
        description="REACT: retrieve web image-text pairs for a task, customize CLIP on them, "
        "and carry the customized model into open-vocabulary detection and segmentation.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module in _command_modules():
        register = module if callable(module) else module.register
        register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except ReactError as error:
        from react_core.console import print_error

        print_error(f"react {args.command}", error)
        return 2


if __name__ == "__main__":
    sys.exit(main())
