"""Score ensembling step by step on one trained detector: novel AP, base AP, background false positives.

Each variant is an `--eval-only` run of tools/train_net.py with the same weights; the first is the
detector alone (the baseline of the ratios). The background false-positive rate of a run is the
share of each image's top-k detections (k = its number of annotated objects) that overlap no
annotation (IoU < 0.5 with every box of any class); `novel` counts only those labelled with a
novel class. Weights chosen on held-out base classes come from the `ensemble_calibration.json` of
a detector trained without them (`--heldout-run`, made with `ensemble.heldout=[...]`).

    python benchmarks/lab/ensemble_steps.py --config react_dense/lab/configs/ovd_synthetic.yaml \\
        --weights runs/ovd/model_final.pth --heldout-run runs/ovd_heldout_calibration --out runs/ensemble_steps \\
        model.weights=runs/demo/pretrain/model.safetensors
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
from torchvision.ops import box_iou

ROOT = Path(__file__).resolve().parents[2]


def background_false_positives(detections: list[dict], gt: dict, novel_ids: set) -> tuple[float, float]:
    """(all, novel-labelled) share of the top-k detections per image on no annotated object."""
    boxes_of: dict = {}
    for a in gt["annotations"]:
        x, y, w, h = a["bbox"]
        boxes_of.setdefault(a["image_id"], []).append([x, y, x + w, y + h])
    by_image: dict = {}
    for d in detections:
        by_image.setdefault(d["image_id"], []).append(d)
    total = background = novel = 0
    for image_id, boxes in boxes_of.items():
        top = sorted(by_image.get(image_id, []), key=lambda d: -d["score"])[: len(boxes)]
        if not top:
            continue
        found = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in top)])
        on_nothing = box_iou(found, torch.tensor(boxes)).max(dim=1).values < 0.5
        total += len(top)
        background += int(on_nothing.sum())
        novel += sum(int(hit) for hit, d in zip(on_nothing, top) if d["category_id"] in novel_ids)
    return background / max(total, 1), novel / max(total, 1)


def evaluate(config: str, weights: str, out: Path, overrides: list[str]) -> dict:
    if not (out / "metrics.json").is_file():
        command = [sys.executable, str(ROOT / "tools" / "train_net.py"), "--config", config, "--eval-only", "--weights", weights, "--out", str(out), *overrides]
        subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return json.loads((out / "metrics.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--weights", required=True, help="the trained detector (model_final.pth)")
    parser.add_argument("--heldout-run", action="append", default=[], help="a folder with the ensemble_calibration.json of a detector "
                        "trained without some base classes and calibrated with ensemble.heldout (repeatable)")
    parser.add_argument("--out", required=True)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    out = Path(args.out)

    on = ["ensemble.enabled=true"]
    both = ["ensemble.background=true", "ensemble.prior_correction=true"]
    variants = {
        "detector alone": [],
        "geometric mean, F-VLM weights 0.35/0.65": on,
        "+ prior correction": on + ["ensemble.prior_correction=true"],
        "+ background embedding": on + ["ensemble.background=true"],
        "+ prior + background": on + both,
    }
    for folder in args.heldout_run:
        report = json.loads((Path(folder) / "ensemble_calibration.json").read_text())
        steps = [name for name in ("prior_correction", "background") if report[name]]
        name = " + ".join(["weights chosen on held-out base"] + [n.split("_")[0] for n in steps])
        chosen = [f"ensemble.base_weight={report['base_weight']}", f"ensemble.novel_weight={report['novel_weight']}"]
        variants[name] = on + [f"ensemble.{n}=true" for n in steps] + chosen
    rows = []
    for name, extra in variants.items():
        folder = out / name.replace(" ", "_").replace("/", "-").replace(",", "").replace("+", "plus")
        metrics = evaluate(args.config, args.weights, folder, args.overrides + extra)
        rows.append((name, extra, metrics, folder))
    from react_dense.detection.config import load_detection_config

    cfg = load_detection_config(args.config, args.overrides)
    gt = json.loads(Path(cfg.data.val).read_text())
    novel_ids = {c["id"] for c in gt["categories"] if c.get("frequency") == "r"} if cfg.data.novel == "rare" else {
        c["id"] for c in gt["categories"] if c["name"] in set(cfg.data.novel)
    }
    n_novel, n_all = len(novel_ids), len(gt["categories"])
    print("| ensembling | novel AP (APr) | base AP | background FP (all) | background FP (novel-labelled) | weights base/novel |")
    print("|---|---:|---:|---:|---:|---|")
    for name, extra, metrics, folder in rows:
        detections = json.loads((folder / "inference" / "detections.json").read_text())
        fp_all, fp_novel = background_false_positives(detections, gt, novel_ids)
        ap, ap_novel = metrics["bbox/AP"], metrics["bbox/AP_novel"]
        ap_base = (ap * n_all - ap_novel * n_novel) / (n_all - n_novel)
        weights = "/".join(e.split("=")[1] for e in extra if "_weight=" in e) or ("0.35/0.65" if extra else "-")
        print(f"| {name} | {ap_novel:.2f} | {ap_base:.2f} | {100 * fp_all:.1f} % | {100 * fp_novel:.1f} % | {weights} |")


if __name__ == "__main__":
    main()
