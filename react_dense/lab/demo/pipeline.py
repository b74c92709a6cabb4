"""`react demo`: the whole REACT pipeline on the synthetic world, and the paper's ablations on request.

Stages, each cached (see `stages.py`):
world -> base CLIP (`react_dense.lab.base`) -> embed the corpus -> index -> retrieve for the world's
dense vocabulary (t2i, t2t, both) -> customize (dense-aware gated-image on retrieved and on as many
random pairs, each with random corpus pairs replayed, over several seeds; with `ablations`, plain
CLIPSelf on every seed and CLS-only gated-image, locked-text and full fine-tuning on retrieved
pairs, on the first seed) -> zero-shot top-1 on the target and the generic classes of every
variant -> open-vocabulary detection, trained-head and training-free (MaskCLIP) segmentation with
the base, the customized and the random-pairs tower (with `ablations`, every gated-image tower of
every seed) -> report, whose `claims` say which targets hold.

The dense heads read below the gated block, so they are the same for every tower of the base:
each trains once, on the base tower, and every other tower is evaluated on it with its own
readout (`tower_from_config`). A tower reaches them through that readout in the score
ensembles, calibrated on the base classes of CALIBRATION_HELDOUT: the detector trains without
them and each tower's ensemble weights are chosen on them; a second segmentation head trains
without them and each tower's readout temperature is chosen on it.

Retrieval queries all 27 detection categories (the 12 target classes and the 15 base classes the
detector and the segmentation head train on), as REACT retrieves for the whole downstream
vocabulary; retrieving for the targets only, the tower forgets the base classes. The report's
retrieval precision is over the target classes. Retrieved captions name only those 27 classes,
so the dense-aware runs replay random corpus pairs to keep the rest (retention).

The demo drives the library as a user's script would: the lab's configs
(`react_dense/lab/configs/`), loaded with typed overrides, and the library's functions.
"""
from __future__ import annotations

import dataclasses
import logging
import statistics
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from react_core.io import read_json
from react_dense.lab.world.concepts import CALIBRATION_HELDOUT
from react_dense.lab.base import CONFIGS, prepare_base
from react_dense.lab.demo.stages import Stage, StageRunner
from react_dense.modeling.calibration import CALIBRATION_FILE

OBJECTIVE_CONFIGS = {
    "dense": "customize_dense_vocab_replay.yaml",
    "clipself": "customize_dense_vocab_replay_clipself.yaml",
    "cls": "customize.yaml",
}
# The dense objective's runs replay random corpus pairs, a third as many as their training pairs (a
# quarter of each batch), so the tower keeps the classes outside the dense vocabulary (retention).
REPLAY_PER_TRAINING_PAIR = 1 / 3
RETRIEVAL_MODES = ("t2i", "t2t", "both")
WHOLE_TOWER_LR = 5e-4
# F-VLM's novel weight on the novel classes only: base classes keep the detector's scores (base
# weight 0, what every held-out calibration on the demo world chose), with the background
# embedding. The `detection-novel` stages and benchmarks/lab/dense_transfer.py's shared stage.
NOVEL_ONLY_ENSEMBLE = {"ensemble.enabled": True, "ensemble.base_weight": 0.0, "ensemble.background": True}


@dataclass(frozen=True)
class Variant:
    """One customization of the base: its report label, objective (a key of OBJECTIVE_CONFIGS), mode,
    pairs (`retrieved` or `random`), whether it runs on every seed or the first only, and the name
    its towers take in the dense tasks (None: not evaluated there)."""

    label: str
    objective: str
    mode: str
    source: str
    every_seed: bool
    tower: str | None


CUSTOMIZED = Variant("gated-image + dense + replay · retrieved", "dense", "gated-image", "retrieved", True, "customized")
RANDOM_PAIRS = Variant("gated-image + dense + replay · random pairs", "dense", "gated-image", "random", True, "random")
# the control that separates the retrieved knowledge from the dense objective (ABLATIONS)
PLAIN_CLIPSELF = Variant("plain CLIPSelf + replay · retrieved", "clipself", "gated-image", "retrieved", True, "clipself")


