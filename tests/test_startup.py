"""Commands parse their arguments before importing the heavy libraries: `react --help`,
`react config show` and every `react X --help` import neither torch nor open_clip, mmengine or
faiss (benchmarks/startup.py measures the time). Config checking reads a declared part's
signature from its source; both readings agree."""
from __future__ import annotations

import ast
import importlib
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "open_clip", "mmengine", "faiss", "torchvision", "detectron2")
LAB_CONFIGS = ROOT / "react_dense" / "lab" / "configs"

_PROBE = """
import json, sys
from react_core.cli import build_parser, main
heavy = {heavy!r}
commands = sorted(build_parser()._subparsers._group_actions[0].choices)
runs = [["--help"]] + [[c, "--help"] for c in commands] + [["eval", a, "--help"] for a in ("zeroshot", "retrieval", "linear-probe")]
runs += [["config", "show", str(path)] for path in {configs!r}]
found = {{}}
for argv in runs:
    try:
        main(argv)
    except SystemExit:
        pass
    loaded = sorted(name for name in heavy if name in sys.modules)
    if loaded:
        found[" ".join(argv)] = loaded
print(json.dumps({{"commands": commands, "heavy": found}}))
"""


def test_help_and_config_show_import_no_heavy_library():
    configs = [str(p) for p in sorted(LAB_CONFIGS.glob("*.yaml"))] + [str(ROOT / "configs" / "lvis_react.yaml")]
    probe = _PROBE.format(heavy=HEAVY, configs=configs)
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"customize", "detect", "segment", "config", "eval"} <= set(report["commands"])
    assert report["heavy"] == {}


def _registries():
    import react_core.engine.config  # noqa: F401  (declares the pair sets)
    import react_dense.plugin  # noqa: F401  (declares the dense parts)
    from react_core.registry import BACKBONES, DATASETS, HEADS

    return BACKBONES, HEADS, DATASETS


def test_every_registered_part_is_declared():
    """A part registered with `@REGISTRY.register_module` must also be declared, or a config naming
    it would fail to validate where its module is not imported yet."""
    registries = {registry.name: registry for registry in _registries()}
    attributes = {"BACKBONES": "backbone", "HEADS": "head", "DATASETS": "dataset"}
    registered = set()
    for path in [*(ROOT / "react_core").rglob("*.py"), *(ROOT / "react_dense").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            for decorator in getattr(node, "decorator_list", []):
                call = decorator if isinstance(decorator, ast.Call) else None
                target = call.func if call is not None else decorator
                if isinstance(target, ast.Attribute) and target.attr == "register_module" and \
                        isinstance(target.value, ast.Name) and target.value.id in attributes:
                    named = [k.value.value for k in (call.keywords if call else []) if k.arg == "name"]
                    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
                    registered.add((attributes[target.value.id], named[0] if named else node.name, module))
    assert registered
    declared = {(name, part, module) for name, registry in registries.items()
                for part, module in registry.declarations().items()}
    assert registered == declared


def test_a_part_signature_read_from_source_is_the_one_python_sees():
    from react_core.registry import source_signature

    for registry in _registries():
        for part, module in registry.declarations().items():
            read, read_hints = source_signature(module, part)
            importlib.import_module(module)
            seen, seen_hints = registry.signature(part)
            assert list(read.parameters) == list(seen.parameters), part
            for name, parameter in seen.parameters.items():
                mine = read.parameters[name]
                assert mine.kind == parameter.kind, (part, name)
                assert (mine.default is inspect.Parameter.empty) == (parameter.default is inspect.Parameter.empty), (part, name)
                if isinstance(parameter.default, (int, float, str, bool, type(None))):
                    assert mine.default == parameter.default, (part, name)
                if name in read_hints:
                    assert read_hints[name] == seen_hints[name], (part, name)
