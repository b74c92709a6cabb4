"""The commands of README.md, benchmarks/README.md and docs/*.md, as written.

Nothing is read from the Markdown but its fenced ```bash blocks (the rule is stated for readers in
docs/walkthrough.md, "How this page is tested"):

- every bash block of README.md, benchmarks/README.md and docs/*.md is checked, fast: each command is one the project
  knows (`react`, `python tools/train_net.py`, a benchmark script, `torchrun` of those, `pip`,
  `python -m pytest`, `mkdocs`, `export NAME=value`, a script of Detectron2's checkout named
  `$D2/...`); its options parse with the command's own argparse parser; every
  config it names exists and loads with its `key=value` overrides; every repository path it
  names exists;
- the bash blocks of docs/walkthrough.md also run, in order, exactly as written, in an empty
  folder with the repository's configs/, tools/, benchmarks/ and react_dense/ linked in (slow:
  the demo's stages for one tower; `python -m pytest -m slow tests/test_readme_commands.py`);
- docs/commands.md and the key tables of docs/configs.md equal what docs/generate_reference.py
  makes of the code.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import re
import shlex
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
WALKTHROUGH = ROOT / "docs" / "walkthrough.md"
BASH_BLOCK = re.compile(r"^```bash\n(.*?)^```", re.M | re.S)
REPOSITORY_FOLDERS = ("configs/", "tools/", "benchmarks/", "react_core/", "react_dense/", "tests/", "docs/")
LINKED_IN = ("configs", "tools", "benchmarks", "react_dense")
ENVIRONMENT_ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=")
D2_CHECKOUT = "$D2/"  # a Detectron2 source checkout, as docs/detector.md names it
TORCHRUN_FLAGS = {"--standalone", "--no-python", "--no_python", "--run-path", "--run_path"}


def bash_blocks(page: Path) -> list[tuple[int, str]]:
    """(line number, text) of each fenced bash block of `page`."""
    text = page.read_text(encoding="utf-8")
    return [(text.count("\n", 0, match.start()) + 1, match.group(1)) for match in BASH_BLOCK.finditer(text)]


def block_commands(block: str) -> list[list[str]]:
    """The argument lists of a block's commands: continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", block)
    return [argv for line in joined.splitlines() if (argv := shlex.split(line, comments=True))]


