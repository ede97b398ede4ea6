"""Steps every stage uses: validating a config (the schema, then every section as its job
will read it) and concatenating tables; and what each training step does after training."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from ..config import SCHEMA, ConfigError, load_config, only_known
from . import Positional, step


@step()
def run_check_config(config: Annotated[str, Positional("the config file to validate")],
                     schema: Annotated[str | None, "the schema (default: the one the package ships)"] = None,
                     name: Annotated[str | None, "what the messages call the config (default: its path)"] = None,
                     ) -> None:
    """validate a config file: the schema, then every section as the jobs will read it"""
    name = name or config
    values = load_config(config, schema or SCHEMA)
    problems = config_problems(values)
    if problems:
        raise ConfigError(f"{name} is invalid:\n" + "\n".join(f"  {problem}" for problem in problems))
    print(f"{name}: valid (scale {values['scale']}, {len(values['data']['families'])} families)")


def config_problems(config: dict) -> list[str]:
    """What the jobs would refuse in a schema-valid config, found before any job runs: every
    key of the free-form sections (stage1.model, stage2.training, ...) is built into the
    settings class a job builds, with its checks, and the settings that depend on the
    Stage-2 schedule are checked against it. One message per section, naming it."""
    from ..evaluation.arms import ExperimentSettings, parse_arm
    from ..evaluation.fid_scores import FIDSettings
    from ..evaluation.inversion_experiments import network_settings
    from ..evaluation.refine import RefineSettings
    from ..evaluation.stage1 import Stage1Evaluation
    from ..evaluation.table8 import Table8Settings
    from ..evaluation.trajectory import TrajectorySettings
    from ..models.discriminator import DiscriminatorConfig
    from ..sampling.export import ExportSettings
    from ..sampling.physics_filter import FilterSettings
    from ..sampling.shard import SamplingSettings
    from ..training.loop import TrainConfig
    from ..training.stage1 import Stage1Losses, autoencoder_config
    from ..training.stage2 import DiffusionSettings, unet_config

    problems = []

    def check(build):
        try:
            return build()
        except (ValueError, TypeError) as error:
            problems.append(str(error))
            return None

    stage1, stage2, prep, seed = config["stage1"], config["stage2"], config["preprocess"], config["seed"]
    autoencoders = [check(lambda variant=variant: autoencoder_config(
        stage1["model"], variant, len(prep["shots"]), prep["time_samples"], prep["receivers"], prep["velocity_size"]))
        for variant in stage1["variants"]]
    check(lambda: DiscriminatorConfig(**only_known(stage1["discriminator"], DiscriminatorConfig, "stage1.discriminator")))
    check(lambda: Stage1Losses(**only_known(stage1["losses"], Stage1Losses, "stage1.losses")))
    check(lambda: Stage1Evaluation(**only_known(stage1["evaluation"], Stage1Evaluation, "stage1.evaluation")))
    for section in ("stage1", "stage2"):
        check(lambda section=section: TrainConfig(**only_known(config[section]["training"], TrainConfig,
                                                               f"{section}.training")))

    diffusion = check(lambda: DiffusionSettings(**only_known(stage2["diffusion"], DiffusionSettings, "stage2.diffusion")))
    if autoencoders[0] is not None:
        channels, size, _ = autoencoders[0].latent_shape
        check(lambda: unet_config(stage2["model"], channels, size))

    sampling = check(lambda: SamplingSettings.from_dict({**config["sampling"], "seed": seed}))
    trajectory = check(lambda: TrajectorySettings.from_dict(stage2["trajectory"]))
    refine = check(lambda: RefineSettings.from_dict(
        {key: value for key, value in config["refine"].items() if key != "per_family"} | {"seed": seed}))
    if diffusion is not None:
        steps = diffusion.num_steps
        for settings in (sampling, trajectory, refine):
            if settings is not None:
                check(lambda settings=settings: settings.check_schedule(steps))

    check(lambda: FilterSettings.from_dict(config["physics"]))
    check(lambda: ExportSettings.from_dict(config["export"]))
    check(lambda: FIDSettings.from_dict({**config["fid"], "seed": seed}))
    table8 = check(lambda: Table8Settings.from_dict(config["ablation"]["table8"]))
    if table8 is not None:
        check(lambda: table8.sample_count(config["fid"]["num_generated"], config["sampling"]["num_pairs"]))
    inversion = {key: value for key, value in config["inversionnet"].items() if key not in ("gpus", "nodes")}
    experiment = check(lambda: ExperimentSettings.from_dict({**inversion, "seed": seed}))
    if experiment is not None:
        shape, size = (len(prep["shots"]), prep["time_samples"], prep["receivers"]), prep["velocity_size"]
        for arm in (parse_arm("real"), parse_arm("finetune-real")):
            network = network_settings(experiment, arm, experiment.seeds[0])
            check(lambda network=network: network.model_config(shape, size))
            check(lambda network=network: network.train_config())
    return list(dict.fromkeys(problems))  # a section's problem once, though several variants or arms share it


@step()
def run_verify(store: Annotated[str, Positional("a store the workflow wrote: dataset.zarr, latents.zarr, pairs.zarr or "
                                                "samples.zarr")]
               ) -> None:
    """read every shard of a store; name the damaged ones and the rule that rewrites them"""
    import time

    from ..data import integrity
    from ..data.pairs_store import FORMAT, damage_remedy, written_rows
    from ..data.store import REMEDY as DATASET_REMEDY
    from ..evaluation.joint_vs_separate import FORMAT as SEPARATE_SAMPLES, SAMPLES_REMEDY
    from ..files import open_zarr_store
    from ..training.stage2 import LATENTS_REMEDY

    started = time.perf_counter()
    root = open_zarr_store(store, "store of the workflow", "rule that wrote it")
    if root.attrs.get("format") == FORMAT:
        kind, written, remedy = "pairs store", written_rows(store, root), lambda damage: damage_remedy(root, damage)
    elif "representation" in root.attrs:
        kind, written, remedy = "dataset store", integrity.all_rows(root), DATASET_REMEDY
    elif "stats" in root.attrs:
        kind, written, remedy = "latents store", integrity.all_rows(root), LATENTS_REMEDY
    elif root.attrs.get("format") == SEPARATE_SAMPLES:
        kind, written, remedy = "separate samples store", integrity.all_rows(root), SAMPLES_REMEDY
    else:
        raise ValueError(f"{store}: not a dataset, latents, pairs or separate samples store of the workflow")
    if root.attrs.get(integrity.ATTRIBUTE) != integrity.VERSION:
        print(f"{store}: written before the stores carried checksums: only missing or undecodable shards can "
              "be found; rewrite it (rerun its rule) to have every chunk checked")
    damage = integrity.find_damage(store, root, written, decode=True)
    if damage:
        raise ValueError(integrity.damage_message(store, damage, remedy))
    rows = sum(len(r) for ranges in written.values() for r in ranges)
    print(f"{store}: a {kind}, intact: {len(written)} arrays, {rows} written rows read and checked in "
          f"{time.perf_counter() - started:.1f} s")


@step()
def run_combine_tables(tables: Annotated[list[str], Positional("CSV tables with the same columns")],
                       out: Annotated[str, "the combined CSV to write"]) -> None:
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
