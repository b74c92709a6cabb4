"""The registries every buildable part is named in (`type:` in a config).

`react_dense` registers its backbones, heads, datasets and evaluators into these same
registries, so one config language builds every part of the project.
"""
from mmengine.registry import Registry

MODELS = Registry("model", scope="react")
BACKBONES = Registry("backbone", scope="react")
HEADS = Registry("head", scope="react")
DATASETS = Registry("dataset", scope="react")
EVALUATORS = Registry("evaluator", scope="react")
CONFIG_KINDS = Registry("config kind", scope="react")