@dataclass(frozen=True)
class DemoPlan:
    """How big each stage is: `quick` is the CI smoke test, the full demo makes the claims."""

    preset: str
    seeds: tuple[int, ...]
    pretrain_iters: int  # this and every count below: 0 keeps the config's
    customize_iters: int
    retrieve_k: int
    retrieval_mode: str
    detection_steps: int
    segmentation_steps: int
    # what the claims compare, the customized tower and its random-pairs control, on every seed;
    # `--ablations` adds ABLATIONS.
    variants: tuple[Variant, ...] = (CUSTOMIZED, RANDOM_PAIRS)
    # the dense tasks read every seed's towers (the claims then weigh gains against the seed spread);
    # otherwise the first seed's only
    dense_every_seed: bool = False
    # overrides of every detection stage (the quick plan's fewer proposals and calibration images)
    detection_overrides: tuple[tuple[str, Any], ...] = ()
    # whether the figures are large enough to judge the claims by (the quick plan's only exercise the stages)
    judges_claims: bool = True

    def customize_runs(self):
        """(variant, seed) of every customization run, in order."""
        for variant in self.variants:
            for seed in self.seeds if variant.every_seed else self.seeds[:1]:
                yield variant, seed

    def dense_towers(self) -> dict[str, tuple[Variant, int]]:
        """{tower name: (variant, seed)} of every customized tower the dense tasks read: the first
        seed's under the variant's tower name, later seeds' as `NAME-seedN`."""
        towers = {}
        for variant, seed in self.customize_runs():
            if variant.tower is not None and (seed == self.seeds[0] or self.dense_every_seed):
                towers[tower_name(variant.tower, seed, self.seeds[0])] = (variant, seed)
        return towers


def tower_name(tower: str, seed: int, first_seed: int) -> str:
    return tower if seed == first_seed else f"{tower}-seed{seed}"


# The paper's ablations and the plain-CLIPSelf control. CLS-only gated-image, locked-text and full
# fine-tuning run on the first seed and make no claim; they cost about a fifth of the full demo.
# Locked-text and full fine-tuning retrain the trunk the dense heads read, so they are not evaluated on those heads.
# Plain CLIPSelf (the same images, the base tower as teacher, no contrastive term) runs on every
# seed: the claims weigh the customized tower against it.
ABLATIONS = (
    Variant("gated-image, CLS only · retrieved", "cls", "gated-image", "retrieved", False, "cls-only"),
    PLAIN_CLIPSELF,
    Variant("locked-text · retrieved", "cls", "locked-text", "retrieved", False, None),
    Variant("full fine-tuning · retrieved", "cls", "full", "retrieved", False, None),
)


def customize_stage(objective: str, mode: str, source: str, seed: int) -> str:
    return f"customize-{objective}-{mode}-{source}-seed{seed}"


def dense_vocabulary(world) -> list[str]:
    """The classes retrieval queries: the world's detection categories, target classes first in
    their task order, so the tower is customized for every class its dense heads see."""
    targets = list(world.target_classes)
    return [*targets, *(name for name in world.detection_categories if name not in targets)]


def target_retrieval(stats: dict, targets) -> dict:
    """One mode's retrieval figures for the target classes (what the claims are about), from the
    stats of a retrieval that also queried the base classes, with the size of the whole retrieval."""
    evaluation = stats.get("evaluation") or {}
    found = evaluation.get(stats["mode"], {}).get("per_class")
    random = evaluation.get("random", {}).get("per_class")

    def over_targets(per_class: dict | None):
        return None if per_class is None else statistics.fmean(per_class[name] for name in targets)

    return {
        "classes": len(stats["per_class"]),
        "pairs": stats["rows"],
        "target_pairs": sum(stats["per_class"].get(name, 0) for name in targets),
        "k": evaluation.get("k"),
        "precision": over_targets(found),
        "random_precision": over_targets(random),
        "per_class": None if found is None else {name: found[name] for name in targets},
    }


QUICK_DETECTION = (
    ("detector.rpn_pre_nms_train", 300), ("detector.rpn_post_nms_train", 100),
    ("detector.rpn_pre_nms_test", 300), ("detector.rpn_post_nms_test", 100), ("ensemble.calibration_images", 40),
)


