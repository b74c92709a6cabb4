"""What a command prints: our own progress messages, and only warnings from the libraries below.

open_clip logs every model it builds at INFO on the root logger ("Parsing model identifier",
"Model ... creation process complete"); a user needs none of that, so the root logger stays at
WARNING and only the project's loggers speak at INFO. An error is printed on a line of its own,
even where a progress bar was drawing (`print_error`).
"""
from __future__ import annotations

import logging
import sys

PROJECT_LOGGERS = ("react", "react_core", "react_dense")


def configure_logging(level: int = logging.INFO, fmt: str = "%(message)s") -> None:
    logging.basicConfig(level=logging.WARNING, format=fmt)
    for name in PROJECT_LOGGERS:
        logging.getLogger(name).setLevel(level)


def print_error(prog: str, error: BaseException) -> None:
    """`PROG: error: MESSAGE` on stderr, on a line of its own: progress bars still open (the
    error cut their loop short) are closed first, which ends their line."""
    tqdm_module = sys.modules.get("tqdm")  # no bar was drawn if tqdm was never imported
    if tqdm_module is not None:
        for bar in list(getattr(tqdm_module.tqdm, "_instances", ())):
            bar.close()
    print(f"{prog}: error: {error}", file=sys.stderr)
