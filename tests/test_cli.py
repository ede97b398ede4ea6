"""The CLI is generated from the steps' signatures: every command a rule runs must parse,
and every step must be some rule's command."""

from __future__ import annotations

import argparse
import inspect
import shlex
import typing
from typing import Annotated

import pytest
import yaml

from wavediffusion import cli
from wavediffusion.steps import step

from conftest import REPO, snakemake, write_config

# steps no rule of the tiny config's DAG runs: a user's commands, and the download (tiny simulates its data)
NOT_IN_TINY_DAG = {"check-config", "verify", "download-openfwi", "fetch-fid-weights"}


def shell_commands(workdir) -> list[list[str]]:
    """The `wavediffusion` command of every job of the tiny DAG's dry run, as argv lists."""
    printed = snakemake(workdir, "--dry-run", "--printshellcmds", "all").stdout
    commands = []
    for line in printed.splitlines():
        if line.startswith("Shell command: wavediffusion "):
            command = line.removeprefix("Shell command: ").split(" > ")[0]
            commands.append(shlex.split(command)[1:])
    return commands


def test_every_rule_command_parses_and_every_step_is_a_rule(tmp_path):
    write_config(tmp_path, yaml.safe_load((REPO / "config" / "tiny.yaml").read_text()))
    commands = shell_commands(tmp_path)
    parser = cli.build_parser()
    for argv in commands:
        args = parser.parse_args(argv)  # exits (SystemExit) on an option the step does not take
        assert cli.command_name(args.run) == argv[0]
    used = {argv[0] for argv in commands}
    steps = {cli.command_name(function) for function in cli.step_functions()}
    assert steps - used == NOT_IN_TINY_DAG, "steps no rule runs (or NOT_IN_TINY_DAG is out of date)"
    assert "--hard-test" in {word for argv in commands for word in argv}  # the repeatable option is exercised


def test_options_follow_the_signature():
    parser = cli.build_parser()
    args = parser.parse_args(["preprocess", "--openfwi-root", "r", "--source", "embedded", "--families", "A", "B",
                              "--shots", "0", "2", "--time-samples", "8", "--receivers", "4", "--velocity-size", "4",
                              "--samples-per-shard", "2", "--val-fraction", "0.2", "--out", "o", "--seed", "3",
                              "--max-train-per-family", "None"])
    assert args.families == ["A", "B"] and args.shots == [0, 2] and args.val_fraction == 0.2
    assert args.max_train_per_family is None and args.max_test_per_family is None and args.threads is None
    with pytest.raises(SystemExit):  # a Literal's choices are enforced
        parser.parse_args(["check-shard", "--store", "s", "--shard", "0", "--dataset", "d", "--backend", "fdtd",
                           "--batch-size", "4", "--processes", "1", "--record", "r"])
    with pytest.raises(SystemExit):  # a parameter without default is a required option
        parser.parse_args(["gather-samples", "--store", "s"])
    args = parser.parse_args(["evaluate-inversionnet", "--model", "m", "--record", "r", "--dataset", "d",
                              "--settings", "{}", "--out", "o", "--seed", "0",
                              "--hard-test", "a,s,n", "--hard-test", "b,s,n"])
    assert args.hard_test == ["a,s,n", "b,s,n"]


def test_a_step_option_of_an_unsupported_kind_is_refused():
    @step()
    def run_odd(flag: Annotated[bool, "a switch"]) -> None:
        """a step with an option the CLI cannot express"""

    parser = argparse.ArgumentParser()
    (parameter,) = inspect.signature(run_odd).parameters.values()
    with pytest.raises(TypeError, match="flag"):
        cli.add_option(parser, parameter, typing.get_type_hints(run_odd, include_extras=True)["flag"])


def test_every_option_of_every_command_has_help():
    parser = cli.build_parser()
    (commands,) = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    missing = [f"{name} {action.dest}" for name, command in commands.choices.items() for action in command._actions
               if not (action.help or "").strip()]
    assert not missing, "options without help (give them `Annotated[T, \"help\"]` in steps/): " + ", ".join(missing)
    assert len(commands.choices) == len(list(cli.step_functions()))


def test_version(capsys):
    from wavediffusion import __version__

    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out == f"wavediffusion {__version__}\n"


@pytest.mark.parametrize("local_world_size, expected", [(None, 8), ("4", 2), ("16", 1)])
def test_torchruns_processes_on_one_node_share_the_jobs_threads(monkeypatch, local_world_size, expected):
    import torch

    from wavediffusion.steps import use_threads

    if local_world_size is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local_world_size)
    before = torch.get_num_threads()
    try:
        use_threads(8)
        assert torch.get_num_threads() == expected
    finally:
        torch.set_num_threads(before)
