"""Engines: thin adapters from the engine-free dense modules to Detectron2 and torchvision."""
