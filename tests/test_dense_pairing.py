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
    # one trained segmenter serves both towers: the other tower's checkpoint, evaluated with this
    # config's tower, is this tower's run
    for name, weights, other, expected in (
        ("base", [f"model.weights={base}"], "customized", base_mixed),
        ("customized", [f"model.weights={gated_towers / 'open.safetensors'}", f"model.base_weights={base}"], "base", ours_mixed),
    ):
        swapped = tmp_path / f"{name}-from-{other}"
        assert _train_net("--config", CONFIG, "--out", str(swapped), "--eval-only", "--tower-from-config",
                          "--weights", str(tmp_path / other / "model_final.pth"),
                          *_quick(tiny_world, *weights, "backbone.feature_block=-2", "ensemble.enabled=true")) == 0
        assert json.loads((swapped / "metrics.json").read_text())["mIoU"] == expected["mIoU"]


def test_tower_from_config_refuses_heads_that_read_the_gated_block_or_another_base(gated_towers, tiny_world, tmp_path, capsys):
    from react_core.modeling import load_clip, save_full

    base, adapter = gated_towers / "base.safetensors", gated_towers / "open.safetensors"
    trained = tmp_path / "trained"
    assert _train_net("--config", CONFIG, "--out", str(trained), *_quick(tiny_world, f"model.weights={base}")) == 0
    checkpoint = str(trained / "model_final.pth")
    capsys.readouterr()
    # heads that read the last block, after the gated block, serve the base tower only
    assert _train_net("--config", CONFIG, "--out", str(tmp_path / "read"), "--eval-only", "--tower-from-config", "--weights", checkpoint,
                      *_quick(tiny_world, f"model.weights={adapter}", f"model.base_weights={base}", "backbone.feature_block=-1")) == 2
    assert "read the output of gated blocks [5]" in capsys.readouterr().err
    torch.manual_seed(1)
    save_full(load_clip("react-tiny").model, tmp_path / "other_base.safetensors")
    assert _train_net("--config", CONFIG, "--out", str(tmp_path / "other"), "--eval-only", "--tower-from-config", "--weights", checkpoint,
                      *_quick(tiny_world, f"model.weights={tmp_path / 'other_base.safetensors'}")) == 2
    assert "trained on another base tower" in capsys.readouterr().err
    assert _train_net("--config", CONFIG, "--out", str(tmp_path / "train"), "--tower-from-config",
                      *_quick(tiny_world, f"model.weights={base}")) == 2
    assert "--tower-from-config is for --eval-only" in capsys.readouterr().err
