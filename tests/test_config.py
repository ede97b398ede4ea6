"""Config validation: defaults fill in, bad values stop the run naming the key."""

from __future__ import annotations

import pytest
import yaml

from wavediffusion.config import ConfigError, load_config, read_cli_value, validate_config

from conftest import REPO, SCHEMA


@pytest.mark.parametrize("name", ["config.yaml", "config/tiny.yaml", "config/mini.yaml", "config/science.yaml",
                                  "config/paper.yaml"])
def test_shipped_configs_are_valid(name):
    from wavediffusion.steps.common import config_problems

    config = load_config(REPO / name, SCHEMA)
    assert config["data"]["families"]
    assert config_problems(config) == []  # every section builds as the jobs will build it


def test_an_empty_config_is_the_full_scale_and_the_demo_states_its_own_values():
    config = validate_config({}, SCHEMA)
    assert config["sampling"]["num_pairs"] == 375_000 and config["stage2"]["trajectory"]["n_forward"] == 13_200
    assert config["data"]["source"] == "embedded"  # the default run needs no network
    demo = load_config(REPO / "config.yaml", SCHEMA)
    assert demo["sampling"]["num_pairs"] == 32 and demo["stage2"]["trajectory"]["n_forward"] == 32


def settings_classes():
    """(config section, the library's settings class read from it)."""
    from wavediffusion.evaluation.arms import ExperimentSettings
    from wavediffusion.evaluation.fid_scores import FIDSettings
    from wavediffusion.evaluation.refine import RefineSettings
    from wavediffusion.evaluation.stage1 import Stage1Evaluation
    from wavediffusion.evaluation.table8 import Table8Settings
    from wavediffusion.evaluation.trajectory import TrajectorySettings
    from wavediffusion.sampling.export import ExportSettings
    from wavediffusion.sampling.physics_filter import FilterSettings
    from wavediffusion.sampling.shard import SamplingSettings

    return [("stage1.evaluation", Stage1Evaluation), ("stage2.trajectory", TrajectorySettings),
            ("sampling", SamplingSettings), ("physics", FilterSettings), ("export", ExportSettings),
            ("fid", FIDSettings), ("inversionnet", ExperimentSettings), ("refine", RefineSettings),
            ("ablation.table8", Table8Settings)]


# fields filled from another key (the global seed; physics.backend, which the rules pass to
# the evaluation and the trajectory), not from the section
FROM_ELSEWHERE = {"seed", "backend"}


@pytest.mark.parametrize("section, cls", settings_classes(), ids=lambda x: x if isinstance(x, str) else "")
def test_the_schema_and_the_settings_classes_agree_on_every_default(section, cls):
    """One home per default: a settings class read from a config section defaults each field
    to the schema's value, and has no field the schema does not document."""
    from dataclasses import MISSING, fields

    schema = yaml.safe_load(SCHEMA.read_text())
    for part in section.split("."):
        schema = schema["properties"][part]
    documented = schema["properties"]
    for field in fields(cls):
        if field.name in FROM_ELSEWHERE:
            continue
        assert field.name in documented, f"{cls.__name__}.{field.name} is not documented in the schema's {section}"
        default = field.default if field.default is not MISSING else field.default_factory()
        default = list(default) if isinstance(default, tuple) else default
        assert documented[field.name].get("default") == default, (
            f"{section}.{field.name}: the schema says {documented[field.name].get('default')!r}, "
            f"{cls.__name__} {default!r}")


