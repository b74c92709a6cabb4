"""Typed schemas for configs: dataclasses, checked key by key against the merged YAML.

A config names its schema with a top-level `kind:` (registered in `CONFIG_KINDS`). A field
whose metadata names a registry (`buildable(HEADS)`) holds a `type:` plus keyword arguments;
those are checked against the signature of the registered class or function, so a typo in a
head's argument is caught before anything is built.
"""
from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from typing import Any, Literal, Union

from react_core.config.loader import ConfigError, Sources, load_config
from react_core.registry import CONFIG_KINDS

_MISSING_REQUIRED = object()


def buildable(registry, default: dict | None = None, supplied: tuple[str, ...] = (), optional: bool = False):
    """A dataclass field holding `{type: Name, **kwargs}` for `registry`. `supplied` names the
    arguments the task's builder passes at build time (the CLIP tower, its widths): a config may
    not set them, and they are not missing when it does not. An `optional` field defaults to None."""
    metadata = {"registry": registry, "supplied": tuple(supplied)}
    if optional:
        return dataclasses.field(default=None, metadata=metadata)
    if default is None:
        return dataclasses.field(metadata=metadata)
    return dataclasses.field(default_factory=lambda: dict(default), metadata=metadata)


def config_kind(name: str):
    """Register a top-level schema under `kind: name`."""

    def wrap(cls):
        CONFIG_KINDS[name] = cls
        return cls

    return wrap


class _Checker:
    def __init__(self, sources: Sources):
        self.sources = sources

    def fail(self, key: str, value: Any, why: str):
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        raise ConfigError(f"{why}: key '{key}' = {shown} (from {self.sources.of(key)})")

    def convert(self, value: Any, tp: Any, key: str) -> Any:
        if tp is Any or tp is object:
            return value
        origin = typing.get_origin(tp)
        if dataclasses.is_dataclass(tp):
            return self.dataclass(value, tp, key)
        if origin in (Union, types.UnionType):
            options = typing.get_args(tp)
            if value is None and type(None) in options:
                return None
            errors = []
            for option in options:
                if option is type(None):
                    continue
                try:
                    return self.convert(value, option, key)
                except ConfigError as error:
                    errors.append(error)
            if len(errors) == 1:
                raise errors[0]
            self.fail(key, value, f"wrong type, expected {_type_name(tp)}")
        if origin is Literal:
            if value not in typing.get_args(tp):
                choices = ", ".join(repr(v) for v in typing.get_args(tp))
                self.fail(key, value, f"invalid value, expected one of {choices}")
            return value
        if origin in (list, tuple):
            if not isinstance(value, (list, tuple)):
                self.fail(key, value, f"wrong type, expected a list of {_type_name(typing.get_args(tp)[0])}")
            (item_type, *_) = typing.get_args(tp) or (Any,)
            return [self.convert(v, item_type, f"{key}.{i}") for i, v in enumerate(value)]
        if origin is dict or tp is dict:
            if not isinstance(value, dict):
                self.fail(key, value, "wrong type, expected a mapping")
            args = typing.get_args(tp)
            value_type = args[1] if len(args) == 2 else Any
            return {k: self.convert(v, value_type, f"{key}.{k}") for k, v in value.items()}
        if tp is bool:
            if not isinstance(value, bool):
                self.fail(key, value, "wrong type, expected true or false")
            return value
        if tp is int:
            if isinstance(value, bool) or not isinstance(value, int):
                self.fail(key, value, "wrong type, expected an integer")
            return value
        if tp is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                self.fail(key, value, "wrong type, expected a number")
            return float(value)
        if tp is str:
            if not isinstance(value, str):
                self.fail(key, value, "wrong type, expected a string")
            return value
        raise TypeError(f"schema type {tp!r} at '{key}' is not supported")

    def dataclass(self, value: Any, cls: type, key: str) -> Any:
        if not isinstance(value, dict):
            self.fail(key, value, f"wrong type, expected a mapping ({cls.__name__})")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        prefix = f"{key}." if key else ""
        for name in value:
            if name not in fields:
                known = ", ".join(sorted(fields))
                self.fail(f"{prefix}{name}", value[name], f"unknown key (known here: {known})")
        kwargs = {}
        for name, field in fields.items():
            child = f"{prefix}{name}"
            if name not in value:
                required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
                if required:
                    raise ConfigError(
                        f"missing required key '{child}' (in the config built from {self.sources.of(key or name)})"
                    )
                continue
            registry = field.metadata.get("registry")
            if registry is not None:
                kwargs[name] = self.part(_over_default(value[name], field), registry, child, field.metadata["supplied"])
            else:
                kwargs[name] = self.convert(value[name], hints[name], child)
        return cls(**kwargs)

    def part(self, value: Any, registry, key: str, supplied: tuple[str, ...] = ()) -> dict:
        """Check `{type: ..., **kwargs}` against the registered callable's signature; the
        `supplied` arguments come from the builder, not the config."""
        if value is None:
            return None
        if not isinstance(value, dict) or "type" not in value:
            self.fail(key, value, f"expected a mapping with a 'type' naming a registered {registry.name}")
        found = registry.signature(value["type"]) if isinstance(value["type"], str) else None
        if found is None:
            known = ", ".join(registry.names())
            self.fail(f"{key}.type", value["type"], f"unknown {registry.name} type (registered: {known})")
        signature, hints = found
        params = signature.parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        checked = {"type": value["type"]}
        for name, arg in value.items():
            if name == "type":
                continue
            if name in supplied:
                self.fail(f"{key}.{name}", arg, f"set by the builder of {value['type']}, not by the config")
            if name not in params and not takes_any:
                known = ", ".join(n for n in params if n not in ("self", "args", "kwargs"))
                self.fail(f"{key}.{name}", arg, f"unknown argument of {value['type']} (accepted: {known})")
            hint = hints.get(name, Any)
            checked[name] = self.convert(arg, hint, f"{key}.{name}") if _checkable(hint) else arg
        for name, param in params.items():
            required = param.default is inspect.Parameter.empty and param.kind in (
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                inspect.Parameter.KEYWORD_ONLY,
            )
            if required and name not in value and name not in supplied and name != "self":
                raise ConfigError(
                    f"missing required key '{key}.{name}' for {value['type']} (from {self.sources.of(key)})"
                )
        return checked


