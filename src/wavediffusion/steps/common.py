"""Steps every stage uses (rules/common.smk's helpers' commands): validating a config and
concatenating tables; and what each training step does after training."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from . import Positional, step


@step()
def run_check_config(config: Annotated[str, Positional("the config file to validate")],
                     schema: str = "workflow/schemas/config.schema.yaml") -> None:
    """validate a config file against the schema"""
    from ..config import load_config

    values = load_config(config, schema)
    print(f"{config}: valid (scale {values['scale']}, {len(values['data']['families'])} families)")


@step()
def run_combine_tables(tables: Annotated[list[str], Positional("CSV tables with the same columns")], out: str) -> None:
    """concatenate CSV tables with the same columns into one"""
    from ..files import combine_csv

    combine_csv(tables, out)


def training_record(summary: dict, run: Path) -> dict:
    """What a training rule records beside its weights: how long it trained, where it stopped,
    and whether its validation curve had flattened (runs.validation_trend). `seconds` counts
    this call only; `resumed_from` says when earlier calls trained too."""
    from ..training.runs import validation_trend

    return {"steps": summary["steps"], "seconds": summary["seconds_this_call"], "stop_reason": summary["stop_reason"],
            "gpu_peak_gib": summary["gpu_peak_gib"], "world_size": summary["world_size"],
            "resumed_from": summary["resumed_from"],
            "validation": validation_trend(run / "log.csv", summary.get("val_metric"))}


def finish_training(summary: dict, run: Path, out: str, record_path: str, about: dict | None = None) -> None:
    """After train(): rank 0 (the one that wrote the weights) writes the training record
    (`about` the run, then training_record), publishes the weights and draws the run's curves
    (run/curves.png); every rank then leaves the process group."""
    from ..evaluation.figures import plot_training_curves
    from ..files import write_json
    from ..training.distributed import barrier, cleanup, is_main
    from ..training.runs import publish

    if is_main():
        write_json({**(about or {}), **training_record(summary, run)}, record_path)
        publish(summary["final"], out)
        plot_training_curves(run / "log.csv", run / "curves.png", title=f"{out}: {summary['steps']} steps")
        print(f"wrote {out} ({summary['steps']} steps, stop: {summary['stop_reason']}, "
              f"{summary['world_size']} process(es), run folder {run})")
    barrier()
    cleanup()
