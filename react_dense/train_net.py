"""The one runner of dense training and evaluation: load a `kind: detection` or `kind: segmentation`
config, pick its engine, train and/or evaluate. `tools/train_net.py` and the demo call `train`."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from react_core.config import ConfigError, load
from react_core.errors import UserError
from react_dense.detection.config import DetectionConfig
from react_dense.segmentation.config import SegmentationConfig

DenseConfig = Union[DetectionConfig, SegmentationConfig]


def load_dense_config(path: Union[str, Path], overrides: Union[Sequence[str], Mapping[str, Any]] = ()) -> DenseConfig:
    """`path` with `overrides` (`key=value` strings or a mapping, as `react_core.config.load` takes
    them), refused unless it is a detection or segmentation config."""
    import react_dense.plugin  # noqa: F401  (registers both kinds and their parts)

    cfg = load(str(path), overrides)
    if not isinstance(cfg, (DetectionConfig, SegmentationConfig)):
        raise ConfigError(
            f"{path}: expected `kind: detection` or `kind: segmentation`, got kind {getattr(cfg, 'kind', '?')!r}"
        )
    return cfg


def train(
    config: Union[str, Path],
    overrides: Union[Sequence[str], Mapping[str, Any]],
    out: Union[str, Path],
    *,
    resume: bool = False,
    eval_only: bool = False,
    weights: Optional[str] = None,
    tower_from_config: bool = False,
    num_gpus: int = 1,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str = "auto",
) -> Optional[dict]:
    """Train (unless `eval_only`) and evaluate a detection or segmentation config with its engine.

    An evaluation into a folder without a config.yaml writes one, recording the checkpoint it read.

    Args:
        config: a `detection` or `segmentation` config file.
        overrides: `key=value` strings, or a mapping of keys to values.
        out: the run folder.
        resume: continue the run `out` holds (or evaluate a finished one again).
        eval_only: evaluate `weights` (or `out`'s final checkpoint) without training.
        weights: a detector checkpoint to evaluate with `eval_only`.
        tower_from_config: evaluate `weights` with the config's image tower in place of the one it
            holds (`react_dense.engines.checkpoint.with_model_tower`).
        num_gpus, num_machines, machine_rank, dist_url: Detectron2's launch settings; the
            torchvision and plain engines run on several devices under torchrun instead.

    Returns:
        The metrics written to `out/metrics.json`; None on the non-main processes of a
        multi-GPU run.
    """
    from react_core.config import RUN_CONFIG, write_run_config
    from react_dense.engines.checkpoint import FINAL

    cfg = load_dense_config(config, overrides)
    out = Path(out)
    record = eval_only and not (out / RUN_CONFIG).is_file()
    metrics = _run_engine(cfg, out, resume, eval_only, weights, tower_from_config, num_gpus, num_machines, machine_rank, dist_url)
    if record and metrics is not None:
        write_run_config(cfg, out, read=[weights or out / FINAL])
    return metrics


def _run_engine(cfg: DenseConfig, out: Path, resume: bool, eval_only: bool, weights: Optional[str], tower_from_config: bool,
                num_gpus: int, num_machines: int, machine_rank: int, dist_url: str) -> Optional[dict]:
    """`train` on the config's engine."""
    if tower_from_config and not eval_only:
        raise UserError("--tower-from-config is for --eval-only")
    if cfg.engine == "detectron2" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("torchrun launches the torchvision and plain engines; Detectron2's starts its own "
                        "processes: run it without torchrun, with --num-gpus")
    if isinstance(cfg, SegmentationConfig):
        if weights and not eval_only:
            raise UserError("--weights is for --eval-only")
        if num_gpus > 1 or num_machines > 1:
            raise UserError("--num-gpus and --num-machines are Detectron2 detection's; segmentation's plain engine "
                            "runs on several devices under torchrun")
        if cfg.engine == "detectron2" and cfg.method == "head":
            from react_dense.engines.detectron2.seg_train import run as run_detectron2

            return run_detectron2(cfg, out, eval_only=eval_only, resume=resume, weights=weights, tower_from_config=tower_from_config)
        from react_dense.engines.plain.train import run as run_plain

        return run_plain(cfg, out, eval_only=eval_only, resume=resume, weights=weights, tower_from_config=tower_from_config)
    if weights and not eval_only:
        raise UserError("--weights is for --eval-only; to start training from a checkpoint use the config")
    if cfg.engine == "detectron2":
        from react_dense.engines.detectron2.train import launch_run

        return launch_run(
            cfg, out, eval_only=eval_only, resume=resume, weights=weights, tower_from_config=tower_from_config,
            num_gpus=num_gpus, num_machines=num_machines, machine_rank=machine_rank, dist_url=dist_url,
        )
    if num_gpus > 1:
        raise UserError("--num-gpus > 1 needs engine=detectron2 (the torchvision engine runs on several devices under torchrun)")
    from react_dense.engines.torchvision.train import run as run_torchvision

    return run_torchvision(cfg, out, eval_only=eval_only, resume=resume, weights=weights, tower_from_config=tower_from_config)
