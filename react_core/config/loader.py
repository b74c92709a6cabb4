"""Read YAML configs: `_base_` inheritance, `${...}` interpolation, `key=value` overrides.

Every leaf key remembers the file (or the command line) that set it last, so that a
validation error can name where the bad value came from. A top-level `vars:` mapping holds the
config's own variables (a data root, say): other keys read them as `${vars.NAME}`, overrides set
them as `vars.NAME=VALUE`, and they are dropped once interpolation is resolved, so no schema
declares them.
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from react_core.errors import ReactError
from react_core.io import atomic_write_text

COMMAND_LINE = "the command line"
VARIABLES = "vars"


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader that reads `1e-4` as a number, as YAML 1.2 does (PyYAML follows 1.1)."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


class ConfigError(ReactError):
    """A config that cannot be used; the message names the key, the value and the file."""


class Sources(dict):
    """Dotted key -> the file that set it. Lookups fall back to the nearest parent key."""

    def of(self, key: str) -> str:
        parts = key.split(".")
        for end in range(len(parts), 0, -1):
            hit = self.get(".".join(parts[:end]))
            if hit is not None:
                return hit
        return "<unknown>"


def _flat_keys(node: Any, prefix: str = "") -> Iterable[str]:
    if isinstance(node, dict):
        if prefix:
            yield prefix
        for key, value in node.items():
            yield from _flat_keys(value, f"{prefix}.{key}" if prefix else str(key))
    elif prefix:
        yield prefix


def _read_yaml(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.load(handle, Loader=_YamlLoader)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}".replace("\n", " ")) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def _load_tree(path: Path, chain: tuple[Path, ...]) -> tuple[DictConfig, Sources]:
    path = path.resolve()
    if path in chain:
        loop = " -> ".join(str(p) for p in (*chain, path))
        raise ConfigError(f"_base_ loop: {loop}")
    data = _read_yaml(path)
    bases = data.pop("_base_", [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: _base_ must be a path or a list of paths, got {bases!r}")
    merged = OmegaConf.create({})
    sources = Sources()
    for base in bases:
        base_cfg, base_sources = _load_tree(path.parent / base, (*chain, path))
        merged = OmegaConf.merge(merged, base_cfg)
        sources.update(base_sources)
    try:
        own = OmegaConf.create(data)
    except OmegaConfBaseException as error:
        raise ConfigError(f"{path}: {error}".replace("\n", " ")) from None
    merged = OmegaConf.merge(merged, own)
    sources.update({key: str(path) for key in _flat_keys(data)})
    return merged, sources


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b=3` -> ("a.b", 3); the value is read as YAML, so `x=[1,2]` and `y=null` work."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} on {COMMAND_LINE} is not of the form key=value")
    try:
        value = yaml.load(raw, Loader=_YamlLoader) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def format_overrides(mapping: dict) -> list[str]:
    """{"a.b": 3, "c": [1, 2]} -> ["a.b=3", "c=[1, 2]"]: what `parse_override` reads back."""
    return [f"{key}={value if isinstance(value, str) else json.dumps(value)}" for key, value in mapping.items()]


def load_config(path: str | Path, overrides: Iterable[str] | Mapping[str, Any] = ()) -> tuple[dict, Sources]:
    """Merge `path` with its `_base_` files and the overrides; resolve interpolations.

    Args:
        path: the YAML file.
        overrides: `key=value` strings as typed on a command line, or a mapping of dotted keys to
            values (from code: the values are taken as they are, not parsed), applied in order
            after the files.

    Returns:
        The plain merged dict, less its `vars:` section, and where each key came from.
    """
    cfg, sources = _load_tree(Path(path), ())
    pairs = overrides.items() if isinstance(overrides, Mapping) else map(parse_override, overrides)
    for key, value in pairs:
        try:
            OmegaConf.update(cfg, key, value, merge=True, force_add=True)
        except OmegaConfBaseException as error:
            raise ConfigError(f"override {key}={value!r} on {COMMAND_LINE}: {error}".replace("\n", " ")) from None
        sources.update({k: COMMAND_LINE for k in _flat_keys(value, key)} or {key: COMMAND_LINE})
        sources[key] = COMMAND_LINE
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or "?"
        raise ConfigError(
            f"cannot resolve interpolation at key '{key}' (from {sources.of(key)}): {error.msg if hasattr(error, 'msg') else error}".replace("\n", " ")
        ) from None
    variables = resolved.pop(VARIABLES, {})
    if not isinstance(variables, dict):
        raise ConfigError(f"'{VARIABLES}' (from {sources.of(VARIABLES)}) must be a mapping of names to values, got {variables!r}")
    return resolved, sources


def to_yaml(data: Any) -> str:
    node = data if isinstance(data, (DictConfig, ListConfig)) else OmegaConf.create(data)
    return OmegaConf.to_yaml(node)


RUN_CONFIG = "config.yaml"


def write_run_config(cfg: Any, out: str | Path) -> Path:
    """`OUT/config.yaml`, every run's record of its config: the schema dataclass with every
    override and interpolation applied, so the run can be rebuilt from its folder alone."""
    config_file = Path(out) / RUN_CONFIG
    atomic_write_text(config_file, to_yaml(dataclasses.asdict(cfg)))
    return config_file