@pytest.mark.parametrize(
    "patch, key, words",
    [
        ({"data": {"families": ["FlatVel-A", "FlatVel-C"]}}, "data.families[1]", "FlatVel-C"),
        ({"data": {"embedded": {"train_per_family": -3}}}, "data.embedded.train_per_family", "minimum"),
        ({"preprocess": {"receivers": "sixty-four"}}, "preprocess.receivers", "not of type"),
        ({"preprocess": {"shots": [0, 5]}}, "preprocess.shots[1]", "maximum"),
        ({"data": {"sorce": "embedded"}}, "data", "sorce"),
        ({"physics": {"floor_backends": ["specfem"]}}, "physics.floor_backends[0]", "specfem"),
        ({"physics": {"backend": "specfem"}}, "physics.backend", "specfem"),
        ({"stage1": {"evaluation": {"backend": "fused"}}}, "stage1.evaluation", "backend"),  # now physics.backend
        ({"data": {"families": ["FlatVel-A", "Style-A"]}}, "data.families[1]", "no embedded source"),
        ({"data": {"openfwi_root": "/data/openfwi"}}, "data.openfwi_root", "data.source: openfwi"),
        ({"preprocess": {"receivers": 500}}, "preprocess.receivers", "500 is greater than the maximum of 70"),
        ({"inversionnet": {"seeds": []}}, "inversionnet.seeds", "should be non-empty"),
        ({"inversionnet": {"seeds": [0, 0]}}, "inversionnet.seeds", "non-unique"),
        ({"inversionnet": {"seeds": [0, -1]}}, "inversionnet.seeds[1]", "less than the minimum of 0"),
        ({"ablation": {"table8": {"num_samples": 1}}}, "ablation.table8.num_samples", "less than the minimum of 2"),
        ({"ablation": {"table8": {"enabled": "yes"}}}, "ablation.table8.enabled", "not of type 'boolean'"),
    ],
)
def test_bad_values_name_the_key(patch, key, words):
    with pytest.raises(ConfigError) as error:
        validate_config(patch, SCHEMA)
    message = str(error.value)
    assert f"  {key}:" in message
    assert words in message


@pytest.mark.parametrize(
    "section, key, value, words",
    [
        ("stage1.model", "latent_chanels", 8, "stage1.model: unknown keys ['latent_chanels']"),
        ("stage1.training", "max_step", 8, "stage1.training: unknown keys ['max_step']"),
        ("stage1.losses", "disc_begin", 8, "stage1.losses: unknown keys ['disc_begin']"),
        ("stage2.model", "num_head", 8, "stage2.model: unknown keys ['num_head']"),
        ("stage2.model", "image_size", 8, "stage2.model: ['image_size'] come from the latents"),
        ("stage2.training", "lrr", 1, "stage2.training: unknown keys ['lrr']"),
        ("stage2.diffusion", "ema_decay", 2.0, "stage2.diffusion.ema_decay must be in [0, 1)"),
        ("inversionnet.training", "batchsize", 8, "inversionnet.training: unknown keys ['batchsize']"),
        ("inversionnet.model", "width", 8, "inversionnet.model: unknown keys ['width']"),
        ("inversionnet.training", "seed", 3, "inversionnet.training.seed: InversionNet's seeds are inversionnet.seeds"),
        ("sampling", "steps", 10**5, "sampling.steps (100000) exceeds stage2.diffusion.num_steps (50)"),
        ("sampling", "store_block", 3, "sampling.store_block (3) must be a positive divisor"),
        ("stage2.trajectory", "steps", [0, 10**5], "stage2.trajectory.steps [100000] lie outside [0, 49]"),
        ("ablation.table8", "num_samples", 6, "ablation.table8.num_samples (6) exceeds sampling.num_pairs (5)"),
    ],
)
def test_check_config_finds_what_a_job_would_refuse(tmp_path, capsys, section, key, value, words):
    """Problems the schema cannot see (the free-form sections, keys checked against the
    Stage-2 schedule): `check-config` names them, as the Snakefile's onstart does before any
    job runs, instead of the job itself after its upstream jobs."""
    from wavediffusion import cli

    config = yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())
    part = config
    for name in section.split("."):
        part = part.setdefault(name, {})
    part[key] = value
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    assert cli.main(["check-config", str(path), "--schema", str(SCHEMA)]) == 2
    error = capsys.readouterr().err
    assert "bad.yaml is invalid:" in error and words in error


def test_check_config_works_from_any_folder(tmp_path, monkeypatch, capsys):
    from wavediffusion import cli

    monkeypatch.chdir(tmp_path)  # no workflow/ here: the schema comes with the package
    assert cli.main(["check-config", str(REPO / "config.yaml")]) == 0
    assert "config.yaml: valid (scale demo" in capsys.readouterr().out


def test_config_file_errors_name_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"seed": -1}))
    with pytest.raises(ConfigError, match=r"bad\.yaml is invalid:\n  seed:"):
        load_config(path, SCHEMA)
    path.write_text("- a list\n- not a mapping\n")
    with pytest.raises(ConfigError, match="bad.yaml: a config must be a mapping"):
        load_config(path, SCHEMA)


