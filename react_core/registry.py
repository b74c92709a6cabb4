"""The registries every buildable part is named in (`type:` in a config).

`react_dense` registers its backbones and heads into these same registries, so one config
language builds every part of the project.
"""
from mmengine.registry import Registry

BACKBONES = Registry("backbone", scope="react")
HEADS = Registry("head", scope="react")
DATASETS = Registry("dataset", scope="react")
CONFIG_KINDS = Registry("config kind", scope="react")
