"""docs/detector.md: each recipe's code block runs as written, on a tiny COCO the test makes (the
Detectron2 recipes are skipped without a Detectron2 source checkout)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "detector.md"
FENCE = re.compile(r"^```(python|bash)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def recipes() -> list[tuple[str, str]]:
    """(language, code) of every fenced python or bash block of the page, in order."""
    return FENCE.findall(PAGE.read_text(encoding="utf-8"))


def test_the_page_has_four_recipes_of_ten_lines_or_fewer():
    blocks = recipes()
    assert [language for language, _ in blocks] == ["bash", "python", "python", "bash"]
    assert all(len([line for line in code.splitlines() if line.strip()]) <= 10 for _, code in blocks)


def _detectron2_checkout() -> Path:
    detectron2 = pytest.importorskip("detectron2")
    checkout = Path(detectron2.__file__).resolve().parents[1]
    if not (checkout / "tools" / "train_net.py").is_file() or not (checkout / "configs").is_dir():
        pytest.skip("the Detectron2 recipes need a Detectron2 source checkout (tools/, configs/)")
    return checkout


def _coco_categories() -> list[dict]:
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    return [{"id": c["id"], "name": c["name"]} for c in COCO_CATEGORIES if c["isthing"]]


def _write_coco(root: Path, split: str, count: int, seed: int) -> None:
    """A COCO 2017 split where Detectron2's builtin `coco_2017_<split>` reads it (under ./datasets):
    the 80 categories, squares of a few of them on noise, 64 pixels."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder = root / "datasets" / "coco" / f"{split}2017"
    folder.mkdir(parents=True, exist_ok=True)
    colours = {1: (220, 40, 40), 3: (40, 60, 220), 18: (40, 200, 60)}  # person, car, dog
    images, annotations = [], []
    for image_id in range(1, count + 1):
        pixels = (rng.random((64, 64, 3)) * 60 + 100).astype(np.uint8)
        for _ in range(int(rng.integers(1, 3))):
            category = int(rng.choice(list(colours)))
            side, x, y = int(rng.integers(16, 28)), *(int(v) for v in rng.integers(0, 36, 2))
            pixels[y : y + side, x : x + side] = colours[category]
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": category, "iscrowd": 0,
                "bbox": [x, y, side, side], "area": side * side,
                "segmentation": [[x, y, x + side, y, x + side, y + side, x, y + side]],
            })
        name = f"{image_id:012d}.jpg"
        Image.fromarray(pixels).save(folder / name)
        images.append({"id": image_id, "file_name": name, "width": 64, "height": 64})
    import json

    annotation_file = root / "datasets" / "coco" / "annotations" / f"instances_{split}2017.json"
    annotation_file.parent.mkdir(parents=True, exist_ok=True)
    annotation_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": _coco_categories()}))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A folder holding what the recipes name: adapter.safetensors (a react-tiny adapter, its base
    beside it) and, when Detectron2 is installed, a tiny COCO under ./datasets."""
    import torch

    from react_core.modeling import add_gated_blocks, load_clip, save_adapter, save_full

    folder = tmp_path_factory.mktemp("recipes")
    torch.manual_seed(0)
    save_full(load_clip("react-tiny").model, folder / "base.safetensors")
    bundle = load_clip("react-tiny", weights=folder / "base.safetensors")
    add_gated_blocks(bundle.model, layers=[5])
    save_adapter(bundle.model, folder / "adapter.safetensors", spec=bundle.spec, mode="gated-image")
    try:
        import detectron2  # noqa: F401
    except ImportError:
        return folder
    _write_coco(folder, "train", 12, seed=0)
    _write_coco(folder, "val", 4, seed=1)
    return folder


def _run(language: str, code: str, folder: Path, **env) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
                   "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]), **env}
    command = ["bash", "-e", "-c", code] if language == "bash" else [sys.executable, "-c", code]
    return subprocess.run(command, cwd=folder, env=environment, capture_output=True, text=True, timeout=1800)


@pytest.mark.slow
def test_the_yacs_recipe_trains_a_stock_config_with_detectron2s_own_script(workspace):
    checkout = _detectron2_checkout()
    language, code = recipes()[0]
    done = _run(language, code, workspace, D2=str(checkout))
    assert done.returncode == 0, done.stderr[-3000:]
    out = workspace / "runs" / "react_mask_rcnn"
    assert (out / "model_final.pth").is_file()
    assert "build_react_backbone" in (out / "config.yaml").read_text()
    assert "Evaluation results for coco_2017_val" in done.stdout + done.stderr  # the script's own evaluation ran


def test_the_lazyconfig_recipe_builds_vitdet_on_the_tower(workspace):
    _detectron2_checkout()
    language, code = recipes()[1]
    done = _run(language, code + "\nprint(type(detector.backbone.net).__name__, detector.backbone.net.tower.kind)\n", workspace)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-2:] == ["ReactViT", "vit"]


def test_the_torchvision_recipe_detects(workspace):
    language, code = recipes()[2]
    done = _run(language, code + "\nprint(sorted(detections[0]), backbone.out_channels)\n", workspace)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "['boxes', 'labels', 'masks', 'scores'] 256"


@pytest.mark.slow
def test_the_classifier_file_recipe_writes_detics_format_and_trains_the_zero_shot_heads(workspace):
    checkout = _detectron2_checkout()
    language, code = recipes()[3]
    done = _run(language, code, workspace, D2=str(checkout))
    assert done.returncode == 0, done.stderr[-3000:]
    classifier = np.load(workspace / "coco_clip.npy")
    assert classifier.shape == (80, 128) and classifier.dtype == np.float32
    out = workspace / "runs" / "react_zeroshot"
    assert (out / "model_final.pth").is_file()
    assert "ZeroShotROIHeads" in (out / "config.yaml").read_text()
    assert "Evaluation results for coco_2017_val" in done.stdout + done.stderr