def test_the_preprocess_settings_default_as_the_schema_does():
    """PreprocessSettings gathers keys of two sections (preprocess, data): each default is the schema's."""
    from dataclasses import MISSING, fields

    from wavediffusion.data.preprocess import PreprocessSettings

    schema = yaml.safe_load(SCHEMA.read_text())["properties"]
    home = {"max_train_per_family": "data", "max_test_per_family": "data", "val_fraction": "data", "source": "data"}
    for field in fields(PreprocessSettings):
        if field.default is MISSING or field.name in FROM_ELSEWHERE:  # families: always given
            continue
        default = list(field.default) if isinstance(field.default, tuple) else field.default
        section = home.get(field.name, "preprocess")
        assert schema[section]["properties"][field.name]["default"] == default, f"{section}.{field.name}"



def as_snakemake_merges(*entries: str) -> tuple[dict, dict]:
    """(config.yaml with `--config` entries merged in, the parsed entries), by Snakemake's own
    parser and merge: a nested mapping arrives with every value inside as text."""
    from snakemake.cli import parse_config
    from snakemake.utils import update_config

    overrides = parse_config(list(entries))
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    update_config(config, overrides)
    return config, overrides


def test_nested_config_overrides_are_merged_with_their_types():
    config, overrides = as_snakemake_merges(
        "seed=3", "sampling={num_pairs: 10, compile: true}", 'data={"openfwi_root": null}',
        "stage1={'training': {'max_steps': 5, 'lr': 1e-4, 'precision': 'fp32'}, 'variants': ['1vq', '2vq']}",
        "fid={'weights': None}")
    assert overrides["sampling"] == {"num_pairs": "10", "compile": "true"}  # what Snakemake hands over
    with pytest.raises(ConfigError, match="sampling.num_pairs: '10' is not of type 'integer'"):
        validate_config(config, SCHEMA)  # read as they arrive, the values are text
    validated = validate_config(config, SCHEMA, overrides=overrides)
    assert validated["seed"] == 3
    assert validated["sampling"]["num_pairs"] == 10 and validated["sampling"]["compile"] is True
    assert validated["sampling"]["shard_size"] == 8  # config.yaml's: merged into the section, not replacing it
    assert validated["data"]["openfwi_root"] is None and validated["fid"]["weights"] is None
    training = validated["stage1"]["training"]
    assert (training["max_steps"], training["lr"], training["precision"], training["batch_size"]) == (5, 1e-4, "fp32", 4)
    assert validated["stage1"]["variants"] == ["1vq", "2vq"]


@pytest.mark.parametrize(
    "entry, words",
    [
        ("sampling={num_pairs: ten}", "  sampling.num_pairs: 'ten' is not of type 'integer'"),
        ('data={openfwi_root: "2024"}', "  data.openfwi_root: 2024 is not of type 'string', 'null'"),  # quotes lost
        ("sampling_num_pairs=5", "  <top level>: Additional properties are not allowed ('sampling_num_pairs' was"),
    ],
)
def test_config_overrides_that_cannot_work_are_refused_naming_the_key(entry, words):
    config, overrides = as_snakemake_merges(entry)
    with pytest.raises(ConfigError) as error:
        validate_config(config, SCHEMA, overrides=overrides)
    message = str(error.value)
    assert words in message
    assert "--configfile config.yaml more.yaml" in message  # what to do instead


@pytest.mark.parametrize(
    "text, value",
    [("10", 10), ("010", 10), ("1e-4", 1e-4), ("0.5", 0.5), ("null", None), ("~", None), ("", None),
     ("None", None), ("true", True), ("False", False), ("fp32", "fp32"), ("/data/openfwi", "/data/openfwi"),
     ("{a: 1}", "{a: 1}"), ("*x", "*x")],
)
def test_a_nested_config_value_is_read_as_in_a_yaml_file(text, value):
    """Numbers as Snakemake reads a top-level value (int, then float), else YAML; text that YAML
    would read as a mapping, or cannot read, was quoted inside the mapping and stays text."""
    read = read_cli_value(text)
    assert read == value and type(read) is type(value)
