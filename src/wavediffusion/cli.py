"""`wavediffusion <command>`: one command per workflow step, one function per command.

Every Snakemake rule's shell is a single call of one of these commands; the function
named in each command's `set_defaults(run=...)` is the whole step.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Commands import their modules lazily, so `wavediffusion --help` stays fast.


def cmd_check_config(args) -> None:
    from .config import load_config

    config = load_config(args.config, args.schema)
    print(f"{args.config}: valid (scale {config['scale']}, {len(config['data']['families'])} families)")


def cmd_download_openfwi(args) -> None:
    from .data.download import write_download_record

    write_download_record(args.family, args.dest, args.record, base_url=args.base_url)


def cmd_simulate(args) -> None:
    from .physics.simulate import simulate_family

    torch_threads(args.threads)
    folder = simulate_family(
        args.family, args.out_root, args.train, args.test, args.synthetic_seed,
        backend=args.backend, batch_size=args.batch_size, progress=True,
    )
    print(f"wrote {folder}")


def cmd_preprocess(args) -> None:
    from .data.preprocess import PreprocessSettings, preprocess

    torch_threads(1)  # parallel over blocks instead: `--threads` worker threads
    settings = PreprocessSettings(
        families=tuple(args.families),
        shots=tuple(args.shots),
        time_samples=args.time_samples,
        receivers=args.receivers,
        velocity_size=args.velocity_size,
        samples_per_shard=args.samples_per_shard,
        max_train_per_family=args.max_train_per_family,
        max_test_per_family=args.max_test_per_family,
        val_fraction=args.val_fraction,
        seed=args.seed,
        source=args.source,
    )
    rep = preprocess(args.openfwi_root, args.out, settings, workers=args.threads or 1, progress=True)
    print(f"wrote {args.out}: seismic log range [{rep.seismic_log_min:.4f}, {rep.seismic_log_max:.4f}]")


def cmd_pde_floor(args) -> None:
    from .files import write_csv
    from .physics.deviation import FLOOR_COLUMNS, TRUE_PAIR_COLUMNS, pde_floor

    torch_threads(args.threads)
    rows, true_pairs = pde_floor(args.dataset, args.samples_per_family, args.backends, args.batch_size)
    write_csv(rows, args.out, FLOOR_COLUMNS)
    write_csv(true_pairs, args.true_pairs, TRUE_PAIR_COLUMNS)
    for row in rows:
        print(f"{row['family']:>13} {row['backend']:>8} {row['velocity_input']:>8}: {row['deviation_mean']:.3e}")


def cmd_plot_velocity_families(args) -> None:
    from .evaluation.figures import plot_dataset_velocity

    plot_dataset_velocity(args.dataset, args.out, per_family=args.per_family)


def cmd_train_stage1(args) -> None:
    import json

    from .files import write_json
    from .training.distributed import is_main, read_launch
    from .training.runs import run_directory
    from .training.stage1 import Stage1Settings, run_identity, train_stage1

    torch_threads(args.threads)
    settings = Stage1Settings(**json.loads(args.settings))
    run = run_directory(Path(args.out).parent, run_identity(args.dataset, args.variant, settings,
                                                            read_launch().world_size))
    summary = train_stage1(args.dataset, args.variant, settings, run)
    if is_main():
        write_json(training_record(summary, run), args.record)
    finish_training(summary, run, args.out)


def training_record(summary: dict, run: Path) -> dict:
    """What a training rule records beside its weights: how long it trained, where it stopped,
    and whether its validation curve had flattened (runs.validation_trend). `seconds` counts
    this call only; `resumed_from` says when earlier calls trained too."""
    from .training.runs import validation_trend

    return {"steps": summary["steps"], "seconds": summary["seconds_this_call"], "stop_reason": summary["stop_reason"],
            "gpu_peak_gib": summary["gpu_peak_gib"], "world_size": summary["world_size"],
            "resumed_from": summary["resumed_from"],
            "validation": validation_trend(run / "log.csv", summary.get("val_metric"))}


def cmd_encode_latents(args) -> None:
    from .training.stage1 import encode_latents

    torch_threads(args.threads)
    stats = encode_latents(args.model, args.dataset, args.out, batch_size=args.batch_size)
    print(f"wrote {args.out}: {stats['train']['n']} train latents, std {stats['train']['std']:.4f}")


def finish_training(summary: dict, run: Path, out: str) -> None:
    """After train(): rank 0 (the one that wrote the weights) publishes them and draws the
    run's curves (run/curves.png); every rank then leaves the process group."""
    from .evaluation.figures import plot_training_curves
    from .training.distributed import barrier, cleanup, is_main
    from .training.runs import publish

    if is_main():
        publish(summary["final"], out)
        plot_training_curves(run / "log.csv", run / "curves.png", title=f"{out}: {summary['steps']} steps")
        print(f"wrote {out} ({summary['steps']} steps, stop: {summary['stop_reason']}, "
              f"{summary['world_size']} process(es), run folder {run})")
    barrier()
    cleanup()


