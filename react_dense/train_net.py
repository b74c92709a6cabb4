"""What `tools/train_net.py` runs: load the config, pick the engine, train and/or evaluate."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

from react_core.config import ConfigError, load
from react_core.errors import UserError
from react_dense.config import DetectionConfig, write_run_config


def load_detection_config(path: str, overrides=()) -> DetectionConfig:
    import react_dense.modeling.backbone  # noqa: F401  (registers ClipBackbone)
    import react_dense.modeling.region_text  # noqa: F401  (registers RegionTextClassifier)

    cfg = load(path, overrides)
    if not isinstance(cfg, DetectionConfig):
        raise ConfigError(f"{path}: expected `kind: detection`, got kind {getattr(cfg, 'kind', '?')!r}")
    return cfg


def run(args: argparse.Namespace) -> Optional[dict]:
    cfg = load_detection_config(args.config, args.overrides)
    out = Path(args.out or Path("runs") / Path(args.config).stem)
    if args.weights and not args.eval_only:
        raise UserError("--weights is for --eval-only; to start training from a checkpoint use the config")
    if cfg.engine == "detectron2":
        from react_dense.engines.detectron2.train import launch_run

        return launch_run(cfg, args, out)
    if args.num_gpus > 1:
        raise UserError("--num-gpus > 1 needs engine=detectron2 (the torchvision engine trains on one device)")
    if not args.eval_only:
        out.mkdir(parents=True, exist_ok=True)
        write_run_config(cfg, out)
    from react_dense.engines.torchvision.train import run as run_torchvision

    return run_torchvision(cfg, out, eval_only=args.eval_only, resume=args.resume, weights=args.weights)
