"""react_core: retrieval, customization and evaluation of CLIP models (REACT)."""

__version__ = "0.1.0"