def plan_for(quick: bool, seed: int, ablations: bool = False) -> DemoPlan:
    if quick:  # the detector's proposal and calibration-image counts, not its training, are most of its stages' time
        plan = DemoPlan("tiny", (seed,), 30, 10, 40, "both", 10, 10, detection_overrides=QUICK_DETECTION, judges_claims=False)
    else:  # detection trains 250 steps (its config: 300), to keep the demo near its 40-minute budget
        plan = DemoPlan("demo", (seed, seed + 1, seed + 2), 0, 0, 600, "both", 250, 0)
    return dataclasses.replace(plan, variants=plan.variants + ABLATIONS, dense_every_seed=True) if ablations else plan


def _customize(config: str, overrides: dict, folder: Path) -> dict:
    from react_core.config import load
    from react_core.engine.customize import customize

    cfg = load(CONFIGS / config, overrides)
    return {"metrics": customize(cfg, folder), "folder": str(folder)}


def _dense(config: str, overrides: dict, evaluate: str | None, temperature_from: str | None, folder: Path) -> dict:
    """Train or evaluate a detector or segmenter; `evaluate`: the trained heads to read through this
    tower, `temperature_from`: the calibration whose readout temperature the ensemble uses."""
    from react_dense.train_net import train

    if temperature_from is not None:
        overrides = {**overrides, "ensemble.temperature": read_json(temperature_from)["temperature"]}
    metrics = train(CONFIGS / config, overrides, folder, eval_only=evaluate is not None,
                    weights=evaluate, tower_from_config=evaluate is not None)
    return {"metrics": metrics}


def _dependencies_first(work: list[Stage]) -> list[Stage]:
    """The stages others wait for (the towers of the first seed, the heads trained on the base tower)
    first, then those no stage waits for, then those that wait: with several jobs the waiting ones
    find their inputs ready, and the order stays one where each stage follows those it reads."""
    names = {stage.name for stage in work}
    awaited = {name for stage in work for name in stage.after}

    def rank(stage: Stage) -> int:
        return 0 if stage.name in awaited else 1 if not names.intersection(stage.after) else 2

    return sorted(work, key=rank)


def dense_task_towers(plan: DemoPlan, towers) -> dict[str, tuple[str, ...]]:
    """{task: the towers it reads}, of `towers` (names: "base" and `plan.dense_towers()`'s). Every
    tower is read by the tasks that measure what it adds: the detector with its readout on novel
    classes only, the calibrated segmentation ensemble and MaskCLIP. The calibrated detector reads the
    base and the customized tower; the head alone (the same head on every tower) the first seed's
    towers; with every seed read, the customized tower also with its novel text embeddings permuted."""
    towers = tuple(towers)
    first_seed = tuple(name for name in towers if name == "base" or any(v.tower == name for v in plan.variants))
    customized = CUSTOMIZED.tower if CUSTOMIZED.tower in towers else None
    return {
        "detection": tuple(name for name in ("base", customized) if name in towers),
        "detection-novel": towers,
        "detection-novel-permuted": (customized,) if plan.dense_every_seed and customized else (),
        "segmentation": first_seed,
        "segmentation-heldout": towers,
        "segmentation-ensemble": towers,
        "maskclip": towers,
    }


