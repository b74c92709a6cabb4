"""REACT customization: freeze a CLIP, train new modules on image-text pairs, measure zero-shot.

`gated-image` adds gated blocks to the image tower and trains them (and `logit_scale`);
`locked-text` trains the whole image tower; both keep the text tower locked, so caption
embeddings are computed once (or reused from the retrieval stage) and the text tower never runs
in a training step. `full` trains everything.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from mmengine.hooks import Hook

from react_core.config import write_run_config
from react_core.engine.common import run_key, training_device, zeroshot
from react_core.io import atomic_write_json

ADAPTER_FILE = "adapter.safetensors"
FULL_FILE = "model.safetensors"
METRICS_FILE = "metrics.json"

logger = logging.getLogger("react")


class WriteConfigHook(Hook):
    """Writes the run's config.yaml once the runner has accepted `out` (a checkpoint of another
    run there is refused first), so a refused rerun leaves the finished run's config as it was."""

    def __init__(self, cfg, out: Path):
        self.cfg, self.out = cfg, out

    def before_train(self, runner) -> None:
        write_run_config(self.cfg, self.out)


def before_after(name: str, before, after) -> dict:
    """`{name}_top1_before/after` and the whole evaluations, or nothing when there was no evaluation."""
    if before is None:
        return {}
    return {f"{name}_top1_before": before["top1"], f"{name}_top1_after": after["top1"],
            f"{name}_before": before, f"{name}_after": after}


def customize(cfg, out: str | Path) -> dict:
    """Customize a CLIP model on retrieved pairs: the training of `react customize`.

    Resumes when `out` holds this run's checkpoint; the final weights are written once training
    and evaluation have ended, just before `metrics.json`.

    Args:
        cfg: a `CustomizeConfig` (`react_core.config.load("configs/customize/....yaml")`).
        out: the run folder (checkpoints, `adapter.safetensors` or `model.safetensors`,
            `metrics.json`).

    Returns:
        The metrics also written to `out/metrics.json`: the mode, the number of pairs, the gated
        layers, the trainable and frozen parameter counts, the zero-shot results of each
        evaluation set before and after, and the dense objective's settings where it is on.
    """
    import torch

    from react_core.data import build_pairs, train_transform
    from react_core.engine.caption_embeddings import caption_embeddings, embeddings_from_folder
    from react_core.engine.train import train_contrastive
    from react_core.modeling import add_gated_blocks, save_adapter, save_full, set_trainable
    from react_core.modeling.dense_objective import DenseObjective

    out = Path(out)
    mode = cfg.train.mode
    cfg.dense.check(mode)
    bundle = cfg.model.load()
    base_identity = bundle.spec.identity()
    dataset = build_pairs(cfg.data.train, train_transform(bundle, cfg.data.augmentation), cfg.data.replay)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(cfg.cache) if cfg.cache else out / "cache"
    device = training_device()
    bundle.model.to(device)
    before = zeroshot(bundle, cfg.eval, cache, device, keep_result=True)
    generic_before = zeroshot(bundle, cfg.generic_eval, cache / "generic", device, keep_result=True)

    layers = []
    torch.manual_seed(cfg.train.seed)  # the gated blocks' random initial weights
    if mode == "gated-image":
        layers = add_gated_blocks(bundle.model, cfg.gated.layers, cfg.gated.k, cfg.gated.checkpointing)
    counts = set_trainable(bundle.model, mode)
    logger.info("customizing %s (%s): %s, gated layers %s", bundle.spec.name, mode, counts, layers)

    captions = None
    if mode != "full":
        if cfg.data.text_embeddings:
            captions = embeddings_from_folder(cfg.data.text_embeddings, dataset.ids, base_identity)
        else:
            captions = caption_embeddings(bundle, dataset.captions, cache)
        bundle.model.cpu()  # the runner moves what trains back; a locked text tower stays off the accelerator

    summary = train_contrastive(
        bundle.model,
        dataset,
        mode=mode,
        train=cfg.train,
        data=cfg.data,
        work_dir=out,
        run_identity={"config": run_key(cfg, dataset), "base": base_identity},
        tokenizer=bundle.tokenizer,
        caption_embeddings=captions,
        hooks=[WriteConfigHook(cfg, out)],
        dense=DenseObjective(cfg.dense, seed=cfg.train.seed) if cfg.dense.enabled else None,
    )
    after = zeroshot(bundle, cfg.eval, None if mode == "full" else cache, device)
    generic_after = zeroshot(bundle, cfg.generic_eval, None if mode == "full" else cache / "generic", device)
    metrics = {"mode": mode, "pairs": len(dataset), "gated_layers": layers, **counts, **summary}
    if cfg.data.replay is not None:
        metrics["replay_pairs"] = len(dataset.parts[-1])
    metrics.update(before_after("zeroshot", before, after))
    metrics.update(before_after("generic", generic_before, generic_after))
    if cfg.dense.enabled:
        metrics["dense"] = dataclasses.asdict(cfg.dense)
    if mode == "full" or not (bundle.spec.pretrained or bundle.spec.weights):
        save_full(bundle.model, out / FULL_FILE)
    else:
        save_adapter(bundle.model, out / ADAPTER_FILE, spec=bundle.spec, mode=mode, layers=layers)
    atomic_write_json(out / METRICS_FILE, metrics)
    return metrics
