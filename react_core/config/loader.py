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
from react_core.io import absolute_paths, atomic_write_text, file_sha256, read_text

COMMAND_LINE = "the command line"
VARIABLES = "vars"
RECORDED_SHA256 = "sha256"  # a run's config.yaml: absolute path -> sha256 of each weights file it read


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
        data = yaml.load(read_text(path, ConfigError), Loader=_YamlLoader)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a folder, not a config file") from None
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
    recorded = resolved.pop(RECORDED_SHA256, {})
    if not isinstance(recorded, dict) or not all(isinstance(v, str) for v in recorded.values()):
        raise ConfigError(f"'{RECORDED_SHA256}' (from {sources.of(RECORDED_SHA256)}) must map weights files to their sha256, "
                          f"got {recorded!r}")
    return resolved, sources


def to_yaml(data: Any) -> str:
    node = data if isinstance(data, (DictConfig, ListConfig)) else OmegaConf.create(data)
    return OmegaConf.to_yaml(node)


RUN_CONFIG = "config.yaml"


def weights_read(cfg: Any) -> list[Path]:
    """The weights files a run of `cfg` reads for its CLIP: `model.weights`, `model.base_weights`,
    and the base an adapter in `model.weights` names (where it is not moved by `base_weights`)."""
    model = getattr(cfg, "model", None)
    files = [Path(p) for p in (getattr(model, "weights", None), getattr(model, "base_weights", None)) if p]
    if files and not model.base_weights and files[0].is_file():
        from react_core.modeling.adapters import read_adapter_metadata

        adapter = read_adapter_metadata(files[0])
        if adapter is not None and adapter.get("base_weights"):
            files.append(Path(adapter["base_weights"]))
    return files


def write_run_config(cfg: Any, out: str | Path, read: Iterable[str | Path] = ()) -> Path:
    """`OUT/config.yaml`, every run's record of its config: the schema dataclass with every
    override and interpolation applied and every relative path made absolute, so the run can be
    rebuilt from its folder alone, from any working directory; and a `sha256:` section, the hash
    of each weights file the run read (`weights_read`, and the checkpoints in `read`), which
    `check_run_files` compares when the config is used again."""
    data = absolute_paths(dataclasses.asdict(cfg))
    files = [path for path in [*weights_read(cfg), *map(Path, read)] if path.is_file()]
    if files:
        data[RECORDED_SHA256] = {str(path.resolve()): file_sha256(path) for path in files}
    config_file = Path(out) / RUN_CONFIG
    atomic_write_text(config_file, to_yaml(data))
    return config_file


def recorded_sha256(config_file: str | Path) -> dict[str, str]:
    """The `sha256:` section of a run's config.yaml ({} where there is none)."""
    data = _read_yaml(Path(config_file)).get(RECORDED_SHA256) or {}
    return data if isinstance(data, dict) else {}


def check_run_files(cfg: Any, config_file: str | Path) -> None:
    """Make the CLIP weights that a run's config.yaml names usable from any working directory,
    and check that they are the files the run read.

    A relative `model.weights` or `model.base_weights` that the working directory does not hold
    (a config.yaml written before paths were recorded absolute) is looked for from each folder
    above the config's, nearest first, and set to the file found. A file whose sha256 the config
    recorded must still have it: a `ConfigError` names the file otherwise."""
    model = getattr(cfg, "model", None)
    if model is None:
        return
    config_file = Path(config_file).resolve()
    recorded = recorded_sha256(config_file)
    for key in ("weights", "base_weights"):
        value = getattr(model, key, None)
        if not value:
            continue
        path = Path(value)
        if not path.is_absolute() and not path.exists():
            found = next((folder / path for folder in config_file.parents if (folder / path).is_file()), None)
            if found is not None:
                path = found
                setattr(model, key, str(found))
        expected = recorded.get(str(path.resolve())) if path.is_file() else None
        if expected is not None and file_sha256(path) != expected:
            raise ConfigError(f"{path} (model.{key} in {config_file}) is not the file that run read: its sha256 "
                              f"changed since (recorded {expected[:12]}...)")
