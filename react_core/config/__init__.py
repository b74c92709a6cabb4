"""Configs: YAML with `_base_`, interpolation and overrides, validated into typed schemas."""
from react_core.config.loader import (
    COMMAND_LINE, RUN_CONFIG, ConfigError, Sources, check_run_files, format_overrides, load_config, parse_override,
    recorded_sha256, to_yaml, write_run_config,
)
from react_core.config.schema import buildable, config_kind, load, schema_for, validate

__all__ = [
    "COMMAND_LINE",
    "RUN_CONFIG",
    "ConfigError",
    "Sources",
    "buildable",
    "check_run_files",
    "config_kind",
    "format_overrides",
    "load",
    "load_config",
    "parse_override",
    "recorded_sha256",
    "schema_for",
    "to_yaml",
    "validate",
    "write_run_config",
]
