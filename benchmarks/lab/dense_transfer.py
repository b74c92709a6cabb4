"""Dense transfer of customized towers: trained-head and training-free unseen mIoU, novel box AP, controls.

Every run is `tools/train_net.py` on a committed config (`react_dense/lab/configs/seg_synthetic.yaml`,
`react_dense/lab/configs/ovd_synthetic.yaml`), started as a subprocess with an argument list, one at a time;
a run whose `metrics.json` exists is read, not run again, so the script resumes where it stopped.
Towers: the base tower (`--base`, the shipped calibrated react-tiny) and one `react customize`
folder per `--adapters` entry (its `adapter.safetensors`, loaded on that base as `model.weights=ADAPTER model.base_weights=BASE`).
Folder names ending in `-s<seed>` are grouped by variant over seeds (mean ± sample std).

Stages (`--stages`, in this order):
  seg       trained segmentation head (method=head), mIoU_unseen / mIoU_seen; then the same head
            evaluated with its scores ensembled with the dense readout's (ensemble.enabled=true,
            FC-CLIP's weights 0.4 seen / 0.8 unseen; eval-only, no training), and again with the
            readout's temperature chosen by a second head trained without the HELDOUT base classes
            (`ensemble.heldout`, on training images; no unseen annotation is read)
  maskclip  training-free MaskCLIP readout (method=maskclip), mIoU_unseen
  regions   training-free region classification, no training at all: each ground-truth box of the
            detection val split is pooled (roi_align) from the tower's dense readout and classified
            against the text embeddings of all the detection categories ('simple' templates);
            mean per-class top-1 on novel and on base boxes, and the readout's drift from the base
            tower's (mean over locations of |f - f_base| / |f_base|) and the same drift of the last
            block's patch tokens, which the detector's and the segmentation head's pyramids read
            (`backbone.features: tokens`, the default; `readout` makes them read the readout); for reference the class token of each box's crop
            resized to the tower's input (what the dense objective's teacher sees). Run in this
            process, about a minute a tower; free of the detector's and head's training noise
  ovd       detector on base classes (torchvision engine), bbox/APr on the rare (novel) classes
  control   for the base tower and the best variant by novel APr (or `--best`): the permuted-novel-
            embedding control (`permute_novel_embeddings=true`, same weights) and score ensembling
            (F-VLM weights; + prior correction; + background embedding; weights chosen on held-out
            base classes by a second detector trained without them, before and after the prior
            correction and the background embedding), with novel AP, base AP and
            the background false-positive rate of benchmarks/ensemble_steps.py
  shared    every tower's score ensembles on one detector, the `--best` tower's (its stage ovd, and
            for the calibrated weights the held-out detector of its stage control, trained here if
            missing), evaluated with each tower by `train_net --tower-from-config` (exact: the heads
            read below the gated block, so the detector is the same for every tower of the base):
            weights calibrated per tower on the held-out detector after the prior correction and the
            background embedding; F-VLM's weights + background embedding; F-VLM's novel weight
            with base classes left to the detector (base weight 0) + background embedding, and, for
            the detector's own variant, its permuted-novel-embedding control (`--shared-settings`
            keeps some of these); per tower and per variant (mean ± std over seeds)

    python benchmarks/lab/dense_transfer.py --world runs/demo/world --out runs/dense_transfer \\
        --adapters runs/customize-s0 runs/customize_dense-s0 --ovd base customize_dense-s0
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from react_dense.lab.world.concepts import CALIBRATION_HELDOUT
from react_core.config import format_overrides
from react_dense.detection.config import EnsembleConfig
from react_dense.lab.demo.pipeline import NOVEL_ONLY_ENSEMBLE

ROOT = Path(__file__).resolve().parents[2]
SEG = ROOT / "react_dense" / "lab" / "configs" / "seg_synthetic.yaml"
OVD = ROOT / "react_dense" / "lab" / "configs" / "ovd_synthetic.yaml"
BASE = ROOT / "react_dense" / "lab" / "resources" / "demo_base.safetensors"
STAGES = ("seg", "maskclip", "regions", "ovd", "control", "shared")
SHARED_SETTINGS = ("calibrated", "fvlm", "novel_only")
HELDOUT = CALIBRATION_HELDOUT  # base classes held out to choose the ensembles' settings
CORRECTIONS = ["ensemble.prior_correction=true", "ensemble.background=true"]


def tower_overrides(name: str, towers: dict, base: Path) -> list[str]:
    adapter = towers[name]
    return [f"model.weights={adapter}", f"model.base_weights={base}"] if adapter else [f"model.weights={base}"]


def run(out: Path, config: Path, overrides: list[str], log_dir: Path, times: dict, extra: list[str] = ()) -> dict | None:
    """One train_net run into `out`, skipped when out/metrics.json exists; None when it failed."""
    metrics = out / "metrics.json"
    if metrics.is_file():
        return json.loads(metrics.read_text())
    command = [sys.executable, str(ROOT / "tools" / "train_net.py"), "--config", str(config), "--out", str(out), *extra, *overrides]
    if "--eval-only" not in extra and out.is_dir() and any(out.glob("*.pt*")):
        command.insert(2, "--resume")
    log = log_dir / f"{out.parent.name}__{out.name}.log"
    print(f"[{time.strftime('%H:%M:%S')}] run {out}", flush=True)
    start = time.time()
    with open(log, "a") as stream:
        stream.write(f"$ {command}\n")
        stream.flush()
        code = subprocess.run(command, cwd=ROOT, stdout=stream, stderr=subprocess.STDOUT).returncode
    wall = time.time() - start
    times[str(out)] = round(wall, 1)
    (log_dir.parent / "times.json").write_text(json.dumps(times, indent=1, sort_keys=True))
    print(f"[{time.strftime('%H:%M:%S')}]   exit {code}, {wall:.0f} s", flush=True)
    return json.loads(metrics.read_text()) if code == 0 and metrics.is_file() else None


def variant_of(name: str) -> tuple[str, str]:
    match = re.fullmatch(r"(.*)-s(\d+)", name)
    return (match.group(1), match.group(2)) if match else (name, "-")


def mean_std(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"


def fmt(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def novel_ids_of(gt: dict) -> set:
    return {c["id"] for c in gt["categories"] if c.get("frequency") == "r"}


def region_probe(weights: str, base_weights: str | None, base: Path, gt: dict, image_root: Path) -> dict:
    """Training-free region classification of one tower on the detection val split (see `regions`)."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    from PIL import Image

    from react_core.config.common import ModelConfig
    from react_core.modeling.dense_objective import crop_boxes
    from react_core.modeling.readout import dense_readout, pool_boxes, readout_stride
    from react_core.modeling.text import builtin_templates, class_embeddings
    from react_core.modeling.tower import run_vit_blocks, tower_kind, vit_input_tokens

    def relative(a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
        return ((a - b).norm(dim=dim) / b.norm(dim=dim).clamp(min=1e-6)).flatten()

    def last_tokens(visual) -> torch.Tensor:
        x, _ = vit_input_tokens(visual, pixels)
        return run_vit_blocks(visual, x, visual.transformer.resblocks)[:, 1:]

    torch.set_num_threads(1)
    tower = ModelConfig(weights=weights, base_weights=base_weights).load()
    reference = ModelConfig(weights=str(base)).load() if base_weights else None
    categories = sorted(gt["categories"], key=lambda c: c["id"])
    column = {c["id"]: i for i, c in enumerate(categories)}
    novel = {column[c["id"]] for c in categories if c.get("frequency") == "r"}
    mean = torch.tensor(OPENAI_DATASET_MEAN).view(3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD).view(3, 1, 1)
    per_image: dict[int, list] = {}
    for a in gt["annotations"]:
        per_image.setdefault(a["image_id"], []).append(a)
    images = [im for im in sorted(gt["images"], key=lambda im: im["id"]) if im["id"] in per_image]
    labels, predictions, crop_predictions, drift, token_drift = [], [], [], [], []
    size = tower.model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    with torch.no_grad():
        text = class_embeddings(tower.model, tower.tokenizer, [c["name"] for c in categories], builtin_templates("simple"))
        for start in range(0, len(images), 50):
            chunk = images[start : start + 50]
            pixels = torch.stack([
                (torch.from_numpy(np.asarray(Image.open(image_root / im["file_name"]).convert("RGB"), dtype=np.float32) / 255.0)
                 .permute(2, 0, 1) - mean) / std
                for im in chunk])
            dense = dense_readout(tower.model.visual, pixels)
            if reference is not None:
                base_map = dense_readout(reference.model.visual, pixels)
                drift.append(relative(dense, base_map, 1))
                if tower_kind(tower.model.visual) == "vit":
                    token_drift.append(relative(last_tokens(tower.model.visual), last_tokens(reference.model.visual), -1))
            boxes = [torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in per_image[im["id"]])]) for im in chunk]
            regions = F.normalize(pool_boxes(dense, boxes, readout_stride(tower.model.visual)), dim=-1)
            predictions.append((regions @ text.T).argmax(-1))
            crops = F.normalize(tower.model.encode_image(crop_boxes(pixels, boxes, size)), dim=-1)
            crop_predictions.append((crops @ text.T).argmax(-1))
            labels.append(torch.tensor([column[a["category_id"]] for im in chunk for a in per_image[im["id"]]]))
    labels = torch.cat(labels)

    def per_class(predicted: torch.Tensor) -> dict[int, float]:
        return {c: 100.0 * (predicted[labels == c] == c).float().mean().item() for c in labels.unique().tolist()}

    accuracy, crop_accuracy = per_class(torch.cat(predictions)), per_class(torch.cat(crop_predictions))
    row = {"region_top1_novel": statistics.fmean(v for c, v in accuracy.items() if c in novel),
           "region_top1_base": statistics.fmean(v for c, v in accuracy.items() if c not in novel),
           "crop_top1_novel": statistics.fmean(v for c, v in crop_accuracy.items() if c in novel),
           "crop_top1_base": statistics.fmean(v for c, v in crop_accuracy.items() if c not in novel),
           "boxes": len(labels), "per_class_top1": {categories[c]["name"]: v for c, v in accuracy.items()},
           "per_class_crop_top1": {categories[c]["name"]: v for c, v in crop_accuracy.items()}}
    row["readout_drift"] = torch.cat(drift).mean().item() if drift else 0.0
    row["token_drift"] = torch.cat(token_drift).mean().item() if token_drift else (0.0 if reference is None else None)
    return row


