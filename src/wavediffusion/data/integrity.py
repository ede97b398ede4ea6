"""Damage a Zarr store would otherwise read as data, made visible.

Zarr reads a missing shard file as the fill value and decodes a changed one as other numbers.
The workflow's stores are written so that neither can pass: every chunk carries a crc32c
checksum (Zarr checks it on every read), fill values are ones no data takes (NaN, -1), and
every shard is written even where it equals the fill value -- so a missing shard file is
always damage, found by listing the store. Readers check that listing when they open a
store (milliseconds); `wavediffusion verify` also decodes every shard. Details: docs/data.md.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

# Zarr's default skips writing a chunk equal to the fill value: then a bool array of all
# False, or a family array of all 0, has no file, and its deletion could not be seen.
zarr.config.set({"array.write_empty_chunks": True})

# The root attribute that marks a store written this way (stores written before have none).
ATTRIBUTE = "integrity"
VERSION = "crc32c-all-shards-v1"
COMPRESSORS = (ZstdCodec(), Crc32cCodec())  # Zarr's default compressor, then a checksum of its output
CHECKSUM_ERROR = "Stored and computed checksum do not match"  # the message of Zarr's crc32c codec


@dataclass(frozen=True)
class Damage:
    """One shard of one array that cannot be read as written."""

    array: str  # its path in the store, e.g. "train/seismic"
    rows: range  # the rows (first axis) the shard holds
    problem: str

    def describe(self) -> str:
        return f"{self.array} rows {self.rows.start}..{self.rows.stop - 1}: {self.problem}"


def shard_rows(array: zarr.Array) -> int:
    """Rows (first axis) per shard file."""
    return (array.shards or array.chunks)[0]


def _shard_file(store: Path, array: zarr.Array, i: int) -> Path:
    # the default chunk key encoding, c/<i>/0/0/...: the workflow shards along the first axis only
    trailing = ["0"] * (array.ndim - 1)
    return store / array.path / "c" / str(i) / Path(*trailing) if trailing else store / array.path / "c" / str(i)


def _shards(array: zarr.Array, rows: range | None) -> list[tuple[int, range]]:
    """(index, rows it holds) of each shard file holding some of `rows` (default: all rows)."""
    step = shard_rows(array)
    rows = rows if rows is not None else range(array.shape[0])
    return [(i, range(i * step, min((i + 1) * step, array.shape[0])))
            for i in range(rows.start // step, math.ceil(rows.stop / step))]


def missing_shards(store: str | Path, array: zarr.Array, rows: range | None = None) -> list[Damage]:
    """The shards of `rows` (default: all) of `array` whose file is missing or empty."""
    store = Path(store)
    if any(math.ceil(size / shard) != 1 for size, shard in zip(array.shape[1:], (array.shards or array.chunks)[1:])):
        raise ValueError(f"{store}/{array.path}: sharded along more than the first axis; not a workflow store")
    damage = []
    for i, held in _shards(array, rows):
        path = _shard_file(store, array, i)
        if not path.is_file() or path.stat().st_size == 0:
            damage.append(Damage(array.path, held, f"shard file {path.relative_to(store)} is missing or empty"))
    return damage


def unreadable_shards(array: zarr.Array, rows: range | None = None) -> list[Damage]:
    """The shards of `rows` (default: all) that fail to decode (a checksum or a codec error):
    reads every one, so it costs a full read of the array."""
    damage = []
    for _, held in _shards(array, rows):
        try:
            np.asarray(array[held.start : held.stop])
        except (ValueError, RuntimeError, OSError) as error:
            damage.append(Damage(array.path, held, f"cannot be decoded ({type(error).__name__}: {error})"))
    return damage


def all_rows(root: zarr.Group) -> dict[str, list[range]]:
    """Every row of every array: a store whose arrays are all written whole (dataset, latents)."""
    with warnings.catch_warnings():
        # Snakemake's .snakemake_timestamp in a directory output is no Zarr node: Zarr warns on listing it
        warnings.filterwarnings("ignore", message="Object at .snakemake_timestamp is not recognized")
        members = root.members(max_depth=None)
    return {path: [range(member.shape[0])] for path, member in members if isinstance(member, zarr.Array)}


def find_damage(store: str | Path, root: zarr.Group, written: dict[str, list[range]], decode: bool = False) -> list[Damage]:
    """The damage in the `written` rows of each array (path -> row ranges): missing shard
    files, and with `decode` shards that do not decode."""
    damage = []
    for path, ranges in written.items():
        array = root[path]
        for rows in ranges:
            missing = missing_shards(store, array, rows)
            damage += missing
            if decode:  # a missing shard reads as fill values: already named
                gone = {d.rows for d in missing}
                damage += [d for d in unreadable_shards(array, rows) if d.rows not in gone]
    return damage


def check_complete(store: str | Path, root: zarr.Group, written: dict[str, list[range]],
                   remedy: str | Callable[[list[Damage]], str]) -> None:
    """Raise, naming the store and the shards, when a shard file that was written is gone;
    `remedy` (or remedy(damage)) says what rewrites them. Stores written before these checks
    existed are let through: their missing files may be chunks Zarr skipped as empty."""
    if root.attrs.get(ATTRIBUTE) != VERSION:
        return
    damage = find_damage(store, root, written)
    if damage:
        raise ValueError(damage_message(store, damage, remedy))


def damage_message(store: str | Path, damage: list[Damage], remedy: str | Callable[[list[Damage]], str]) -> str:
    """The store, its damaged shards (the first five) and what rewrites them (`remedy`, or remedy(damage))."""
    remedy = remedy if isinstance(remedy, str) else remedy(damage)
    shown = "; ".join(d.describe() for d in damage[:5]) + (f"; and {len(damage) - 5} more" if len(damage) > 5 else "")
    return f"{store}: damaged, {len(damage)} shard(s): {shown}. {remedy}"
