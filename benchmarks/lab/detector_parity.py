"""Detector parity on the synthetic demo world: the REACT tower through Detectron2's own
`tools/train_net.py` against our `tools/train_net.py`, over seeds.

Rows, each trained on the base categories and evaluated on all of them with the same LVIS-rule
evaluator (`react_dense.detection.evaluation`), AP and AP on the novel (rare) categories:

1. `tools/train_net.py --config react_dense/lab/configs/ovd_synthetic.yaml` (its engine: torchvision, AdamW);
2. the same with `engine=detectron2`: the native Detectron2 config it writes
   (`OUT/detectron2_config.yaml`), trained by Detectron2's trainer with our AdamW schedule;
3. stock Detectron2: Detectron2's own `tools/train_net.py` (imported from the Detectron2 checkout,
   `DETECTRON2_ENV_MODULE=react_dense.detectron2`) on row 2's config file, nothing of ours in
   between: its datasets registered with `register_coco_instances` (the training JSON without the
   novel categories), its classifier files from `react text-embed`, and Detectron2's SGD with
   Detectron2's linear scaling rule (0.02 at 16 images) and weight decay (1e-4); its own
   `COCOEvaluator` writes the detections that are scored.

Two control rows, each changing only the optimizer of one Detectron2 row, neither touching the library:

4. stock Detectron2 with our AdamW: row 3, with the script's `Trainer` subclassed in this file to
   build `react_dense.engines.optim.build_optimizer` / `build_scheduler` from the config's own
   `SOLVER` keys (our `train:` section, as row 2 reads them); against row 2 only the sample order
   and the dataset registration differ;
5. our Detectron2 engine with Detectron2's SGD: row 2, with its trainer's `build_optimizer` /
   `build_lr_scheduler` back to Detectron2's (`detectron2.solver`) at row 3's rate and weight
   decay (`detectron2.SOLVER.*` overrides); against row 3 only the sample order and the dataset
   registration differ.

The tower is the world's base, the lab's shipped `react_dense/lab/resources/demo_base.safetensors`, frozen.

    react synth --preset demo --out runs/world
    nice -n 10 python benchmarks/lab/detector_parity.py --world runs/world --out runs/detector_parity [--seeds 0 1 2]

Runs already finished in --out are read, not redone. Prints the table and writes OUT/parity.json.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "react_dense" / "lab" / "configs" / "ovd_synthetic.yaml"
SHIPPED_BASE = ROOT / "react_dense" / "lab" / "resources" / "demo_base.safetensors"
METRICS = ("bbox/AP", "bbox/APr", "segm/AP", "segm/APr")
ROWS = ("runner, torchvision engine", "runner, detectron2 engine", "stock Detectron2 tools/train_net.py",
        "stock Detectron2 tools/train_net.py, our AdamW", "runner, detectron2 engine, Detectron2's SGD")
# (row, row it is compared with): the stock script against our engine, and each control row
# against the row whose optimizer it takes
COMPARISONS = ((ROWS[2], ROWS[1]), (ROWS[3], ROWS[1]), (ROWS[4], ROWS[2]))


def environment() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def run(command: list, log: Path) -> float:
    """Run `command` with its output in `log`; its wall-clock seconds."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "w") as handle:
        done = subprocess.run([str(c) for c in command], cwd=ROOT, env=environment(), stdout=handle, stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(map(str, command))}; see {log}")
    return time.perf_counter() - start


def runner(world: Path, val: Path, out: Path, seed: int, *overrides: str, detectron2_sgd: bool = False) -> dict:
    """Our tools/train_net.py (with `detectron2_sgd`: through `runner_sgd_worker`), its metrics."""
    if not (out / "metrics.json").is_file():
        script = [__file__, "--runner-sgd-worker"] if detectron2_sgd else [ROOT / "tools" / "train_net.py"]
        run([sys.executable, *script, "--config", CONFIG, "--out", out, f"vars.world={world}",
             f"data.val={val}", f"model.weights={SHIPPED_BASE}", f"train.seed={seed}", *overrides], out.parent / f"{out.name}.log")
    return json.loads((out / "metrics.json").read_text())


def base_only(annotation_file: Path, out: Path) -> Path:
    """The training JSON without its novel (LVIS rare) categories and their annotations, as a
    Detectron2 user registers an open-vocabulary training set."""
    data = json.loads(annotation_file.read_text())
    novel = {c["id"] for c in data["categories"] if c["frequency"] == "r"}
    data["categories"] = [c for c in data["categories"] if c["id"] not in novel]
    data["annotations"] = [a for a in data["annotations"] if a["category_id"] not in novel]
    out.write_text(json.dumps(data))
    return out


