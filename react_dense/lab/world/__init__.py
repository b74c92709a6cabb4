"""The synthetic world every test and the demo run on, since no real dataset can be downloaded.

`generate_world(preset, out, seed)` writes, deterministically for a seed: a web-like
image-caption corpus and a generic pretraining slice (webdataset shards + parquet manifests),
a classification task over the target classes, LVIS-format detection scenes and semantic
segmentation scenes; `load_world(out)` reads its description back. Concepts are colour x
shape pairs; the target classes are rare in the pretraining slice and present in the corpus,
which is the situation retrieval-augmented customization is for.
"""
from react_dense.lab.world.presets import PRESETS, Preset
from react_dense.lab.world.world import GENERATOR_VERSION, World, WorldError, content_hash, generate_world, load_world

__all__ = [
    "GENERATOR_VERSION",
    "PRESETS",
    "Preset",
    "World",
    "WorldError",
    "content_hash",
    "generate_world",
    "load_world",
]
