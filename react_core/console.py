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


# Characters that would act instead of being shown: C0/C1 controls (a terminal obeys ESC
# sequences), line and paragraph separators, and bidirectional overrides (they reorder what follows).
_UNPRINTABLE_CATEGORIES = ("Cc", "Zl", "Zp")
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: str) -> str:
    """`text` safe to show in a terminal or a report: control characters, line separators and
    bidirectional overrides written as escapes (`\\x1b`, `\\u202e`, `\\n`), everything else as it is.
    For display only: stored metadata keeps the original text."""
    import unicodedata

    return "".join(
        _NAMED_ESCAPES.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
        if unicodedata.category(c) in _UNPRINTABLE_CATEGORIES or c in _BIDI_CONTROLS else c
        for c in str(text)
    )
