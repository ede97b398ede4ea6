"""The steps of rules/sampling.smk: the pairs store, its shards sampled and checked against
the wave equation, the physics filter, the memorisation check and the OpenFWI export."""

from __future__ import annotations

from typing import Annotated

from . import (Backend, PairsStore, Seed, Shard, Stage1Model, Stage2Model, Threads, Variant, settings_from_json, step,
               use_threads)

SamplingJSON = Annotated[str, "JSON of config sampling"]


def sampling_settings(text: str, seed: int):
    from ..sampling.shard import SamplingSettings

    return settings_from_json(SamplingSettings, text, seed)


@step()
def run_create_pairs_store(stage1_model: Stage1Model, settings: SamplingJSON,
                           out: Annotated[str, "the empty pairs store to create (pairs.zarr)"], seed: Seed,
                           dataset: Annotated[str, "the dataset store (its representation, recorded in the store)"]
                           ) -> None:
    """the empty pairs store that sampling shards fill"""
    from ..data.store import open_dataset, representation_of
    from ..sampling.shard import create_store_for_models

    values = sampling_settings(settings, seed)
    create_store_for_models(stage1_model, out, values, representation=representation_of(open_dataset(dataset)))
    print(f"created {out}: {values.num_pairs} pairs in {values.num_shards} shards of {values.shard_size}")


@step(gpu=True, batch_key="sampling.batch_size")
def run_sample_shard(stage1_model: Stage1Model, stage2_model: Stage2Model, store: PairsStore, shard: Shard,
                     settings: SamplingJSON,
                     record: Annotated[str, "JSON written once the shard is complete"], seed: Seed,
                     threads: Threads = None) -> None:
    """generate and decode one shard of pairs into the pairs store"""
    from ..files import write_json
    from ..sampling.shard import sample_shard

    use_threads(threads)
    info = sample_shard(stage1_model, stage2_model, store, shard, sampling_settings(settings, seed))
    write_json(info, record)  # the rule's output: this shard's record, written last
    print(f"shard {shard}: {info['n']} pairs at {info['pairs_per_second']:.2f} pairs/s")


@step(gpu=True, batch_key="physics.batch_size")
def run_check_shard(store: PairsStore, shard: Shard,
                    dataset: Annotated[str, "the dataset store (its representation)"],
                    backend: Backend, batch_size: Annotated[int, "pairs forward-modelled at once"],
                    record: Annotated[str, "JSON written once the shard is checked"],
                    processes: Annotated[int, "processes checking the shard at once (physics.check_processes)"],
                    threads: Threads = None) -> None:
    """the wave-equation check of one shard's pairs (physics.backend)"""
    from ..files import write_json
    from ..sampling.shard import check_shard

    use_threads(threads)
    info = check_shard(store, shard, dataset, backend=backend, batch_size=batch_size, processes=processes)
    write_json(info, record)
    print(f"shard {shard}: PDE deviation mean {info['deviation_mean']:.4f}")


@step()
def run_gather_samples(store: PairsStore, out: Annotated[str, "manifest.json to write"],
                       sample_records: Annotated[list[str], "the sample_shard records, in shard order"],
                       check_records: Annotated[list[str], "the check_shard records, in shard order"]) -> None:
    """manifest.json of a complete pairs store (refuses an incomplete one)"""
    from ..sampling.shard import IncompleteStore, write_manifest

    try:
        manifest = write_manifest(store, out)
    except IncompleteStore as error:
        # Snakemake holds records of these jobs, so it will not redo them by itself: the
        # store changed after them (a sample-shard run by hand, a job killed mid-rewrite)
        records = {"sample": sample_records, "check": check_records}
        stale = sorted({records[kind][k] for kind, shards in error.redo.items() for k in shards}
                       | {check_records[k] for k in error.redo["sample"]})
        raise ValueError(f"{error}. The workflow's records of those jobs are older than the store's data (was "
                         f"sample-shard run by hand?): delete {' '.join(stale)} and rerun; Snakemake then "
                         "redoes those jobs") from error
    print(f"wrote {out}: {manifest['n_checked']} checked pairs")


