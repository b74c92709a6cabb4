"""`react demo --quick`: every stage of the pipeline runs and leaves its outputs; a rerun is cached."""
from __future__ import annotations

import json
import statistics

import pytest
import yaml

from react_core.cli import main
from react_dense.lab.world import load_world


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--quick", "--out", str(out), "--jobs", "2", "--ablations"]) == 0  # the stages must survive pickling
    return out


def test_every_stage_produced_its_outputs(quick_demo):
    stages = quick_demo / "stages"
    for name in ("world", "pretrain", "embed", "index", "retrieve", "random-pairs"):
        assert (stages / name / "stage.json").is_file(), name
    assert list((stages / "embed" / "embeddings" / "img_emb").glob("img_emb_*.npy"))
    assert (stages / "index" / "image" / "index.faiss").is_file()
    for mode in ("t2i", "t2t", "both"):
        stats = json.loads((stages / "retrieve" / f"subset_{mode}" / "stats.json").read_text())
        assert mode in stats["evaluation"]
    customized = sorted(p.name for p in stages.glob("customize-*-seed*"))
    assert len(customized) == 6
    befores = set()
    training_pairs = json.loads((stages / "random-pairs" / "stage.json").read_text())["result"]["pairs"]
    for name in customized:
        metrics = json.loads((stages / name / "metrics.json").read_text())
        for key in ("zeroshot_top1_before", "zeroshot_top1_after", "generic_top1_before", "generic_top1_after"):
            assert 0 <= metrics[key] <= 100, (name, key)
        if "-cls-" not in name:  # the dense objective's runs replay random corpus pairs, a third as many
            assert metrics["replay_pairs"] == max(1, round(training_pairs / 3)), name
            assert metrics["pairs"] == training_pairs + metrics["replay_pairs"], name
        else:
            assert "replay_pairs" not in metrics, name
        befores.add(json.dumps([metrics["zeroshot_before"], metrics["generic_before"]], sort_keys=True))
    # every run starts from the same base: its zero-shot results are made once, in the shared cache, and read back
    assert len(befores) == 1
    assert len(list((stages / "customize-cache").rglob("zeroshot_*.json"))) == 2
    for objective, enabled in (("dense", True), ("cls", False)):
        written = yaml.safe_load((stages / f"customize-{objective}-gated-image-retrieved-seed0" / "config.yaml").read_text())
        assert written["dense"]["enabled"] is enabled, objective
    clipself = yaml.safe_load((stages / "customize-clipself-gated-image-retrieved-seed0" / "config.yaml").read_text())
    assert (clipself["dense"]["teacher"], clipself["dense"]["contrastive"]) == ("base", False)  # plain CLIPSelf
    for name in ("customize-dense-gated-image-retrieved-seed0", "customize-dense-gated-image-random-seed0"):
        assert (stages / name / "adapter.safetensors").is_file(), name
    for name in ("detection-base", "detection-customized", *(f"{task}-{tower}" for task in ("segmentation", "maskclip")
                                                             for tower in ("base", "customized", "random"))):
        assert (stages / name / "metrics.json").is_file(), name
    for tower in ("base", "customized", "random"):  # the ensemble is evaluated at the held-out head's temperature
        chosen = json.loads((stages / f"segmentation-heldout-{tower}" / "ensemble_calibration.json").read_text())
        assert chosen["temperature"] == float(max(chosen["hIoU_curve"], key=chosen["hIoU_curve"].get))
        assert (stages / f"segmentation-ensemble-{tower}" / "metrics.json").is_file(), tower
    for tower in ("base", "customized"):  # the detector's ensemble is calibrated on its held-out base classes
        report = json.loads((stages / f"detection-{tower}" / "ensemble_calibration.json").read_text())
        assert report["prior_correction"] and report["background"] and "novel_weight_curve" in report
    # the heads read below the gated block: trained once, on the base tower, and shared by every tower
    head_alone = json.loads((stages / "segmentation-base" / "metrics.json").read_text())
    for task in ("detection", "segmentation", "segmentation-heldout"):
        assert (stages / f"{task}-base" / "model_final.pth").is_file(), task
        assert not (stages / f"{task}-customized" / "model_final.pth").exists(), task
    for tower in ("customized", "random"):
        assert json.loads((stages / f"segmentation-{tower}" / "metrics.json").read_text())["mIoU"] == head_alone["mIoU"]
    for tower in ("base", "customized", "random", "clipself", "cls-only"):  # the detector with each tower's readout on novel classes only
        assert "bbox/APr" in json.loads((stages / f"detection-novel-{tower}" / "metrics.json").read_text()), tower
    assert "bbox/APr" in json.loads((stages / "detection-novel-permuted-customized" / "metrics.json").read_text())


