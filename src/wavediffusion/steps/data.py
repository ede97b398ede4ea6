"""The steps of rules/data.smk: OpenFWI's files (downloaded, or forward-modelled from the
embedded velocity maps) into the dataset Zarr store."""

from __future__ import annotations

from typing import Annotated, Literal

from . import Seed, Threads, step, use_threads


@step()
def run_download_openfwi(family: str,
                         dest: Annotated[str, "root folder of the OpenFWI layout"],
                         record: Annotated[str, "JSON written once every file is verified"],
                         base_url: Annotated[str | None, "a mirror with OpenFWI's layout (overrides the manifest's URLs)"] = None,
                         ) -> None:
    """download one OpenFWI family (resumable, verified)"""
    from ..data.download import write_download_record

    write_download_record(family, dest, record, base_url=base_url)


@step()
def run_simulate(family: str, out_root: str, train: int, test: int, synthetic_seed: int,
                 backend: Literal["deepwave", "openfwi"], batch_size: int, threads: Threads = None) -> None:
    """forward-model one family's embedded velocity maps into OpenFWI's layout"""
    from ..physics.simulate import simulate_family

    use_threads(threads)
    folder = simulate_family(family, out_root, train, test, synthetic_seed, backend=backend, batch_size=batch_size,
                             progress=True)
    print(f"wrote {folder}")


@step()
def run_preprocess(openfwi_root: str,
                   source: Annotated[str, "recorded in the store's provenance"],
                   families: list[str], shots: list[int], time_samples: int, receivers: int, velocity_size: int,
                   samples_per_shard: int, val_fraction: float, out: str, seed: Seed,
                   max_train_per_family: int | None = None, max_test_per_family: int | None = None,
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
def run_plot_velocity_families(dataset: str, out: str, per_family: int = 4) -> None:
    """figure: velocity maps of every family in the data set"""
    from ..evaluation.figures import plot_dataset_velocity

    plot_dataset_velocity(dataset, out, per_family=per_family)
