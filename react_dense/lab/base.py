"""The synthetic world's base CLIP: react-tiny pretrained on the world's generic slice.

Pretraining it takes about 30 CPU minutes, so the base of the demo world (preset demo, seed 0)
ships with the lab (`resources/demo_base.safetensors` and `.json`, the weights and the
`pretrain.json` that `react pretrain` wrote for this very config and data). When a run's key is
the one recorded there, the shipped files seed the library's own pretraining cache, after their
sha256 is checked, and `react_core.engine.pretrain.pretrain` returns them without training.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Mapping

from react_core.engine.pretrain import MODEL_FILE, SUMMARY_FILE, cached_pretrain, pretrain, pretrain_key
from react_core.io import atomic_path, atomic_write_text, file_sha256, read_json
from react_core.modeling import CheckpointError

CONFIGS = Path(__file__).resolve().parent / "configs"
PRETRAIN_CONFIG = CONFIGS / "pretrain.yaml"
SHIPPED_WEIGHTS = Path(__file__).resolve().parent / "resources" / "demo_base.safetensors"
BASE_FOLDER = "base"

logger = logging.getLogger("react")


def shipped_base(key: str, weights: Path = SHIPPED_WEIGHTS) -> Path | None:
    """`weights` when its record (the `.json` beside it) was made for run key `key` and its sha256
    matches the record; None for another key."""
    record_file = weights.with_suffix(".json")
    if not (weights.is_file() and record_file.is_file()):
        raise CheckpointError(f"shipped base not found: {weights} and {record_file}")
    record = read_json(record_file, CheckpointError)
    if record.get("cache_key") != key:
        return None
    digest = file_sha256(weights)
    if digest != record.get("sha256"):
        raise CheckpointError(f"{weights}: sha256 {digest} is not the recorded {record.get('sha256')}; rebuild it "
                              f"(see {PRETRAIN_CONFIG}) or reinstall the package")
    return weights


def prepare_base(world: str | Path, out: str | Path | None = None, overrides: Mapping[str, Any] | None = None,
                 shipped: Path = SHIPPED_WEIGHTS) -> Path:
    """The base CLIP of `world`, pretrained with the lab's pretrain config (and `overrides`) into
    `out` (default WORLD/base); the shipped base serves when its run key matches. Returns the
    weights file."""
    from react_core.config import load
    from react_core.engine.config import PretrainConfig

    out = Path(out) if out is not None else Path(world) / BASE_FOLDER
    cfg = load(PRETRAIN_CONFIG, {"vars.world": str(world), **(overrides or {})}, schema=PretrainConfig)
    key = pretrain_key(cfg)
    found = shipped_base(key, shipped)
    if found is not None and cached_pretrain(out, key) is None:
        logger.info("the base for this world and config ships with the lab: copying %s into %s", found.name, out)
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / MODEL_FILE) as tmp:
            shutil.copyfile(found, tmp)
        atomic_write_text(out / SUMMARY_FILE, found.with_suffix(".json").read_text(encoding="utf-8"))
    return pretrain(cfg, out)