def dense_stage_plan(plan: DemoPlan, world_info, world_dir: Path, stages: Path, towers: dict[str, str],
                     tower_stages: dict[str, tuple[str, ...]]) -> tuple[list[Stage], dict[str, tuple[str, str]]]:
    """The detection and segmentation stages of every tower (`towers`: name -> weights, `tower_stages`:
    the stages that make them) and `{stage name: (task, tower)}`. The detector, the segmentation head
    and the held-out head train once, on the base tower (for `steps` iterations; 0: the config's);
    every other tower is evaluated on those heads through its own readout."""
    heldout = list(CALIBRATION_HELDOUT)
    calibrated_detection = {  # one detector, trained without `heldout`, on which each tower's ensemble is calibrated
        "data.novel": [*world_info.novel_categories, *heldout], "ensemble.enabled": True, "ensemble.heldout": heldout,
        "ensemble.prior_correction": True, "ensemble.background": True,
    }
    heldout_segmentation = {  # a second head, trained without `heldout`, on which each tower's temperature is chosen
        "train_data.unseen": [*world_info.semseg_unseen, *heldout], "ensemble.enabled": True, "ensemble.heldout": heldout,
    }
    reads = dense_task_towers(plan, towers)
    work: list[Stage] = []
    dense_stages: dict[str, tuple[str, str]] = {}
    for task, config, trains, steps, extra in (
        ("detection", "ovd_synthetic.yaml", True, plan.detection_steps, calibrated_detection),
        ("detection-novel", "ovd_synthetic.yaml", False, 0, NOVEL_ONLY_ENSEMBLE),
        ("detection-novel-permuted", "ovd_synthetic.yaml", False, 0, {**NOVEL_ONLY_ENSEMBLE, "permute_novel_embeddings": True}),
        ("segmentation", "seg_synthetic.yaml", True, plan.segmentation_steps, {}),
        ("segmentation-heldout", "seg_synthetic.yaml", True, plan.segmentation_steps, heldout_segmentation),
        ("segmentation-ensemble", "seg_synthetic.yaml", False, 0, {"ensemble.enabled": True}),
        ("maskclip", "seg_synthetic.yaml", False, 0, {"method": "maskclip"}),
    ):
        for backbone in reads[task]:
            overrides = {"vars.world": str(world_dir), "model.weights": towers[backbone], **extra}
            if task.startswith("detection"):
                overrides.update(plan.detection_overrides)
            after = ("pretrain", *tower_stages[backbone])
            evaluate = temperature_from = None
            if task.startswith("detection-novel"):  # the detector trained without the held-out classes, this tower's readout
                evaluate = str(stages / "detection-base" / "model_final.pth")
                overrides["data.novel"] = calibrated_detection["data.novel"]
                after += ("detection-base",)
            elif task == "segmentation-ensemble":  # the trained head, its scores ensembled at the chosen temperature
                temperature_from = str(stages / f"segmentation-heldout-{backbone}" / CALIBRATION_FILE)
                evaluate = str(stages / "segmentation-base" / "model_final.pth")
                after += ("segmentation-base", f"segmentation-heldout-{backbone}")
            elif trains and backbone != "base":  # the base tower's heads, this tower's readout
                evaluate = str(stages / f"{task}-base" / "model_final.pth")
                after += (f"{task}-base",)
            elif trains and steps:
                overrides["train.max_iters"] = steps
            name = f"{task}-{backbone}"
            dense_stages[name] = (task, backbone)
            inputs = {"overrides": overrides, "config": (CONFIGS / config).read_text()}
            work.append(Stage(name, partial(_dense, config, overrides, evaluate, temperature_from), inputs, after))
    return work, dense_stages


