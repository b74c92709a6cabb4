"""The registries every buildable part is named in (`type:` in a config).

Each part registry is an mmengine `Registry`, made on first use: a part registers itself where it
is defined (`@HEADS.register_module()`), and `react_dense` registers its backbones and heads into
these same registries, so one config language builds every part of the project.

A package also *declares* where its parts live (`HEADS.declare("OpenVocabSegHead",
"react_dense.modeling.seg_head")`), so that a config is checked without importing them and
torch behind them (`react config show` and every command's argument parsing stay fast): the
checker reads a declared part's signature from its module's source (`source_signature`), and
building imports the module. `tests/test_startup.py` checks that both readings agree.
"""
from __future__ import annotations

import ast
import importlib
import importlib.machinery
import importlib.util
import inspect
import sys
import typing
from typing import Any, Callable

CONFIG_KINDS: dict[str, type] = {}  # `kind:` -> schema dataclass (`react_core.config.config_kind`)

# what a part's annotation may name to be checked from source; anything else is left unchecked
_ANNOTATION_NAMES = {
    name: getattr(typing, name) for name in ("Any", "Dict", "List", "Literal", "Optional", "Sequence", "Tuple", "Union")
} | {"int": int, "float": float, "str": str, "bool": bool, "dict": dict, "list": list, "tuple": tuple, "None": None}


class PartRegistry:
    """An mmengine `Registry` of parts made on first use, plus the parts declared by module."""

    def __init__(self, name: str):
        self.name = name
        self._registry = None
        self._declared: dict[str, str] = {}

    @property
    def registry(self):
        """The mmengine `Registry` itself (imports mmengine)."""
        if self._registry is None:
            from mmengine.registry import Registry

            self._registry = Registry(self.name, scope="react")
        return self._registry

    def register_module(self, *args, **kwargs):
        return self.registry.register_module(*args, **kwargs)

    def declare(self, name: str, module: str) -> None:
        """Say that `module` registers the part `name`, without importing it."""
        self._declared[name] = module

    def declarations(self) -> dict[str, str]:
        """Part name -> the module declared to register it."""
        return dict(self._declared)

    def names(self) -> list[str]:
        registered = self._registry.module_dict if self._registry is not None else {}
        return sorted(set(registered) | set(self._declared))

    def _loaded(self, name: str) -> Callable | None:
        if self._registry is not None and name in self._registry.module_dict:
            return self._registry.module_dict[name]
        return None

    def get(self, name: str) -> Callable | None:
        """The registered class or function `name`, importing the module that declares it."""
        if self._loaded(name) is None and name in self._declared:
            importlib.import_module(self._declared[name])
        return self._loaded(name)

    def build(self, spec: dict) -> Any:
        self.get(spec.get("type"))
        return self.registry.build(spec)

    def signature(self, name: str) -> tuple[inspect.Signature, dict[str, Any]] | None:
        """`name`'s call signature and type hints, read from its module's source while that module
        is not imported yet; None for an unknown part."""
        found = self._loaded(name)
        if found is None and name in self._declared:
            module = self._declared[name]
            if module not in sys.modules:
                read = source_signature(module, name)
                if read is not None:
                    return read
            found = self.get(name)
        if found is None:
            return None
        try:
            hints = typing.get_type_hints(found.__init__ if inspect.isclass(found) else found)
        except Exception:
            hints = {}
        return inspect.signature(found), hints


def _module_source(module: str) -> str | None:
    """The source of `module`, found without running it or its parent packages (whose
    `__init__` may import torch); only the top-level package is imported."""
    top, *rest = module.split(".")
    spec = importlib.util.find_spec(top)
    for part in rest:
        if spec is None or not spec.submodule_search_locations:
            return None
        spec = importlib.machinery.PathFinder.find_spec(part, list(spec.submodule_search_locations))
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return None
    with open(spec.origin, encoding="utf-8") as handle:
        return handle.read()


def _annotation(node: ast.expr | None) -> Any:
    if node is None:
        return inspect.Parameter.empty
    text = node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else ast.unparse(node)
    try:
        return eval(text, {"__builtins__": {}}, dict(_ANNOTATION_NAMES))  # names of typing and builtins only
    except Exception:
        return inspect.Parameter.empty


def _default(node: ast.expr) -> Any:
    try:
        return ast.literal_eval(node)
    except ValueError:
        return ast.unparse(node)  # an expression: what the checker needs is that there is a default


def source_signature(module: str, name: str) -> tuple[inspect.Signature, dict[str, Any]] | None:
    """The signature and checkable type hints of the top-level class `name` (its own `__init__`)
    or function `name` of `module`, read from its source; None when the source does not say it
    plainly (then the caller imports the module)."""
    source = _module_source(module)
    if source is None:
        return None
    function = None
    for node in ast.parse(source).body:
        decorated = {ast.unparse(d) for d in getattr(node, "decorator_list", [])}
        registered_as = next((d for d in decorated if f"name={name!r}" in d or f'name="{name}"' in d), None)
        if getattr(node, "name", None) != name and registered_as is None:
            continue
        if isinstance(node, ast.ClassDef):
            function = next((item for item in node.body if isinstance(item, ast.FunctionDef) and item.name == "__init__"), None)
            if function is None:
                return None  # an inherited __init__: only the class itself knows it
        elif isinstance(node, ast.FunctionDef):
            function = node
        break
    if function is None:
        return None
    arguments = function.args
    parameters, hints = [], {}
    positional = arguments.posonlyargs + arguments.args
    kinds = ([inspect.Parameter.POSITIONAL_ONLY] * len(arguments.posonlyargs)
             + [inspect.Parameter.POSITIONAL_OR_KEYWORD] * len(arguments.args))
    defaults = [None] * (len(positional) - len(arguments.defaults)) + list(arguments.defaults)
    if isinstance(node, ast.ClassDef):  # a class is called without its `self`
        positional, kinds, defaults = positional[1:], kinds[1:], defaults[1:]
    entries = list(zip(positional, defaults, kinds))
    if arguments.vararg is not None:
        entries.append((arguments.vararg, None, inspect.Parameter.VAR_POSITIONAL))
    entries += [(arg, default, inspect.Parameter.KEYWORD_ONLY) for arg, default in zip(arguments.kwonlyargs, arguments.kw_defaults)]
    if arguments.kwarg is not None:
        entries.append((arguments.kwarg, None, inspect.Parameter.VAR_KEYWORD))
    for arg, default, kind in entries:
        annotation = _annotation(arg.annotation)
        if annotation is not inspect.Parameter.empty:
            hints[arg.arg] = annotation
        parameters.append(inspect.Parameter(
            arg.arg, kind, default=inspect.Parameter.empty if default is None else _default(default)
        ))
    return inspect.Signature(parameters), hints


BACKBONES = PartRegistry("backbone")
HEADS = PartRegistry("head")
DATASETS = PartRegistry("dataset")
