"""What `react_dense` adds to `react_core`'s registries: config kinds and buildable parts.

Named in the `react.plugins` entry-point group, so that `react config show` and every config
load can validate dense configs without `react_core` importing `react_dense`.
"""
import react_dense.detection.config  # noqa: F401  (kind: detection)
import react_dense.modeling.backbone  # noqa: F401  (ClipBackbone)
import react_dense.modeling.region_text  # noqa: F401  (RegionTextClassifier)
import react_dense.modeling.seg_head  # noqa: F401  (segmentation heads)
import react_dense.modeling.seg_maskclip  # noqa: F401  (MaskCLIP baseline)
import react_dense.segmentation.config  # noqa: F401  (kind: segmentation)