def detection_row(metrics: dict, folder: Path, gt: dict) -> dict:
    from ensemble_steps import background_false_positives

    novel = novel_ids_of(gt)
    n_novel, n_all = len(novel), len(gt["categories"])
    ap, ap_novel = metrics["bbox/AP"], metrics.get("bbox/AP_novel", metrics.get("bbox/APr"))
    row = {"novel_ap": ap_novel, "apr": metrics.get("bbox/APr"), "ap": ap,
           "base_ap": (ap * n_all - ap_novel * n_novel) / (n_all - n_novel)}
    detections = folder / "inference" / "detections.json"
    if detections.is_file():
        row["fp_all"], row["fp_novel"] = background_false_positives(json.loads(detections.read_text()), gt, novel)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapters", nargs="*", default=[], help="react customize output folders (each holds adapter.safetensors)")
    parser.add_argument("--world", required=True, help="the synthetic world (react synth)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--base", default=str(BASE), help="base tower weights (the adapters' base)")
    parser.add_argument("--stages", nargs="*", default=list(STAGES), choices=STAGES)
    parser.add_argument("--ovd", nargs="*", default=None, help="tower names for detection (default: all)")
    parser.add_argument("--best", default=None, help="tower for the controls (default: best novel APr among the customized)")
    parser.add_argument("--calibration-images", type=int, default=100)
    parser.add_argument("--shared-settings", nargs="*", default=list(SHARED_SETTINGS), choices=SHARED_SETTINGS,
                        help="the ensembles stage shared evaluates on every tower: weights calibrated on held-out "
                             "base classes, F-VLM's weights, F-VLM's novel weight on novel classes only "
                             "(default: all three)")
    parser.add_argument("--dense-overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides for every trained segmentation head and detector, e.g. "
                             "backbone.features=tokens (use another --out: finished runs are not redone)")
    parser.add_argument("--table-only", action="store_true", help="print the tables from finished runs, run nothing")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT / "benchmarks"))
    out, world, base = Path(args.out).resolve(), Path(args.world).resolve(), Path(args.base).resolve()
    log_dir = out / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    times_file = out / "times.json"
    times = json.loads(times_file.read_text()) if times_file.is_file() else {}
    towers: dict[str, str | None] = {"base": None}
    for folder in args.adapters:
        adapter = Path(folder).resolve() / "adapter.safetensors"
        if not adapter.is_file():
            parser.error(f"{adapter} does not exist")
        towers[Path(folder).resolve().name] = str(adapter)
    ovd_names = args.ovd if args.ovd is not None else list(towers)
    for name in ovd_names:
        if name not in towers:
            parser.error(f"--ovd {name}: not a tower ({', '.join(towers)})")
    common = [f"vars.world={world}"]
    ovd_common = common + [f"text.cache_dir={out / 'text_cache'}", *args.dense_overrides]
    if args.table_only:
        args.stages = []

    gt = json.loads((world / "detection" / "val.json").read_text())
    seg_unseen = json.loads((world / "semseg" / "classes.json").read_text())["unseen"]
    seg_heldout = ["train_data.unseen=[" + ",".join(seg_unseen + list(HELDOUT)) + "]", "ensemble.enabled=true",
                   "ensemble.heldout=[" + ",".join(HELDOUT) + "]"]
    seg, seg_ensemble, seg_calibrated, maskclip, regions, ovd = {}, {}, {}, {}, {}, {}
    for stage in STAGES:
        for name in towers:
            over = tower_overrides(name, towers, base)
            if stage == "seg":
                folder = out / "seg_head" / name
                seg[name] = (run(folder, SEG, common + over + args.dense_overrides, log_dir, times)
                             if "seg" in args.stages else _read(folder))
                mixed = out / "seg_ensemble" / name
                seg_ensemble[name] = (
                    run(mixed, SEG, common + over + args.dense_overrides + ["ensemble.enabled=true"], log_dir, times,
                        ["--eval-only", "--weights", str(folder / "model_final.pth")])
                    if "seg" in args.stages and seg[name] else _read(mixed))
                # the readout's temperature chosen by a second head trained without HELDOUT's classes
                heldout_dir = out / "seg_heldout" / name
                heldout = (run(heldout_dir, SEG, common + over + args.dense_overrides + seg_heldout, log_dir, times)
                           if "seg" in args.stages else _read(heldout_dir))
                report = heldout_dir / "ensemble_calibration.json"
                calibrated = out / "seg_calibrated" / name
                seg_calibrated[name] = (
                    run(calibrated, SEG, common + over + args.dense_overrides + [
                        "ensemble.enabled=true", f"ensemble.temperature={json.loads(report.read_text())['temperature']}"],
                        log_dir, times, ["--eval-only", "--weights", str(folder / "model_final.pth")])
                    if "seg" in args.stages and seg[name] and heldout and report.is_file() else _read(calibrated))
            elif stage == "maskclip":
                folder = out / "seg_maskclip" / name
                maskclip[name] = (run(folder, SEG, common + over + ["method=maskclip"], log_dir, times)
                                  if "maskclip" in args.stages else _read(folder))
            elif stage == "regions":
                metrics = out / "regions" / name / "metrics.json"
                if "regions" in args.stages and not metrics.is_file():
                    adapter = towers[name]
                    start = time.time()
                    row = region_probe(adapter or str(base), str(base) if adapter else None, base, gt, world / "detection")
                    metrics.parent.mkdir(parents=True, exist_ok=True)
                    metrics.write_text(json.dumps(row, indent=1))
                    times[str(metrics.parent)] = round(time.time() - start, 1)
                    times_file.write_text(json.dumps(times, indent=1, sort_keys=True))
                regions[name] = _read(metrics.parent)
            elif stage == "ovd" and name in ovd_names:
                folder = out / "ovd" / name
                ovd[name] = run(folder, OVD, ovd_common + over, log_dir, times) if "ovd" in args.stages else _read(folder)

    rows = {}
    print("\n## Per tower (segmentation head and detector: train.seed 0 of the config; seed = the adapter's)\n")
    print("| tower | variant | adapter seed | trained-head unseen mIoU | trained-head seen mIoU "
          "| head + readout ensemble unseen / seen mIoU | the same, calibrated temperature: unseen / seen mIoU (T) | training-free unseen mIoU "
          "| region top-1 novel | region top-1 base | crop top-1 novel | crop top-1 base | readout drift | token drift "
          "| novel APr | box AP (all) | base AP |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in towers:
        variant, seed = variant_of(name)
        s, m, g = seg.get(name) or {}, maskclip.get(name) or {}, regions.get(name) or {}
        e, c = seg_ensemble.get(name) or {}, seg_calibrated.get(name) or {}
        d = detection_row(ovd[name], out / "ovd" / name, gt) if ovd.get(name) else {}
        rows[name] = {"variant": variant, "seed": seed, "seg_unseen": s.get("mIoU_unseen"), "seg_seen": s.get("mIoU_seen"),
                      "ensemble_unseen": e.get("mIoU_unseen"), "ensemble_seen": e.get("mIoU_seen"),
                      "calibrated_unseen": c.get("mIoU_unseen"), "calibrated_seen": c.get("mIoU_seen"),
                      "calibrated_temperature": _temperature(out / "seg_heldout" / name),
                      "maskclip_unseen": m.get("mIoU_unseen"), "region_novel": g.get("region_top1_novel"),
                      "region_base": g.get("region_top1_base"), "drift": g.get("readout_drift"),
                      "crop_novel": g.get("crop_top1_novel"), "crop_base": g.get("crop_top1_base"),
                      "token_drift": g.get("token_drift"),
                      "apr": d.get("apr"), "ap": d.get("ap"), "base_ap": d.get("base_ap")}
        r = rows[name]
        print(f"| {name} | {variant} | {seed} | {fmt(r['seg_unseen'])} | {fmt(r['seg_seen'])} "
              f"| {fmt(r['ensemble_unseen'])} / {fmt(r['ensemble_seen'])} "
              f"| {fmt(r['calibrated_unseen'])} / {fmt(r['calibrated_seen'])} ({r['calibrated_temperature'] or '-'}) | {fmt(r['maskclip_unseen'])} "
              f"| {fmt(r['region_novel'])} | {fmt(r['region_base'])} | {fmt(r['crop_novel'])} | {fmt(r['crop_base'])} "
              f"| {fmt(r['drift'])} | {fmt(r['token_drift'])} "
              f"| {fmt(r['apr'])} | {fmt(r['ap'])} | {fmt(r['base_ap'])} |")
    print("\n## Per variant (mean ± sample std over adapter seeds; n = seeds)\n")
    print("| variant | n | trained-head unseen mIoU | head + readout ensemble unseen mIoU | calibrated ensemble unseen / seen mIoU | training-free unseen mIoU "
          "| region top-1 novel | region top-1 base | novel APr (n) | base AP |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    variants: dict[str, list[dict]] = {}
    for r in rows.values():
        variants.setdefault(r["variant"], []).append(r)
    for variant, members in variants.items():
        aprs = [r["apr"] for r in members if r["apr"] is not None]
        print(f"| {variant} | {len(members)} | {mean_std([r['seg_unseen'] for r in members])} "
              f"| {mean_std([r['ensemble_unseen'] for r in members if r['ensemble_unseen'] is not None])} "
              f"| {mean_std([r['calibrated_unseen'] for r in members if r['calibrated_unseen'] is not None])} "
              f"/ {mean_std([r['calibrated_seen'] for r in members if r['calibrated_seen'] is not None])} "
              f"| {mean_std([r['maskclip_unseen'] for r in members])} | {mean_std([r['region_novel'] for r in members])} "
              f"| {mean_std([r['region_base'] for r in members])} | {mean_std(aprs)} ({len(aprs)}) "
              f"| {mean_std([r['base_ap'] for r in members if r['base_ap'] is not None])} |")
    (out / "summary.json").write_text(json.dumps(rows, indent=1))

    if "control" in args.stages or (out / "control").is_dir():
        control_stage(args, towers, base, out, ovd, ovd_common, gt, log_dir, times)
    if "shared" in args.stages or (out / "shared").is_dir():
        shared_stage(args, towers, base, out, ovd, ovd_common, gt, log_dir, times)


def heldout_overrides(gt: dict, calibration_images: int) -> list[str]:
    """A detector trained without the HELDOUT base classes, its ensemble weights chosen on them."""
    rare = [c["name"] for c in gt["categories"] if c.get("frequency") == "r"]
    return ["data.novel=[" + ",".join(rare + list(HELDOUT)) + "]", "ensemble.enabled=true",
            "ensemble.heldout=[" + ",".join(HELDOUT) + "]", f"ensemble.calibration_images={calibration_images}"]


def control_stage(args, towers, base, out, ovd, ovd_common, gt, log_dir, times) -> None:
    customized = [n for n in ovd if n != "base" and ovd[n]]
    best = args.best or (max(customized, key=lambda n: ovd[n]["bbox/APr"]) if customized else None)
    print(f"\n## Controls and score ensembling (base tower and the best variant by novel APr: {best})\n")
    print("| tower | setting | novel AP (APr) | base AP | background FP (all) | background FP (novel-labelled) | weights base/novel |")
    print("|---|---|---:|---:|---:|---:|---|")
    for name in [n for n in (best, "base") if n and ovd.get(n)]:
        over = ovd_common + tower_overrides(name, towers, base)
        weights = str(out / "ovd" / name / "model_final.pth")
        on = ["ensemble.enabled=true", f"ensemble.calibration_images={args.calibration_images}"]
        go = "control" in args.stages
        # most telling first: the transfer control, then the calibrated ensemble, then the uncalibrated steps
        for setting, (key, extra) in {
            "detector alone": (None, []),
            "permuted novel embeddings": ("permuted", ["permute_novel_embeddings=true"]),
        }.items():
            control_row(name, setting, key, extra, out, over, weights, ovd, gt, log_dir, times, go)
        # weights chosen on held-out base classes: a second detector trained without them
        heldout_dir = out / "control" / name / "heldout_calibration"
        heldout_over = over + heldout_overrides(gt, args.calibration_images)
        heldout = run(heldout_dir, OVD, heldout_over, log_dir, times) if go else _read(heldout_dir)
        # the same held-out detector, its scores corrected first (prior, background), then the weights chosen
        corrected_dir = out / "control" / name / "heldout_calibration_corrected"
        corrected = (run(corrected_dir, OVD, heldout_over + CORRECTIONS, log_dir, times,
                         ["--eval-only", "--weights", str(heldout_dir / "model_final.pth")])
                     if go and heldout is not None else _read(corrected_dir))
        settings = {}
        for calibration, done, key, label, extra in (
            (heldout_dir, heldout, "heldout", "weights chosen on held-out base", []),
            (corrected_dir, corrected, "corrected_heldout", "prior + background, then weights chosen on held-out base", CORRECTIONS),
        ):
            report_file = calibration / "ensemble_calibration.json"
            if done is None or not report_file.is_file():
                continue
            report = json.loads(report_file.read_text())
            chosen = on + extra + [f"ensemble.base_weight={report['base_weight']}", f"ensemble.novel_weight={report['novel_weight']}"]
            settings[label] = (key, chosen)
            settings[f"permuted, {label}"] = (f"{key}_permuted", chosen + ["permute_novel_embeddings=true"])
            if not extra:
                settings[f"{label} + prior + background"] = ("heldout_prior_background", chosen + CORRECTIONS)
        settings.update({
            "geometric mean, F-VLM weights": ("fvlm", on),
            "F-VLM weights + prior correction": ("fvlm_prior", on + ["ensemble.prior_correction=true"]),
            "F-VLM weights + background embedding": ("fvlm_background", on + ["ensemble.background=true"]),
        })
        for setting, (key, extra) in settings.items():
            control_row(name, setting, key, extra, out, over, weights, ovd, gt, log_dir, times, go)


def shared_stage(args, towers, base, out, ovd, ovd_common, gt, log_dir, times) -> None:
    source = args.best or next((n for n in ovd if n != "base" and ovd[n]), None)
    detector = out / "ovd" / str(source) / "model_final.pth"
    heldout_dir = out / "control" / str(source) / "heldout_calibration"  # stage control's, trained here if missing
    heldout_detector = heldout_dir / "model_final.pth"
    go = "shared" in args.stages
    calibrated = "calibrated" in args.shared_settings  # the only setting that needs the held-out detector
    if go and calibrated and detector.is_file() and not heldout_detector.is_file():
        run(heldout_dir, OVD, ovd_common + tower_overrides(source, towers, base)
            + heldout_overrides(gt, args.calibration_images), log_dir, times)
    if not detector.is_file() or (calibrated and not heldout_detector.is_file()):
        print(f"\nshared: needs stage ovd of {source} and, for the calibrated weights, its held-out detector "
              f"({detector}, {heldout_detector})")
        return
    on = ["ensemble.enabled=true", f"ensemble.calibration_images={args.calibration_images}"]
    novel_only = on + format_overrides(NOVEL_ONLY_ENSEMBLE)
    d = detection_row(ovd[source], out / "ovd" / source, gt)
    print(f"\n## One detector for every tower ({source}'s; detector alone: novel AP {fmt(d['novel_ap'])}, "
          f"base AP {fmt(d['base_ap'])}), each tower's readout by --tower-from-config\n")
    print("| tower | setting | novel AP (APr) | base AP | background FP (all) | background FP (novel-labelled) | weights base/novel |")
    print("|---|---|---:|---:|---:|---:|---|")
    per_variant: dict[tuple[str, str], list[dict]] = {}
    for name in towers:
        over = ovd_common + tower_overrides(name, towers, base)
        calibration = out / "shared" / name / "heldout_calibration_corrected"
        if go and calibrated:
            run(calibration, OVD, over + heldout_overrides(gt, args.calibration_images) + CORRECTIONS, log_dir, times,
                ["--eval-only", "--tower-from-config", "--weights", str(heldout_detector)])
        settings = {}
        report_file = calibration / "ensemble_calibration.json"
        if report_file.is_file() and calibrated:
            report = json.loads(report_file.read_text())
            settings["prior + background, then weights chosen on held-out base"] = ("corrected_heldout", on + CORRECTIONS + [
                f"ensemble.base_weight={report['base_weight']}", f"ensemble.novel_weight={report['novel_weight']}"])
        if "fvlm" in args.shared_settings:
            settings["F-VLM weights + background embedding"] = ("fvlm_background", on + ["ensemble.background=true"])
        if "novel_only" in args.shared_settings:
            settings["F-VLM novel weight, base classes the detector's + background"] = ("novel_only_background", novel_only)
        if "novel_only" in args.shared_settings and variant_of(name)[0] == variant_of(source)[0]:
            # the transfer control, for the detector's own variant
            settings["permuted, F-VLM novel weight, base classes the detector's + background"] = (
                "novel_only_background_permuted", novel_only + ["permute_novel_embeddings=true"])
        for setting, (key, extra) in settings.items():
            row = control_row(name, setting, key, extra, out, over, str(detector), ovd, gt, log_dir, times, go,
                              stage="shared", flags=("--tower-from-config",))
            if row:
                per_variant.setdefault((variant_of(name)[0], setting), []).append(row)
    print("\n## One detector for every tower, per variant (mean ± sample std over adapter seeds; n = seeds)\n")
    print("| variant | setting | n | novel AP (APr) | base AP | background FP (all) |")
    print("|---|---|---:|---:|---:|---:|")
    for (variant, setting), members in per_variant.items():
        fps = [100 * r["fp_all"] for r in members if "fp_all" in r]
        print(f"| {variant} | {setting} | {len(members)} | {mean_std([r['novel_ap'] for r in members])} "
              f"| {mean_std([r['base_ap'] for r in members])} | {mean_std(fps)} % |")


def print_detection_row(name: str, setting: str, d: dict, extra: list[str]) -> None:
    chosen = dict(e.removeprefix("ensemble.").split("=", 1) for e in extra if "_weight=" in e)
    fixed = EnsembleConfig()  # F-VLM's weights where the setting does not choose its own
    w = (f"{chosen.get('base_weight', fixed.base_weight)}/{chosen.get('novel_weight', fixed.novel_weight)}"
         if "ensemble.enabled=true" in extra else "-")
    fp_all = f"{100 * d['fp_all']:.1f} %" if "fp_all" in d else "-"
    fp_novel = f"{100 * d['fp_novel']:.1f} %" if "fp_novel" in d else "-"
    print(f"| {name} | {setting} | {fmt(d['novel_ap'])} | {fmt(d['base_ap'])} | {fp_all} | {fp_novel} | {w} |", flush=True)


def control_row(name, setting, key, extra, out, over, weights, ovd, gt, log_dir, times, go,
                stage: str = "control", flags: tuple[str, ...] = ()) -> dict | None:
    """Evaluate one control/ensembling setting of a trained detector (eval-only, with `flags`)
    into `out/stage/name/key`, print its row and return it."""
    if key is None:
        folder, metrics = out / "ovd" / name, ovd[name]
    else:
        folder = out / stage / name / key
        metrics = (run(folder, OVD, over + extra, log_dir, times, ["--eval-only", *flags, "--weights", weights])
                   if go else _read(folder))
    if not metrics:
        return None
    row = detection_row(metrics, folder, gt)
    print_detection_row(name, setting, row, extra)
    return row


def _temperature(folder: Path) -> float | None:
    report = folder / "ensemble_calibration.json"
    return json.loads(report.read_text())["temperature"] if report.is_file() else None


def _read(folder: Path) -> dict | None:
    metrics = folder / "metrics.json"
    return json.loads(metrics.read_text()) if metrics.is_file() else None


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    main()
