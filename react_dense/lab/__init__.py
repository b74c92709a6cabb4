"""The lab: a synthetic world and `react demo`, which show on a laptop CPU, with controls, that
retrieval-augmented customization helps.

`world/` generates the world (`react synth`): a web-like image-caption corpus, a generic
pretraining slice in which the target classes are rare, a classification task, LVIS-format
detection and semantic-segmentation scenes. `base.py` gives the world its base CLIP (shipped for
the demo world), `configs/` holds the lab's YAML configs and `demo/` runs the whole pipeline with
its controls and writes a report. The lab calls the library (`react_core`, the rest of
`react_dense`) with paths and typed configs; the library never imports the lab.
"""
