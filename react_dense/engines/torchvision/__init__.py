"""torchvision engine: Faster/Mask R-CNN around the CLIP backbone and the region-text head."""
