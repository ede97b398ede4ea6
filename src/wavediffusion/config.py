"""Config validation: config.yaml against the schema beside this module (config.schema.yaml).

The Snakefile calls `validate_config` once; every rule then receives the slice of the
validated config it uses. Errors name the offending key as a dotted path
(`data.families[2]`) so a user can find it in config.yaml at once.
"""

from __future__ import annotations

import copy
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


def validate_config(config: dict[str, Any], schema_path: str | Path = SCHEMA, source: str = "config") -> dict:
    """Return a copy of `config` with defaults filled in; raise ConfigError naming the key."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    filled = copy.deepcopy(dict(config))
    _fill_defaults(filled, schema)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(filled), key=lambda e: list(e.absolute_path))
    lines = [f"  {key_path(e.absolute_path)}: {e.message}" for e in errors]
    if not lines:
        lines = cross_key_problems(filled)
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
