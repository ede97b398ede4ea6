"""The pairs store: one Zarr v3 group of generated pairs, written shard by shard.

Arrays latent (N, C, h, w), seismic and seismic_simulated (N, S, T, R), velocity
(N, 1, V, V), and per-row deviation, seed, index_in_shard, valid, family. Sampling job k
owns rows [k s, (k+1) s) (s = shard_size), written through `BlockWriter` one Zarr shard of
b rows at a time, so no two jobs write the same file; unwritten values are NaN / -1 / False.
Every array carries Zarr dimension_names and its units and meaning as attributes, so
xarray opens the store. A shard is complete only once its marker
<store>.done/<kind>-<k:05d>.json exists, beside the store; a reader refuses a store where a
shard file of a complete shard is gone (data/integrity.py).
Details: docs/data.md, 'The pairs store'.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import zarr

from ..files import open_zarr_store, write_json
from . import dims, integrity
from .families import FAMILY_NAMES

if TYPE_CHECKING:  # transforms imports torch, which the Snakefile (importing this module) must not load
    from .transforms import Representation

FORMAT = "wavediffusion-pairs-v1"
# The markers' folder <store>.done sits beside the store: inside it, every marker file would
# be a non-Zarr object that Zarr (and xarray through it) warns about when listing the store.
DONE_SUFFIX = ".done"
OLD_DONE_GROUP = "done"  # the group inside the store where earlier versions kept the markers
DONE_KINDS = ("sample", "check")
# name -> (per-sample shape key, dtype, fill value)
ARRAYS = {
    "latent": ("latent_shape", "float32", np.nan),
    "seismic": ("seismic_shape", "float32", np.nan),
    "velocity": ("velocity_shape", "float32", np.nan),
    "seismic_simulated": ("seismic_shape", "float32", np.nan),
    "deviation": (None, "float64", np.nan),
    "seed": (None, "int64", -1),
    "index_in_shard": (None, "int64", -1),
    "valid": (None, "bool", False),
    "family": (None, "int16", -1),  # FAMILY_NAMES code of the nearest true pair (physics filter); -1: not assigned
}
# name -> its Zarr dimension_names
DIMENSIONS = {
    "latent": (dims.PAIR, *dims.LATENT),
    "seismic": (dims.PAIR, *dims.SEISMIC),
    "velocity": (dims.PAIR, *dims.VELOCITY),
    "seismic_simulated": (dims.PAIR, *dims.SEISMIC),
    **{name: (dims.PAIR,) for name in ("deviation", "seed", "index_in_shard", "valid", "family")},
}
SAMPLE_ARRAYS = ("latent", "seismic", "velocity", "seed", "index_in_shard")  # written by sample_shard
CHECK_ARRAYS = ("seismic_simulated", "deviation")  # by check_shard; valid and family by the physics filter
MAX_BLOCK = 256  # rows per Zarr shard when the config leaves it to us (~200 MB of seismic)


def num_shards(n: int, shard_size: int) -> int:
    """How many shards of `shard_size` samples cover n samples (the last may be partial)."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}")
    return -(-n // shard_size)


def shard_range(k: int, shard_size: int, n: int) -> range:
    """The rows of shard k: [k * shard_size, min((k + 1) * shard_size, n))."""
    count = num_shards(n, shard_size)
    if not 0 <= k < count:
        raise ValueError(f"shard index {k} is outside [0, {count - 1}] ({n} samples in shards of {shard_size})")
    return range(k * shard_size, min((k + 1) * shard_size, n))


def default_block(shard_size: int, largest: int = MAX_BLOCK) -> int:
    """The largest divisor of shard_size that is at most `largest` rows."""
    return max(b for b in range(1, min(shard_size, largest) + 1) if shard_size % b == 0)


def check_block(block: int, shard_size: int, key: str = "sampling.store_block") -> int:
    if block < 1 or shard_size % block:
        raise ValueError(f"{key} ({block}) must be a positive divisor of sampling.shard_size ({shard_size}), "
                         "so that every sampling job owns whole Zarr shards")
    return block


def array_attributes(representation: Representation | None = None) -> dict[str, dict]:
    """Each array's meaning and units, stored as its Zarr attributes (xarray's attrs). With
    the representation, the seismic and velocity attributes hold the constants that map them
    back to OpenFWI's raw amplitudes and m/s."""
    model_space = ("the model space: OpenFWI's seismic, resized to (time, receiver), log-compressed as "
                   "sign(a) * log1p(|a|) and min-max normalised to [-1, 1] with the train split's constants")
    to_amplitudes = ("OpenFWI's raw amplitudes a: y = (x + 1) / 2 * (seismic_log_max - seismic_log_min) + "
                     "seismic_log_min; a = sign(y) * expm1(|y|); resized bilinearly to 1000 time samples x 70 "
                     "receivers (wavediffusion.data.transforms.seismic_from_model)")
    seismic_constants = ({"seismic_log_min": representation.seismic_log_min,
                          "seismic_log_max": representation.seismic_log_max, "openfwi_shots": list(representation.shots)}
                         if representation is not None else
                         {"constants": "the representation attribute of the dataset store the autoencoder learnt"})
    velocity_constants = ({"velocity_min_m_s": representation.velocity_min,
                           "velocity_max_m_s": representation.velocity_max}
                          if representation is not None else
                          {"constants": "the representation attribute of the dataset store the autoencoder learnt"})
    seismic = {"units": "1", "description": model_space, "to_openfwi": to_amplitudes, **seismic_constants}
    return {
        "latent": {"long_name": "latent decoded into the pair: Stage 2's sample z / scale_factor", "units": "1",
                   "description": "the Stage-1 decoder's input; scale_factor is in each shard's marker and the "
                                  "manifest"},
        "seismic": {"long_name": "seismic data decoded by the Stage-1 autoencoder", **seismic},
        "velocity": {"long_name": "velocity map decoded by the Stage-1 autoencoder", "units": "1",
                     "description": "normalised velocity: -1 is velocity_min_m_s, +1 velocity_max_m_s, on a resized "
                                    "(depth, lateral) grid",
                     "to_openfwi": "m/s: (x + 1) / 2 * (velocity_max_m_s - velocity_min_m_s) + velocity_min_m_s, "
                                   "resized bilinearly to OpenFWI's 70 x 70 grid of 10 m cells "
                                   "(wavediffusion.data.transforms.velocity_from_model)",
                     **velocity_constants},
        "seismic_simulated": {"long_name": "F(velocity): the acoustic simulation (deepwave, OpenFWI's acquisition) "
                                           "of the stored velocity in m/s, mapped into the model space of seismic",
                              **seismic},
        "deviation": {"long_name": "PDE deviation", "units": "1",
                      "description": "mean squared error between seismic and seismic_simulated in the model space "
                                     "(the paper's metric); NaN until the shard is checked"},
        "seed": {"long_name": "seed of the sampling job that made the pair",
                 "description": "wavediffusion.seeds.derive_seed(settings seed, Stream.SAMPLING_SHARD, shard); "
                                "-1 until sampled"},
        "index_in_shard": {"long_name": "row within its sampling shard",
                           "description": "row - shard * shard_size; -1 until sampled"},
        "valid": {"long_name": "accepted by the physics filter",
                  "description": "the filter's settings are the root attribute physics_filter; False until it ran"},
        "family": {"long_name": "family of the nearest true velocity map (the physics filter's)",
                   "description": "a code into flag_meanings; -1 until assigned",
                   "flag_values": list(range(len(FAMILY_NAMES))), "flag_meanings": " ".join(FAMILY_NAMES)},
    }


def create_pairs_store(path: str | Path, n_pairs: int, shard_size: int, latent_shape, seismic_shape, velocity_shape,
                       block: int | None = None, attrs: dict | None = None, overwrite: bool = False,
                       representation: Representation | None = None) -> zarr.Group:
    """Create the empty store (all arrays, no done markers). `block`: rows per Zarr shard
    (a divisor of shard_size; default: default_block). `representation`: that of the data
    the autoencoder learnt, recorded so that the store maps back to OpenFWI's units by itself.
    Refuses an existing path unless `overwrite` (which deletes it). Any markers of an
    earlier store at `path` are deleted."""
    path = Path(path)
    if n_pairs < 1 or shard_size < 1:
        raise ValueError(f"n_pairs and shard_size must be at least 1, got {n_pairs} and {shard_size}")
    block = check_block(block, shard_size) if block is not None else default_block(shard_size)
    shapes = {"latent_shape": tuple(latent_shape), "seismic_shape": tuple(seismic_shape),
              "velocity_shape": tuple(velocity_shape)}
    if representation is not None and (shapes["seismic_shape"], shapes["velocity_shape"]) != (
            tuple(representation.seismic_shape), tuple(representation.velocity_shape)):
        raise ValueError(f"seismic {shapes['seismic_shape']} and velocity {shapes['velocity_shape']} differ from the "
                         f"representation's {representation.seismic_shape} and {representation.velocity_shape}")
    if path.exists():
        if not overwrite:
            raise FileExistsError(f"{path} exists; refusing to overwrite a pairs store (pass overwrite=True)")
        shutil.rmtree(path)
    # Snakemake deletes the store, not its markers, before rerunning the rule: old markers
    # must not mark the new store's shards done
    shutil.rmtree(done_folder(path), ignore_errors=True)
    root = zarr.open_group(str(path), mode="w-")
    attributes = array_attributes(representation)
    for name, (shape_key, dtype, fill) in ARRAYS.items():
        sample_shape = shapes[shape_key] if shape_key else ()
        inner = (1, *sample_shape) if sample_shape else (block,)
        root.create_array(name, shape=(n_pairs, *sample_shape), chunks=inner, shards=(block, *sample_shape),
                          dtype=dtype, fill_value=fill, compressors=integrity.COMPRESSORS,
                          dimension_names=DIMENSIONS[name], attributes=attributes[name])
    representation_attrs = {"representation": representation.to_attrs()} if representation is not None else {}
    root.attrs.update({**(attrs or {}), "format": FORMAT, "num_pairs": int(n_pairs), "shard_size": int(shard_size),
                       "block": int(block), integrity.ATTRIBUTE: integrity.VERSION,
                       "num_shards": num_shards(n_pairs, shard_size),
                       **{key: list(value) for key, value in shapes.items()}, **representation_attrs,
                       "description": "generated seismic-velocity pairs (WaveDiffusion); completion markers of its "
                                      f"sampling and checking jobs in the folder {path.name}{DONE_SUFFIX} beside it"})
    done_folder(path).mkdir()
    return root


class BlockWriter:
    """Writes one job's consecutive rows [start, stop) a whole Zarr shard (block) at a time.

    `append` takes any number of rows (a sampler batch) and writes every block it completes;
    `close` writes the last, possibly partial, block (the store's final rows). Each block is
    written once, whole, so Zarr never reads back and rewrites a shard file.
    """

    def __init__(self, root: zarr.Group, rows: range):
        self.root = root
        self.block = int(root.attrs["block"])
        if rows.start % self.block:
            raise ValueError(f"rows start at {rows.start}, not at a block boundary (block {self.block})")
        self.rows = rows
        self.position = rows.start  # the first row not yet written
        self.buffer: dict[str, list[np.ndarray]] = {}
        self.buffered = 0

    def append(self, rows: dict[str, np.ndarray]) -> None:
        counts = {len(values) for values in rows.values()}
        if len(counts) != 1:
            raise ValueError(f"arrays of different lengths {sorted(counts)} appended together")
        count = counts.pop()
        if self.position + self.buffered + count > self.rows.stop:
            raise ValueError(f"{count} more rows would pass the end of rows {self.rows.start}..{self.rows.stop}")
        if self.buffer and set(rows) != set(self.buffer):
            raise ValueError(f"appended arrays {sorted(rows)} differ from the earlier {sorted(self.buffer)}")
        for name, values in rows.items():
            self.buffer.setdefault(name, []).append(values)
        self.buffered += count
        while self.buffered >= self.block:
            self._write(self.block)

    def close(self) -> None:
        if self.position + self.buffered != self.rows.stop:
            raise RuntimeError(f"closing at row {self.position + self.buffered}, expected {self.rows.stop}")
        if self.buffered:
            self._write(self.buffered)

    def _write(self, count: int) -> None:
        for name, parts in self.buffer.items():
            values = np.concatenate(parts)
            self.root[name][self.position : self.position + count] = values[:count]
            self.buffer[name] = [values[count:]]
        self.position += count
        self.buffered -= count


def open_pairs_store(path: str | Path, mode: str = "r+") -> zarr.Group:
    """Open an existing pairs store, with a clear error when it is not one. Read-only, it is
    also refused when a shard file of a finished job is gone (the writers, mode r+, check the
    rows they read themselves)."""
    root = open_zarr_store(path, "pairs store", "create_pairs_store", mode)
    if root.attrs.get("format") != FORMAT:
        raise ValueError(f"{path}: not a pairs store (format {root.attrs.get('format')!r}, expected {FORMAT!r})")
    if (Path(path) / OLD_DONE_GROUP / "zarr.json").exists():
        raise ValueError(f"{path}: its completion markers are inside it, where earlier versions kept them; "
                         f"move {Path(path) / OLD_DONE_GROUP}/*.json into {done_folder(path)}/ and delete "
                         f"{Path(path) / OLD_DONE_GROUP}")
    if mode == "r":
        integrity.check_complete(path, root, written_rows(path, root), lambda damage: damage_remedy(root, damage))
    return root


def accepted_rows(root: zarr.Group, store: str | Path) -> np.ndarray:
    """The rows of the pairs the physics filter accepted (`valid`), in order, of an opened
    pairs store (`store`: its path, for the message); refuses a store the filter has not run on."""
    if "physics_filter" not in root.attrs:
        raise RuntimeError(f"{store}: the physics filter has not been applied (no 'physics_filter' attribute); "
                           "run the physics_report rule first")
    return np.flatnonzero(root["valid"][:])


def checked_rows(root: zarr.Group, store: str | Path) -> np.ndarray:
    """The rows the physics check measured, in order, of an opened pairs store: those of the
    shards with a 'check' marker, with a recorded sampling seed and a finite deviation, i.e.
    every pair the filter judged (accepted_rows' superset; the filter arms draw from it
    without the filter)."""
    n, size = int(root.attrs["num_pairs"]), int(root.attrs["shard_size"])
    checked = np.zeros(n, dtype=bool)
    for k in done_shards(store, "check", num_shards(n, size)):
        rows = shard_range(k, size, n)
        checked[rows.start:rows.stop] = True
    return np.flatnonzero(checked & (root["seed"][:] >= 0) & np.isfinite(root["deviation"][:]))


def written_rows(store: str | Path, root: zarr.Group) -> dict[str, list[range]]:
    """The rows of each array that finished jobs wrote: the sampled shards' rows of
    SAMPLE_ARRAYS, the checked shards' rows of CHECK_ARRAYS, and every row of valid (and
    family) once the physics filter has run."""
    n, size = int(root.attrs["num_pairs"]), int(root.attrs["shard_size"])
    rows = {name: [] for name in ARRAYS}
    for kind, names in (("sample", SAMPLE_ARRAYS), ("check", CHECK_ARRAYS)):
        for k in done_shards(store, kind, num_shards(n, size)):
            for name in names:
                rows[name].append(shard_range(k, size, n))
    applied = root.attrs.get("physics_filter")
    if applied is not None:
        rows["valid"].append(range(n))
        if applied.get("family_assigned"):
            rows["family"].append(range(n))
    return {name: ranges for name, ranges in rows.items() if ranges}


def damage_remedy(root: zarr.Group, damage: list[integrity.Damage]) -> str:
    """What rewrites damaged rows: the sampling (and checking) jobs of their shards, or the physics report."""
    size = int(root.attrs["shard_size"])
    shards = sorted({k for d in damage if d.array in SAMPLE_ARRAYS + CHECK_ARRAYS
                     for k in range(d.rows.start // size, (d.rows.stop - 1) // size + 1)})
    parts = []
    if shards:
        parts.append(f"Shard(s) {shards} must be sampled again: delete their records shards/sample-<k>.json and "
                     "shards/check-<k>.json beside the store and rerun the workflow (rules sample_shard, check_shard)")
    if any(d.array in ("valid", "family") for d in damage):
        parts.append("The physics filter's mask must be written again: rerun the physics_report rule "
                     "(snakemake --forcerun physics_report)")
    return ". ".join(parts) + "."


def done_folder(store: str | Path) -> Path:
    """The folder of the store's completion markers: <store>.done, beside the store."""
    store = Path(store)
    return store.with_name(store.name + DONE_SUFFIX)


def _marker(store: str | Path, kind: str, k: int) -> Path:
    if kind not in DONE_KINDS:
        raise ValueError(f"unknown done kind {kind!r}; one of {DONE_KINDS}")
    return done_folder(store) / f"{kind}-{int(k):05d}.json"


def is_done(store: str | Path, kind: str, k: int) -> bool:
    return _marker(store, kind, k).exists()


def read_done(store: str | Path, kind: str, k: int) -> dict:
    return json.loads(_marker(store, kind, k).read_text())


def mark_done(store: str | Path, kind: str, k: int, info: dict) -> None:
    """Record shard k's `kind` job as complete (atomically; call after its data is written)."""
    marker = _marker(store, kind, k)
    write_json({"shard": int(k), "kind": kind, **info}, marker)


def clear_done(store: str | Path, kind: str, k: int) -> None:
    """Remove shard k's `kind` marker (before its data is rewritten)."""
    _marker(store, kind, k).unlink(missing_ok=True)


def done_shards(store: str | Path, kind: str, count: int) -> list[int]:
    return [k for k in range(count) if is_done(store, kind, k)]


class BackgroundWriter:
    """A BlockWriter whose appends run in one worker thread, in order: compressing and
    writing a batch overlaps the GPU's work on the next one. At most `depth` batches wait
    in memory; an error in the thread is raised by the next append or by close.
    `busy_seconds` is the thread's time spent writing."""

    def __init__(self, writer: BlockWriter, depth: int = 2):
        self.writer = writer
        self.depth = depth
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer")
        self.pending: deque = deque()
        self.busy_seconds = 0.0

    def _append(self, rows: dict[str, np.ndarray]) -> None:
        started = time.perf_counter()
        self.writer.append(rows)
        self.busy_seconds += time.perf_counter() - started

    def append(self, rows: dict[str, np.ndarray]) -> None:
        while len(self.pending) >= self.depth:
            self.pending.popleft().result()
        self.pending.append(self.pool.submit(self._append, rows))

    def close(self) -> None:
        """Wait for every append, then write the last block."""
        try:
            while self.pending:
                self.pending.popleft().result()
            started = time.perf_counter()
            self.writer.close()
            self.busy_seconds += time.perf_counter() - started
        finally:
            self.pool.shutdown(cancel_futures=True)