def first_images(annotation_file: Path, count: int, out: Path) -> Path:
    """The first `count` images of an annotation file (by id), their annotations and every category."""
    data = json.loads(annotation_file.read_text())
    data["images"] = sorted(data["images"], key=lambda image: image["id"])[:count]
    kept = {image["id"] for image in data["images"]}
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in kept]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data))
    return out


def stock(world: Path, val: Path, native: Path, out: Path, optimizer: list[str]) -> dict:
    """Rows 3 and 4: Detectron2's own tools/train_net.py on the runner's native config, then our
    evaluator on the detections its COCOEvaluator wrote. `optimizer`: ["sgd", LR, WEIGHT_DECAY]
    (Detectron2's own) or ["adamw"] (ours, from the config's SOLVER keys)."""
    from react_dense.detection.data import OpenVocabularySplit, load_coco
    from react_dense.detection.evaluation import evaluate

    detections = out / "inference" / "coco_instances_results.json"
    if not detections.is_file():
        out.mkdir(parents=True, exist_ok=True)
        train = base_only(world / "detection" / "train.json", out / "train_base.json")
        for name, classes in (("train", train), ("test", val)):
            if not (out / f"{name}_clip.npy").is_file():
                run([sys.executable, "-m", "react_core", "text-embed", "--classes", classes, "--templates", "simple",
                     "--weights", SHIPPED_BASE, "--out", out / f"{name}_clip.npy"], out / f"text_embed_{name}.log")
        run([sys.executable, __file__, "--stock-worker", native, world, val, out, *optimizer], out.parent / f"{out.name}.log")
    gt = load_coco(str(val))
    split = OpenVocabularySplit.from_categories(gt.dataset["categories"], "rare")
    found = json.loads(detections.read_text())
    metrics = evaluate(gt, found, ("bbox", "segm"), lvis_style=True, max_dets=100, novel_ids=split.novel_ids)
    if not found:  # no score above SCORE_THRESH_TEST: the evaluator gives AP alone, and every AP is 0
        metrics = {**dict.fromkeys(METRICS, 0.0), **metrics}
    return {**metrics, "detections": len(found)}


def stock_worker(native: str, world: str, val: str, out: str, optimizer: str, *sgd: str) -> None:
    """In its own process: register the datasets the config names, and call Detectron2's script;
    `optimizer` "sgd" with its LR and WEIGHT_DECAY, or "adamw": the script's Trainer building ours."""
    os.environ["DETECTRON2_ENV_MODULE"] = "react_dense.detectron2"
    import importlib.util

    import detectron2
    from detectron2.data.datasets import register_coco_instances

    world, out = Path(world), Path(out)
    register_coco_instances("react_ov_train", {}, str(out / "train_base.json"), str(world / "detection"))
    register_coco_instances("react_ov_val", {}, val, str(world / "detection"))
    script = Path(detectron2.__file__).resolve().parents[1] / "tools" / "train_net.py"
    spec = importlib.util.spec_from_file_location("detectron2_train_net", script)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    solver = ["SOLVER.BASE_LR", sgd[0], "SOLVER.WEIGHT_DECAY", sgd[1]] if optimizer == "sgd" else []
    if optimizer == "adamw":
        from react_dense.engines.detectron2.train import ReactSchedule

        class Trainer(ReactSchedule, tool.Trainer):
            """The stock script's Trainer with only its optimizer and schedule swapped."""

        tool.Trainer = Trainer  # the script's main builds the Trainer its module names
    args = tool.default_argument_parser().parse_args([
        "--config-file", native, "OUTPUT_DIR", str(out), *solver,
        "MODEL.REACT.ZEROSHOT.WEIGHT_PATH", str(out / "train_clip.npy"), "MODEL.REACT.ZEROSHOT.TEST_WEIGHT_PATH", str(out / "test_clip.npy"),
    ])
    tool.main(args)


