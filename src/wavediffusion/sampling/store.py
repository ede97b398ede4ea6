"""The pairs store: one Zarr v3 group of generated pairs, written shard by shard.

Layout (N = num_pairs, s = shard_size; every array's Zarr shard along axis 0 holds exactly
s samples, so sampling shard k = Zarr shard k of every array = one writer):

    latent            (N, C, h, w)  float32  chunks (1, C, h, w)  shards (s, C, h, w)   z / scale_factor
    seismic           (N, S, T, R)  float32  chunks (1, S, T, R)  shards (s, S, T, R)   decoded, [-1, 1]
    velocity          (N, 1, V, V)  float32  chunks (1, 1, V, V)  shards (s, 1, V, V)   decoded, [-1, 1]
    seismic_simulated (N, S, T, R)  float32  chunks (1, S, T, R)  shards (s, S, T, R)   F(velocity), model space
    deviation         (N,)          float64  chunks (s,)          shards (s,)           PDE deviation (MSE)
    seed              (N,)          int64    chunks (s,)          shards (s,)           the shard's seed
    index_in_shard    (N,)          int64    chunks (s,)          shards (s,)           row - k * s

Float arrays are filled with NaN and integer arrays with -1 until written. The last shard
may be partial (N not a multiple of s).

Completion: `done/<kind>-<k:05d>.json` inside the store (`done` is an empty Zarr group, so
the root's member listing stays clean), one small file per shard and job kind ("sample",
"check"), written atomically *after* the shard's data. A shard without
its marker is incomplete, whatever its arrays hold (e.g. a job killed mid-write), and is
redone. One file per shard, not group attributes: attribute writes from several
processes would race (read-modify-write of one zarr.json).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import zarr

from ..files import write_json

FORMAT = "wavediffusion-pairs-v1"
DONE_DIR = "done"
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
}


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


def create_pairs_store(path: str | Path, n_pairs: int, shard_size: int, latent_shape, seismic_shape, velocity_shape,
                       attrs: dict | None = None, overwrite: bool = False) -> zarr.Group:
    """Create the empty store (all arrays, no done markers). Refuses an existing path
    unless `overwrite` (which deletes it, done markers included)."""
    path = Path(path)
    if n_pairs < 1 or shard_size < 1:
        raise ValueError(f"n_pairs and shard_size must be at least 1, got {n_pairs} and {shard_size}")
    if path.exists():
        if not overwrite:
            raise FileExistsError(f"{path} exists; refusing to overwrite a pairs store (pass overwrite=True)")
        shutil.rmtree(path)
    shapes = {"latent_shape": tuple(latent_shape), "seismic_shape": tuple(seismic_shape),
              "velocity_shape": tuple(velocity_shape)}
    root = zarr.open_group(str(path), mode="w-")
    for name, (shape_key, dtype, fill) in ARRAYS.items():
        sample_shape = shapes[shape_key] if shape_key else ()
        inner = (1, *sample_shape) if sample_shape else (shard_size,)
        root.create_array(name, shape=(n_pairs, *sample_shape), chunks=inner, shards=(shard_size, *sample_shape),
                          dtype=dtype, fill_value=fill)
    root.attrs.update({**(attrs or {}), "format": FORMAT, "num_pairs": int(n_pairs), "shard_size": int(shard_size),
                       "num_shards": num_shards(n_pairs, shard_size),
                       **{key: list(value) for key, value in shapes.items()}})
    # a (Zarr) group of its own, so that listing the store's members does not trip over it
    root.create_group(DONE_DIR, attributes={"description": "completion markers <kind>-<shard>.json, one per "
                                            "shard and job kind, written after the shard's data"})
    return root


def open_pairs_store(path: str | Path, mode: str = "r+") -> zarr.Group:
    """Open an existing pairs store, with a clear error when it is not one."""
    path = Path(path)
    if not (path / "zarr.json").exists():
        raise FileNotFoundError(f"{path}: no pairs store here (no zarr.json); run the rule that creates it first")
    root = zarr.open_group(str(path), mode=mode)
    if root.attrs.get("format") != FORMAT:
        raise ValueError(f"{path}: not a pairs store (format {root.attrs.get('format')!r}, expected {FORMAT!r})")
    return root


def _marker(store: str | Path, kind: str, k: int) -> Path:
    if kind not in DONE_KINDS:
        raise ValueError(f"unknown done kind {kind!r}; one of {DONE_KINDS}")
    return Path(store) / DONE_DIR / f"{kind}-{int(k):05d}.json"


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
