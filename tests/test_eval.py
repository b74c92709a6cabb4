"""Evaluation: zero-shot metrics, retrieval recalls, linear probe, and the `react eval` command."""
import json

import pandas as pd
import pytest
import torch
from PIL import Image

from react_core.eval import linear_probe, retrieval_recalls, zeroshot_metrics


def test_zeroshot_metrics_top1_top5_per_class():
    classes = torch.eye(6)
    features = torch.eye(6)[[0, 1, 2, 3]] + 0.1 * torch.eye(6)[[1, 0, 0, 0]]
    features[3] = torch.eye(6)[4] * 0.9 + torch.eye(6)[3] * 0.5  # class 3 image closest to class 4
    labels = torch.tensor([0, 1, 2, 3])
    metrics = zeroshot_metrics(features, labels, classes, list("abcdef"))
    assert metrics["top1"] == pytest.approx(75.0)
    assert metrics["top5"] == pytest.approx(100.0)
    assert metrics["per_class_top1"] == {"a": 100.0, "b": 100.0, "c": 100.0, "d": 0.0}
    assert metrics["images"] == 4


def test_retrieval_recalls_with_several_captions_per_image():
    images = torch.eye(4)
    # captions 0,1 -> image 0; caption 2 -> image 1 (but closest to image 2); caption 3 -> image 2
    texts = torch.stack([torch.eye(4)[0], torch.eye(4)[0], 0.9 * torch.eye(4)[2] + 0.5 * torch.eye(4)[1], torch.eye(4)[2]])
    owner = torch.tensor([0, 0, 1, 2])
    metrics = retrieval_recalls(images, texts, owner, ks=(1, 2))
    assert metrics["t2i_R@1"] == pytest.approx(75.0)
    assert metrics["t2i_R@2"] == pytest.approx(100.0)
    # image 3 has no caption: never a hit; image 1's caption ranks first for image 1
    assert metrics["i2t_R@1"] == pytest.approx(75.0)


def test_linear_probe_learns_separable_classes_and_picks_l2_on_validation():
    generator = torch.Generator().manual_seed(0)
    centers = torch.nn.functional.normalize(torch.randn(3, 16, generator=generator), dim=-1)

    def sample(n):
        labels = torch.arange(3).repeat(n)
        return centers[labels] + 0.15 * torch.randn(len(labels), 16, generator=generator), labels

    train_x, train_y = sample(20)
    test_x, test_y = sample(10)
    full = linear_probe(train_x, train_y, test_x, test_y, 3, shots=None)
    assert full["top1"] > 90 and full["train_images"] == 60
    few = linear_probe(train_x, train_y, test_x, test_y, 3, shots=2)
    assert few["train_images"] == 6 and few["shots"] == 2
    noise = linear_probe(train_x, train_y[torch.randperm(60, generator=generator)], test_x, test_y, 3)
    assert noise["top1"] < full["top1"]


@pytest.fixture
def color_task(tmp_path):
    colors = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
    (tmp_path / "classes.txt").write_text("".join(f"{c}\n" for c in colors))
    rows = []
    for split in ("train", "val"):
        for name, rgb in colors.items():
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(4):
                shade = tuple(max(0, v - 15 * i) for v in rgb)
                Image.new("RGB", (64, 64), shade).save(tmp_path / split / name / f"{i}.png")
                rows.append({"id": f"{split}{name}{i}", "path": f"{split}/{name}/{i}.png", "caption": f"a {name} square"})
    pd.DataFrame(rows).to_parquet(tmp_path / "pairs.parquet")
    return tmp_path


def test_eval_commands_write_metrics(color_task, tmp_path):
    from react_core.cli import main

    out = tmp_path / "zs.json"
    args = ["--classes", str(color_task / "classes.txt")]
    assert main(["eval", "zeroshot", *args, "--images", str(color_task / "val"), "--templates", "simple", "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert set(metrics["per_class_top1"]) == {"red", "green", "blue"} and metrics["images"] == 12
    assert metrics["model"]["model"] == "react-tiny"

    assert main(["eval", "retrieval", "--pairs", str(color_task / "pairs.parquet"), "--out", str(tmp_path / "r")]) == 0
    recalls = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert recalls["images"] == 24 and recalls["texts"] == 24
    assert 0 <= recalls["t2i_R@1"] <= recalls["t2i_R@5"] <= recalls["t2i_R@10"] <= 100

    probe_out = tmp_path / "probe.json"
    assert main(["eval", "linear-probe", *args, "--train", str(color_task / "train"), "--test", str(color_task / "val"),
                 "--shots", "2", "--out", str(probe_out)]) == 0
    probe = json.loads(probe_out.read_text())
    assert probe["train_images"] == 6 and probe["top1"] > 50  # plain colours separate even on random features

    assert main(["eval", "linear-probe", *args, "--train", str(color_task / "train"), "--test", str(color_task / "val"),
                 "--shots", "two", "--out", str(probe_out)]) == 2
