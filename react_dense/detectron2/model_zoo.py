"""Detectron2's `model_zoo.get_config` and `get_config_file`, also where `pkg_resources` is gone.

Detectron2 0.6 finds its configs through `pkg_resources`, which setuptools 81 removed; these read
the same files from Detectron2's own `model_zoo/configs` (or its source checkout's `configs/`).
"""
from __future__ import annotations

from pathlib import Path

from react_core.config import ConfigError


def get_config_file(config_path: str) -> str:
    """The path of a config of Detectron2's model zoo.

    Args:
        config_path: relative to Detectron2's `configs/`, e.g.
            "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml" or "common/models/mask_rcnn_vitdet.py".

    Returns:
        The file's path.
    """
    try:
        from detectron2 import model_zoo
    except ModuleNotFoundError:  # no pkg_resources
        import detectron2

        package = Path(detectron2.__file__).resolve().parent
        for root in (package / "model_zoo" / "configs", package.parent / "configs"):
            if (root / config_path).is_file():
                return str(root / config_path)
        raise ConfigError(f"{config_path}: not a config of Detectron2's model zoo (looked in {package / 'model_zoo' / 'configs'})") from None
    return model_zoo.get_config_file(config_path)


def get_config(config_path: str):
    """A config of Detectron2's model zoo: a yacs `CfgNode` (with `MODEL.REACT.*`) for `.yaml`, a
    LazyConfig for `.py`, as `detectron2.model_zoo.get_config(config_path)` gives it.

    Args:
        config_path: relative to Detectron2's `configs/`.

    Returns:
        The config.
    """
    from detectron2.config import LazyConfig, get_cfg

    path = get_config_file(config_path)
    if path.endswith(".py"):
        return LazyConfig.load(path)
    cfg = get_cfg()
    cfg.merge_from_file(path)
    return cfg
