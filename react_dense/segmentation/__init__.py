"""Open-vocabulary semantic segmentation: data layouts, metrics, sliding-window inference, training."""
