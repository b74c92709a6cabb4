"""COCO/LVIS data for dense models."""
