"""Detection and segmentation metrics (LVIS and COCO rules)."""
