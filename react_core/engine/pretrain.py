"""Pretraining a small CLIP from scratch: the base model of the synthetic world.

CLIP knows the web a little before REACT customizes it; our base model must likewise know the
synthetic world a little (zero-shot on the task clearly above chance, well below perfect), so
that customization has something to improve. It is trained on a generic slice of the corpus in
which the target concepts are rare, with full contrastive training of both towers, and cached:
a second run with the same config and data returns the saved weights at once.

A config may name a `shipped` base: a package resource (`react_core/resources/<name>.safetensors`
and `<name>.json`, the weights and summary that `react pretrain` wrote for this very config and
data). When the run's cache key is the one recorded there, the resource is returned instead of
training, after its sha256 is checked against the record. Rebuild it with
`react pretrain --config CONFIG shipped=null --out DIR` and copy DIR's `model.safetensors` and
`pretrain.json` over the two files.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from react_core.engine.common import ensure_world, run_key, training_device, zeroshot
from react_core.io import atomic_path, atomic_write_json, atomic_write_text, file_sha256

MODEL_FILE = "model.safetensors"
SUMMARY_FILE = "pretrain.json"
RESOURCES = Path(__file__).resolve().parents[1] / "resources"

logger = logging.getLogger("react")


def cached_pretrain(out: str | Path, key: str) -> Path | None:
    summary = Path(out) / SUMMARY_FILE
    weights = Path(out) / MODEL_FILE
    if summary.is_file() and weights.is_file() and json.loads(summary.read_text()).get("cache_key") == key:
        return weights
    return None


def summary_file(weights: Path) -> Path:
    """The summary written beside `weights`: `pretrain.json`, or `<name>.json` for a shipped base."""
    return weights.with_suffix(".json") if weights.parent == RESOURCES else weights.parent / SUMMARY_FILE


def shipped_pretrain(name: str, key: str) -> Path | None:
    """The shipped base `name` when it was made for the run key `key` (its sha256 checked), else None."""
    from react_core.modeling import CheckpointError

    weights = RESOURCES / f"{name}.safetensors"
    record_file = summary_file(weights)
    if not (weights.is_file() and record_file.is_file()):
        raise CheckpointError(f"shipped base '{name}' not found: {weights} and {record_file}")
    record = json.loads(record_file.read_text())
    if record.get("cache_key") != key:
        return None
    digest = file_sha256(weights)
    if digest != record.get("sha256"):
        raise CheckpointError(f"{weights}: sha256 {digest} is not the recorded {record.get('sha256')}; rebuild it "
                              f"(react pretrain ... shipped=null) or reinstall the package")
    return weights


def copy_shipped(weights: Path, out: Path) -> Path:
    """Put a shipped base where the run would have written it, so `OUT/model.safetensors` is there
    for the commands that follow (`react embed --weights runs/pretrain/model.safetensors`)."""
    with atomic_path(out / MODEL_FILE) as tmp:
        shutil.copyfile(weights, tmp)
    atomic_write_text(out / SUMMARY_FILE, summary_file(weights).read_text())
    return out / MODEL_FILE


def pretrain(cfg, out: str | Path) -> Path:
    """Train (or resume, or return the cached result of) a `PretrainConfig`; returns the weights file."""
    import torch

    from react_core.config import write_run_config
    from react_core.data import build_pairs, train_transform
    from react_core.engine.train import train_contrastive
    from react_core.modeling import save_full, set_trainable

    out = Path(out)
    ensure_world(cfg.world)
    if cfg.model.weights or cfg.model.pretrained:
        logger.warning("pretrain starts from %s, not from scratch", cfg.model.weights or cfg.model.pretrained)
    torch.manual_seed(cfg.train.seed)  # the random initial weights
    bundle = cfg.model.load()
    dataset = build_pairs(cfg.data.train, train_transform(bundle, cfg.data.augmentation), cfg.data.replay)
    key = run_key(cfg, dataset)
    cached = cached_pretrain(out, key)
    if cached is not None:
        logger.info("pretrained model for this config is cached: %s", cached)
        return cached
    shipped = shipped_pretrain(cfg.shipped, key) if cfg.shipped else None
    if shipped is not None:
        logger.info("pretrained model for this config is shipped with the package: copied %s into %s", shipped.name, out)
        return copy_shipped(shipped, out)
    out.mkdir(parents=True, exist_ok=True)
    write_run_config(cfg, out)
    counts = set_trainable(bundle.model, "full")
    logger.info("pretraining %s from scratch on %d pairs: %s", bundle.spec.name, len(dataset), counts)
    summary = train_contrastive(
        bundle.model,
        dataset,
        mode="full",
        train=cfg.train,
        data=cfg.data,
        work_dir=out,
        run_identity={"cache_key": key},
        tokenizer=bundle.tokenizer,
        export=lambda: save_full(bundle.model, out / MODEL_FILE),
    )
    metrics = zeroshot(bundle, cfg.eval, None, training_device())
    generic = zeroshot(bundle, cfg.generic_eval, None, training_device())
    record = {"cache_key": key, "sha256": file_sha256(out / MODEL_FILE), "pairs": len(dataset), "zeroshot": metrics,
              "generic_zeroshot": generic, **summary}
    atomic_write_json(out / SUMMARY_FILE, record)
    return out / MODEL_FILE