def _over_default(given: Any, field: dataclasses.Field) -> Any:
    """A partial part (`head.num_classes=5`) fills in from the field's default of the same type."""
    if field.default_factory is dataclasses.MISSING or not isinstance(given, dict):
        return given
    default = field.default_factory()
    if not isinstance(default, dict) or given.get("type", default.get("type")) != default.get("type"):
        return given
    return {**default, **given}


def _checkable(hint: Any) -> bool:
    """Only plain data types are checked; tensors, modules and callables pass through."""
    if hint in (int, float, str, bool, Any):
        return True
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType, list, tuple, dict, Literal):
        return all(_checkable(a) or a is type(None) or not isinstance(a, type) for a in typing.get_args(hint))
    return False


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def validate(data: dict, schema: type, sources: Sources | None = None) -> Any:
    """Turn a merged config dict into an instance of the dataclass `schema`."""
    return _Checker(sources or Sources()).dataclass(data, schema, "")


KIND_MODULES = ("react_core.engine.config",)
PLUGIN_ENTRY_POINTS = "react.plugins"


def import_kind_modules() -> None:
    """Import every module that registers config kinds and parts: ours, and other packages'
    through the `react.plugins` entry-point group (so `react_core` never names `react_dense`)."""
    import importlib
    from importlib.metadata import entry_points

    for name in KIND_MODULES:
        importlib.import_module(name)
    for entry in entry_points(group=PLUGIN_ENTRY_POINTS):
        entry.load()


def schema_for(data: dict, sources: Sources) -> type:
    kind = data.get("kind")
    if kind is None:
        raise ConfigError(f"missing required key 'kind' (in {sources.of('kind')}); known kinds: {known_kinds()}")
    schema = CONFIG_KINDS.get(kind) if isinstance(kind, str) else None
    if schema is None:
        raise ConfigError(f"unknown config kind: key 'kind' = {kind!r} (from {sources.of('kind')}); known kinds: {known_kinds()}")
    return schema


def known_kinds() -> str:
    return ", ".join(sorted(CONFIG_KINDS)) or "(none registered)"


def load(path, overrides=(), schema: type | None = None) -> Any:
    """Load, merge, resolve and validate a config file; the one entry point commands use.

    Args:
        path: a YAML config with a `kind:` (its `_base_` files merged first).
        overrides: `key=value` strings, or a mapping of keys to values.
        schema: the dataclass to validate against; the one its `kind:` names by default.

    Returns:
        The config as its schema's dataclass; an error names the file, line and key of a bad value.
    """
    import_kind_modules()
    data, sources = load_config(path, overrides)
    if schema is None:
        schema = schema_for(data, sources)
    return validate(data, schema, sources)
