"""What `react_dense` adds to `react_core`'s registries: config kinds and buildable parts.

Named in the `react.plugins` entry-point group, so that `react config show` and every config
load can validate dense configs without `react_core` importing `react_dense`. The parts are
declared by module, not imported: checking a config needs no torch.
"""
import react_dense.detection.config  # noqa: F401  (kind: detection)
import react_dense.segmentation.config  # noqa: F401  (kind: segmentation)
from react_core.registry import BACKBONES, HEADS

BACKBONES.declare("ClipBackbone", "react_dense.modeling.backbone")
HEADS.declare("RegionTextClassifier", "react_dense.modeling.region_text")
HEADS.declare("OpenVocabSegHead", "react_dense.modeling.seg_head")
