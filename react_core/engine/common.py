"""What pretrain and customize share: config hashes, zero-shot checks, devices."""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Sequence

import torch


def run_key(cfg, dataset) -> str:
    """What decides a run's result: the config (less where outputs and caches go, how it is
    evaluated, where an adapter's base lies (its content is checked by hash when it loads), a
    disabled dense objective) and the content of the training pairs, replay pairs included (not
    their paths)."""
    skip = ("out", "eval", "generic_eval", "data", "cache")
    data = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in skip}
    data["model"] = {k: v for k, v in data["model"].items() if k != "base_weights"}
    if "dense" in data and not data["dense"]["enabled"]:
        del data["dense"]
    data["data"] = {k: v for k, v in dataclasses.asdict(cfg.data).items() if k not in ("train", "replay", "workers")}
    digest = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode())
    for sample_id, caption in zip(dataset.ids, dataset.captions):
        digest.update(f"{sample_id}\t{caption}\n".encode())
    return digest.hexdigest()[:16]


def training_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def zeroshot(bundle, eval_cfg, cache_dir: Path | None, device, keep_result: bool = False) -> dict | None:
    """Zero-shot metrics on the config's held-out images (None without an `eval:` section).

    `keep_result`: `bundle` is its named model unchanged (the base, before customization), so the
    result is kept in `cache_dir`, keyed by the model's identity, the vocabulary, the templates and
    the image files, and read back by every run of that model on those images."""
    if eval_cfg is None:
        return None
    from react_core.data import read_classnames
    from react_core.eval import evaluate_zeroshot
    from react_core.io import TextFileError, atomic_write_json, read_json

    classnames = read_classnames(eval_cfg.classes)
    kept = None
    if keep_result and cache_dir is not None and bundle.spec.named:
        kept = Path(cache_dir) / f"zeroshot_{_zeroshot_key(bundle, classnames, eval_cfg)}.json"
        if kept.is_file():
            with contextlib.suppress(TextFileError):  # a damaged cache entry is computed again
                return read_json(kept)
    metrics = evaluate_zeroshot(
        bundle,
        classnames,
        eval_cfg.images,
        eval_cfg.templates,
        batch_size=eval_cfg.batch_size,
        cache_dir=cache_dir,
        device=device,
    )
    if kept is not None:
        atomic_write_json(kept, metrics)
    return metrics


def _zeroshot_key(bundle, classnames: Sequence[str], eval_cfg) -> str:
    """What decides a named model's zero-shot result: the model, vocabulary, templates, batch size
    and every image file under `eval_cfg.images` (relative path, size, modification time)."""
    root = Path(eval_cfg.images)
    files = sorted((str(path.relative_to(root)), path.stat().st_size, path.stat().st_mtime_ns)
                   for path in root.rglob("*") if path.is_file())
    payload = [bundle.spec.identity(), list(classnames), eval_cfg.templates, eval_cfg.batch_size, files]
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]
