"""What a command prints: our own progress messages, and only warnings from the libraries below.

open_clip logs every model it builds at INFO on the root logger ("Parsing model identifier",
"Model ... creation process complete"); a user needs none of that, so the root logger stays at
WARNING and only the project's loggers speak at INFO.
"""
from __future__ import annotations

import logging

PROJECT_LOGGERS = ("react", "react_core", "react_dense")


def configure_logging(level: int = logging.INFO, fmt: str = "%(message)s") -> None:
    logging.basicConfig(level=logging.WARNING, format=fmt)
    for name in PROJECT_LOGGERS:
        logging.getLogger(name).setLevel(level)