def cmd_train_stage2(args) -> None:
    import json

    from .files import write_json
    from .training.distributed import is_main, read_launch
    from .training.runs import run_directory
    from .training.stage2 import Stage2Settings, run_identity, train_stage2

    torch_threads(args.threads)
    settings = Stage2Settings(**json.loads(args.settings))
    run = run_directory(Path(args.out).parent, run_identity(args.latents, settings, read_launch().world_size))
    summary = train_stage2(args.latents, settings, run)
    if is_main():
        write_json(training_record(summary, run), args.record)
    finish_training(summary, run, args.out)


def cmd_diffusion_trajectory(args) -> None:
    import json

    from .evaluation.trajectory import TrajectorySettings, diffusion_trajectory

    torch_threads(args.threads)
    settings = TrajectorySettings.from_dict(json.loads(args.settings))
    out = Path(args.out)
    tables = diffusion_trajectory(args.stage1_model, args.stage2_model, args.latents, args.stage1_table5, settings,
                                  out / "deviation.csv", out / "table5.csv", out / "ddim.csv",
                                  out / "deviation.png", out / "trajectory_examples.png", out / "final_latents.npz",
                                  dataset=args.dataset)
    final = next(row for row in tables["table5"] if row["latents"] == "diffusion_ddpm")
    print(f"wrote {out}/: DDPM samples' PDE deviation {final['deviation_mean']:.4f}")


def cmd_evaluate_stage1(args) -> None:
    import json

    from .config import only_known
    from .evaluation.stage1 import Stage1Evaluation, evaluate_stage1

    torch_threads(args.threads)
    settings = Stage1Evaluation(**only_known(json.loads(args.settings), Stage1Evaluation, "stage1.evaluation"))
    metrics, table5 = evaluate_stage1(args.model, args.dataset, args.latents, settings, args.metrics, args.table5, args.figure)
    print(f"wrote {args.metrics}, {args.table5}, {args.figure}: test PDE deviation {metrics[-1]['pde_deviation']:.4f}, "
          f"inversion MAE {metrics[-1]['mae']:.4f}")


def settings_from_json(cls, text: str, seed: int):
    """A rule's --settings JSON (its config slice) with the global seed, as `cls` (whose
    from_dict rejects unknown keys, naming the config section)."""
    import json

    return cls.from_dict({**json.loads(text), "seed": seed})


def sampling_settings(text: str, seed: int):
    from .sampling.shard import SamplingSettings

    return settings_from_json(SamplingSettings, text, seed)


def cmd_create_pairs_store(args) -> None:
    from .sampling.shard import create_store_for_models

    settings = sampling_settings(args.settings, args.seed)
    create_store_for_models(args.stage1_model, args.out, settings)
    print(f"created {args.out}: {settings.num_pairs} pairs in {settings.num_shards} shards of {settings.shard_size}")


def cmd_sample_shard(args) -> None:
    from .files import write_json
    from .sampling.shard import sample_shard

    torch_threads(args.threads)
    info = sample_shard(args.stage1_model, args.stage2_model, args.store, args.shard,
                        sampling_settings(args.settings, args.seed))
    write_json(info, args.record)  # the rule's output: this shard's record, written last
    print(f"shard {args.shard}: {info['n']} pairs at {info['pairs_per_second']:.2f} pairs/s")


def cmd_check_shard(args) -> None:
    from .files import write_json
    from .sampling.shard import check_shard

    torch_threads(args.threads)
    info = check_shard(args.store, args.shard, args.dataset, backend=args.backend, batch_size=args.batch_size)
    write_json(info, args.record)
    print(f"shard {args.shard}: PDE deviation mean {info['deviation_mean']:.4f}")


