"""Fixtures shared across the test suite."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    """The `tiny` synthetic world (seed 0), generated once per test session."""
    from react_core.synth import generate_world

    out = tmp_path_factory.mktemp("tiny_world")
    generate_world("tiny", out, seed=0)
    return out
