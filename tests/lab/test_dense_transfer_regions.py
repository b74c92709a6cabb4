"""benchmarks/lab/dense_transfer.py's `regions` stage: training-free classification of ground-truth boxes
from the dense readout (and from crops' class tokens), and the readout's drift from the base tower."""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks" / "lab"))
from dense_transfer import region_probe  # noqa: E402


def test_region_probe_counts_every_box_and_closed_gates_do_not_drift(gated_towers, tiny_world):
    gt = json.loads((tiny_world / "detection" / "val.json").read_text())
    base = gated_towers / "base.safetensors"
    plain = region_probe(str(base), None, base, gt, tiny_world / "detection")
    assert plain["boxes"] == len(gt["annotations"]) and plain["readout_drift"] == 0.0
    for key in ("region_top1_novel", "region_top1_base", "crop_top1_novel", "crop_top1_base"):
        assert 0.0 <= plain[key] <= 100.0
    assert set(plain["per_class_top1"]) <= {c["name"] for c in gt["categories"]}
    closed = region_probe(str(gated_towers / "closed.safetensors"), str(base), base, gt, tiny_world / "detection")
    assert closed["readout_drift"] == 0.0  # gates at 0: the customized readout is the base's, bit for bit
    assert closed["per_class_top1"] == plain["per_class_top1"] and closed["per_class_crop_top1"] == plain["per_class_crop_top1"]
    opened = region_probe(str(gated_towers / "open.safetensors"), str(base), base, gt, tiny_world / "detection")
    assert opened["readout_drift"] > 0.01
    assert closed["token_drift"] == 0.0 and plain["token_drift"] == 0.0 and opened["token_drift"] > 0.01
