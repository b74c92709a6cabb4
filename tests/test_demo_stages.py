"""The demo's stage runner: side-by-side stages really overlap, wait for what they read, keep what
finished when one fails, and name the failed stage; the demo's dense stages train each head once."""
from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest

from react_core.errors import ReactError
from react_dense.demo.pipeline import _dependencies_first, dense_stage_plan, plan_for
from react_dense.demo.stages import LOG_FILE, Stage, StageFailed, StageRunner


def _meet(me: str, other: str, folder: Path) -> dict:
    """Leave a mark and wait for the other stage's: only stages that run at once both see it."""
    (folder.parent / f"{me}.here").touch()
    print(f"{me} waiting for {other}")
    deadline = time.monotonic() + 60
    while not (folder.parent / f"{other}.here").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return {"met": (folder.parent / f"{other}.here").exists()}


def _combine(folder: Path) -> dict:
    records = [json.loads((folder.parent / name / "stage.json").read_text())["result"] for name in ("a", "b")]
    return {"both_met": all(r["met"] for r in records)}


def _fail_unless(marker: Path, error: type, folder: Path) -> dict:
    if not marker.exists():
        raise error(f"{marker.name} is missing")
    return {"ok": True}


def _write(value: int, folder: Path) -> dict:
    time.sleep(1)
    (folder / "value.txt").write_text(str(value))
    return {"value": value}


def test_side_by_side_stages_overlap_and_the_dependent_one_waits(tmp_path):
    lines = []
    runner = StageRunner(tmp_path, total=3, echo=lines.append, jobs=2)
    results = runner.run_all([
        Stage("a", partial(_meet, "a", "b")),
        Stage("b", partial(_meet, "b", "a")),
        Stage("c", _combine, after=("a", "b")),
    ])
    assert results == {"a": {"met": True}, "b": {"met": True}, "c": {"both_met": True}}
    assert "a waiting for b" in (tmp_path / "a" / LOG_FILE).read_text()  # a stage's output goes to its log
    assert not any("waiting" in line for line in lines)
    again = StageRunner(tmp_path, total=3, echo=lines.append, jobs=2).run_all([
        Stage("a", partial(_meet, "a", "b")), Stage("b", partial(_meet, "b", "a")), Stage("c", _combine, after=("a", "b"))])
    assert again == results and lines[-3:] == ["[1/3] a: cached", "[2/3] b: cached", "[3/3] c: cached"]


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_failed_stage_is_named_and_what_finished_is_kept(tmp_path, jobs):
    marker = tmp_path / "fixed"
    stages = [Stage("fine", partial(_write, 7)), Stage("broken", partial(_fail_unless, marker, RuntimeError)),
              Stage("reader", partial(_write, 8), after=("broken",))]
    with pytest.raises(StageFailed, match=r"stage broken failed \(RuntimeError: fixed is missing\)"):
        StageRunner(tmp_path / "stages", total=3, echo=lambda _: None, jobs=jobs).run_all(stages)
    assert (tmp_path / "stages" / "fine" / "value.txt").read_text() == "7"
    assert not (tmp_path / "stages" / "reader").exists()
    marker.touch()
    lines = []
    results = StageRunner(tmp_path / "stages", total=3, echo=lines.append, jobs=jobs).run_all(stages)
    assert results["reader"] == {"value": 8} and "[1/3] fine: cached" in lines


def test_a_bad_input_keeps_its_own_one_line_error(tmp_path):
    stages = [Stage("bad", partial(_fail_unless, tmp_path / "classes.txt", ReactError))]
    with pytest.raises(ReactError, match="^classes.txt is missing$"):
        StageRunner(tmp_path, total=1, echo=lambda _: None, jobs=2).run_all(stages)


def test_awaited_stages_go_first_and_each_follows_what_it_reads():
    work = [Stage("tower-1", None), Stage("tower-0", None), Stage("eval-0", None, after=("tower-0", "head")),
            Stage("head", None, after=("pretrain",)), Stage("probe", None, after=("head",))]
    order = [stage.name for stage in _dependencies_first(work)]
    assert order == ["tower-0", "head", "tower-1", "eval-0", "probe"]


@pytest.mark.parametrize("quick", [True, False])
def test_each_head_trains_once_on_the_base_tower(tmp_path, quick):
    """The heads read below the gated block, so every other tower is evaluated on the base tower's
    (the full plan keeps the configs' step counts, which once made every tower train its own)."""
    world = SimpleNamespace(novel_categories=["purple star"], semseg_unseen=["purple star"])
    towers = {"base": "base.safetensors", "customized": "customized.safetensors", "random": "random.safetensors"}
    work, names = dense_stage_plan(plan_for(quick, 0), world, tmp_path / "world", tmp_path / "stages", towers,
                                   {tower: () for tower in towers})
    trained = set()
    for stage in work:
        _, overrides, evaluate, _ = stage.work.args
        if evaluate is None and overrides.get("method") != "maskclip":
            trained.add(stage.name)
        elif evaluate is not None:
            assert Path(evaluate).parent.name.endswith("-base") and Path(evaluate).parent.name in stage.after, stage.name
    assert trained == {"detection-base", "segmentation-base", "segmentation-heldout-base"}
    assert set(names) == {stage.name for stage in work}
