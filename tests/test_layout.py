"""The package layout: react_core never imports react_dense, the library never imports the lab
(`react_dense.lab`), and neither package has an import cycle, between modules or between folders
(imports inside functions count: a lazy import is still a dependency)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("react_core", "react_dense")
LAB = "react_dense.lab"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Each project module -> the project modules it imports (a `from package import name` that
    names a submodule counts as importing that submodule)."""
    modules = {_module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                named = {f"{base}.{alias.name}" for alias in node.names}
                targets.update(named)
                if not named <= modules.keys():  # names from the module itself, not only its submodules
                    targets.add(base)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_core_never_imports_dense():
    graph = import_graph()
    upward = sorted((m, t) for m, targets in graph.items() if m.startswith("react_core") for t in targets if t.startswith("react_dense"))
    assert not upward


def test_the_library_never_imports_the_lab():
    graph = import_graph()
    into_lab = sorted((m, t) for m, targets in graph.items() if not _in_lab(m) for t in targets if _in_lab(t))
    assert not into_lab


def _in_lab(module: str) -> bool:
    return module == LAB or module.startswith(LAB + ".")


def package_folders() -> set[str]:
    return {_module_name(p) for package in PACKAGES for p in (ROOT / package).rglob("__init__.py")}


def folder_graphs(graph: dict[str, set[str]], folders: set[str]) -> dict[str, dict[str, set[str]]]:
    """For every folder, the imports among its direct children: its own modules, and each subfolder
    as one node standing for everything below it. A cycle there is a cycle between folders (or
    between a folder and a module beside it), whatever the modules inside them import."""
    def child(module: str, folder: str) -> str | None:
        """The child of `folder` that holds `module` (None when `module` lies outside `folder`)."""
        if not module.startswith(folder + "."):
            return None
        return folder + "." + module[len(folder) + 1:].split(".")[0]

    levels = {}
    for folder in folders:
        level: dict[str, set[str]] = {}
        for module, targets in graph.items():
            source = child(module, folder)
            if source is not None:
                level.setdefault(source, set()).update(
                    target for t in targets if (target := child(t, folder)) is not None and target != source
                )
        levels[folder] = {node: {t for t in targets if t in level} for node, targets in level.items()}
    return levels


def test_no_import_cycle_in_either_package():
    assert cycles(import_graph()) == []


def test_no_import_cycle_between_folders():
    found = {folder: found for folder, level in folder_graphs(import_graph(), package_folders()).items() if (found := cycles(level))}
    assert found == {}


def test_the_folder_check_finds_two_folders_that_import_each_other():
    graph = {"p": set(), "p.a": set(), "p.a.x": {"p.b.y"}, "p.b": set(), "p.b.y": {"p.a.z"}, "p.a.z": set()}
    assert cycles(graph) == []
    assert cycles(folder_graphs(graph, {"p", "p.a", "p.b"})["p"]) == [["p.a", "p.b"]]


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