def test_report_has_tables_plots_and_metrics(quick_demo):
    report = (quick_demo / "report.md").read_text()
    for heading in ("## Retrieval", "## Customization", "## Dense transfer", "## Every variant over its seeds", "## Do the claims hold here?"):
        assert heading in report
    for picture in ("accuracy.png", "retrieval_gallery.png", "detections.png", "claims.png"):
        assert (quick_demo / picture).stat().st_size > 1000
        assert picture in report
    assert "<table>" in (quick_demo / "report.html").read_text()
    metrics = json.loads((quick_demo / "metrics.json").read_text())
    assert set(metrics["zeroshot_top1"]) == {
        "gated-image + dense + replay · retrieved",
        "gated-image + dense + replay · random pairs",
        "gated-image, CLS only · retrieved",
        "plain CLIPSelf + replay · retrieved",
        "locked-text · retrieved",
        "full fine-tuning · retrieved",
    }
    assert "bbox/APr" in metrics["dense"]["detection/customized"]
    assert "mIoU_unseen" in metrics["dense"]["segmentation/customized"]
    assert "mIoU_unseen" in metrics["dense"]["maskclip/random"]
    claims = metrics["claims"]
    assert len(claims) == 13 and all(set(c) >= {"name", "target", "measured", "holds"} for c in claims)
    # quick-scale figures only exercise the stages: the report opens saying so and judges no claim
    assert report.startswith("# REACT on the synthetic world\n\n**A quick-scale run") and "show nothing about the method" in report
    assert not any(c["evaluated"] for c in claims)
    assert report.count("not evaluated at quick scale") == len(claims) and "NOT met" not in report
    novel_only = [c for c in claims if "F-VLM's novel weight" in c["name"]]
    assert [dict(c["values"]).get("gated-image + dense + replay · random pairs") for c in novel_only][1] == (
        metrics["dense"]["detection-novel/random"]["bbox/APr"])
    assert all(dict(c["values"])["gated-image + dense + replay · retrieved"] == metrics["dense"]["detection-novel/customized"]["bbox/APr"]
               for c in novel_only)
    gain = claims[0]
    (base_label, before), (ours_label, after) = gain["values"]
    assert (base_label, ours_label) == ("base CLIP", "gated-image + dense + replay · retrieved")
    assert gain["measured"] == pytest.approx(after - before) and gain["holds"] == (gain["measured"] >= 5)
    for claim in claims[3:]:
        (_, first), (_, second) = claim["values"]
        assert claim["measured"] is None or claim["measured"] == pytest.approx(first / second)
        assert claim["holds"] == (claim["measured"] is not None and claim["measured"] >= 1.3)


def test_retrieval_covers_the_dense_vocabulary_and_reports_the_targets(quick_demo):
    """Retrieval queries every detection category (targets first), so the tower keeps the base classes
    its dense heads train on; the report's precision stays the target classes' figure."""
    world = load_world(quick_demo / "world")
    retrieve = quick_demo / "stages" / "retrieve"
    queried = (retrieve / "classes.txt").read_text().splitlines()
    targets = list(world.target_classes)
    assert queried[: len(targets)] == targets and sorted(queried) == sorted(world.detection_categories)
    metrics = json.loads((quick_demo / "metrics.json").read_text())
    for mode in ("t2i", "t2t", "both"):
        stats = json.loads((retrieve / f"subset_{mode}" / "stats.json").read_text())
        assert stats["classes_file"] == str(retrieve / "classes.txt") and set(stats["per_class"]) == set(queried)
        reported = metrics["retrieval"][mode]
        assert (reported["classes"], reported["pairs"]) == (len(queried), stats["rows"])
        assert reported["target_pairs"] == sum(stats["per_class"][name] for name in targets)
        found, random = (stats["evaluation"][key]["per_class"] for key in (mode, "random"))
        assert reported["per_class"] == {name: found[name] for name in targets}
        assert reported["precision"] == pytest.approx(statistics.fmean(found[name] for name in targets))
        assert reported["random_precision"] == pytest.approx(statistics.fmean(random[name] for name in targets))
    random_pairs = json.loads((quick_demo / "stages" / "random-pairs" / "stage.json").read_text())["result"]["pairs"]
    assert random_pairs == metrics["retrieval"]["both"]["pairs"]
    assert f"dense vocabulary: {len(queried)} classes" in (quick_demo / "report.md").read_text()


def test_second_run_only_reads_the_cache(quick_demo, capsys):
    capsys.readouterr()
    assert main(["demo", "--quick", "--out", str(quick_demo)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert lines and all(line.endswith(": cached") for line in lines)
