"""Generate the whole synthetic world into one folder, and read it back.

Everything is built inside `DIR/.synth-partial/`, moved into place part by part, and only then
described by `DIR/world.json`, written last and atomically. So a world.json always describes a
complete world; an interrupted run leaves no world.json and the next run starts over. A world
whose world.json names the same preset, seed and generator version is reused as it is; a lock
file makes concurrent requests for the same folder wait for each other instead of colliding.

Work is split into jobs (corpus shards, task classes, chunks of scenes), each seeded from
(seed, stream, index) alone, so the output is the same for any number of worker processes.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import multiprocessing
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from react_core.errors import ReactError
from react_core.io import atomic_write_json, read_json
from react_core.machine import usable_cpus
from react_dense.lab.world import concepts, corpus, scenes, semseg, tasks
from react_dense.lab.world.presets import PRESETS, Preset

GENERATOR_VERSION = "1"
PARTS = ("corpus", "pretrain", "task", "detection", "semseg")
PARTIAL = ".synth-partial"
LOCK = ".synth-lock"
_CORPUS, _PRETRAIN, _TASK, _DET_PLAN, _DET, _SEG_PLAN, _SEG = range(1, 8)
_SCENE_CHUNK = 100


class WorldError(ReactError):
    """A folder that holds no usable world, or that generation must not write into."""


@dataclass(frozen=True)
class World:
    """A generated world as described by its world.json; `paths` and `shards` are absolute."""

    root: Path
    preset: str
    seed: int
    generator_version: str
    colors: tuple[str, ...]
    shapes: tuple[str, ...]
    textures: tuple[str, ...]
    classes: tuple[str, ...]
    target_classes: tuple[str, ...]
    detection_categories: tuple[str, ...]
    novel_categories: tuple[str, ...]
    base_categories: tuple[str, ...]
    semseg_classes: tuple[str, ...]
    semseg_seen: tuple[str, ...]
    semseg_unseen: tuple[str, ...]
    counts: dict[str, Any]
    paths: dict[str, Path]
    shards: dict[str, list[Path]]
    content_sha256: str
    info: dict[str, Any]


def load_world(out: str | Path) -> World:
    root = Path(out)
    path = root / "world.json"
    if not path.is_file():
        raise WorldError(f"{root}: no world.json (make one with `react synth --preset tiny --out {root}`)")
    info = read_json(path, WorldError)
    return World(
        root=root,
        preset=info["preset"],
        seed=info["seed"],
        generator_version=info["generator_version"],
        colors=tuple(info["vocabulary"]["colors"]),
        shapes=tuple(info["vocabulary"]["shapes"]),
        textures=tuple(info["vocabulary"]["textures"]),
        classes=tuple(info["classes"]),
        target_classes=tuple(info["target_classes"]),
        detection_categories=tuple(info["detection"]["categories"]),
        novel_categories=tuple(info["detection"]["novel"]),
        base_categories=tuple(info["detection"]["base"]),
        semseg_classes=tuple(info["semseg"]["classes"]),
        semseg_seen=tuple(info["semseg"]["seen"]),
        semseg_unseen=tuple(info["semseg"]["unseen"]),
        counts=info["counts"],
        paths={key: root / value for key, value in info["paths"].items()},
        shards={key: [root / value for value in values] for key, values in info["shards"].items()},
        content_sha256=info["content_sha256"],
        info=info,
    )


def content_hash(root: Path, parts: tuple[str, ...] = PARTS) -> tuple[str, int, int]:
    """sha256 over every file's relative path and bytes, in sorted path order; with file and byte counts."""
    files = sorted(
        (path.relative_to(root).as_posix(), path)
        for part in parts for path in (root / part).rglob("*") if path.is_file()
    )
    digest = hashlib.sha256()
    size = 0
    for relative, path in files:
        data = path.read_bytes()
        size += len(data)
        digest.update(relative.encode("utf-8") + b"\0")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest(), len(files), size


