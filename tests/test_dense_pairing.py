"""Dense heads that read below the gated block (`backbone.feature_block: -2` with one gated block
before the last layer) train the same for the base and a customized tower: the pyramid reads the
base tower's tokens and the heads start alike (they are seeded after the tower is made), so the
towers differ only where the customized one enters, its readout in the score ensemble."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_seg_train import CONFIG, _quick, _train_net  # noqa: E402


def _head_state(out: Path) -> dict:
    state = torch.load(out / "model_final.pth", weights_only=True)["model"]
    return {k: v for k, v in state.items() if not k.startswith("backbone.trunk.")}


def test_heads_below_the_gated_block_are_the_same_for_every_tower(gated_towers, tiny_world, tmp_path):
    base = gated_towers / "base.safetensors"
    runs = {}
    for name, weights in (("base", [f"model.weights={base}"]),
                          ("customized", [f"model.weights={gated_towers / 'open.safetensors'}", f"model.base_weights={base}"])):
        out = tmp_path / name
        assert _train_net("--config", CONFIG, "--out", str(out), *_quick(tiny_world, *weights, "backbone.feature_block=-2")) == 0
        mixed = tmp_path / f"{name}-ensemble"
        assert _train_net("--config", CONFIG, "--out", str(mixed), "--eval-only", "--weights", str(out / "model_final.pth"),
                          *_quick(tiny_world, *weights, "backbone.feature_block=-2", "ensemble.enabled=true")) == 0
        runs[name] = (_head_state(out), json.loads((out / "metrics.json").read_text()), json.loads((mixed / "metrics.json").read_text()))
    (base_head, base_alone, base_mixed), (ours_head, ours_alone, ours_mixed) = runs["base"], runs["customized"]
    assert base_head.keys() == ours_head.keys()
    assert all(torch.equal(base_head[k], ours_head[k]) for k in base_head)
    assert ours_alone["mIoU"] == base_alone["mIoU"]
    assert ours_mixed["mIoU"] != base_mixed["mIoU"]  # the customized readout enters through the ensemble
