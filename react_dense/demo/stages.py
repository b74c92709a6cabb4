"""Cached demo stages: each stage's outputs live in their own folder with a `stage.json`.

A stage is redone only when its key (a hash of its inputs and of the stages it reads from)
changes, so a second `react demo` only redoes what changed, and an interrupted one resumes at
the first unfinished stage.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from react_core.io import atomic_write_json

STAGE_FILE = "stage.json"
STARTED_FILE = "stage.key"


def stage_key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class StageRunner:
    """Runs named stages in order, printing progress, skipping those already done for their key."""

    def __init__(self, root: Path, total: int, echo: Callable[[str], None] = print):
        self.root = Path(root)
        self.total = total
        self.done = 0
        self.echo = echo
        self.keys: dict[str, str] = {}

    def run(self, name: str, work: Callable[[Path], dict], inputs: Any = None, after: tuple[str, ...] = ()) -> dict:
        """Run `work(folder) -> result` unless `folder/stage.json` holds the same key.

        The key hashes the stage's own `inputs` and the keys of the stages it reads from
        (`after`), so a change anywhere upstream redoes everything downstream of it.

        A folder left by an interrupted run of the same key is kept (the stage resumes in it);
        one left by other inputs is cleared first.
        """
        key = stage_key(name, inputs, [self.keys[stage] for stage in after])
        self.keys[name] = key
        folder = self.root / name
        record = folder / STAGE_FILE
        self.done += 1
        prefix = f"[{self.done}/{self.total}] {name}"
        if record.is_file():
            saved = json.loads(record.read_text())
            if saved.get("key") == key:
                self.echo(f"{prefix}: cached")
                return saved["result"]
        self.echo(f"{prefix} ...")
        start = time.perf_counter()
        started = folder / STARTED_FILE
        if folder.exists() and (not started.is_file() or started.read_text() != key):
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        started.write_text(key)
        result = work(folder)
        seconds = time.perf_counter() - start
        atomic_write_json(record, {"key": key, "result": result, "seconds": round(seconds, 1)})
        self.echo(f"{prefix}: done in {seconds:.0f} s")
        return result