def _load_tool(path: Path):
    spec = importlib.util.spec_from_file_location(f"docs_checked_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@lru_cache(maxsize=None)
def react_parser():
    from react_core.cli import build_parser

    return build_parser()


@lru_cache(maxsize=None)
def train_net_tool():
    return _load_tool(ROOT / "tools" / "train_net.py")


def _parse(parser, args: list[str], intermixed: bool = False):
    refusal = io.StringIO()
    try:
        with contextlib.redirect_stderr(refusal):
            return parser.parse_intermixed_args(args) if intermixed else parser.parse_args(args)
    except SystemExit:
        raise AssertionError(refusal.getvalue().strip().splitlines()[-1]) from None


def _load_config(path: str, overrides: list[str]) -> None:
    from react_core.config import load

    assert (ROOT / path).is_file(), f"config {path} does not exist"
    load(ROOT / path, overrides)


def _check_react(args: list[str]) -> None:
    parsed = _parse(react_parser(), args)
    config = getattr(parsed, "config", None)
    if config is not None:
        _load_config(config, list(getattr(parsed, "overrides", None) or getattr(parsed, "set", None) or []))


def _check_detectron2_script(script: str) -> None:
    """`$D2/tools/X.py`: a script of a Detectron2 source checkout, which must exist there when
    Detectron2 is installed from one (docs/installation.md)."""
    try:
        import detectron2
    except ImportError:
        return
    checkout = Path(detectron2.__file__).resolve().parents[1]
    if (checkout / "tools").is_dir():
        assert (checkout / script.removeprefix(D2_CHECKOUT)).is_file(), f"Detectron2's checkout has no {script}"


def _check_script(args: list[str]) -> None:
    script = args[0]
    if script.startswith(D2_CHECKOUT):
        _check_detectron2_script(script)
        return
    assert script.startswith(("tools/", "benchmarks/", "docs/")) and (ROOT / script).is_file(), f"no script {script}"
    if script == "tools/train_net.py":
        tool = train_net_tool()
        parsed = _parse(tool.build_parser(), args[1:], intermixed=True)
        _load_config(parsed.config, tool.normalize_overrides(parsed.overrides))
        return
    source = (ROOT / script).read_text(encoding="utf-8")
    for token in args[1:]:
        option = token.split("=", 1)[0]
        if option.startswith("--"):
            assert f'"{option}"' in source, f"{script} has no option {option}"


def _without_torchrun_options(args: list[str]) -> list[str]:
    rest = list(args)
    while rest and rest[0].startswith("-") and rest[0] != "-m":
        option = rest.pop(0)
        if "=" not in option and option not in TORCHRUN_FLAGS and rest:
            rest.pop(0)
    return rest


def check_command(argv: list[str]) -> None:
    """Raise AssertionError naming what of `argv` the project does not know."""
    while argv and ENVIRONMENT_ASSIGNMENT.match(argv[0]):
        argv = argv[1:]
    program, args = argv[0], argv[1:]
    if program == "export":
        assert args and all(ENVIRONMENT_ASSIGNMENT.match(a) for a in args), f"export of no NAME=value: {shlex.join(argv)}"
        return
    for token in args:
        value = token.split("=", 1)[-1]
        if value.startswith(REPOSITORY_FOLDERS):
            assert (ROOT / value).exists(), f"{value} does not exist in the repository"
    if program == "torchrun":
        args = _without_torchrun_options(args)
        program = "python"
    if program == "react":
        _check_react(args)
    elif program == "python" and args[:2] == ["-m", "react_core"]:
        _check_react(args[2:])
    elif program == "python" and args[:2] == ["-m", "pytest"]:
        return
    elif program == "python":
        _check_script(args)
    else:
        assert program in ("pip", "mkdocs"), f"unknown program {program!r}: the docs' bash blocks run react, python, torchrun, pip, mkdocs or export"


BLOCKS = [(page, line, block) for page in PAGES for line, block in bash_blocks(page)]


@pytest.mark.parametrize(("page", "line", "block"), BLOCKS,
                         ids=[f"{page.relative_to(ROOT)}:{line}" for page, line, _ in BLOCKS])
def test_every_command_of_the_docs_names_what_exists(page, line, block):
    commands = block_commands(block)
    assert commands, f"{page.name}:{line}: an empty bash block"
    for argv in commands:
        try:
            check_command(argv)
        except Exception as error:
            pytest.fail(f"{page.relative_to(ROOT)}:{line}: `{shlex.join(argv)}`: {error}")


def test_the_check_refuses_what_does_not_exist():
    refused = [
        ["react", "retrieve", "--no-such-option"],
        ["react", "no-such-command"],
        ["python", "tools/train_net.py", "--config", "configs/no_such.yaml"],
        ["python", "tools/train_net.py", "--config", "configs/lvis_react.yaml", "train.no_such_key=1"],
        ["react", "customize", "--config", "configs/customize/imagenet_gated_vitb32.yaml", "train.mode=sideways"],
        ["python", "benchmarks/retrieval.py", "--no-such-option", "1"],
        ["torchrun", "--nproc_per_node", "8", "-m", "react_core", "customise"],
        ["react", "eval", "zeroshot", "--classes", "configs/missing.txt"],
        ["wget", "https://example.com/weights.pt"],
    ]
    for argv in refused:
        with pytest.raises(Exception):
            check_command(argv)
    check_command(["torchrun", "--nproc_per_node", "8", "-m", "react_core", "customize",
                   "--config", "configs/customize/imagenet_gated_vitb32.yaml", "train.lr=1e-4"])


def test_the_walkthrough_has_commands_to_run():
    commands = [argv for _, block in bash_blocks(WALKTHROUGH) for argv in block_commands(block)]
    assert [argv[:2] for argv in commands[:2]] == [["react", "synth"], ["react", "embed"]]
    assert {argv[0] for argv in commands} == {"react", "python"}


def test_the_generated_reference_pages_equal_what_the_code_gives():
    generator = _load_tool(ROOT / "docs" / "generate_reference.py")
    for page, text in generator.expected_pages().items():
        assert page.read_text(encoding="utf-8") == text, (
            f"{page.relative_to(ROOT)} differs from the code: run `python docs/generate_reference.py` and commit it")


@pytest.mark.slow
def test_the_walkthrough_runs_as_written(tmp_path):
    for name in LINKED_IN:
        (tmp_path / name).symlink_to(ROOT / name)
    for _, block in bash_blocks(WALKTHROUGH):
        for argv in block_commands(block):
            program = [sys.executable, "-m", "react_core"] if argv[0] == "react" else [sys.executable]
            result = subprocess.run(program + argv[1:], cwd=tmp_path, capture_output=True, text=True, timeout=4 * 3600)
            assert result.returncode == 0, f"{shlex.join(argv)} failed:\n{result.stderr[-3000:]}"
    runs = tmp_path / "runs"
    import pandas as pd

    assert len(pd.read_parquet(runs / "subset" / "subset.parquet")) >= 12 * 50  # a usable training set: 50 pairs a class
    customized = json.loads((runs / "customize" / "metrics.json").read_text())
    assert customized["zeroshot_top1_after"] > customized["zeroshot_top1_before"]
    assert json.loads((runs / "zeroshot.json").read_text())["top1"] == pytest.approx(customized["zeroshot_top1_after"], abs=1.0)
    assert (runs / "official.pt").stat().st_size > 0
    for run, metric in (("ovd", "bbox/APr"), ("ovd_customized", "bbox/APr"), ("seg", "mIoU_unseen")):
        assert metric in json.loads((runs / run / "metrics.json").read_text()), run
    assert (runs / "detect" / "detections.json").is_file()
    assert any((runs / "segment" / "labels").iterdir())
