"""The world's base CLIP: the shipped demo base serves its own run key only, its hash checked."""
from __future__ import annotations

import json
import shutil

import pytest

from react_core.config import load
from react_core.engine.config import PretrainConfig
from react_core.io import file_sha256
from react_dense.lab.base import PRETRAIN_CONFIG, SHIPPED_WEIGHTS, prepare_base

QUICK = {"data.batch_size": 32, "data.workers": 0, "train.max_iters": 2, "train.warmup_iters": 1,
         "train.checkpoint_interval": 2, "eval": None, "generic_eval": None}


def test_the_shipped_demo_base_matches_its_record():
    record = json.loads(SHIPPED_WEIGHTS.with_suffix(".json").read_text())
    assert file_sha256(SHIPPED_WEIGHTS) == record["sha256"]
    assert record["iters"] == load(PRETRAIN_CONFIG, schema=PretrainConfig).train.max_iters


def test_a_shipped_base_serves_its_own_key_only_and_its_hash_is_checked(tiny_world, tmp_path):
    from react_core.modeling import CheckpointError

    made = prepare_base(tiny_world, tmp_path / "made", QUICK, shipped=SHIPPED_WEIGHTS)
    assert (tmp_path / "made" / "train.log").is_file()  # the demo base is another key's: trained
    shipped = tmp_path / "resources" / "base.safetensors"
    shipped.parent.mkdir()
    shutil.copy(made, shipped)
    shutil.copy(made.parent / "pretrain.json", shipped.with_suffix(".json"))

    copied = prepare_base(tiny_world, tmp_path / "copied", QUICK, shipped=shipped)
    assert copied == tmp_path / "copied" / "model.safetensors" and copied.read_bytes() == shipped.read_bytes()
    assert sorted(p.name for p in copied.parent.iterdir()) == ["model.safetensors", "pretrain.json"]  # nothing trained
    other = prepare_base(tiny_world, tmp_path / "other", {**QUICK, "train.lr": 2e-3}, shipped=shipped)
    assert (other.parent / "train.log").is_file()  # another key than the shipped one: trained
    shipped.write_bytes(b"changed")
    with pytest.raises(CheckpointError, match="sha256"):
        prepare_base(tiny_world, tmp_path / "unused", QUICK, shipped=shipped)


def test_synth_base_puts_the_base_where_the_lab_configs_read_it(tiny_world, tmp_path, monkeypatch):
    from react_core.cli import main

    made = []
    monkeypatch.setattr("react_dense.lab.base.prepare_base", lambda world, *args: made.append(world) or tmp_path)
    assert main(["synth", "--preset", "tiny", "--out", str(tiny_world), "--base"]) == 0
    assert made == [str(tiny_world)]
    cfg = load(PRETRAIN_CONFIG.parent / "customize.yaml", {"vars.world": str(tiny_world)})
    assert cfg.model.weights == str(tiny_world / "base" / "model.safetensors")