def cmd_gather_samples(args) -> None:
    from .sampling.shard import write_manifest

    manifest = write_manifest(args.store, args.out)
    print(f"wrote {args.out}: {manifest['n_checked']} checked pairs")


def cmd_physics_report(args) -> None:
    import json

    from .sampling.physics_filter import FilterSettings, physics_report

    torch_threads(args.threads)
    physics = json.loads(args.settings)
    settings = FilterSettings.from_dict(physics)
    rows = physics_report(args.store, args.variant, settings, args.dataset, physics["floor_samples_per_family"],
                          args.floor, args.true_pairs, args.out, args.figure, args.acceptance, args.acceptance_figure)
    for row in rows:
        print(f"{row['family']}: {row['n_valid']} of {row['n']} pairs accepted ({row['acceptance_rate']:.1%}; "
              f"filter {settings.filter}, threshold {row['threshold'] or 'per family'})")


def cmd_memorisation(args) -> None:
    from .evaluation.memorisation import memorisation, memorised

    torch_threads(args.threads)
    rows = memorisation(args.latents, args.store, args.variant, args.out, args.figure)
    held, made = (next(r for r in rows if r["set"] == name) for name in ("held_out", "generated"))
    print(f"wrote {args.out}: median distance to the nearest training latent {made['distance_median']:.4f} "
          f"(generated) vs {held['distance_median']:.4f} (held out); "
          f"{made['fraction_below_held_out_p01']:.1%} of generated latents below the held-out 1 % quantile"
          f"{' -- memorised' if memorised(rows) else ''}")


def cmd_export_openfwi(args) -> None:
    import json

    from .sampling.export import ExportSettings, export_openfwi

    torch_threads(args.threads)
    info = export_openfwi(args.store, args.dataset, args.out, ExportSettings.from_dict(json.loads(args.settings)))
    print(f"wrote {args.out}: {info['num_exported']} accepted pairs in {info['num_files']} pairs of OpenFWI files")


def fid_settings(text: str, seed: int):
    from .evaluation.fid_table import FIDSettings

    return settings_from_json(FIDSettings, text, seed)


def cmd_fid_reference(args) -> None:
    from .evaluation.fid_table import reference_features

    torch_threads(args.threads)
    info = reference_features(args.dataset, fid_settings(args.settings, args.seed), args.out)
    print(f"wrote {args.out}: {info['n']} real samples, Inception weights from {info['source']}")


def cmd_fid_variant(args) -> None:
    from .evaluation.fid_table import variant_fid

    torch_threads(args.threads)
    rows = variant_fid(args.variant, args.store, args.stage1_model, args.latents, args.reference,
                       fid_settings(args.settings, args.seed), args.out, args.figures)
    for row in rows:
        print(f"{row['variant']} {row['source']} {row['modality']}: FID {row['fid']:.2f}")


def cmd_sampler_fid(args) -> None:
    from .evaluation.sampler_fid import sampler_fid

    torch_threads(args.threads)
    rows = sampler_fid(args.variant, args.final_latents, args.ddim, args.stage1_model, args.latents, args.reference,
                       fid_settings(args.settings, args.seed), args.out, args.figure)
    for row in rows:
        print(f"{row['variant']} {row['sampler']}-{row['steps']}: FID seismic {row['fid_seismic']:.2f}, "
              f"velocity {row['fid_velocity']:.2f} (n={row['n']})")


def experiment_settings(text: str, seed: int):
    from .evaluation.arms import ExperimentSettings

    return settings_from_json(ExperimentSettings, text, seed)


def cmd_train_inversionnet(args) -> None:
    from .evaluation.inversion_experiments import arm_identity, train_arm
    from .files import write_json
    from .training.distributed import is_main, read_launch
    from .training.runs import run_directory

    torch_threads(args.threads)
    settings = experiment_settings(args.settings, args.seed)
    identity = arm_identity(args.arm, settings, args.dataset, args.store, args.hard, args.init_weights,
                            read_launch().world_size)
    run = run_directory(Path(args.out).parent, identity)
    summary, record = train_arm(args.arm, args.dataset, settings, run, args.store, args.hard, args.init_weights)
    if is_main():
        write_json({**record, **training_record(summary, run)}, args.record)
    finish_training(summary, run, args.out)


