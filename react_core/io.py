"""Atomic file writes and small I/O helpers shared by every stage.

A result file either exists whole or not at all: we write to a temporary file in the same
folder and rename it into place, so an interrupted job never leaves a truncated output that
a resumed run would mistake for a finished one. The file gets the mode a plain `open` would give
it (0666 less the umask), not the 0600 of a temporary file.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

from react_core.errors import ReactError


class TextFileError(ReactError):
    """A text file that cannot be read as UTF-8; names the file and the line."""


class OutputError(ReactError):
    """An output that cannot be written (a read-only folder, a full disk); names the file."""


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it back at once
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # after the writer: some (safetensors) replace the file at 0600
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs) -> Iterator[IO]:
    with atomic_path(path) as tmp:
        with open(tmp, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def read_text(path: str | Path) -> str:
    """The UTF-8 text of a file the user gave; a file that is not UTF-8 is a `TextFileError`
    naming the line and column of the first bad byte (a one-line error, not a traceback)."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        raise TextFileError(f"{path}, line {line}: not UTF-8 text (byte 0x{data[error.start]:02x} at column {column})") from None


@contextlib.contextmanager
def output_errors(path: str | Path) -> Iterator[None]:
    """Turn an `OSError` raised while writing under `path` (read-only folder, full disk) into an
    `OutputError` naming the file; atomic writes have already removed their temporary file."""
    try:
        yield
    except OSError as error:
        raise OutputError(f"{path}: cannot write ({error.strerror or error})") from None
