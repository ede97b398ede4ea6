"""The dataset Zarr store: layout, atomic creation, opening.

    dataset.zarr/
      zarr.json                 attrs: representation, families, provenance, config
      train/ val/ test/
        seismic          (N, S, T, R) float32 in [-1, 1]   one sample per chunk, sharded
        velocity         (N, 1, V, V) float32 in [-1, 1]   one sample per chunk, sharded
        velocity_native  (N, 1, 70, 70) float32 m/s        OpenFWI's map, before resizing
        family           (N,) int16   index into attrs["families"]
        source_index     (N,) int32   position of the sample in its family's source split (or folder)

One sample per chunk makes random access (a shuffled DataLoader) read exactly one sample;
shards of many chunks keep the file count low and sequential reads fast. Chunks carry
checksums and fill values no data takes (data/integrity.py): a damaged store is refused.
"""

from __future__ import annotations

from pathlib import Path

import zarr

from ..files import open_zarr_store
from . import dims, integrity
from .families import VELOCITY_SHAPE
from .transforms import Representation

SPLITS = ("train", "val", "test")


def create_split_arrays(group: zarr.Group, n: int, rep: Representation, samples_per_shard: int) -> None:
    """Create the empty arrays of one split (n samples) inside `group`."""
    shard = max(1, min(samples_per_shard, n))

    def sample_array(name: str, sample_shape: tuple[int, ...], sample_dims: tuple[str, ...]):
        group.create_array(
            name,
            shape=(n, *sample_shape),
            chunks=(1, *sample_shape),
            shards=(shard, *sample_shape),
            dtype="float32",
            fill_value=float("nan"),
            compressors=integrity.COMPRESSORS,
            dimension_names=(dims.SAMPLE, *sample_dims),
        )

    sample_array("seismic", rep.seismic_shape, dims.SEISMIC)
    sample_array("velocity", rep.velocity_shape, dims.VELOCITY)
    sample_array("velocity_native", VELOCITY_SHAPE, dims.NATIVE_VELOCITY)
    for name, dtype in (("family", "int16"), ("source_index", "int32")):
        group.create_array(name, shape=(n,), chunks=(max(1, n),), dtype=dtype, fill_value=-1,
                           compressors=integrity.COMPRESSORS, dimension_names=(dims.SAMPLE,))


REMEDY = "Delete the store and rerun the preprocess rule (Snakemake then rewrites it)."


def open_dataset(path: str | Path) -> zarr.Group:
    """Open a dataset store read-only, with a clear error when it is not one or is damaged."""
    root = open_zarr_store(path, "dataset store", "preprocess")
    if "representation" not in root.attrs:
        raise ValueError(f"{path}: Zarr group has no 'representation' attribute; not a WaveDiffusion dataset")
    integrity.check_complete(path, root, integrity.all_rows(root), REMEDY)
    return root


def representation_of(root: zarr.Group) -> Representation:
    return Representation.from_attrs(root.attrs["representation"])
