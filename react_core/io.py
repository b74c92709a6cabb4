"""Atomic file writes, checked text reads and small I/O helpers shared by every stage.

A result file either exists whole or not at all: we write to a temporary file in the same
folder and rename it into place, so an interrupted job never leaves a truncated output that
a resumed run would mistake for a finished one. The file gets the mode a plain `open` would give
it (0666 less the umask), not the 0600 of a temporary file. A write that the disk refuses (full,
read-only, no permission) is an `OutputError` naming the file, and leaves nothing behind.

Text and JSON files from outside are read through `read_text` and `read_json`: bytes that are
not UTF-8 and malformed JSON are one line naming the file and the line.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

from react_core.errors import ReactError

# what a disk answers when it takes no more: full, over quota, read-only, not ours, file too large
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG})


class OutputError(ReactError):
    """An output file the disk would not take (full, read-only, no permission); names the file."""


class TextFileError(ReactError):
    """A text or JSON input that cannot be read as such; names the file and the line."""


def write_error(path: str | Path, error: BaseException) -> OutputError | None:
    """The one-line `OutputError` for `error` raised while writing `path`, or None when `error`
    is not the disk refusing the write. Writers report a full disk in their own words (torch.save
    as a RuntimeError), so any error while the folder has no free space left counts as one."""
    if isinstance(error, OSError) and error.errno in STORAGE_ERRNOS:
        return OutputError(f"cannot write {path}: {os.strerror(error.errno)}")
    if isinstance(error, (OSError, RuntimeError)):
        with contextlib.suppress(OSError):
            if shutil.disk_usage(Path(path).parent).free == 0:
                return OutputError(f"cannot write {path}: {os.strerror(errno.ENOSPC)}")
    return None


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it back at once
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` if the block succeeds."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise (write_error(path, error) or error) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # after the writer: some (safetensors) replace the file at 0600
        os.replace(tmp_path, path)
    except (OSError, RuntimeError) as error:
        refused = write_error(path, error)
        if refused is None:
            raise
        raise refused from None
    finally:
        with contextlib.suppress(OSError):
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


def _line_of(data: bytes, offset: int) -> tuple[int, int]:
    """(line, column), both from 1, of byte `offset` in `data`."""
    line_start = data.rfind(b"\n", 0, offset) + 1
    return data.count(b"\n", 0, offset) + 1, offset - line_start + 1


def read_text(path: str | Path, error: type[ReactError] = TextFileError) -> str:
    """The UTF-8 text of `path`; bytes that are not UTF-8 are an `error` naming the file and line.

    A missing file raises `FileNotFoundError` as `open` does, for the caller's own message."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as bad:
        line, column = _line_of(data, bad.start)
        raise error(f"{path}, line {line}: not UTF-8 text (byte 0x{data[bad.start]:02x} at column {column})") from None


def read_json(path: str | Path, error: type[ReactError] = TextFileError) -> Any:
    """The JSON document in `path`; malformed JSON or non-UTF-8 bytes are an `error` naming the
    file and the line. A missing file raises `FileNotFoundError`."""
    return parse_json(read_text(path, error), path, error)


def parse_json(text: str, source: str | Path, error: type[ReactError] = TextFileError) -> Any:
    """The JSON document `text` read from `source`; malformed JSON is an `error` naming the source,
    the line and the column."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as bad:
        raise error(f"{source}, line {bad.lineno}, column {bad.colno}: not valid JSON ({bad.msg})") from None


def absolute_paths(data: Any, base: str | Path | None = None) -> Any:
    """`data` (nested dicts and lists) with each relative path made absolute against `base`
    (default: the working directory): a string that names an existing file or folder, or that
    holds a `/` under an existing folder (an output or cache to come). Names (`simple`,
    `react-tiny`, `ViT-B-32`), URLs and absolute paths are kept as they are."""
    root = Path(base) if base is not None else Path.cwd()
    if isinstance(data, dict):
        return {key: absolute_paths(value, root) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [absolute_paths(value, root) for value in data]
    if not isinstance(data, str) or not data or "://" in data or "\n" in data or os.path.isabs(data):
        return data
    candidate = root / data
    with contextlib.suppress(OSError, ValueError):
        if candidate.exists() or ("/" in data and candidate.parent.is_dir()):
            return os.path.normpath(candidate)
    return data


@contextlib.contextmanager
def output_errors(path: str | Path) -> Iterator[None]:
    """Turn an `OSError` raised while writing under `path` (a read-only folder, a full disk) into
    the one-line `OutputError` naming it; atomic writes have already removed their temporary file."""
    try:
        yield
    except OSError as error:
        raise (write_error(path, error) or OutputError(f"cannot write {path}: {error.strerror or error}")) from None