def _summary(info: dict, root: Path, cached: bool, seconds: float) -> dict:
    return {
        "out": str(root), "preset": info["preset"], "seed": info["seed"],
        "generator_version": info["generator_version"], "cached": cached, "seconds": round(seconds, 2),
        "counts": info["counts"], "paths": info["paths"], "content_sha256": info["content_sha256"],
    }


@contextlib.contextmanager
def _locked(root: Path):
    """Hold an exclusive lock on `root` so that two processes asking for the same world (say,
    two commands that each generate it on first use) take turns: the second then reuses it."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _prepare(root: Path) -> Path:
    """Clear what an earlier or interrupted run left; refuse a folder that holds other things."""
    leftovers = {path.name for path in root.iterdir()} - {LOCK}
    if leftovers and not leftovers & {"world.json", PARTIAL}:
        raise WorldError(f"{root} is not empty and holds no world; give an empty or new folder")
    (root / "world.json").unlink(missing_ok=True)
    partial = root / PARTIAL
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    return partial


class _Jobs:
    """Functions to run in worker processes, with callbacks that collect their results in order."""

    def __init__(self):
        self._jobs: list[tuple[Callable, dict, Callable[[Any], None]]] = []

    def add(self, function: Callable, collect: Callable[[Any], None], **kwargs) -> None:
        self._jobs.append((function, kwargs, collect))

    def run(self, workers: int, progress: bool) -> None:
        from tqdm import tqdm

        if workers <= 1:
            for function, kwargs, collect in tqdm(self._jobs, desc="synth", unit="job", disable=not progress,
                                                  leave=False):
                collect(function(**kwargs))
            return
        # fork on Linux: no re-import of the caller's __main__ (which spawn needs, and which fails
        # for scripts without a main guard or read from stdin); spawn where fork is unsafe (macOS).
        context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = [pool.submit(function, **kwargs) for function, kwargs, _ in self._jobs]
            # the bar's monitor thread starts only after the workers were forked
            with tqdm(total=len(futures), desc="synth", unit="job", disable=not progress, leave=False) as bar:
                for future in futures:
                    future.add_done_callback(lambda _: bar.update())
                try:
                    for future, (_, _, collect) in zip(futures, self._jobs):
                        collect(future.result())
                except BaseException:
                    pool.shutdown(cancel_futures=True)
                    raise


def _shard_paths(count: int, shard_size: int, folder: str) -> list[str]:
    return [f"{folder}/shards/{shard:06d}.tar" for shard in range((count + shard_size - 1) // shard_size)]


def generate_world(
    preset: str, out: str | Path, seed: int = 0, workers: int | None = None, progress: bool = False,
    overwrite: bool = False,
) -> dict:
    """Write the world for `preset` and `seed` into `out` (or reuse it), with the held-out images of
    its generic classes (`tasks.ensure_generic_eval`); return a summary.

    A finished world of another preset, seed or generator version in `out` is replaced only
    with `overwrite`: subsets and embeddings made from it would otherwise pair its captions
    with the new images. The summary has `out`, `preset`, `seed`, `generator_version`, `cached`, `seconds`,
    `counts`, `paths` (relative to `out`) and `content_sha256`.
    """
    if preset not in PRESETS:
        raise WorldError(f"unknown preset '{preset}' (choose from {', '.join(PRESETS)})")
    if seed < 0:
        raise WorldError(f"seed must be >= 0, got {seed}")
    root = Path(out)
    start = time.perf_counter()
    with _locked(root):
        existing = root / "world.json"
        if existing.is_file():
            info = read_json(existing, WorldError)
            if (info.get("preset"), info.get("seed"), info.get("generator_version")) == (
                    preset, seed, GENERATOR_VERSION):
                tasks.ensure_generic_eval(root, seed=seed)
                return _summary(info, root, cached=True, seconds=time.perf_counter() - start)
            if not overwrite:
                raise WorldError(
                    f"{root} holds another world (preset {info.get('preset')}, seed {info.get('seed')}, generator "
                    f"version {info.get('generator_version')}) than preset {preset}, seed {seed}; replace it with "
                    f"`react synth --preset {preset} --seed {seed} --out {root} --overwrite`, or give another folder"
                )
        info = _generate(PRESETS[preset], preset, root, seed, workers or min(usable_cpus(), 8), progress)
        tasks.ensure_generic_eval(root, seed=seed)
    return _summary(info, root, cached=False, seconds=time.perf_counter() - start)


def _generate(sizes: Preset, preset: str, root: Path, seed: int, workers: int, progress: bool) -> dict:
    """Build every part in the partial folder, move the parts into place, write world.json last."""
    partial = _prepare(root)

    results: dict[str, list] = {name: [] for name in ("corpus", "pretrain", "task", "det_train", "det_val")}
    jobs = _Jobs()
    _add_pair_jobs(jobs, results, partial, sizes, seed)
    for index in range(len(concepts.TARGET_CLASSES)):
        jobs.add(tasks.write_class, results["task"].append, out_dir=str(partial / "task"), index=index,
                 n_train=sizes.task_train_per_class, n_val=sizes.task_val_per_class, seed=seed, stream=_TASK)
    det_plans = scenes.plan_scenes(np.random.default_rng([seed, _DET_PLAN]), sizes)
    first_ids = {"train": 1, "val": sizes.det_train_images + 1}
    for split, plans in det_plans.items():
        for start_index in range(0, len(plans), _SCENE_CHUNK):
            jobs.add(scenes.write_scenes, results[f"det_{split}"].extend, out_dir=str(partial / "detection"),
                     seed=seed, stream=_DET, split=split, first_id=first_ids[split] + start_index,
                     plans=plans[start_index:start_index + _SCENE_CHUNK])
    seg_rng = np.random.default_rng([seed, _SEG_PLAN])
    for split, count in (("train", sizes.semseg_train_images), ("val", sizes.semseg_val_images)):
        plans = semseg.plan_objects(seg_rng, count)
        for start_index in range(0, count, _SCENE_CHUNK):
            jobs.add(semseg.write_images, lambda _: None, out_dir=str(partial / "semseg"), split=split, seed=seed,
                     stream=_SEG, first=start_index, plans=plans[start_index:start_index + _SCENE_CHUNK])
    jobs.run(workers, progress)

    counts = _write_indexes(partial, sizes, results, first_ids)
    content_sha256, counts["files"], counts["bytes"] = content_hash(partial)
    for part in PARTS:
        shutil.rmtree(root / part, ignore_errors=True)
        os.replace(partial / part, root / part)
    info = _world_record(preset, seed, sizes, counts, content_sha256)
    atomic_write_json(root / "world.json", info)
    shutil.rmtree(partial, ignore_errors=True)
    return info


def _add_pair_jobs(jobs: _Jobs, results: dict, partial: Path, sizes: Preset, seed: int) -> None:
    weights = {"corpus": concepts.corpus_weights(), "pretrain": concepts.pretrain_weights(sizes.pretrain_target_factor)}
    totals = {"corpus": sizes.corpus_pairs, "pretrain": sizes.pretrain_pairs}
    for name, stream in (("corpus", _CORPUS), ("pretrain", _PRETRAIN)):
        for shard in range(len(_shard_paths(totals[name], sizes.shard_size, name))):
            jobs.add(corpus.write_shard, results[name].append, out_dir=str(partial / name), shard=shard,
                     shard_size=sizes.shard_size, total=totals[name], weights=weights[name].tolist(),
                     mismatch_rate=sizes.mismatch_rate, distractor_rate=sizes.distractor_rate, seed=seed,
                     stream=stream)


def _write_indexes(partial: Path, sizes: Preset, results: dict, first_ids: dict[str, int]) -> dict[str, Any]:
    """Manifests, task index, LVIS JSON and semseg classes from the jobs' results; returns counts."""
    counts: dict[str, Any] = {}
    targets = set(concepts.TARGET_CLASSES)
    for name in ("corpus", "pretrain"):
        parts = results[name]
        counts[f"{name}_pairs"] = corpus.write_manifest(partial / name / "manifest.parquet", parts)
        counts[f"{name}_mismatched"] = sum(sum(part["mismatched"]) for part in parts)
        counts[f"{name}_target_pairs"] = sum(sum(c in targets for c in part["class"]) for part in parts)
    counts["task_classes"] = len(concepts.TARGET_CLASSES)
    counts["task_train_images"] = sizes.task_train_per_class * len(concepts.TARGET_CLASSES)
    counts["task_val_images"] = sizes.task_val_per_class * len(concepts.TARGET_CLASSES)
    counts["task_pairs"] = tasks.write_index(partial / "task", results["task"])

    categories = scenes.lvis_categories(results["det_train"])
    for split in ("train", "val"):
        data = scenes.lvis_json(split, first_ids[split], results[f"det_{split}"], categories, GENERATOR_VERSION)
        atomic_write_json(partial / "detection" / f"{split}.json", data)
        counts[f"detection_{split}_images"] = len(data["images"])
        counts[f"detection_{split}_annotations"] = len(data["annotations"])
    counts["detection_frequency"] = {bucket: sum(c["frequency"] == bucket for c in categories) for bucket in "rcf"}
    wrong = [c["name"] for c in categories if (c["frequency"] == "r") != (c["name"] in targets)]
    if wrong:
        raise RuntimeError(f"preset gives the wrong LVIS frequency to {wrong}; adjust its det_range_* values")

    atomic_write_json(partial / "semseg" / "classes.json", semseg.classes_record())
    counts["semseg_train_images"] = sizes.semseg_train_images
    counts["semseg_val_images"] = sizes.semseg_val_images
    return counts


