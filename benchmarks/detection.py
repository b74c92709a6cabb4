"""Detection speed, as ratios against baselines measured in the same run (interleaved repeats).

1. Region-text head (projection + cosine to 1203 text embeddings + class-agnostic boxes) against a
   plain linear box predictor (torchvision FastRCNNPredictor: 1204 logits, 4 x 1204 deltas).
2. End-to-end inference latency: our detector with a ViT-B/16 CLIP backbone (simple feature
   pyramid, region-text head, class-agnostic mask head) against torchvision's ResNet-50-FPN
   Faster R-CNN, at the same input size, same score threshold (0.05) and 100 detections.
   Random weights (no downloads); both CPU.
3. The readout pooled over proposals (`react_core.modeling.readout.pool_boxes`, the score
   ensemble's region embeddings and the dense objective's regions) against the mean of
   torchvision's roi_align output it equals, at the demo detector's sizes (a batch of 4 images of
   128 px, a 16 x 16 readout of 128 channels, 1000 proposals each), forward and forward + backward.

    python benchmarks/detection.py [--size 512] [--repeats 5] [--regions 1024] [--sections head end-to-end pooling]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

SECTIONS = ("head", "end-to-end", "pooling")


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


def box_pooling_benchmark(repeats: int, images: int = 4, proposals: int = 1000, channels: int = 128, side: int = 16) -> dict:
    from torchvision.ops import roi_align

    from react_core.modeling.readout import pool_boxes

    torch.manual_seed(0)
    feature_map = torch.randn(images, channels, side, side, requires_grad=True)
    corners = torch.rand(images, proposals, 2) * side * 8
    sizes = torch.rand(images, proposals, 2) * side * 4 + 1
    boxes = list(torch.cat([corners, corners + sizes], dim=2))

    def roi_align_mean():
        return roi_align(feature_map, boxes, output_size=(7, 7), spatial_scale=1 / 8, sampling_ratio=2, aligned=True).flatten(2).mean(-1)

    def ours():
        return pool_boxes(feature_map, boxes, stride=8)

    difference = (roi_align_mean() - ours()).abs().max().item()
    print(f"pooling: largest difference between the two {difference:.2e}")
    with torch.no_grad():
        forward = interleaved({"roi_align, mean of 7 x 7 bins": roi_align_mean, "pool_boxes (separable weights)": ours}, repeats)
    both = interleaved({"roi_align, mean of 7 x 7 bins": lambda: roi_align_mean().sum().backward(),
                        "pool_boxes (separable weights)": lambda: ours().sum().backward()}, repeats)
    return {"forward": forward, "forward + backward": both}


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
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=SECTIONS, help="which comparisons to run")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if "head" in args.sections:
        print(table(f"Box predictor, 1203 classes, {args.regions} regions", head_benchmark(args.regions, args.repeats), "linear predictor"))
        print()
    if "end-to-end" in args.sections:
        print(table(f"End-to-end inference, one {args.size}x{args.size} image", end_to_end_benchmark(args.size, args.repeats), "torchvision R50-FPN Faster R-CNN"))
        print()
    if "pooling" in args.sections:
        for direction, results in box_pooling_benchmark(args.repeats * 4).items():
            print(table(f"Readout pooled over 4 x 1000 proposals, {direction}", results, "roi_align, mean of 7 x 7 bins"))
            print()


if __name__ == "__main__":
    main()
