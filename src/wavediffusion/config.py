"""Config validation: config.yaml against the schema beside this module (config.schema.yaml).

The Snakefile calls `validate_config` once, with Snakemake's `--config` values (whose nested
values arrive as text and are read here); every rule then receives the slice of the
validated config it uses. Errors name the offending key as a dotted path
(`data.families[2]`) so a user can find it in config.yaml at once.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import jsonschema
import yaml

# Every key of config.yaml: its documentation, check and default. Shipped with the package,
# so that `wavediffusion check-config` works from any folder.
SCHEMA = Path(__file__).with_name("config.schema.yaml")


class ConfigError(ValueError):
    """A config value that the schema rejects; the message names the key."""


def only_known(values: dict, cls, key: str) -> dict:
    """A config slice for dataclass `cls`: the dict's keys, rejecting any that `cls` does
    not have (the error names the config key)."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{key}: unknown keys {unknown}; known: {sorted(known)}")
    return dict(values)


def key_path(path) -> str:
    """('data', 'families', 2) -> 'data.families[2]'."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "<top level>"


def _fill_defaults(instance: dict, schema: dict) -> None:
    """Insert the schema's defaults for missing keys, recursing into nested objects."""
    for name, sub in schema.get("properties", {}).items():
        if name not in instance and "default" in sub:
            instance[name] = copy.deepcopy(sub["default"])
        if isinstance(instance.get(name), dict) and sub.get("type") == "object":
            _fill_defaults(instance[name], sub)


def read_cli_value(text: str) -> Any:
    """One value inside a nested `--config` mapping, which Snakemake hands over as text (it
    reads mappings with YAML's BaseLoader): a number as Snakemake reads a top-level value
    (1e-4 included), else as in a YAML config file (null, true, ...), else the text itself."""
    for number in (int, float):
        try:
            return number(text)
        except ValueError:
            pass
    if text == "None":  # Snakemake's --config help writes nested values as Python dicts
        return None
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return text if isinstance(value, (dict, list)) else value  # quoted inside: meant as text


def _typed(value: Any) -> Any:
    """A `--config` mapping or list with every text inside read by read_cli_value."""
    if isinstance(value, Mapping):
        return {key: _typed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_typed(item) for item in value]
    return read_cli_value(value) if isinstance(value, str) else value


def _merge(config: dict, patch: Mapping) -> None:
    """Merge `patch` into `config` key by key, recursing into mappings (as Snakemake merges)."""
    for key, value in patch.items():
        if isinstance(value, Mapping) and isinstance(config.get(key), dict):
            _merge(config[key], value)
        else:
            config[key] = value


def cli_hint(overrides: Mapping) -> str:
    """The line that follows errors of a run given `--config`: what it can and cannot express."""
    return (f"  (--config set {', '.join(overrides)}: nested keys go in their section's mapping, "
            "e.g. --config sampling='{num_pairs: 10}', whose values are read as YAML without their quotes; "
            "put what that cannot express in a second config file, merged over the first: "
            "--configfile config.yaml more.yaml, one flag for both)")


def validate_config(config: dict[str, Any], schema_path: str | Path = SCHEMA, source: str = "config",
                    overrides: Mapping | None = None) -> dict:
    """Return a copy of `config` with defaults filled in; raise ConfigError naming the key.

    `overrides`: Snakemake's parsed `--config` values, already merged into `config` but with
    every value inside a mapping or list still text ("10", "null"); those are read as values.
    """
    schema = yaml.safe_load(Path(schema_path).read_text())
    filled = copy.deepcopy(dict(config))
    overrides = dict(overrides or {})
    for key, value in overrides.items():
        if isinstance(value, (Mapping, list)):  # top-level scalars Snakemake has typed itself
            _merge(filled, {key: _typed(value)})
    _fill_defaults(filled, schema)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(filled), key=lambda e: list(e.absolute_path))
    lines = [f"  {key_path(e.absolute_path)}: {e.message}" for e in errors]
    if not lines:
        lines = cross_key_problems(filled)
    if lines and overrides:
        lines.append(cli_hint(overrides))
    if lines:
        raise ConfigError(f"{source} is invalid:\n" + "\n".join(lines))
    return filled


def cross_key_problems(config: dict) -> list[str]:
    """Rules that involve several keys, which the schema cannot express."""
    from .data.families import get_family

    problems = []
    data = config["data"]
    if data["source"] == "embedded":
        for index, name in enumerate(data["families"]):
            if get_family(name).embedded == "none":
                problems.append(
                    f"  data.families[{index}]: {name} has no embedded source (OpenFWI makes it from "
                    "natural images); use data.source: openfwi, or drop it"
                )
    if data["openfwi_root"] and data["source"] != "openfwi":
        problems.append("  data.openfwi_root: is set but data.source is not 'openfwi'; set data.source: openfwi to use it")
    return problems


def load_config(path: str | Path, schema_path: str | Path = SCHEMA) -> dict:
    """Read a YAML config file and validate it."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"{path}: cannot read config: {error}") from error
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config must be a mapping of keys to values")
    return validate_config(raw, schema_path, source=str(path))
