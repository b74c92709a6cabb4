"""Output folders: one run per folder, one process at a time, nothing replaced unasked.

Every command that writes results claims its `--out` first (`claim_output`, or `claim_file` for
a command whose output is one file):

- a lock file (`.react.lock`, holding the pid) stops a second process from writing into the same
  output while the first runs; the lock is a POSIX record lock, which the system drops when its holder
  dies, so the lock file of a killed run is simply taken over;
- the folder records which run wrote it (`.react-run.json`: the command and a hash of each of the
  settings that decide its results, `settings_hashes`). The same run may come back to it (resume,
  or run again); another command, or the same command with other settings (the refusal names
  them), is refused while the folder holds anything, unless `overwrite` (the commands'
  `--overwrite`), which deletes what the earlier run left first. A non-empty folder that no run
  recorded is never written into without `--overwrite`, and never deleted from.

Under torchrun only the main process (RANK 0) claims: the others write into the folder it holds.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator, Mapping

from react_core.errors import ReactError
from react_core.io import absolute_paths, atomic_write_json, write_error

LOCK_FILE = ".react.lock"
RUN_RECORD = ".react-run.json"
OVERWRITE_HELP = "replace the results of another run in the output (they are deleted first)"


class OutputRefusedError(ReactError):
    """An output that this run may not write into (another run's results, or a run in progress)."""


def add_overwrite_argument(parser) -> None:
    """The `--overwrite` flag, the same on every command that writes results."""
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)


def argument_settings(args, *ignored: str) -> dict[str, Any]:
    """The parsed command-line arguments that decide a command's results: all of `args` but the
    handler, the output, `--overwrite` and the `ignored` ones (workers, batch sizes, devices)."""
    skipped = {"handler", "command", "out", "overwrite", *ignored}
    return {key: value for key, value in vars(args).items() if key not in skipped}


def settings_hashes(settings: Mapping[str, Any]) -> dict[str, str]:
    """A short hash of each entry of `settings` (what decides a run's results: the sections of a
    resolved config, the arguments that matter), relative paths made absolute first, so the same
    run typed from another folder is the same run."""
    resolved = absolute_paths(dict(settings))
    return {str(key): hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]
            for key, value in resolved.items()}


def _main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


_HELD: set[str] = set()  # lock files this process holds


@contextlib.contextmanager
def _locked(lock: Path, holder: str) -> Iterator[None]:
    """Hold an exclusive, non-blocking POSIX record lock on `lock` (pid inside) for the output
    `holder`; `OutputRefusedError` naming the holder's pid when another process has it. A record
    lock, not `flock`: forked children (data-loader workers) do not inherit it, so a run killed
    with SIGKILL frees its output at once, not when its last worker notices."""
    import fcntl

    key = os.path.realpath(lock)
    if key in _HELD:  # a record lock does not exclude its own process, and a second descriptor's close would drop it
        raise OutputRefusedError(f"{holder} is in use by another run (pid {os.getpid()}, lock {lock}); wait for it "
                                 "to finish or choose another output")
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise (write_error(holder, error) or error) from None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise (write_error(holder, error) or error) from None
            raise OutputRefusedError(f"{holder} is in use by another run ({_holder(lock)}, lock {lock}); wait for it "
                              "to finish or choose another output") from None
        with contextlib.suppress(OSError):
            if os.fstat(fd).st_ino == os.stat(lock).st_ino:  # not a lock file its last holder removed meanwhile
                break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError as error:
        os.close(fd)
        raise (write_error(holder, error) or error) from None
    _HELD.add(key)
    try:
        yield
    finally:
        _HELD.discard(key)
        with contextlib.suppress(OSError):
            lock.unlink()
        os.close(fd)