def runner_sgd_worker(argv: list[str]) -> None:
    """In its own process: our tools/train_net.py, its Detectron2 trainer building Detectron2's
    SGD and schedule from SOLVER (as DefaultTrainer does) instead of ours."""
    import importlib.util

    from detectron2.solver import build_lr_scheduler, build_optimizer

    from react_dense.engines.detectron2 import train as engine

    ours = engine.build_trainer_class

    def with_detectron2_sgd(*args, **kwargs):
        class Trainer(ours(*args, **kwargs)):
            @classmethod
            def build_optimizer(cls, cfg, model):
                return build_optimizer(cfg, model)

            @classmethod
            def build_lr_scheduler(cls, cfg, optimizer):
                return build_lr_scheduler(cfg, optimizer)

        return Trainer

    engine.build_trainer_class = with_detectron2_sgd
    spec = importlib.util.spec_from_file_location("react_train_net", ROOT / "tools" / "train_net.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    sys.exit(tool.main(argv))


def summary(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", type=Path, default=ROOT / "runs" / "world", help="a `react synth --preset demo` world")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "detector_parity")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--images-per-batch", type=int, default=4, help="the demo config's train.batch_size")
    parser.add_argument("--iters", type=int, default=None, help="train.max_iters, with a tenth of them warm-up (default: the config's 300 and 20)")
    parser.add_argument("--val-images", type=int, default=None,
                        help="evaluate on the first N validation images (default: all of the world's)")
    args = parser.parse_args()
    # a shortened run warms up for a tenth of its steps (the config's 20 of 300 would outlast it)
    schedule = [f"train.max_iters={args.iters}", f"train.warmup_iters={max(1, args.iters // 10)}"] if args.iters else []
    sgd_lr, weight_decay = 0.02 * args.images_per_batch / 16, 1e-4  # Detectron2's defaults, linearly scaled
    world, out = args.world.resolve(), args.out.resolve()
    val = world / "detection" / "val.json"
    if args.val_images:
        val = first_images(val, args.val_images, out / "val_subset.json")
    results = {row: {} for row in ROWS}
    sgd = ["sgd", str(sgd_lr), str(weight_decay)]
    for seed in args.seeds:  # the comparison first: the Detectron2 engine and Detectron2's own script
        d2_out = out / f"runner_detectron2_seed{seed}"
        native = d2_out / "detectron2_config.yaml"
        results[ROWS[1]][seed] = runner(world, val, d2_out, seed, "engine=detectron2", *schedule)
        results[ROWS[2]][seed] = stock(world, val, native, out / f"stock_detectron2_seed{seed}", sgd)
        results[ROWS[3]][seed] = stock(world, val, native, out / f"stock_detectron2_adamw_seed{seed}", ["adamw"])
        results[ROWS[4]][seed] = runner(world, val, out / f"runner_detectron2_sgd_seed{seed}", seed, "engine=detectron2", *schedule,
                                        f"detectron2.SOLVER.BASE_LR={sgd_lr}", f"detectron2.SOLVER.WEIGHT_DECAY={weight_decay}",
                                        detectron2_sgd=True)
        print(f"seed {seed}: " + "; ".join(f"{row}: AP {results[row][seed]['bbox/AP']:.2f}" for row in ROWS[1:]), flush=True)
    for seed in args.seeds:
        results[ROWS[0]][seed] = runner(world, val, out / f"runner_torchvision_seed{seed}", seed, *schedule)
        print(f"seed {seed}: {ROWS[0]}: AP {results[ROWS[0]][seed]['bbox/AP']:.2f}", flush=True)

    lines = ["| path | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS)]
    table = {}
    for row in ROWS:
        cells = []
        for metric in METRICS:
            mean, sd = summary([results[row][seed][metric] for seed in args.seeds])
            table.setdefault(row, {})[metric] = {"mean": mean, "sd": sd, "seeds": [results[row][s][metric] for s in args.seeds]}
            cells.append(f"{mean:.2f} ± {sd:.2f}")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    n = len(args.seeds)
    comparisons = {}
    for row, against in COMPARISONS:
        for metric in METRICS:
            a, b = table[against][metric], table[row][metric]
            noise = math.sqrt(a["sd"] ** 2 / n + b["sd"] ** 2 / n)
            comparisons.setdefault(f"{row} - {against}", {})[metric] = {
                "difference": b["mean"] - a["mean"], "standard_error": noise,
                "within_two_standard_errors": abs(b["mean"] - a["mean"]) <= 2 * noise}
    report = {"seeds": args.seeds, "iters": args.iters, "val_images": args.val_images, "sgd_lr": sgd_lr, "sgd_weight_decay": weight_decay, "table": table,
              "differences": comparisons, "config": str(CONFIG.relative_to(ROOT)), "tower": str(SHIPPED_BASE.relative_to(ROOT))}
    (out / "parity.json").write_text(json.dumps(report, indent=2))
    print("\n".join(lines))
    for pair, metrics in comparisons.items():
        for metric, values in metrics.items():
            print(f"{pair}, {metric}: {values['difference']:+.2f} "
                  f"(standard error {values['standard_error']:.2f}, within 2 SE: {values['within_two_standard_errors']})")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--stock-worker":
        stock_worker(*sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "--runner-sgd-worker":
        runner_sgd_worker(sys.argv[2:])
    else:
        main()
