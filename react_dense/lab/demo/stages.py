"""Cached demo stages: each stage's outputs live in their own folder with a `stage.json`.

A stage is redone only when its key (a hash of its inputs and of the stages it reads from)
changes, so a second `react demo` only redoes what changed, and an interrupted one resumes at
the first unfinished stage. Independent stages can run side by side in worker processes
(`react demo --jobs N`), for machines whose cores one small run cannot keep busy; on two cores it
gained little (1.02-1.10x the throughput of one run on both cores, `benchmarks/demo_jobs.py`).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import shutil
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from react_core.errors import ReactError
from react_core.io import TextFileError, atomic_write_json, read_json
from react_core.machine import usable_cpus

STAGE_FILE = "stage.json"
STARTED_FILE = "stage.key"
LOG_FILE = "stage.log"


def stage_key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Stage:
    """One cached step. `work(folder) -> result` must be picklable (a module-level function or a
    `functools.partial` of one) when the runner has more than one job."""

    name: str
    work: Callable[[Path], dict]
    inputs: Any = None
    after: tuple[str, ...] = ()


class StageFailed(RuntimeError):
    pass


def _execute(folder: Path, key: str, work: Callable[[Path], dict], log: bool) -> tuple[dict, float]:
    """Run one stage in `folder` and record its result; a folder left by other inputs is cleared
    first, one left by an interrupted run of the same key is kept (the stage resumes in it)."""
    start = time.perf_counter()
    started = folder / STARTED_FILE
    if folder.exists() and (not started.is_file() or started.read_text() != key):
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    started.write_text(key)
    with contextlib.ExitStack() as stack:
        if log:  # side-by-side stages would interleave their progress bars on one terminal
            stream = stack.enter_context(open(folder / LOG_FILE, "a", buffering=1))
            stack.enter_context(contextlib.redirect_stdout(stream))
            stack.enter_context(contextlib.redirect_stderr(stream))
        result = work(folder)
    seconds = time.perf_counter() - start
    atomic_write_json(folder / STAGE_FILE, {"key": key, "result": result, "seconds": round(seconds, 1)})
    return result, seconds


def threads_per_job(jobs: int) -> int:
    """The usable cores shared among `jobs` side-by-side stages."""
    return max(1, usable_cpus() // jobs)


def _start_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


class StageRunner:
    """Runs named stages in dependency order, printing progress, skipping those already done for
    their key; with `jobs > 1`, up to `jobs` ready stages at once, the cores shared among them."""

    def __init__(self, root: Path, total: int, echo: Callable[[str], None] = print, jobs: int = 1):
        if jobs < 1:
            raise ValueError(f"jobs must be at least 1, got {jobs}")
        self.root = Path(root)
        self.total = total
        self.done = 0
        self.echo = echo
        self.jobs = jobs
        self.keys: dict[str, str] = {}

    def run(self, name: str, work: Callable[[Path], dict], inputs: Any = None, after: tuple[str, ...] = ()) -> dict:
        """Run one stage here, in this process (see `run_all`)."""
        return self.run_all([Stage(name, work, inputs, after)], jobs=1)[name]

    def run_all(self, stages: list[Stage], jobs: int | None = None) -> dict[str, dict]:
        """Run `stages` (listed so that each comes after those it reads from) and return their
        results by name. A stage's key hashes its own `inputs` and the keys of the stages in its
        `after`, so a change anywhere upstream redoes everything downstream of it. A stage starts
        once the stages in its `after` are done; if one fails, the running ones finish and are
        recorded (a rerun resumes after them) and `StageFailed` names the failed stage (a
        `ReactError`, which already names its bad input, passes through unchanged)."""
        jobs = self.jobs if jobs is None else jobs
        results: dict[str, dict] = {}
        waiting: list[tuple[Stage, str, str]] = []
        for stage in stages:
            key = stage_key(stage.name, stage.inputs, [self.keys[name] for name in stage.after])
            self.keys[stage.name] = key
            self.done += 1
            prefix = f"[{self.done}/{self.total}] {stage.name}"
            record = self.root / stage.name / STAGE_FILE
            saved = {}
            with contextlib.suppress(TextFileError):  # a damaged record: the stage runs again
                saved = read_json(record) if record.is_file() else {}
            if saved.get("key") == key:
                self.echo(f"{prefix}: cached")
                results[stage.name] = saved["result"]
            else:
                waiting.append((stage, key, prefix))
        if jobs == 1:
            for stage, key, prefix in waiting:
                self.echo(f"{prefix} ...")
                results[stage.name], seconds = self._guarded(stage.name, _execute, self.root / stage.name, key, stage.work, False)
                self.echo(f"{prefix}: done in {seconds:.0f} s")
        elif waiting:
            self._run_side_by_side(waiting, results, jobs)
        return results

    def _guarded(self, name: str, function, *args):
        try:
            return function(*args)
        except ReactError:  # already one line naming the bad input, for the command's exit status 2
            raise
        except Exception as error:
            raise StageFailed(f"stage {name} failed ({type(error).__name__}: {error}); see {self.root / name}") from error

    def _run_side_by_side(self, waiting: list[tuple[Stage, str, str]], results: dict, jobs: int) -> None:
        pending = {stage.name for stage, _, _ in waiting}
        running: dict[Future, tuple[Stage, str]] = {}
        failure: Exception | None = None
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(jobs, mp_context=context, initializer=_start_worker,
                                 initargs=(threads_per_job(jobs),)) as pool:
            while waiting or running:
                ready = [item for item in waiting if not pending.intersection(item[0].after)]
                for item in ready[: max(jobs - len(running), 0)] if failure is None else ():
                    stage, key, prefix = item
                    waiting.remove(item)
                    folder = self.root / stage.name
                    self.echo(f"{prefix} ... (log: {folder / LOG_FILE})")
                    running[pool.submit(_execute, folder, key, stage.work, True)] = (stage, prefix)
                if not running:
                    break
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    stage, prefix = running.pop(future)
                    try:
                        results[stage.name], seconds = self._guarded(stage.name, future.result)
                    except (StageFailed, ReactError) as error:
                        failure = failure or error
                        continue
                    pending.discard(stage.name)
                    self.echo(f"{prefix}: done in {seconds:.0f} s")
        if failure is not None:
            raise failure
