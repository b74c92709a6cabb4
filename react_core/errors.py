"""The one base of every error a user can see.

Each stage raises a subclass that names the bad file, line, key or sample in one line; the
commands catch `ReactError` alone, print that line and exit with status 2. It derives from
`ValueError` because every such error is a bad value handed in from outside.
"""
from __future__ import annotations


class ReactError(ValueError):
    """A bad input, file or setting, explained in one line."""


class UserError(ReactError):
    """Bad command-line input that no stage's own error covers."""