def run_demo(out: Path, quick: bool = False, seed: int = 0, jobs: int = 1, ablations: bool = False) -> dict:
    """`jobs`: how many customization and dense runs go side by side, the cores shared among them;
    `ablations`: also plain CLIPSelf on every seed and CLS-only gated-image, locked-text and full
    fine-tuning on the first seed, and the dense tasks on every seed's towers."""
    out = Path(out).resolve()
    plan = plan_for(quick, seed, ablations)
    n_customize = len(list(plan.customize_runs()))
    n_dense = sum(map(len, dense_task_towers(plan, ["base", *plan.dense_towers()]).values()))
    stages = out / "stages"
    runner = StageRunner(stages, total=7 + n_customize + n_dense, jobs=jobs)
    world_dir = out / "world"

    def make_world(_: Path) -> dict:
        from react_dense.lab.world import generate_world

        summary = generate_world(plan.preset, world_dir, seed=0)
        return {"content_sha256": summary["content_sha256"], "counts": summary["counts"]}

    runner.run("world", make_world, plan.preset)
    from react_dense.lab.world import load_world

    world_info = load_world(world_dir)

    pretrain_overrides = {}
    if plan.pretrain_iters:
        pretrain_overrides.update({"train.max_iters": plan.pretrain_iters, "train.warmup_iters": 5, "data.batch_size": 64})

    def make_base(folder: Path) -> dict:
        return {"weights": str(prepare_base(world_dir, folder, pretrain_overrides))}

    base = runner.run("pretrain", make_base, pretrain_overrides, after=("world",))
    base_weights = base["weights"]
    emb_dir = stages / "embed" / "embeddings"
    index_dir = stages / "index"
    vocabulary = dense_vocabulary(world_info)

    def base_model():
        from react_core.modeling import load_clip

        return load_clip("react-tiny", weights=base_weights)

    def class_queries(bundle):
        from react_core.modeling.text import load_templates
        from react_core.retrieval.classes import ClassSpec, build_queries

        classes = [ClassSpec(name, [name]) for name in vocabulary]
        return classes, build_queries(bundle, classes, load_templates("simple"))

    def embed_corpus(_: Path) -> dict:
        from react_core.retrieval.embed import embed_corpus

        embed_corpus(base_model(), world_dir / "corpus" / "shards", emb_dir, workers=1)
        return {}

    def build_indexes(_: Path) -> dict:
        from react_core.retrieval.index import build_index

        _, queries = class_queries(base_model())  # tuned on the queries retrieval will run
        for kind in ("image", "text"):
            build_index(emb_dir, kind, index_dir / kind, queries=queries.embeddings,
                        queries_source=f"{len(queries.texts)} class x template queries of the demo's vocabulary")
        return {}

    runner.run("embed", embed_corpus, after=("world", "pretrain"))
    runner.run("index", build_indexes, after=("embed",))

    # per_class k: the k best pairs per class over all its templates' searches (each template
    # finds k, so their union holds up to templates x k).
    retrieval_settings = {"k": plan.retrieve_k, "per_class": plan.retrieve_k, "templates": "simple"}

    def retrieve_all(folder: Path) -> dict:
        import pandas as pd

        from react_core.io import atomic_write_text
        from react_core.retrieval.embed import EmbeddingFolder
        from react_core.retrieval.index import read_index
        from react_core.retrieval.retrieve import RetrievalOptions, retrieve

        classes_file = folder / "classes.txt"  # the queried vocabulary, targets first, kept with the subsets
        atomic_write_text(classes_file, "".join(f"{name}\n" for name in vocabulary))
        classes, queries = class_queries(base_model())
        embeddings = EmbeddingFolder(emb_dir, require_info=False)
        indexes = {kind: read_index(index_dir / kind, emb_dir=emb_dir) for kind in ("image", "text")}
        truth = pd.read_parquet(world_dir / "corpus" / "manifest.parquet")
        results = {}
        for mode in RETRIEVAL_MODES:
            options = RetrievalOptions(k=plan.retrieve_k, per_class=plan.retrieve_k, mode=mode)
            results[mode] = retrieve(embeddings, indexes, queries, classes, options, folder / f"subset_{mode}",
                                     ground_truth=truth, settings={"embeddings": str(emb_dir), "templates": "simple",
                                                                  "classes_file": str(classes_file)})
        return results

    retrieval = runner.run("retrieve", retrieve_all, {**retrieval_settings, "classes": vocabulary}, after=("index",))
    subset_manifest = stages / "retrieve" / f"subset_{plan.retrieval_mode}" / "subset.parquet"

    def random_pairs(folder: Path) -> dict:
        import numpy as np
        import pyarrow.parquet as pq

        from react_core.io import atomic_path

        chosen = pq.read_table(subset_manifest).num_rows
        corpus = world_dir / "corpus"
        table = pq.read_table(corpus / "manifest.parquet").to_pandas()
        rows = np.random.default_rng(seed).choice(len(table), size=min(chosen, len(table)), replace=False)
        sample = table.iloc[sorted(rows.tolist())].assign(shard=lambda t: [str(corpus / s) for s in t["shard"]])
        path = folder / "random_pairs.parquet"
        with atomic_path(path) as tmp:
            sample.to_parquet(tmp, index=False)
        return {"pairs": int(len(rows)), "manifest": str(path)}

    random_subset = runner.run("random-pairs", random_pairs, seed, after=("retrieve",))
    manifests = {"retrieved": str(subset_manifest), "random": random_subset["manifest"]}

    work: list[Stage] = []
    labels: dict[str, str] = {}
    for variant, run_seed in plan.customize_runs():
        objective, mode, source = variant.objective, variant.mode, variant.source
        overrides = {
            "vars.world": str(world_dir),
            "model.weights": base_weights,
            "data.train.manifest": manifests[source],
            "data.train.classes": None,
            "train.mode": mode,
            "train.seed": run_seed,
            "cache": str(stages / "customize-cache"),  # the base's caption embeddings and zero-shot results, made once
        }
        if plan.customize_iters:
            overrides.update({"train.max_iters": plan.customize_iters, "train.warmup_iters": 2})
        if mode != "gated-image":  # the config's lr opens fresh gates fast; a whole tower needs less
            overrides["train.lr"] = WHOLE_TOWER_LR
        if objective != "cls":
            overrides["data.replay.sample"] = max(1, round(random_subset["pairs"] * REPLAY_PER_TRAINING_PAIR))
        name = customize_stage(objective, mode, source, run_seed)
        labels[name] = variant.label
        work.append(Stage(name, partial(_customize, OBJECTIVE_CONFIGS[objective], overrides), overrides,
                          after=("retrieve", "random-pairs", "pretrain")))

    towers, tower_stages = {"base": base_weights}, {"base": ()}
    for tower, (variant, run_seed) in plan.dense_towers().items():
        stage = customize_stage(variant.objective, variant.mode, variant.source, run_seed)
        towers[tower], tower_stages[tower] = str(stages / stage / "adapter.safetensors"), (stage,)

    dense_work, dense_stages = dense_stage_plan(plan, world_info, world_dir, stages, towers, tower_stages)
    work.extend(dense_work)

    results = runner.run_all(_dependencies_first(work))
    customized: dict[str, list[dict]] = {}
    for name, label in labels.items():
        customized.setdefault(label, []).append(results[name])
    dense = {key: results[name]["metrics"] for name, key in dense_stages.items()}
    dense_dirs = {key: stages / name for name, key in dense_stages.items()}

    from react_dense.lab.demo.report import write_report

    summary = summarize(plan, world_info, retrieval, customized, dense)
    write_report(out, summary, world_dir, subset_manifest, dense_dirs=dense_dirs)
    runner.echo(f"report: {out / 'report.md'} and {out / 'report.html'}; metrics: {out / 'metrics.json'}")
    return summary


