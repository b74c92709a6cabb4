"""Engine-free dense modules: CLIP backbone adapter, vocabularies, region-text classifier."""
