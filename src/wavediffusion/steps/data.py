"""The steps of rules/data.smk: OpenFWI's files (downloaded, or forward-modelled from the
embedded velocity maps) into the dataset Zarr store."""

from __future__ import annotations

from typing import Annotated

from . import Backend, Dataset, Seed, Threads, step, use_threads

Family = Annotated[str, "an OpenFWI family, e.g. FlatVel-A (data/families.py)"]


@step()
def run_download_openfwi(family: Family,
                         dest: Annotated[str, "root folder of the OpenFWI layout"],
                         record: Annotated[str, "JSON written once every file is verified"],
                         base_url: Annotated[str | None, "a mirror with OpenFWI's layout (overrides the manifest's URLs)"] = None,
                         ) -> None:
    """download one OpenFWI family (resumable, verified)"""
    from ..data.download import write_download_record

    write_download_record(family, dest, record, base_url=base_url)


@step()
def run_simulate(family: Family,
                 out_root: Annotated[str, "root folder of the OpenFWI layout to write the family's folder into"],
                 train: Annotated[int, "velocity maps to simulate for the train split"],
                 test: Annotated[int, "velocity maps to simulate for the test split"],
                 synthetic_seed: Annotated[int, "seed of the synthetic velocity maps (unused for real ones)"],
                 backend: Backend,
                 batch_size: Annotated[int, "velocity maps forward-modelled at once"],
                 threads: Threads = None) -> None:
    """forward-model one family's embedded velocity maps into OpenFWI's layout"""
    from ..physics.simulate import simulate_family

    use_threads(threads)
    folder = simulate_family(family, out_root, train, test, synthetic_seed, backend=backend, batch_size=batch_size,
                             progress=True)
    print(f"wrote {folder}")


@step()
def run_preprocess(openfwi_root: Annotated[str, "root folder of the OpenFWI layout (one folder per family)"],
                   source: Annotated[str, "recorded in the store's provenance"],
                   families: Annotated[list[str], "the families to read, e.g. FlatVel-A CurveVel-A"],
                   shots: Annotated[list[int], "the OpenFWI shots kept (of 0-4), one channel each"],
                   time_samples: Annotated[int, "time samples of the stored seismic (OpenFWI's 1000 resized)"],
                   receivers: Annotated[int, "receivers of the stored seismic (OpenFWI's 70 resized)"],
                   velocity_size: Annotated[int, "side of the stored velocity map (OpenFWI's 70 resized)"],
                   samples_per_shard: Annotated[int, "samples per Zarr shard"],
                   val_fraction: Annotated[float, "fraction of each family's train samples held out as val"],
                   out: Annotated[str, "the dataset store to write (dataset.zarr)"], seed: Seed,
                   max_train_per_family: Annotated[int | None, "keep at most this many train samples per family"
                                                   " (none: all)"] = None,
                   max_test_per_family: Annotated[int | None, "keep at most this many test samples per family"
                                                  " (none: all)"] = None,
                   threads: Annotated[int | None, "worker threads, each converting whole blocks"] = None) -> None:
    """OpenFWI layout -> the dataset Zarr store"""
    from ..data.preprocess import PreprocessSettings, preprocess

    use_threads(1)  # parallel over blocks instead: `threads` worker threads
    settings = PreprocessSettings(
        families=tuple(families), shots=tuple(shots), time_samples=time_samples, receivers=receivers,
        velocity_size=velocity_size, samples_per_shard=samples_per_shard,
        max_train_per_family=max_train_per_family, max_test_per_family=max_test_per_family,
        val_fraction=val_fraction, seed=seed, source=source,
    )
    report = preprocess(openfwi_root, out, settings, workers=threads or 1, progress=True)
    print(f"wrote {out}: seismic log range [{report.seismic_log_min:.4f}, {report.seismic_log_max:.4f}]")


@step()
def run_plot_velocity_families(dataset: Dataset, out: Annotated[str, "PNG to write"],
                               per_family: Annotated[int, "velocity maps shown per family"] = 4) -> None:
    """figure: velocity maps of every family in the data set"""
    from ..evaluation.figures import plot_dataset_velocity

    plot_dataset_velocity(dataset, out, per_family=per_family)