def cmd_hardest_generated(args) -> None:
    from .evaluation.inversion_experiments import hard_sets

    torch_threads(args.threads)
    info = hard_sets(args.model, args.store, args.seismic, experiment_settings(args.settings, args.seed), args.out)
    print(f"wrote {args.out}: {info['n_hard']} hardest of {info['n_store']} generated pairs "
          f"({info['n_train']} to fine-tune on, {info['n_test']} to test on)")


def cmd_evaluate_inversionnet(args) -> None:
    from .evaluation.inversion_experiments import evaluate_arm

    torch_threads(args.threads)
    hard_tests = {}
    for item in args.hard_test or []:
        name, store, npz = item.split(",")
        hard_tests[name] = (store, npz)
    rows = evaluate_arm(args.model, args.record, args.dataset, experiment_settings(args.settings, args.seed),
                        args.out, hard_tests)
    print(f"wrote {args.out}: test MAE {[r['mae'] for r in rows if r['family'] == 'all'][0]:.4f}")


def cmd_inversionnet_tables(args) -> None:
    from .evaluation.inversion_experiments import plot_predictions, write_tables

    torch_threads(args.threads)
    counts = write_tables(args.metrics, Path(args.table2).parent, args.dataset)
    models = {Path(path).parent.name: path for path in args.models}
    plot_predictions(models, args.dataset, args.figure)
    print(f"wrote {counts} rows and {args.figure}")


def cmd_refine_inversion(args) -> None:
    import json

    from .evaluation.refine import TABLE_COLUMNS, RefineSettings, plot_refinement, refinement_tables
    from .files import write_csv, write_json

    torch_threads(args.threads)
    values = json.loads(args.settings)
    per_family = values.pop("per_family", None)  # which samples, not how: not a RefineSettings field
    settings = RefineSettings.from_dict({**values, "seed": args.seed})
    table9, table7, info, examples = refinement_tables(args.stage1_model, args.stage2_model, args.inversionnet,
                                                       args.dataset, settings, args.variant, per_family)
    write_csv(table9, args.table9, TABLE_COLUMNS)
    write_csv(table7, args.table7, TABLE_COLUMNS)
    write_json(info, args.info)
    plot_refinement(examples, args.figure)
    all_rows = {row["method"]: row["mae"] for row in table9 + table7 if row["family"] == "all"}
    print(f"wrote {args.table9}, {args.table7}: MAE (all) {all_rows}")


def cmd_claims(args) -> None:
    from .evaluation.claims import claims_table

    rows = claims_table(args.variants, args.table5, args.deviation, args.memorisation, args.stage1_records,
                        args.stage2_records, args.fid, args.stage1_metrics, args.table2, args.inversion_record, args.out)
    for row in rows:
        print(f"{row['claim']:>24} {row['variant']}: {row['held']:<26} {row['measured']}")


def cmd_combine_tables(args) -> None:
    from .files import combine_csv

    combine_csv(args.tables, args.out)


