"""Configs: `_base_` merging, interpolation, overrides, and errors that name key and file."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Literal, Optional

import pytest

from react_core.cli import main
from react_core.config import ConfigError, buildable, config_kind, format_overrides, load, load_config, parse_override
from react_core.registry import HEADS


@HEADS.register_module(name="TestLinearHead", force=True)
class LinearHead:
    def __init__(self, in_dim: int, num_classes: int, bias: bool = True):
        self.args = (in_dim, num_classes, bias)


@dataclass
class OptimSection:
    lr: float = 1e-3
    betas: List[float] = field(default_factory=lambda: [0.9, 0.98])


@config_kind("test-kind")
@dataclass
class ExampleConfig:
    kind: str
    name: str
    steps: int = 10
    mode: Literal["gated-image", "locked-text", "full"] = "gated-image"
    note: Optional[str] = None
    optim: OptimSection = field(default_factory=OptimSection)
    head: dict = buildable(HEADS, {"type": "TestLinearHead", "in_dim": 8, "num_classes": 2})


def write(path, text):
    path.write_text(text)
    return path


@pytest.fixture
def configs(tmp_path):
    write(tmp_path / "base.yaml", "kind: test-kind\nname: base\nsteps: 5\noptim:\n  lr: 0.1\n")
    write(tmp_path / "mid.yaml", "_base_: base.yaml\nname: mid-${steps}\n")
    child = write(tmp_path / "child.yaml", "_base_: [mid.yaml]\nsteps: 7\noptim:\n  betas: [0.8, 0.9]\n")
    return tmp_path, child


def test_vars_are_the_configs_own_variables_and_are_dropped_after_interpolation(tmp_path):
    base = write(tmp_path / "base.yaml", "kind: test-kind\nvars: {root: /data}\nname: ${vars.root}/a\n")
    child = write(tmp_path / "child.yaml", "_base_: base.yaml\nnote: ${vars.root}/b\n")
    cfg = load(child)
    assert (cfg.name, cfg.note) == ("/data/a", "/data/b") and not hasattr(cfg, "vars")
    moved = load(child, ["vars.root=/mnt"])
    assert (moved.name, moved.note) == ("/mnt/a", "/mnt/b")
    assert load(base, {"vars.root": "/x", "steps": 3}).name == "/x/a"  # from code: typed values, no strings to parse
    with pytest.raises(ConfigError, match="'vars'.*mapping"):
        load(write(tmp_path / "bad.yaml", "kind: test-kind\nname: a\nvars: 3\n"))
    with pytest.raises(ConfigError, match="vars.missing"):
        load(write(tmp_path / "unset.yaml", "kind: test-kind\nname: ${vars.missing}\n"))


def test_a_mapping_override_keeps_its_value_as_it_is(configs):
    _, child = configs
    assert load(child, {"note": "1e-3", "steps": 4}).note == "1e-3"  # a string stays a string
    with pytest.raises(ConfigError, match="steps"):
        load(child, {"steps": "four"})


def test_bases_merge_in_order_and_interpolation_sees_final_values(configs):
    _, child = configs
    cfg = load(child)
    assert cfg.steps == 7
    assert cfg.name == "mid-7"
    assert cfg.optim.lr == 0.1 and cfg.optim.betas == [0.8, 0.9]


def test_command_line_overrides_win_and_are_typed(configs):
    _, child = configs
    cfg = load(child, ["steps=3", "optim.lr=2e-4", "mode=full", "head.num_classes=5"])
    assert (cfg.steps, cfg.optim.lr, cfg.mode) == (3, 2e-4, "full")
    assert cfg.head == {"type": "TestLinearHead", "in_dim": 8, "num_classes": 5}


def test_formatted_overrides_read_back_as_the_values_they_came_from():
    mapping = {"a.flag": True, "a.weight": 0.0, "names": ["purple star", "cyan ring"], "path": "runs/x y", "none": None}
    assert dict(parse_override(text) for text in format_overrides(mapping)) == mapping


def test_sources_name_the_file_that_set_each_key(configs):
    folder, child = configs
    _, sources = load_config(child, ["steps=1"])
    assert sources.of("optim.lr") == str(folder / "base.yaml")
    assert sources.of("optim.betas") == str(child)
    assert sources.of("steps") == "the command line"


def test_misspelt_key_names_key_value_and_file(configs):
    folder, _ = configs
    bad = write(folder / "bad.yaml", "_base_: base.yaml\noptim:\n  lrr: 0.5\n")
    with pytest.raises(ConfigError) as error:
        load(bad)
    message = str(error.value)
    assert "optim.lrr" in message and "0.5" in message and str(bad) in message


def test_wrong_type_in_a_base_file_is_traced_to_that_file(configs):
    folder, _ = configs
    write(folder / "base2.yaml", "kind: test-kind\nname: x\nsteps: many\n")
    child = write(folder / "child2.yaml", "_base_: base2.yaml\nname: y\n")
    with pytest.raises(ConfigError) as error:
        load(child)
    message = str(error.value)
    assert "'steps'" in message and "many" in message and str(folder / "base2.yaml") in message


def test_missing_required_key_and_unknown_kind(tmp_path):
    with pytest.raises(ConfigError, match="missing required key 'name'"):
        load(write(tmp_path / "a.yaml", "kind: test-kind\n"))
    with pytest.raises(ConfigError, match="unknown config kind"):
        load(write(tmp_path / "b.yaml", "kind: nope\nname: x\n"))


def test_literal_and_registry_arguments_are_checked(configs):
    _, child = configs
    with pytest.raises(ConfigError, match="one of"):
        load(child, ["mode=partial"])
    with pytest.raises(ConfigError, match="head.in_dimm"):
        load(child, ["head.in_dimm=3"])
    with pytest.raises(ConfigError, match="head.num_classes"):
        load(child, ["head.num_classes=two"])
    with pytest.raises(ConfigError, match="unknown head type"):
        load(child, ["head.type=Missing"])


def test_base_loop_and_bad_yaml_are_reported(tmp_path):
    write(tmp_path / "a.yaml", "_base_: b.yaml\n")
    write(tmp_path / "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="loop"):
        load_config(tmp_path / "a.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path / "c.yaml", "a: [1,\n"))


def test_cli_exits_2_with_one_line_naming_key_and_file(configs, capsys):
    folder, child = configs
    bad = write(folder / "bad.yaml", "_base_: child.yaml\nstepz: 3\n")
    assert main(["config", "show", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "stepz" in err and str(bad) in err
    assert main(["config", "show", str(child), "steps=oops"]) == 2
    err = capsys.readouterr().err
    assert "'steps'" in err and "oops" in err and "command line" in err


def test_cli_show_prints_merged_yaml(configs, capsys):
    _, child = configs
    assert main(["config", "show", str(child), "note=hello"]) == 0
    out = capsys.readouterr().out
    assert "name: mid-7" in out and "note: hello" in out and "lr: 0.1" in out


def test_a_customized_tower_is_named_one_way_model_weights():
    from react_dense.detection.config import load_detection_config
    from react_dense.segmentation.config import load_segmentation_config

    root = Path(__file__).resolve().parents[1] / "configs"
    assert not [p for p in root.rglob("*.yaml") if re.search(r"^adapter:", p.read_text(), re.M)]
    for loader, name in ((load_detection_config, "lvis_react.yaml"), (load_segmentation_config, "ade20k_react_seg.yaml")):
        with pytest.raises(ConfigError, match="adapter"):
            loader(str(root / name), ["adapter=runs/customize/adapter.safetensors"])


def test_every_stage_trains_with_one_vocabulary():
    """Pretrain, customize, detection and segmentation name their schedule the same way; the dense
    tasks share one `train:` section and segmentation adds only its crops; the old names are refused."""
    from dataclasses import fields

    from react_core.config.common import TrainSchedule
    from react_core.engine.config import TrainConfig
    from react_dense.detection.config import DetectionConfig, load_detection_config
    from react_dense.schedule import DenseTrain
    from react_dense.segmentation.config import SegmentationConfig, SegmentationTrain

    names = lambda schema: {f.name for f in fields(schema)}  # noqa: E731
    for schema in (TrainConfig, DenseTrain, SegmentationTrain):
        assert names(TrainSchedule) <= names(schema)
    assert {f.type for f in fields(DetectionConfig) if f.name == "train"} == {"DenseTrain"}
    assert {f.type for f in fields(SegmentationConfig) if f.name == "train"} == {"SegmentationTrain"}
    assert names(SegmentationTrain) - names(DenseTrain) == {"crop_size", "scale_range", "hflip", "num_workers"}
    root = Path(__file__).resolve().parents[1] / "configs"
    assert load_detection_config(str(root / "lvis_react.yaml"), ["train.max_iters=7"]).train.max_iters == 7
    for old in ("steps", "warmup_steps", "clip_grad_norm", "log_period", "checkpoint_period"):
        with pytest.raises(ConfigError, match=old):
            load_detection_config(str(root / "lvis_react.yaml"), [f"train.{old}=1"])


def test_arguments_the_builder_supplies_are_neither_required_nor_settable():
    """The tower and its widths come from the builder: a config without them loads, one that sets
    them is refused naming the key."""
    from react_dense.detection.config import load_detection_config
    from react_dense.segmentation.config import load_segmentation_config

    root = Path(__file__).resolve().parents[1] / "configs"
    assert load_detection_config(str(root / "lvis_react.yaml")).head["type"] == "RegionTextClassifier"
    for loader, name, key in (
        (load_detection_config, "lvis_react.yaml", "backbone.visual"),
        (load_detection_config, "lvis_react.yaml", "head.embed_dim"),
        (load_segmentation_config, "ade20k_react_seg.yaml", "head.input_shape"),
    ):
        with pytest.raises(ConfigError, match="set by the builder.*" + re.escape(f"'{key}'")):
            loader(str(root / name), [f"{key}=3"])
