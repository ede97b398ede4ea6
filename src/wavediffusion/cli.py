"""`wavediffusion <command>`: one command per workflow step.

Each command is a `run_<command>` function of steps/ (steps/stage1.py's `run_train_stage1`
is `wavediffusion train-stage1`); its parameters are the command's options, so this module
only turns signatures into argparse parsers and reports errors as one clear line.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
import types
import typing
from typing import Annotated, Literal

from wavediffusion import __version__  # the package's __init__: layer 7, as this module
from .steps import MODULES, Positional


def step_functions():
    """Every step, in the order of steps.MODULES and then of definition."""
    for name in MODULES:
        module = importlib.import_module(f"{__package__}.steps.{name}")
        for value in vars(module).values():
            if inspect.isfunction(value) and hasattr(value, "step") and value.__module__ == module.__name__:
                yield value


def command_name(function) -> str:
    return function.__name__.removeprefix("run_").replace("_", "-")


def optional_int(text: str) -> int | None:
    return None if text.lower() in ("none", "null") else int(text)


def optional_str(text: str) -> str | None:
    return text or None


def add_option(parser: argparse.ArgumentParser, parameter: inspect.Parameter, hint) -> None:
    """One parameter of a step as one argparse argument. The kinds the steps use: str, int,
    float, a Literal (choices), X | None (may be 'none', or empty for str), and lists: given
    once with several values, or, where the default is None, as a repeatable option."""
    help_text, positional = None, False
    if typing.get_origin(hint) is Annotated:
        hint, help_text = typing.get_args(hint)[:2]
        positional = isinstance(help_text, Positional)
    required = parameter.default is inspect.Parameter.empty
    options = {"help": help_text}
    if not required:
        options["default"] = parameter.default
    members = typing.get_args(hint)
    if isinstance(hint, types.UnionType) and type(None) in members:  # X | None
        (hint,) = [member for member in members if member is not type(None)]
        if hint in (int, str):
            options["type"] = optional_int if hint is int else optional_str
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        options["type"] = item
        if positional or required:
            options["nargs"] = "+"
        else:
            options["action"] = "append"
    elif typing.get_origin(hint) is Literal:
        options["choices"] = list(typing.get_args(hint))
    elif hint in (int, float):
        options.setdefault("type", hint)
    elif hint is not str:
        raise TypeError(f"{parameter.name}: a step's option cannot be a {hint}")
    if positional:
        parser.add_argument(parameter.name, **options)
    else:
        parser.add_argument("--" + parameter.name.replace("_", "-"), required=required, **options)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wavediffusion", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for function in step_functions():
        doc = inspect.getdoc(function)
        command = commands.add_parser(command_name(function), help=doc.splitlines()[0], description=doc)
        hints = typing.get_type_hints(function, include_extras=True)
        for parameter in inspect.signature(function).parameters.values():
            add_option(command, parameter, hints[parameter.name])
        command.set_defaults(run=function)
    return parser


def damaged_store_hint(error: Exception, options: dict) -> str:
    """Zarr's checksum error names no file: say which stores the command read, and how to find the shard."""
    from .data.integrity import CHECKSUM_ERROR

    if CHECKSUM_ERROR not in str(error):
        return ""
    values = [v for value in options.values() for v in (value if isinstance(value, list) else [value])]
    stores = [v for v in values if isinstance(v, str) and v.rstrip("/").endswith(".zarr")]
    return (f"\nA chunk of one of this command's stores is damaged ({' '.join(stores) or 'its input stores'}): "
            "`wavediffusion verify STORE` names the shard and the rule that rewrites it")


def main(argv: list[str] | None = None) -> int:
    from .data.download import DownloadError

    args = build_parser().parse_args(argv)
    step = args.run.step
    if step.gpu:
        # the commands of the rules that ask for a GPU: on a machine of several GPUs, each
        # concurrent job takes its own (devices.claim_local_gpu); before anything starts CUDA
        from .devices import NoGPUError, announce_device, claim_local_gpu

        claim_local_gpu()
        try:
            announce_device(args.command)  # the log's first line: which device, or a loud CPU warning
        except (NoGPUError, ValueError) as error:
            print(f"wavediffusion {args.command}: error: {error}", file=sys.stderr)
            return 4
    options = {name: getattr(args, name) for name in inspect.signature(args.run).parameters}
    try:
        args.run(**options)
    except (ValueError, FileNotFoundError, DownloadError) as error:
        # Bad input: one clear line naming the file or key, not a traceback.
        hint = damaged_store_hint(error, options) if args.command != "verify" else ""
        print(f"wavediffusion {args.command}: error: {error}{hint}", file=sys.stderr)
        return 2
    except Exception as error:
        torch = sys.modules.get("torch")  # imported by the command if it raised torch's error
        if torch is None or not isinstance(error, torch.OutOfMemoryError):
            raise
        # The batch is the knob: name its config key. A job writes its outputs last, so none
        # is left under its final name and the rerun after lowering the key redoes the job.
        knob = f"lower {step.batch_key}" if step.batch_key else "lower this step's batch size"
        print(f"wavediffusion {args.command}: error: out of GPU memory; {knob} (other jobs on the same GPU "
              f"use its memory too)\n{error}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
