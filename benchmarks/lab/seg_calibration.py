"""The segmentation ensemble's temperature calibration: one pass for every temperature against one
pass per temperature (how it ran before), on one trained head, in one process.

Both sides label the same calibration images with the same model (`react_dense/engines/plain/train.py`'s
`confusion`): the baseline sets each temperature of `ensemble.temperatures` in turn and runs the
model once for each; the sweep gives the ensemble all of them and runs it once. Rounds alternate
the two; the ratio is sweep time / baseline time per round, and the confusion matrices of the two
are compared (pixels whose label differs, of all labelled).

    python benchmarks/lab/seg_calibration.py --config react_dense/lab/configs/seg_synthetic.yaml \\
        --weights runs/demo/stages/segmentation-heldout-base/model_final.pth --rounds 3 \\
        vars.world=runs/demo/world model.weights=runs/demo/stages/customize-dense-gated-image-retrieved-seed0/adapter.safetensors \\
        "train_data.unseen=[...]" ensemble.enabled=true "ensemble.heldout=[...]"
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="segmentation config (method: head)")
    parser.add_argument("--weights", required=True, help="the trained head's model_final.pth")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = parser.parse_args(argv)

    from react_core.config import load
    from react_dense.engines.checkpoint import load_checkpoint
    from react_dense.segmentation.common import encode_classes, open_spec
    from react_dense.engines.plain.train import build_segmenter, confusion

    cfg = load(args.config, args.overrides)
    bundle = cfg.model.load()
    model = build_segmenter(cfg, bundle)
    load_checkpoint(args.weights, model, tower_from_model=True)
    if model.ensemble is None:
        raise SystemExit("the config's ensemble is off: pass ensemble.enabled=true")
    source = open_spec(cfg.train_data)
    source.images, source.labels = source.images[: cfg.ensemble.calibration_images], source.labels[: cfg.ensemble.calibration_images]
    classes = encode_classes(bundle, cfg, source, source.background)
    temperatures = [float(t) for t in cfg.ensemble.temperatures]

    def one_pass_each() -> torch.Tensor:
        matrices = []
        for temperature in temperatures:
            model.ensemble.temperature = temperature
            matrices.append(confusion(cfg, model, classes, source)[0])
        return torch.stack(matrices)

    def sweep() -> torch.Tensor:
        model.ensemble.temperature = temperatures
        return confusion(cfg, model, classes, source)

    times = {"one pass per temperature": [], "one pass for all": []}
    with torch.no_grad():
        for _ in range(args.rounds):
            for name, run in (("one pass per temperature", one_pass_each), ("one pass for all", sweep)):
                start = time.perf_counter()
                matrices = run()
                times[name].append(time.perf_counter() - start)
                if name == "one pass per temperature":
                    baseline = matrices
                else:
                    swept = matrices
    differing = (baseline - swept).abs().sum().item() / 2
    print(f"{len(source.images)} calibration images, {len(temperatures)} temperatures, {torch.get_num_threads()} threads")
    for name, values in times.items():
        print(f"{name}: median {statistics.median(values):.2f} s ({', '.join(f'{v:.2f}' for v in values)})")
    ratios = [s / b for s, b in zip(times["one pass for all"], times["one pass per temperature"])]
    print(f"one pass for all / one pass per temperature: median {statistics.median(ratios):.3f} "
          f"({min(ratios):.3f}-{max(ratios):.3f} over rounds)")
    print(f"labels that differ between the two: {differing:.0f} of {baseline.sum().item()} (every temperature's pixels)")


if __name__ == "__main__":
    main()
