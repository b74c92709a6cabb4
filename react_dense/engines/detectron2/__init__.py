"""Detectron2 engine (optional dependency, imported lazily)."""
