"""`MODEL.REACT.*`: a REACT tower and its zero-shot classifier in Detectron2's yacs config.

`add_react_config(cfg)` adds the keys (as Detic's `add_detic_config` adds Detic's) and sets the
input format and pixel statistics to CLIP's. Importing `react_dense.detectron2` also adds the keys
(with their defaults, nothing else) to `get_cfg()`'s defaults, so Detectron2's own
`tools/train_net.py` reads a config that names them.
"""
from __future__ import annotations

from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

# Detectron2 normalises 0..255 pixels; CLIP's statistics are open_clip's, on 0..1, in RGB order.
CLIP_PIXEL_MEAN = [255 * value for value in OPENAI_DATASET_MEAN]
CLIP_PIXEL_STD = [255 * value for value in OPENAI_DATASET_STD]
CLIP_INPUT_FORMAT = "RGB"


def _react_node():
    from detectron2.config import CfgNode

    react = CfgNode()
    react.MODEL = ""              # open_clip name (ViT-B-16, RN50, react-tiny); "" takes the one an adapter WEIGHTS names
    react.PRETRAINED = ""         # an open_clip pretrained tag (needs internet), or
    react.WEIGHTS = ""            # a local file: base, official REACT, full customized weights, or a `react customize` adapter
    react.BASE_WEIGHTS = ""       # where an adapter's base file is now, if it moved (its sha256 is checked)
    react.FREEZE = "frozen"       # frozen | gated (only REACT gated blocks train) | full
    react.FEATURES = "tokens"     # tokens (patch tokens of BLOCK; res5 of a ResNet) | readout (the tower's dense readout)
    react.BLOCK = -1              # ViT, FEATURES tokens: the block whose output tokens are read (-1: the last)
    react.STRIDE = 16             # ViT: stride of the map the pyramid reads (the tokens resampled when the patch differs)
    react.SCALE_FACTORS = (4.0, 2.0, 1.0, 0.5)  # ViT: Detectron2's SimpleFeaturePyramid levels (ViTDet's)
    react.PYRAMID_NORM = "LN"     # ViT: SimpleFeaturePyramid's norm (ResNet towers use MODEL.FPN.*)
    react.TOP_BLOCK = True        # a max-pooled level above the coarsest (p6 for the stock FPN configs)

    zeroshot = CfgNode()           # the region-text box predictor of ZeroShotROIHeads / ZeroShotCascadeROIHeads
    zeroshot.WEIGHT_PATH = ""      # Detic's format: C x D float32 .npy, one row per training class ("": the
                                   # training dataset's class names through the tower's text encoder)
    zeroshot.TEST_WEIGHT_PATH = "" # the test vocabulary, swapped in at evaluation ("": WEIGHT_PATH's, or the test dataset's names)
    zeroshot.TEMPLATES = "imagenet"  # imagenet | simple | none | a file with one template per line (class names only)
    zeroshot.CACHE_DIR = ""        # text embeddings of class names cached here, per model and vocabulary
    zeroshot.TEMPERATURE = 0.02    # cosine similarities / temperature (Detic's 1/50)
    zeroshot.LEARN_TEMPERATURE = True
    zeroshot.USE_BIAS = True       # one learned logit bias, initialised from PRIOR_PROB for sigmoid scores
    zeroshot.PRIOR_PROB = 0.01
    react.ZEROSHOT = zeroshot      # sigmoid or softmax scores and the federated loss: MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE,
                                   # USE_FED_LOSS, FED_LOSS_NUM_CLASSES, FED_LOSS_FREQ_WEIGHT_POWER (Detectron2's keys)

    ensemble = CfgNode()           # F-VLM: the frozen tower's region scores combined with the detector's at test time
    ensemble.ENABLED = False
    ensemble.BASE_WEIGHT = 0.35
    ensemble.NOVEL_WEIGHT = 0.65
    ensemble.CLIP_TEMPERATURE = 0.01
    ensemble.REGIONS = "map"       # map: the readout pooled over each box | crops: the whole tower on box crops
    ensemble.CROP_SCALE = 1.5
    react.ENSEMBLE = ensemble
    return react


def add_react_keys(cfg) -> None:
    """`MODEL.REACT.*` with their defaults, unless `cfg` has them already; nothing else changes."""
    if "REACT" not in cfg.MODEL:
        frozen = cfg.is_frozen()
        cfg.defrost()
        cfg.MODEL.REACT = _react_node()
        if frozen:
            cfg.freeze()


def add_react_config(cfg) -> None:
    """Add `MODEL.REACT.*` to a Detectron2 yacs config and set the input to the tower's (CLIP's
    RGB pixel statistics), as Detic's `add_detic_config`.

    Then set `MODEL.BACKBONE.NAME: build_react_backbone` (and `MODEL.ROI_HEADS.NAME:
    ZeroShotROIHeads` for the zero-shot classifier). A config that sets other statistics or BGR
    input afterwards still works: the REACT backbone hands the tower CLIP's normalisation whatever
    Detectron2's is (`react_dense.detectron2.backbone.ClipInput`).

    Args:
        cfg: a `detectron2.config.CfgNode` (from `get_cfg()`), changed in place.

    Returns:
        None.
    """
    add_react_keys(cfg)
    cfg.INPUT.FORMAT = CLIP_INPUT_FORMAT
    cfg.MODEL.PIXEL_MEAN = list(CLIP_PIXEL_MEAN)
    cfg.MODEL.PIXEL_STD = list(CLIP_PIXEL_STD)
