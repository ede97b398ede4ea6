"""Config validation: defaults fill in, bad values stop the run naming the key."""

from __future__ import annotations

import pytest
import yaml

from wavediffusion.config import ConfigError, load_config, validate_config

from conftest import REPO, SCHEMA


@pytest.mark.parametrize("name", ["config.yaml", "config/tiny.yaml", "config/mini.yaml", "config/science.yaml",
                                  "config/paper.yaml"])
def test_shipped_configs_are_valid(name):
    config = load_config(REPO / name, SCHEMA)
    assert config["data"]["families"]


def test_empty_config_gets_the_demo_defaults():
    config = validate_config({}, SCHEMA)
    demo = load_config(REPO / "config.yaml", SCHEMA)
    assert config["preprocess"] == demo["preprocess"]
    assert config["data"]["embedded"] == demo["data"]["embedded"]
    assert config["data"]["source"] == "embedded"


@pytest.mark.parametrize(
    "patch, key, words",
    [
        ({"data": {"families": ["FlatVel-A", "FlatVel-C"]}}, "data.families[1]", "FlatVel-C"),
        ({"data": {"embedded": {"train_per_family": -3}}}, "data.embedded.train_per_family", "minimum"),
        ({"preprocess": {"receivers": "sixty-four"}}, "preprocess.receivers", "not of type"),
        ({"preprocess": {"shots": [0, 5]}}, "preprocess.shots[1]", "maximum"),
        ({"data": {"sorce": "embedded"}}, "data", "sorce"),
        ({"physics": {"floor_backends": ["specfem"]}}, "physics.floor_backends[0]", "specfem"),
        ({"data": {"families": ["FlatVel-A", "Style-A"]}}, "data.families[1]", "no embedded source"),
        ({"data": {"openfwi_root": "/data/openfwi"}}, "data.openfwi_root", "data.source: openfwi"),
    ],
)
def test_bad_values_name_the_key(patch, key, words):
    with pytest.raises(ConfigError) as error:
        validate_config(patch, SCHEMA)
    message = str(error.value)
    assert f"  {key}:" in message
    assert words in message


def test_config_file_errors_name_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"seed": -1}))
    with pytest.raises(ConfigError, match=r"bad\.yaml is invalid:\n  seed:"):
        load_config(path, SCHEMA)
    path.write_text("- a list\n- not a mapping\n")
    with pytest.raises(ConfigError, match="bad.yaml: a config must be a mapping"):
        load_config(path, SCHEMA)