def _world_record(preset: str, seed: int, sizes: Preset, counts: dict, content_sha256: str) -> dict:
    categories = list(scenes.CATEGORIES)
    novel = [name for name in categories if name in concepts.TARGET_CLASSES]
    return {
        "generator": "react_dense.lab.world",
        "generator_version": GENERATOR_VERSION,
        "preset": preset,
        "seed": seed,
        "sizes": sizes.to_dict(),
        "image_size": {"corpus": corpus.IMAGE_SIZE, "task": corpus.IMAGE_SIZE, "scenes": scenes.SCENE_SIZE},
        "vocabulary": {
            "colors": list(concepts.COLOR_NAMES), "shapes": list(concepts.SHAPES), "textures": list(concepts.TEXTURES),
            "color_synonyms": {k: list(v) for k, v in concepts.COLOR_SYNONYMS.items()},
            "shape_synonyms": {k: list(v) for k, v in concepts.SHAPE_SYNONYMS.items()},
        },
        "classes": list(concepts.CLASSES),
        "target_classes": list(concepts.TARGET_CLASSES),
        "class_weights": {
            "corpus": dict(zip(concepts.CLASSES, concepts.corpus_weights().round(6).tolist())),
            "pretrain": dict(zip(concepts.CLASSES,
                                 concepts.pretrain_weights(sizes.pretrain_target_factor).round(6).tolist())),
        },
        "detection": {
            "categories": categories, "novel": novel, "base": [name for name in categories if name not in novel],
            "note": "novel = LVIS rare (r) categories; train.json still holds their annotations, "
                    "the open-vocabulary protocol removes them at training time",
        },
        "semseg": semseg.classes_record(),
        "counts": counts,
        "paths": {
            "corpus_manifest": "corpus/manifest.parquet",
            "pretrain_manifest": "pretrain/manifest.parquet",
            "task": "task",
            "task_train": "task/train",
            "task_val": "task/val",
            "task_classes": "task/classes.txt",
            "task_class_dirs": "task/classes.json",
            "task_pairs": "task/pairs.parquet",
            "detection_train": "detection/train.json",
            "detection_val": "detection/val.json",
            "detection_image_root": "detection",
            "semseg": "semseg",
            "semseg_classes": "semseg/classes.json",
        },
        "shards": {
            "corpus": _shard_paths(sizes.corpus_pairs, sizes.shard_size, "corpus"),
            "pretrain": _shard_paths(sizes.pretrain_pairs, sizes.shard_size, "pretrain"),
        },
        "content_sha256": content_sha256,
    }
