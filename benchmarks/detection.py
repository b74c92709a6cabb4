"""Detection speed, as ratios against baselines measured in the same run (interleaved repeats).

1. Region-text head (projection + cosine to 1203 text embeddings + class-agnostic boxes) against a
   plain linear box predictor (torchvision FastRCNNPredictor: 1204 logits, 4 x 1204 deltas).
2. End-to-end inference latency: our detector with a ViT-B/16 CLIP backbone (simple feature
   pyramid, region-text head, class-agnostic mask head) against torchvision's ResNet-50-FPN
   Faster R-CNN, at the same input size, same score threshold (0.05) and 100 detections.
   Random weights (no downloads); both CPU.

    python benchmarks/detection.py [--size 512] [--repeats 5] [--regions 1024]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def interleaved(candidates: dict, repeats: int, warmup: int = 1) -> dict:
    """{name: (median seconds, min, max)}, candidates run in turn so load drifts hit all alike."""
    for function in candidates.values():
        for _ in range(warmup):
            function()
    samples = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, function in candidates.items():
            samples[name].append(timed(function))
    return {name: (statistics.median(v), min(v), max(v)) for name, v in samples.items()}


@torch.no_grad()
def head_benchmark(regions: int, repeats: int) -> dict:
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor

    from react_dense.modeling.region_text import RegionTextClassifier

    torch.manual_seed(0)
    features = torch.randn(regions, 1024)
    ours = RegionTextClassifier(1024, 512).eval()
    ours.set_vocabulary(torch.randn(1203, 512))
    linear = FastRCNNPredictor(1024, 1204).eval()
    return interleaved({"linear predictor": lambda: linear(features), "region-text head": lambda: ours(features)}, repeats * 20)


@torch.no_grad()
def end_to_end_benchmark(size: int, repeats: int) -> dict:
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    from react_core.config.common import ModelConfig
    from react_dense.detection.build import build_parts
    from react_dense.detection.config import DetectionConfig, DetectorConfig
    from react_dense.engines.torchvision.model import build_torchvision_detector

    torch.manual_seed(0)
    detector = DetectorConfig(min_size=size, max_size=size, masks=False, score_threshold=0.05, detections_per_image=100)
    cfg = DetectionConfig(model=ModelConfig(name="ViT-B-16"), detector=detector)
    cfg.backbone = {"type": "ClipBackbone", "freeze": "frozen", "out_channels": 256}
    cfg.head = {"type": "RegionTextClassifier"}
    parts = build_parts(cfg)
    ours = build_torchvision_detector(parts, detector).eval()
    ours.set_vocabulary(torch.nn.functional.normalize(torch.randn(1203, parts.backbone.embed_dim), dim=-1))
    baseline = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, min_size=size, max_size=size, num_classes=1204).eval()
    image = [torch.rand(3, size, size)]
    return interleaved({"torchvision R50-FPN Faster R-CNN": lambda: baseline(image), "ours, ViT-B/16 CLIP": lambda: ours(image)}, repeats)


def table(title: str, results: dict, baseline: str) -> str:
    base = results[baseline][0]
    lines = [f"### {title}", "", "| model | median ms | min–max ms | ratio to baseline |", "|---|---:|---:|---:|"]
    for name, (median, low, high) in results.items():
        lines.append(f"| {name} | {median * 1e3:.2f} | {low * 1e3:.2f}–{high * 1e3:.2f} | {median / base:.2f}× |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512, help="input side for the end-to-end comparison")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats (x20 for the head)")
    parser.add_argument("--regions", type=int, default=1024, help="regions per head call (2 images x 512)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(table(f"Box predictor, 1203 classes, {args.regions} regions", head_benchmark(args.regions, args.repeats), "linear predictor"))
    print()
    print(table(f"End-to-end inference, one {args.size}x{args.size} image", end_to_end_benchmark(args.size, args.repeats), "torchvision R50-FPN Faster R-CNN"))


if __name__ == "__main__":
    main()
