"""Pretraining a CLIP from scratch (both towers, full contrastive training) on a generic pair set.

The run is cached: a second run with the same config and data (the run key,
`react_core.engine.common.run_key`) returns the saved weights at once, and an interrupted one
resumes from its last checkpoint.
"""
from __future__ import annotations

import logging
from pathlib import Path

from react_core.engine.common import run_key, training_device, zeroshot
from react_core.io import atomic_write_json, file_sha256, read_json

MODEL_FILE = "model.safetensors"
SUMMARY_FILE = "pretrain.json"

logger = logging.getLogger("react")


def cached_pretrain(out: str | Path, key: str) -> Path | None:
    summary = Path(out) / SUMMARY_FILE
    weights = Path(out) / MODEL_FILE
    if summary.is_file() and weights.is_file() and read_json(summary).get("cache_key") == key:
        return weights
    return None


def pretrain_key(cfg) -> str:
    """The run key of `cfg`: what `OUT/pretrain.json` records, so that weights made elsewhere for
    this very config and data can be recognised (their sha256 is recorded beside it)."""
    from react_core.data import build_pairs

    return run_key(cfg, build_pairs(cfg.data.train, None, cfg.data.replay))


def pretrain(cfg, out: str | Path) -> Path:
    """Train a CLIP model from scratch (or resume, or return the cached result of the same run).

    Args:
        cfg: a `PretrainConfig`.
        out: the run folder; `model.safetensors` appears there once training has ended.

    Returns:
        The path of the trained weights file.
    """
    import torch

    from react_core.config import write_run_config
    from react_core.data import build_pairs, train_transform
    from react_core.engine.train import train_contrastive
    from mmengine.dist import barrier, is_main_process

    from react_core.modeling import save_full, set_trainable

    out = Path(out)
    key = pretrain_key(cfg)  # before any model is made: a cached result needs none (nor its random-init notice)
    cached = cached_pretrain(out, key)
    if cached is not None:
        logger.info("pretrained model for this config is cached: %s", cached)
        return cached
    if cfg.model.weights or cfg.model.pretrained:
        logger.warning("pretrain starts from %s, not from scratch", cfg.model.weights or cfg.model.pretrained)
    torch.manual_seed(cfg.train.seed)  # the random initial weights
    bundle = cfg.model.load()
    dataset = build_pairs(cfg.data.train, train_transform(bundle, cfg.data.augmentation), cfg.data.replay)
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
    )
    if is_main_process():  # the weights file once training is over: never an intermediate one under its name
        save_full(bundle.model, out / MODEL_FILE)
    barrier()
    metrics = zeroshot(bundle, cfg.eval, None, training_device())
    generic = zeroshot(bundle, cfg.generic_eval, None, training_device())
    save_full(bundle.model, out / MODEL_FILE)
    record = {"cache_key": key, "sha256": file_sha256(out / MODEL_FILE), "pairs": len(dataset), "zeroshot": metrics,
              "generic_zeroshot": generic, **summary}
    atomic_write_json(out / SUMMARY_FILE, record)
    return out / MODEL_FILE
