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


def ensure_world(world: str | None) -> None:
    """Use the synthetic world in folder `world` whatever its preset, as the dense configs do; make
    the README's (`react synth --preset demo --out DIR`) when the folder holds none, and the world's
    held-out images of the generic (non-target) classes."""
    if world is None:
        return
    from react_core.synth import generate_world, load_world
    from react_core.synth.tasks import ensure_generic_eval

    if (Path(world) / "world.json").is_file():
        seed = load_world(world).seed
    else:
        logger.info("no synthetic world in %s: making it as `react synth --preset demo --out %s`", world, world)
        seed = generate_world("demo", world, 0, progress=True)["seed"]
    ensure_generic_eval(world, seed=seed)


def run_key(cfg, dataset) -> str:
    """What decides a run's result: the config (less where outputs go, where the world lies and
    how it is evaluated, where a shipped result lies, where an adapter's base lies (its content is
    checked by hash when it loads), a disabled dense objective) and the content of the training
    pairs, replay pairs included (not their paths)."""
    skip = ("out", "world", "eval", "generic_eval", "data", "shipped")
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