def _stats(values: list[float]) -> dict:
    """Mean and sample standard deviation (0 for one value) of `values`, kept beside them."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0, "values": values}


# What each dense task is judged by: novel-class box AP, unseen-class mIoU.
DENSE_METRICS = {
    "detection": "bbox/APr",
    "detection-novel": "bbox/APr",
    "detection-novel-permuted": "bbox/APr",
    "segmentation": "mIoU_unseen",
    "segmentation-ensemble": "mIoU_unseen",
    "maskclip": "mIoU_unseen",
}


def dense_over_seeds(plan: DemoPlan, dense: dict) -> dict[str, dict[str, dict]]:
    """{tower: {task: `_stats` over the seeds whose tower the task read}} for the base tower and each
    variant's, on the task's DENSE_METRICS figure."""
    members = {"base": ["base"]}
    for variant in plan.variants:
        if variant.tower is not None:
            members[variant.tower] = [tower_name(variant.tower, seed, plan.seeds[0]) for seed in plan.seeds]
    table: dict[str, dict[str, dict]] = {}
    for tower, names in members.items():
        for task, metric in DENSE_METRICS.items():
            values = [dense[(task, name)][metric] for name in names if dense.get((task, name), {}).get(metric) is not None]
            if values:
                table.setdefault(tower, {})[task] = _stats(values)
    return table


def _claim(name: str, target: str, values: dict, measured, holds: bool) -> dict:
    """`values`: the two compared quantities, as [label, value] pairs in the order `measured` uses
    (metrics.json sorts mapping keys)."""
    return {"name": name, "target": target, "measured": measured, "holds": bool(holds), "values": [list(item) for item in values.items()]}


def _ratio_claim(name: str, compared: dict[str, dict]) -> dict:
    """The dense claims' criterion on two `_stats`: the first mean at least 1.3x the second and, where either
    spans several seeds, above it by more than twice the larger seed std. `values` holds the means,
    `per_seed` every value, `std` that larger std."""
    first, second = compared.values()
    ratio = first["mean"] / second["mean"] if second["mean"] else None
    std = max(first["std"], second["std"])
    several_seeds = max(len(first["values"]), len(second["values"])) > 1
    holds = ratio is not None and ratio >= 1.3 and (not several_seeds or first["mean"] - second["mean"] > 2 * std)
    target = ">= 1.3x and gain > 2 seed std" if several_seeds else ">= 1.3x"
    claim = _claim(name, target, {label: stats["mean"] for label, stats in compared.items()}, ratio, holds)
    return {**claim, "std": std, "per_seed": [[label, stats["values"]] for label, stats in compared.items()]}


def summarize(plan, world, retrieval, customized, dense) -> dict:
    runs = [r for label_runs in customized.values() for r in label_runs]
    variants = {label: _stats([r["metrics"]["zeroshot_top1_after"] for r in label_runs]) for label, label_runs in customized.items()}
    generic_over_seeds = {label: _stats(found) for label, label_runs in customized.items()
                          if (found := [r["metrics"]["generic_top1_after"] for r in label_runs
                                        if r["metrics"].get("generic_top1_after") is not None])}
    generic = {label: generic_over_seeds[label]["mean"] if label in generic_over_seeds else None for label in customized}
    base_top1 = statistics.fmean(r["metrics"]["zeroshot_top1_before"] for r in runs)
    generic_before = [r["metrics"]["generic_top1_before"] for r in runs if r["metrics"].get("generic_top1_before") is not None]
    base_generic = statistics.fmean(generic_before) if generic_before else None
    ours, control = CUSTOMIZED.label, RANDOM_PAIRS.label
    gain, over_random = variants[ours]["mean"] - base_top1, variants[ours]["mean"] - variants[control]["mean"]
    retention = None if base_generic is None or generic[ours] is None else generic[ours] - base_generic
    claims = [
        _claim(f"target zero-shot top-1: {ours} minus the base CLIP", ">= +5 points",
               {"base CLIP": base_top1, ours: variants[ours]["mean"]}, gain, gain >= 5),
        _claim(f"target zero-shot top-1: {ours} minus {control}", ">= +3 points",
               {control: variants[control]["mean"], ours: variants[ours]["mean"]}, over_random, over_random >= 3),
        _claim(f"generic zero-shot top-1 (retention): {ours} minus the base CLIP", ">= -1 point",
               {"base CLIP": base_generic, ours: generic[ours]}, retention, retention is not None and retention >= -1),
    ]
    seeds_table = dense_over_seeds(plan, dense)
    tower_labels = {"base": "base CLIP", **{v.tower: v.label for v in plan.variants if v.tower is not None}}
    for task, title in (("detection", "novel box AP (APr), calibrated score ensemble"),
                        ("detection-novel", "novel box AP (APr), F-VLM's novel weight, base classes the detector's"),
                        ("segmentation-ensemble", "trained head + readout (calibrated ensemble) unseen mIoU"),
                        ("maskclip", "training-free (MaskCLIP) unseen mIoU")):
        ours_stats = seeds_table.get(CUSTOMIZED.tower, {}).get(task)
        for reference in ("base", RANDOM_PAIRS.tower, PLAIN_CLIPSELF.tower):
            reference_stats = seeds_table.get(reference, {}).get(task)
            if ours_stats and reference_stats:
                compared = {ours: ours_stats, tower_labels[reference]: reference_stats}
                claims.append(_ratio_claim(f"{title}: {ours} tower / {tower_labels[reference]} tower", compared))
    return {
        "preset": plan.preset,
        "seeds": list(plan.seeds),
        "world": {"target_classes": list(world.target_classes), "content_sha256": world.content_sha256},
        "retrieval": {mode: target_retrieval(stats, world.target_classes) for mode, stats in retrieval.items()},
        "zeroshot_top1_base": base_top1,
        "zeroshot_top1": variants,
        "generic_top1_base": base_generic,
        "generic_top1": generic,
        "generic_top1_over_seeds": generic_over_seeds,
        "dense": {f"{task}/{backbone}": metrics for (task, backbone), metrics in dense.items()},
        "dense_over_seeds": seeds_table,
        "towers": tower_labels,
        "calibration_heldout": list(CALIBRATION_HELDOUT),
        "dense_config": str(Path("react_dense/lab/configs") / OBJECTIVE_CONFIGS["dense"]),
        "claims": [{**claim, "evaluated": plan.judges_claims} for claim in claims],
        "plan": dataclasses.asdict(plan),
    }


def configure_logging() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
