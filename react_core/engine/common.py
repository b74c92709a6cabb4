"""What pretrain and customize share: the synthetic world, config hashes, zero-shot checks, devices."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Sequence

import torch

logger = logging.getLogger("react")


def ensure_world(world) -> None:
    """Generate the synthetic world named by a `WorldConfig` unless its folder already holds one."""
    if world is None or (Path(world.dir) / "world.json").is_file():
        return
    from react_core.synth import generate_world

    logger.info("generating the synthetic world (%s) in %s", world.preset, world.dir)
    generate_world(world.preset, world.dir, world.seed)


def config_hash(cfg, exclude: Sequence[str] = ("out",)) -> str:
    """SHA-256 of the validated config without the keys that do not change the result."""
    data = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in exclude}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def pairs_fingerprint(dataset) -> str:
    """SHA-256 over a pair dataset's ids and captions: changes when the data does."""
    digest = hashlib.sha256()
    for sample_id, caption in zip(dataset.ids, dataset.captions):
        digest.update(f"{sample_id}\t{caption}\n".encode())
    return digest.hexdigest()[:16]


def training_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def zeroshot(bundle, eval_cfg, cache_dir: Path | None, device) -> dict | None:
    """Zero-shot metrics on the config's held-out images (None without an `eval:` section)."""
    if eval_cfg is None:
        return None
    from react_core.data import read_classnames
    from react_core.eval import evaluate_zeroshot

    return evaluate_zeroshot(
        bundle,
        read_classnames(eval_cfg.classes),
        eval_cfg.images,
        eval_cfg.templates,
        batch_size=eval_cfg.batch_size,
        cache_dir=cache_dir,
        device=device,
    )