@step()
def run_physics_report(store: PairsStore, variant: Variant,
                       settings: Annotated[str, "JSON of config physics"],
                       dataset: Annotated[str, "the dataset store (pde_floor's true pairs, for the families)"],
                       floor: Annotated[str, "pde_floor.csv (the data set's own deviation)"],
                       true_pairs: Annotated[str, "pde-floor's per-pair deviations of the true pairs"],
                       out: Annotated[str, "physics_report.csv to write"],
                       acceptance: Annotated[str, "acceptance.csv to write (acceptance rate vs threshold)"],
                       acceptance_figure: Annotated[str, "acceptance PNG to write"],
                       figure: Annotated[str, "histogram PNG to write"],
                       threads: Threads = None) -> None:
    """the physics filter: valid mask, acceptance rate, deviation histogram"""
    import json

    from ..data.pairs_store import open_pairs_store
    from ..data.store import open_dataset
    from ..files import read_csv, write_csv
    from ..plotting import save_figure
    from ..sampling.physics_filter import ACCEPTANCE_COLUMNS, REPORT_COLUMNS, FilterSettings, physics_report
    from ..sampling.shard import gather

    use_threads(threads)
    physics = json.loads(settings)
    values = FilterSettings.from_dict(physics)
    gather(store)  # refuses a store with shards not sampled or not checked, naming them
    rows, curve, histogram, acceptance_plot = physics_report(
        open_pairs_store(store), variant, values, open_dataset(dataset), physics["floor_samples_per_family"],
        read_csv(floor), read_csv(true_pairs))
    write_csv(curve, acceptance, ACCEPTANCE_COLUMNS)
    save_figure(acceptance_plot, acceptance_figure)
    write_csv(rows, out, REPORT_COLUMNS)
    save_figure(histogram, figure)
    for row in rows:
        print(f"{row['family']}: {row['n_valid']} of {row['n']} pairs accepted ({row['acceptance_rate']:.1%}; "
              f"filter {values.filter}, threshold {row['threshold'] or 'per family'})")


@step(gpu=True)
def run_memorisation(variant: Variant,
                     store: Annotated[str, "the variant's pairs store"],
                     latents: Annotated[str, "encode-latents' store (train and held-out val latents)"],
                     out: Annotated[str, "memorisation.csv to write"],
                     figure: Annotated[str, "histogram PNG to write"],
                     threads: Threads = None) -> None:
    """generated vs held-out latents' distance to the nearest training latent"""
    from ..data.pairs_store import open_pairs_store
    from ..evaluation.memorisation import COLUMNS, memorisation, memorised
    from ..files import write_csv
    from ..plotting import save_figure
    from ..training.stage2 import open_latents

    use_threads(threads)
    splits = open_latents(latents)
    rows, histogram = memorisation(splits["train"]["latent"], splits["val"]["latent"],
                                   open_pairs_store(store, mode="r")["latent"], variant)
    write_csv(rows, out, COLUMNS)
    save_figure(histogram, figure)
    held, made = (next(r for r in rows if r["set"] == name) for name in ("held_out", "generated"))
    print(f"wrote {out}: median distance to the nearest training latent {made['distance_median']:.4f} "
          f"(generated) vs {held['distance_median']:.4f} (held out); "
          f"{made['fraction_below_held_out_p01']:.1%} of generated latents below the held-out 1 % quantile"
          f"{' -- memorised' if memorised(rows) else ''}")


@step(gpu=True)
def run_export_openfwi(store: PairsStore,
                       dataset: Annotated[str, "the dataset store (its representation)"],
                       settings: Annotated[str, "JSON of config export"],
                       out: Annotated[str, "the folder to write (replaced atomically)"],
                       threads: Threads = None) -> None:
    """accepted pairs as OpenFWI files (model{n}.npy, data{n}.npy)"""
    import json

    from ..sampling.export import ExportSettings, export_openfwi

    use_threads(threads)
    info = export_openfwi(store, dataset, out, ExportSettings.from_dict(json.loads(settings)))
    print(f"wrote {out}: {info['num_exported']} accepted pairs in {info['num_files']} pairs of OpenFWI files; "
          f"{info['num_left_out']} past the last whole file left out")
