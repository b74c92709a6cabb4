"""react_dense: the customized CLIP image tower in open-vocabulary detection and segmentation."""