def _holder(lock: Path) -> str:
    """`pid N` from a lock file, as far as its holder has written it."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        return f"pid {int(lock.read_text().split()[0])}"
    return "pid unknown"


def _held(command: str, hashes: dict[str, str], record: dict | None) -> str:
    """What an output holds, for a refusal: another command's results, this one's with other
    settings (naming them), or files that no run recorded."""
    if record is None:
        return "files that no react run recorded"
    started = f", started {record['started']}" if record.get("started") else ""
    if record.get("command") != command:
        return f"the results of a different run, `{record.get('command', '?')}`{started}"
    theirs = record.get("settings") or {}
    differs = sorted(key for key in hashes.keys() | theirs.keys() if hashes.get(key) != theirs.get(key))
    return f"the results of a different run (differs in: {', '.join(differs)}), `{command}`{started}"


def _record(command: str, hashes: dict[str, str]) -> dict:
    return {"command": command, "settings": hashes, "started": datetime.datetime.now().isoformat(timespec="seconds")}


def _read_record(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def _clear(out: Path) -> None:
    """Delete what an earlier run left in `out`, all but the lock; never a folder holding the
    working directory."""
    if Path.cwd().resolve().is_relative_to(out.resolve()):
        raise OutputRefusedError(f"--overwrite would delete {out}, which holds the working directory; choose another output")
    for entry in out.iterdir():
        if entry.name == LOCK_FILE:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


@contextlib.contextmanager
def claim_output(out: str | Path, command: str, settings: Mapping[str, Any], overwrite: bool = False) -> Iterator[Path]:
    """Hold the output folder `out` for one run of `command` whose results `settings` decide;
    yields `out` as a Path.

    Args:
        out: the output folder; made if missing.
        command: the command as a user types it ("react customize", "tools/train_net.py").
        settings: what decides the results, by name (config sections, arguments; JSON-able, paths
            relative to the working directory or absolute). The same command with the same
            settings is the same run, which may resume or run again in `out`.
        overwrite: replace another run's results (deleted first) instead of refusing.

    Returns:
        A context manager. `OutputRefusedError` (one line) when another process holds `out`, or
        when `out` holds another run's results and `overwrite` is false. A run that fails before it
        wrote anything leaves no trace (nor the folder, if it made it).
    """
    out = Path(out)
    if not _main_process():
        yield out
        return
    if out.exists() and not out.is_dir():
        raise OutputRefusedError(f"{out} is a file, not a folder: choose another output")
    made = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise (write_error(out, error) or error) from None
    hashes = settings_hashes(settings)
    record_file = out / RUN_RECORD
    try:
        with _locked(out / LOCK_FILE, str(out)):
            record = _read_record(record_file) if record_file.is_file() else None
            same_run = record is not None and (record.get("command"), record.get("settings")) == (command, hashes)
            leftovers = [entry for entry in out.iterdir() if entry.name not in (LOCK_FILE, RUN_RECORD)]
            if not same_run and leftovers and not overwrite:
                remedy = "replace them" if record is not None else "write there anyway (nothing in it is deleted)"
                raise OutputRefusedError(f"{out} holds {_held(command, hashes, record)}: pass --overwrite to {remedy}, "
                                         "or choose another output")
            if not same_run and leftovers and record is not None:
                _clear(out)
            if not same_run:
                atomic_write_json(record_file, _record(command, hashes))
            try:
                yield out
            except BaseException:
                if not any(entry.name not in (LOCK_FILE, RUN_RECORD) for entry in out.iterdir()):
                    record_file.unlink(missing_ok=True)  # nothing written: the folder is as free as before
                raise
    except BaseException:
        if made:
            with contextlib.suppress(OSError):
                out.rmdir()  # only if the failed run left it empty
        raise


@contextlib.contextmanager
def claim_file(path: str | Path, command: str, settings: Mapping[str, Any], overwrite: bool = False) -> Iterator[Path]:
    """`claim_output` for a command whose result is the one file `path` (a metrics JSON, a
    converted checkpoint): a lock beside it (`.NAME.react.lock`) while the run writes it, and an
    existing `path` is replaced only by the same run (its record, `.NAME.react-run.json`) or with
    `overwrite`. Yields `path` as a Path."""
    path = Path(path)
    if not _main_process():
        yield path
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise (write_error(path, error) or error) from None
    hashes = settings_hashes(settings)
    record_file = path.parent / f".{path.name}{RUN_RECORD}"
    with _locked(path.parent / f".{path.name}{LOCK_FILE}", str(path)):
        record = _read_record(record_file) if record_file.is_file() else None
        same_run = record is not None and (record.get("command"), record.get("settings")) == (command, hashes)
        if path.exists() and not same_run and not overwrite:
            raise OutputRefusedError(f"{path} exists and holds {_held(command, hashes, record)}: pass --overwrite "
                                     "to replace it, or choose another output")
        if not same_run:
            atomic_write_json(record_file, _record(command, hashes))
        try:
            yield path
        except BaseException:
            if not path.exists():
                record_file.unlink(missing_ok=True)
            raise
