"""`react demo`: the whole REACT pipeline on the synthetic world, with the paper's ablations.

Stages, each cached (see `stages.py`):
world -> base CLIP (pretrain) -> embed the corpus -> index -> retrieve for the task's classes
(t2i, t2t, both) -> customize (gated-image and locked-text on retrieved pairs; gated-image on as
many random pairs; full fine-tuning on retrieved pairs; over several seeds) -> zero-shot top-1
of every variant -> open-vocabulary detection and segmentation with the base vs the customized
backbone -> report.

The demo drives the same commands and configs a user runs (`react embed/index/retrieve`,
`configs/demo/*.yaml`, `tools/train_net.py`'s engines), so it is also the end-to-end test of
every stage together. It lives in `react_dense` because it reaches the dense engines.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from react_dense.demo.stages import StageRunner

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
RETRIEVAL_MODES = ("t2i", "t2t", "both")
WHOLE_TOWER_LR = 5e-4


@dataclass(frozen=True)
class DemoPlan:
    """How big each stage is: `quick` is the CI smoke test, the full demo makes the claims."""

    preset: str
    seeds: tuple[int, ...]
    pretrain_iters: int
    customize_iters: int
    retrieve_k: int
    retrieval_mode: str
    detection_steps: int
    segmentation_steps: int
    # (label, mode, pairs, over every seed): the two variants the claims compare run on every
    # seed; the whole-tower ablations (slower steps) on the first seed only, to fit 40 minutes.
    variants: tuple[tuple[str, str, str, bool], ...] = field(
        default=(
            ("gated-image · retrieved", "gated-image", "retrieved", True),
            ("locked-text · retrieved", "locked-text", "retrieved", False),
            ("gated-image · random pairs", "gated-image", "random", True),
            ("full fine-tuning · retrieved", "full", "retrieved", False),
        )
    )

    def customize_runs(self):
        """(label, mode, pairs, seed) of every customization run, in order."""
        for label, mode, source, every_seed in self.variants:
            for seed in self.seeds if every_seed else self.seeds[:1]:
                yield label, mode, source, seed


def customize_stage(mode: str, source: str, seed: int) -> str:
    return f"customize-{mode}-{source}-seed{seed}"


def plan_for(quick: bool, seed: int) -> DemoPlan:
    if quick:
        return DemoPlan("tiny", (seed,), 30, 10, 40, "both", 10, 10)
    # Detection trains 250 steps (its config: 300) so that the whole demo fits in 40 minutes.
    return DemoPlan("demo", (seed, seed + 1, seed + 2), 0, 0, 600, "both", 250, 0)


def _config_path(name: str) -> Path:
    path = CONFIG_DIR / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: `react demo` reads the configs of a source checkout (pip install -e .)"
        )
    return path


def _overrides(mapping: dict) -> list[str]:
    return [f"{key}={json.dumps(value) if not isinstance(value, str) else value}" for key, value in mapping.items()]


def _cli(argv: list[str]) -> None:
    from react_core.cli import main

    status = main(argv)
    if status:
        raise RuntimeError(f"`react {' '.join(argv)}` failed with status {status}")


def run_demo(out: Path, quick: bool = False, seed: int = 0) -> dict:
    out = Path(out).resolve()
    plan = plan_for(quick, seed)
    n_customize = len(list(plan.customize_runs()))
    stages = out / "stages"
    runner = StageRunner(stages, total=7 + n_customize + 4)
    world_dir = out / "world"

    def make_world(_: Path) -> dict:
        from react_core.synth import generate_world

        summary = generate_world(plan.preset, world_dir, seed=0)
        return {"content_sha256": summary["content_sha256"], "counts": summary["counts"]}

    runner.run("world", make_world, plan.preset)
    from react_core.synth import load_world

    world_info = load_world(world_dir)

    pretrain_overrides = {"world": str(world_dir), "out": str(stages / "pretrain")}
    if plan.pretrain_iters:
        pretrain_overrides.update({"train.max_iters": plan.pretrain_iters, "train.warmup_iters": 5, "data.batch_size": 64})

    def make_base(_: Path) -> dict:
        from react_core.config import load
        from react_core.engine.pretrain import pretrain

        cfg = load(_config_path("demo/pretrain.yaml"), _overrides(pretrain_overrides))
        weights = pretrain(cfg, cfg.out)
        return {"weights": str(weights)}

    base = runner.run("pretrain", make_base, pretrain_overrides, after=("world",))
    base_weights = base["weights"]
    model_args = ["--model", "react-tiny", "--weights", base_weights]

    emb_dir = stages / "embed" / "embeddings"
    index_dir = stages / "index"

    def embed_corpus(_: Path) -> dict:
        _cli(["embed", *model_args, "--data", str(world_dir / "corpus" / "shards"), "--workers", "1", "--out", str(emb_dir)])
        return {}

    def build_indexes(_: Path) -> dict:
        for kind in ("image", "text"):
            _cli(["index", "--emb", str(emb_dir), "--kind", kind, "--out", str(index_dir / kind)])
        return {}

    runner.run("embed", embed_corpus, after=("world", "pretrain"))
    runner.run("index", build_indexes, after=("embed",))

    # --per-class k: the k best pairs per class over all its templates' searches (each template
    # finds k, so their union holds up to templates x k).
    # --no-dedup: the world renders no duplicate images, and the small base CLIP maps most images
    # within cosine 0.99 of their nearest neighbour, so removal at 0.95 would empty the subset.
    retrieval_args = ["--k", str(plan.retrieve_k), "--per-class", str(plan.retrieve_k), "--no-dedup"]

    def retrieve_all(_: Path) -> dict:
        results = {}
        indexes = {"t2i": ["image"], "t2t": ["text"], "both": ["image", "text"]}
        for mode in RETRIEVAL_MODES:
            subset = stages / "retrieve" / f"subset_{mode}"
            index_args = [arg for kind in indexes[mode] for arg in ("--index", str(index_dir / kind))]
            _cli([
                "retrieve", *index_args, "--emb", str(emb_dir),
                "--classes", str(world_dir / "task" / "classes.txt"), "--templates", "simple",
                *retrieval_args, "--mode", mode, "--out", str(subset),
            ])
            results[mode] = json.loads((subset / "stats.json").read_text())
        return results

    retrieval = runner.run("retrieve", retrieve_all, retrieval_args, after=("index",))
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

    customized: dict[str, list[dict]] = {}
    for label, mode, source, run_seed in plan.customize_runs():
        overrides = {
            "world": str(world_dir),
            "base_pretrain": "null",
            "model.weights": base_weights,
            "data.train.manifest": manifests[source],
            "data.train.classes": "null",
            "train.mode": mode,
            "train.seed": run_seed,
        }
        if plan.customize_iters:
            overrides.update({"train.max_iters": plan.customize_iters, "train.warmup_iters": 2})
        if mode != "gated-image":  # the config's lr opens fresh gates fast; a whole tower needs less
            overrides["train.lr"] = WHOLE_TOWER_LR
        name = customize_stage(mode, source, run_seed)

        def work(folder: Path, overrides=overrides) -> dict:
            from react_core.config import load
            from react_core.engine.customize import customize

            cfg = load(_config_path("demo/customize.yaml"), _overrides(overrides))
            metrics = customize(cfg, folder)
            return {"metrics": metrics, "folder": str(folder)}

        result = runner.run(name, work, overrides, after=("retrieve", "random-pairs", "pretrain"))
        customized.setdefault(label, []).append(result)

    _, best_mode, best_source, _ = plan.variants[0]
    best_stage = customize_stage(best_mode, best_source, plan.seeds[0])
    adapter = str(stages / best_stage / "adapter.safetensors")
    from react_dense.train_net import train

    dense = {}
    for task, config, steps_key in (
        ("detection", "demo/ovd_synthetic.yaml", "train.steps"),
        ("segmentation", "demo/seg_synthetic.yaml", "train.steps"),
    ):
        steps = plan.detection_steps if task == "detection" else plan.segmentation_steps
        for backbone, weights in (("base", base_weights), ("customized", adapter)):
            overrides = {"world": str(world_dir), "model.weights": weights}
            if steps:
                overrides[steps_key] = steps

            def dense_work(folder: Path, config=config, overrides=overrides) -> dict:
                return {"metrics": train(_config_path(config), _overrides(overrides), folder)}

            dense[(task, backbone)] = runner.run(
                f"{task}-{backbone}", dense_work, overrides, after=("pretrain", best_stage)
            )["metrics"]

    from react_dense.demo.report import write_report

    summary = summarize(plan, world_info, retrieval, customized, dense)
    write_report(out, summary, world_dir, subset_manifest, dense_dirs={k: stages / f"{k[0]}-{k[1]}" for k in dense})
    runner.echo(f"report: {out / 'report.md'} and {out / 'report.html'}; metrics: {out / 'metrics.json'}")
    return summary


def _mean_spread(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "spread": (max(values) - min(values)) / 2 if len(values) > 1 else 0.0,
        "values": values,
    }


def summarize(plan, world, retrieval, customized, dense) -> dict:
    before = [r["metrics"]["zeroshot_top1_before"] for runs in customized.values() for r in runs]
    variants = {
        label: _mean_spread([r["metrics"]["zeroshot_top1_after"] for r in runs]) for label, runs in customized.items()
    }
    base_top1 = statistics.fmean(before)
    gated = variants[plan.variants[0][0]]["mean"]
    random_pairs = variants[plan.variants[2][0]]["mean"]
    det_key, seg_key = "bbox/APr", "mIoU_unseen"
    claims = {
        "gated_image_gain_over_base": gated - base_top1,
        "gated_image_gain_over_random_pairs": gated - random_pairs,
        "detection_novel_ap_base": dense[("detection", "base")].get(det_key),
        "detection_novel_ap_customized": dense[("detection", "customized")].get(det_key),
        "segmentation_unseen_miou_base": dense[("segmentation", "base")].get(seg_key),
        "segmentation_unseen_miou_customized": dense[("segmentation", "customized")].get(seg_key),
    }
    claims["holds"] = {
        "gated_image_+5_over_base": claims["gated_image_gain_over_base"] >= 5.0,
        "gated_image_+3_over_random": claims["gated_image_gain_over_random_pairs"] >= 3.0,
        "customized_backbone_raises_novel_ap": (claims["detection_novel_ap_customized"] or 0)
        > (claims["detection_novel_ap_base"] or 0),
    }
    return {
        "preset": plan.preset,
        "seeds": list(plan.seeds),
        "world": {"target_classes": list(world.target_classes), "content_sha256": world.content_sha256},
        "retrieval": retrieval,
        "zeroshot_top1_base": base_top1,
        "zeroshot_top1": variants,
        "dense": {f"{task}/{backbone}": metrics for (task, backbone), metrics in dense.items()},
        "claims": claims,
        "plan": dataclasses.asdict(plan),
    }


def configure_logging() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
