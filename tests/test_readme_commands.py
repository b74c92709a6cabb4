"""The README's pipeline, top to bottom, exactly as written, in an empty folder (slow: about half
an hour on two cores; run with `python -m pytest -m slow tests/test_readme_commands.py`)."""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[list[str]]:
    """The argument lists of the bash block under "The pipeline, command by command"."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## The pipeline, command by command\n\n```bash\n(.*?)```", text, re.S).group(1)
    joined = re.sub(r"\\\n\s*", " ", block)
    return [argv for line in joined.splitlines() if (argv := shlex.split(line, comments=True))]


def test_the_readme_block_is_what_this_test_runs():
    commands = readme_commands()
    assert [argv[:2] for argv in commands][:3] == [["react", "synth"], ["react", "pretrain"], ["react", "embed"]]
    assert {argv[0] for argv in commands} == {"react", "python"}


def test_readme_commands_run_as_written(tmp_path):
    for name in ("configs", "tools"):
        (tmp_path / name).symlink_to(ROOT / name)
    for argv in readme_commands():
        program = [sys.executable, "-m", "react_core"] if argv[0] == "react" else [sys.executable]
        result = subprocess.run(program + argv[1:], cwd=tmp_path, capture_output=True, text=True, timeout=3600)
        assert result.returncode == 0, f"{shlex.join(argv)} failed:\n{result.stderr[-3000:]}"
    runs = tmp_path / "runs"
    shipped = json.loads((ROOT / "react_core" / "resources" / "demo_base.json").read_text())
    assert json.loads((runs / "pretrain" / "pretrain.json").read_text())["cache_key"] == shipped["cache_key"]
    assert not (runs / "pretrain" / "train.log").exists()  # the shipped base was copied, not retrained
    subset = pd.read_parquet(runs / "subset" / "subset.parquet")
    assert len(subset) >= 12 * 50  # a usable training set: at least 50 pairs for each of the 12 classes
    customized = json.loads((runs / "customize" / "metrics.json").read_text())
    assert customized["pairs"] == len(subset)
    assert json.loads((runs / "zeroshot.json").read_text())["top1"] >= 0
    assert "bbox/AP" in json.loads((runs / "ovd" / "metrics.json").read_text())
    assert any((runs / "detect").iterdir()) and any((runs / "segment").iterdir())