def torch_threads(threads: int | None) -> None:
    """Honour the rule's `threads:` (Snakemake passes it) instead of torch's guess."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def optional_int(text: str) -> int | None:
    return None if text.lower() in ("none", "null") else int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wavediffusion", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    # the option of every command that runs torch: Snakemake passes the rule's `threads:`
    threads = argparse.ArgumentParser(add_help=False)
    threads.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    # the option of every command that draws random numbers: config `seed`, from which each draw derives its own
    seeded = argparse.ArgumentParser(add_help=False)
    seeded.add_argument("--seed", type=int, required=True, help="the global seed (config seed)")

    p = commands.add_parser("check-config", help="validate a config file against the schema")
    p.add_argument("config")
    p.add_argument("--schema", default="workflow/schemas/config.schema.yaml")
    p.set_defaults(run=cmd_check_config)

    p = commands.add_parser("download-openfwi", help="download one OpenFWI family (resumable, verified)")
    p.add_argument("--family", required=True)
    p.add_argument("--dest", required=True, help="root folder of the OpenFWI layout")
    p.add_argument("--base-url", default="", type=lambda text: text or None, help="a mirror with OpenFWI's layout (overrides the manifest's URLs)")
    p.add_argument("--record", required=True, help="JSON written once every file is verified")
    p.set_defaults(run=cmd_download_openfwi)

    p = commands.add_parser("simulate", parents=[threads], help="forward-model one family's embedded velocity maps into OpenFWI's layout")
    p.add_argument("--family", required=True)
    p.add_argument("--out-root", required=True)
    p.add_argument("--train", type=int, required=True)
    p.add_argument("--test", type=int, required=True)
    p.add_argument("--synthetic-seed", type=int, required=True)
    p.add_argument("--backend", required=True, choices=["deepwave", "openfwi"])
    p.add_argument("--batch-size", type=int, required=True)
    p.set_defaults(run=cmd_simulate)

    p = commands.add_parser("preprocess", parents=[threads, seeded], help="OpenFWI layout -> the dataset Zarr store")
    p.add_argument("--openfwi-root", required=True)
    p.add_argument("--source", required=True, help="recorded in the store's provenance")
    p.add_argument("--families", nargs="+", required=True)
    p.add_argument("--shots", type=int, nargs="+", required=True)
    p.add_argument("--time-samples", type=int, required=True)
    p.add_argument("--receivers", type=int, required=True)
    p.add_argument("--velocity-size", type=int, required=True)
    p.add_argument("--samples-per-shard", type=int, required=True)
    p.add_argument("--max-train-per-family", type=optional_int, default=None)
    p.add_argument("--max-test-per-family", type=optional_int, default=None)
    p.add_argument("--val-fraction", type=float, required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(run=cmd_preprocess)

    p = commands.add_parser("pde-floor", parents=[threads], help="PDE deviation of the data set's own true pairs")
    p.add_argument("--dataset", required=True)
    p.add_argument("--samples-per-family", type=int, required=True)
    p.add_argument("--backends", nargs="+", required=True)
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--true-pairs", required=True, help="CSV to write: each true pair's deviation (deepwave, model64)")
    p.set_defaults(run=cmd_pde_floor)

    p = commands.add_parser("plot-velocity-families", help="figure: velocity maps of every family in the data set")
    p.add_argument("--dataset", required=True)
    p.add_argument("--per-family", type=int, default=4)
    p.add_argument("--out", required=True)
    p.set_defaults(run=cmd_plot_velocity_families)

    p = commands.add_parser("train-stage1", parents=[threads], help="train the VQ autoencoder of one variant (resumes after a crash)")
    p.add_argument("--dataset", required=True)
    p.add_argument("--variant", required=True, choices=["1vq", "2vq"])
    p.add_argument("--settings", required=True, help="JSON of config stage1.{model,discriminator,losses,training}")
    p.add_argument("--out", required=True, help="the final weights file")
    p.add_argument("--record", required=True, help="train.json to write: steps, seconds, stop reason, validation trend")
    p.set_defaults(run=cmd_train_stage1, claims_gpu=True, batch_key="stage1.training.batch_size")

    p = commands.add_parser("encode-latents", parents=[threads], help="encode the train/val splits with a trained autoencoder (Stage 2's data)")
    p.add_argument("--model", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", required=True)
    p.set_defaults(run=cmd_encode_latents, claims_gpu=True)

    p = commands.add_parser("evaluate-stage1", parents=[threads], help="reconstruction, inversion and PDE deviation of a trained autoencoder")
    p.add_argument("--model", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--latents", required=True, help="encode-latents' store (the training latents)")
    p.add_argument("--settings", required=True, help="JSON of config stage1.evaluation")
    p.add_argument("--metrics", required=True, help="per-family metrics CSV to write")
    p.add_argument("--table5", required=True, help="deviation per kind of latent, CSV to write")
    p.add_argument("--figure", required=True, help="example pairs, PNG to write")
    p.set_defaults(run=cmd_evaluate_stage1, claims_gpu=True)

    p = commands.add_parser("train-stage2", parents=[threads], help="train the latent diffusion UNet on one variant's latents (resumes after a crash)")
    p.add_argument("--latents", required=True, help="encode-latents' store")
    p.add_argument("--settings", required=True, help="JSON of config stage2.{model,diffusion,training}")
    p.add_argument("--out", required=True, help="the final weights file")
    p.add_argument("--record", required=True, help="train.json to write: steps, seconds, stop reason, validation trend")
    p.set_defaults(run=cmd_train_stage2, claims_gpu=True, batch_key="stage2.training.batch_size")

    p = commands.add_parser("diffusion-trajectory", parents=[threads], help="PDE deviation along the forward and reverse diffusion (Fig. 5, Table 5)")
    p.add_argument("--stage1-model", required=True)
    p.add_argument("--stage2-model", required=True)
    p.add_argument("--latents", required=True, help="encode-latents' store (the training latents)")
    p.add_argument("--dataset", required=True, help="the dataset store (its representation)")
    p.add_argument("--stage1-table5", required=True, help="evaluate-stage1's table5.csv")
    p.add_argument("--settings", required=True, help="JSON of config stage2.trajectory")
    p.add_argument("--out", required=True, help="folder for deviation.csv, table5.csv, ddim.csv, the figures and final_latents.npz")
    p.set_defaults(run=cmd_diffusion_trajectory, claims_gpu=True)

    p = commands.add_parser("create-pairs-store", parents=[seeded], help="the empty pairs store that sampling shards fill")
    p.add_argument("--stage1-model", required=True)
    p.add_argument("--settings", required=True, help="JSON of config sampling")
    p.add_argument("--out", required=True)
    p.set_defaults(run=cmd_create_pairs_store)

    p = commands.add_parser("sample-shard", parents=[threads, seeded], help="generate and decode one shard of pairs into the pairs store")
    p.add_argument("--stage1-model", required=True)
    p.add_argument("--stage2-model", required=True)
    p.add_argument("--store", required=True)
    p.add_argument("--shard", type=int, required=True)
    p.add_argument("--settings", required=True, help="JSON of config sampling")
    p.add_argument("--record", required=True, help="JSON written once the shard is complete")
    p.set_defaults(run=cmd_sample_shard, claims_gpu=True, batch_key="sampling.batch_size")

    p = commands.add_parser("check-shard", parents=[threads], help="the wave-equation check of one shard's pairs (deepwave)")
    p.add_argument("--store", required=True)
    p.add_argument("--shard", type=int, required=True)
    p.add_argument("--dataset", required=True, help="the dataset store (its representation)")
    p.add_argument("--backend", required=True, choices=["deepwave", "openfwi"])
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--record", required=True, help="JSON written once the shard is checked")
    p.set_defaults(run=cmd_check_shard, claims_gpu=True, batch_key="physics.batch_size")

    p = commands.add_parser("gather-samples", help="manifest.json of a complete pairs store (refuses an incomplete one)")
    p.add_argument("--store", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(run=cmd_gather_samples)

    p = commands.add_parser("physics-report", parents=[threads], help="the physics filter: valid mask, acceptance rate, deviation histogram")
    p.add_argument("--store", required=True)
    p.add_argument("--variant", required=True)
    p.add_argument("--settings", required=True, help="JSON of config physics")
    p.add_argument("--dataset", required=True, help="the dataset store (pde_floor's true pairs, for the families)")
    p.add_argument("--floor", required=True, help="pde_floor.csv (the data set's own deviation)")
    p.add_argument("--true-pairs", required=True, help="pde-floor's per-pair deviations of the true pairs")
    p.add_argument("--out", required=True, help="physics_report.csv to write")
    p.add_argument("--acceptance", required=True, help="acceptance.csv to write (acceptance rate vs threshold)")
    p.add_argument("--acceptance-figure", required=True, help="acceptance PNG to write")
    p.add_argument("--figure", required=True, help="histogram PNG to write")
    p.set_defaults(run=cmd_physics_report)

    p = commands.add_parser("memorisation", parents=[threads], help="generated vs held-out latents' distance to the nearest training latent")
    p.add_argument("--variant", required=True)
    p.add_argument("--store", required=True, help="the variant's pairs store")
    p.add_argument("--latents", required=True, help="encode-latents' store (train and held-out val latents)")
    p.add_argument("--out", required=True, help="memorisation.csv to write")
    p.add_argument("--figure", required=True, help="histogram PNG to write")
    p.set_defaults(run=cmd_memorisation, claims_gpu=True)

    p = commands.add_parser("export-openfwi", parents=[threads], help="accepted pairs as OpenFWI files (model{n}.npy, data{n}.npy)")
    p.add_argument("--store", required=True)
    p.add_argument("--dataset", required=True, help="the dataset store (its representation)")
    p.add_argument("--settings", required=True, help="JSON of config export")
    p.add_argument("--out", required=True, help="the folder to write (replaced atomically)")
    p.set_defaults(run=cmd_export_openfwi, claims_gpu=True)

    p = commands.add_parser("fid-reference", parents=[threads, seeded], help="Inception features of the real data, both modalities")
    p.add_argument("--dataset", required=True)
    p.add_argument("--settings", required=True, help="JSON of config fid")
    p.add_argument("--out", required=True, help=".npz to write")
    p.set_defaults(run=cmd_fid_reference, claims_gpu=True, batch_key="fid.batch_size")

    def add_generated_fid_arguments(p) -> None:
        """What scoring generated pairs against the FID reference takes, beside the random-latent baseline."""
        p.add_argument("--variant", required=True)
        p.add_argument("--stage1-model", required=True)
        p.add_argument("--latents", required=True, help="encode-latents' store (for the random-latent baseline)")
        p.add_argument("--reference", required=True, help="fid-reference's .npz")
        p.add_argument("--settings", required=True, help="JSON of config fid")
        p.set_defaults(claims_gpu=True, batch_key="fid.batch_size")

    p = commands.add_parser("fid-variant", parents=[threads, seeded], help="FID of one variant's samples and its Stage-1 random latents (Table 1)")
    add_generated_fid_arguments(p)
    p.add_argument("--store", required=True, help="the variant's pairs store")
    p.add_argument("--out", required=True, help="fid.csv to write")
    p.add_argument("--figures", required=True, help="folder for tsne_seismic.png and tsne_velocity.png")
    p.set_defaults(run=cmd_fid_variant)

    p = commands.add_parser("sampler-fid", parents=[threads, seeded], help="FID of each sampler setting of the trajectory run, beside its deviation")
    add_generated_fid_arguments(p)
    p.add_argument("--final-latents", required=True, help="diffusion-trajectory's final_latents.npz")
    p.add_argument("--ddim", required=True, help="diffusion-trajectory's ddim.csv (deviation and speed)")
    p.add_argument("--out", required=True, help="samplers.csv to write")
    p.add_argument("--figure", required=True, help="samplers.png to write")
    p.set_defaults(run=cmd_sampler_fid)

    p = commands.add_parser("train-inversionnet", parents=[threads, seeded], help="train InversionNet for one arm of Tables 2-4 (resumes after a crash)")
    p.add_argument("--arm", required=True, help="the arm's name (evaluation/inversion_experiments.py)")
    p.add_argument("--dataset", required=True)
    p.add_argument("--store", default=None, help="the variant's pairs store (arms with generated pairs)")
    p.add_argument("--hard", default=None, help="hardest-generated's .npz (fine-tuning on generated pairs)")
    p.add_argument("--init-weights", default=None, help="weights to fine-tune (arm real's model)")
    p.add_argument("--settings", required=True, help="JSON of config inversionnet")
    p.add_argument("--record", required=True, help="JSON of what the arm trained on, to write")
    p.add_argument("--out", required=True, help="the weights file to write")
    p.set_defaults(run=cmd_train_inversionnet, claims_gpu=True, batch_key="inversionnet.training.batch_size")

    p = commands.add_parser("hardest-generated", parents=[threads, seeded], help="the generated pairs a model predicts worst, split train/test (Table 4)")
    p.add_argument("--model", required=True, help="InversionNet weights (arm real)")
    p.add_argument("--store", required=True)
    p.add_argument("--seismic", required=True, choices=["decoded", "simulated"])
    p.add_argument("--settings", required=True, help="JSON of config inversionnet")
    p.add_argument("--out", required=True, help=".npz (train, test) to write")
    p.set_defaults(run=cmd_hardest_generated, claims_gpu=True, batch_key="inversionnet.eval_batch_size")

    p = commands.add_parser("evaluate-inversionnet", parents=[threads, seeded], help="one arm's MAE/RMSE/SSIM per family on the real test split")
    p.add_argument("--model", required=True)
    p.add_argument("--record", required=True, help="train-inversionnet's record of the arm")
    p.add_argument("--dataset", required=True)
    p.add_argument("--hard-test", action="append", help="NAME,STORE,NPZ: also the MAE on a hardest-generated test set")
    p.add_argument("--settings", required=True, help="JSON of config inversionnet")
    p.add_argument("--out", required=True, help="metrics CSV to write")
    p.set_defaults(run=cmd_evaluate_inversionnet, claims_gpu=True, batch_key="inversionnet.eval_batch_size")

    p = commands.add_parser("inversionnet-tables", parents=[threads], help="Tables 2-4 from every arm's metrics, and the predictions figure")
    p.add_argument("--metrics", nargs="+", required=True)
    p.add_argument("--models", nargs="+", required=True, help="weights of the arms shown in the figure")
    p.add_argument("--dataset", required=True)
    p.add_argument("--table2", required=True, help="table2.csv (table3.csv and table4.csv are written beside it)")
    p.add_argument("--figure", required=True)
    p.set_defaults(run=cmd_inversionnet_tables)

    p = commands.add_parser("refine-inversion", parents=[threads, seeded], help="diffusion-refined inversion and its ablation (Tables 9 and 7)")
    p.add_argument("--variant", required=True)
    p.add_argument("--stage1-model", required=True)
    p.add_argument("--stage2-model", required=True)
    p.add_argument("--inversionnet", required=True, help="InversionNet trained on all real pairs (arm real)")
    p.add_argument("--dataset", required=True)
    p.add_argument("--settings", required=True, help="JSON of config refine")
    p.add_argument("--table9", required=True)
    p.add_argument("--table7", required=True)
    p.add_argument("--info", required=True, help="JSON with throughput and settings")
    p.add_argument("--figure", required=True)
    p.set_defaults(run=cmd_refine_inversion, claims_gpu=True, batch_key="refine.batch_size or refine.candidate_batch")

    p = commands.add_parser("combine-tables", help="concatenate CSV tables with the same columns into one")
    p.add_argument("tables", nargs="+")
    p.add_argument("--out", required=True)
    p.set_defaults(run=cmd_combine_tables)

    p = commands.add_parser("claims", help="the paper's claims tested on the run's result tables (results/claims.csv)")
    p.add_argument("--variants", nargs="+", required=True)
    p.add_argument("--table5", nargs="+", required=True, help="diffusion-trajectory's table5.csv per variant, in order")
    p.add_argument("--deviation", nargs="+", required=True, help="diffusion-trajectory's deviation.csv per variant")
    p.add_argument("--memorisation", nargs="+", required=True, help="memorisation.csv per variant")
    p.add_argument("--fid", required=True, help="fid_table.csv")
    p.add_argument("--stage1-metrics", required=True, help="results/stage1/metrics.csv")
    p.add_argument("--stage1-records", nargs="+", required=True, help="train-stage1's train.json per variant")
    p.add_argument("--stage2-records", nargs="+", required=True, help="train-stage2's train.json per variant")
    p.add_argument("--table2", required=True, help="results/inversionnet/table2.csv")
    p.add_argument("--inversion-record", required=True, help="the arm `real`'s train.json")
    p.add_argument("--out", required=True)
    p.set_defaults(run=cmd_claims)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .data.download import DownloadError

    args = build_parser().parse_args(argv)
    if getattr(args, "claims_gpu", False):
        # the commands of the rules that ask for a GPU: on a machine of several GPUs, each
        # concurrent job takes its own (devices.claim_local_gpu); before anything starts CUDA
        from .devices import claim_local_gpu

        claim_local_gpu()
    try:
        args.run(args)
    except (ValueError, FileNotFoundError, DownloadError) as error:
        # Bad input: one clear line naming the file or key, not a traceback.
        print(f"wavediffusion {args.command}: error: {error}", file=sys.stderr)
        return 2
    except Exception as error:
        torch = sys.modules.get("torch")  # imported by the command if it raised torch's error
        if torch is None or not isinstance(error, torch.OutOfMemoryError):
            raise
        # The batch is the knob: name its config key. A job writes its outputs last, so none
        # is left under its final name and the rerun after lowering the key redoes the job.
        key = getattr(args, "batch_key", None)
        knob = f"lower {key}" if key else "lower this step's batch size"
        print(f"wavediffusion {args.command}: error: out of GPU memory; {knob} (other jobs on the same GPU "
              f"use its memory too)\n{error}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
