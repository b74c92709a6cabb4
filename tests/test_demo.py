"""`react demo --quick`: every stage of the pipeline runs and leaves its outputs; a rerun is cached."""
from __future__ import annotations

import json

import pytest

from react_core.cli import main


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--quick", "--out", str(out)]) == 0
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
    customized = sorted(p.name for p in stages.glob("customize-*"))
    assert len(customized) == 4
    for name in customized:
        metrics = json.loads((stages / name / "metrics.json").read_text())
        assert 0 <= metrics["zeroshot_top1_before"] <= 100 and 0 <= metrics["zeroshot_top1_after"] <= 100
    assert (stages / "customize-gated-image-retrieved-seed0" / "adapter.safetensors").is_file()
    for name in ("detection-base", "detection-customized", "segmentation-base", "segmentation-customized"):
        assert (stages / name / "metrics.json").is_file(), name


def test_report_has_tables_plots_and_metrics(quick_demo):
    report = (quick_demo / "report.md").read_text()
    for heading in ("## Retrieval", "## Customization", "## Dense transfer", "## Do the claims hold here?"):
        assert heading in report
    for picture in ("accuracy.png", "retrieval_gallery.png", "detections.png"):
        assert (quick_demo / picture).stat().st_size > 1000
        assert picture in report
    assert "<table>" in (quick_demo / "report.html").read_text()
    metrics = json.loads((quick_demo / "metrics.json").read_text())
    assert set(metrics["zeroshot_top1"]) == {
        "gated-image · retrieved",
        "locked-text · retrieved",
        "gated-image · random pairs",
        "full fine-tuning · retrieved",
    }
    assert "bbox/APr" in metrics["dense"]["detection/customized"]
    assert "mIoU_unseen" in metrics["dense"]["segmentation/customized"]


def test_second_run_only_reads_the_cache(quick_demo, capsys):
    capsys.readouterr()
    assert main(["demo", "--quick", "--out", str(quick_demo)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert lines and all(line.endswith(": cached") for line in lines)
