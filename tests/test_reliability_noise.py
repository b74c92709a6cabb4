"""Noise a user should not see, and files with the mode a user expects."""
from __future__ import annotations

import logging
import os
import stat

from safetensors.torch import save_file

from react_core.io import atomic_path, atomic_write_json
from react_core.modeling import load_clip


def test_no_random_init_notice_when_weights_load(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    weights = tmp_path / "model.safetensors"
    save_file(load_clip("react-tiny").model.state_dict(), str(weights))
    assert "initialized randomly" in caplog.text  # no weights: the notice is true and stays
    caplog.clear()
    load_clip("react-tiny", weights=weights)
    assert "initialized randomly" not in caplog.text


def test_results_get_the_mode_of_a_plain_open(tmp_path):
    previous = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "metrics.json", {"a": 1})
        with atomic_path(tmp_path / "shard.tar") as tmp:
            tmp.write_bytes(b"x")
        os.umask(0o027)
        atomic_write_json(tmp_path / "other.json", {})
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "metrics.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "shard.tar").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "other.json").stat().st_mode) == 0o640
