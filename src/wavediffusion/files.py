"""Atomic writes: a result appears under its final name complete, or not at all."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_directory(final: str | Path):
    """Yield a temporary sibling path; on success it replaces `final`, on error it is removed.

    A directory that failed half-way never appears under its final name, and one that
    already exists there is only replaced once the new one is complete.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


@contextmanager
def atomic_file(final: str | Path):
    """Yield a temporary sibling file path; on success it is renamed to `final`."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}{final.suffix}")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, final)


def write_csv(rows: list[dict], path: str | Path, columns: tuple[str, ...] | list[str]) -> None:
    """Write rows (dicts keyed by `columns`) as a CSV file, atomically."""
    with atomic_file(path) as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(columns))
            writer.writeheader()
            writer.writerows(rows)


def read_csv(path: str | Path) -> list[dict]:
    """A CSV file's rows as dicts of strings (what write_csv wrote)."""
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def write_json(data: dict, path: str | Path) -> None:
    """Write `data` as indented, key-sorted JSON, atomically (records, markers, manifests)."""
    with atomic_file(path) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def write_npz(path: str | Path, **arrays) -> None:
    """Write `arrays` as an .npz file, atomically (through a handle: np.savez would add .npz
    to a temporary name)."""
    import numpy as np

    with atomic_file(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)


def combine_csv(tables: list[str | Path], out: str | Path) -> None:
    """Concatenate CSV files that share one header into `out`, atomically."""
    rows, columns = [], None
    for table in tables:
        with open(table, newline="") as handle:
            reader = csv.DictReader(handle)
            if columns is None:
                columns = reader.fieldnames
            elif reader.fieldnames != columns:
                raise ValueError(f"{table}: columns {reader.fieldnames} differ from {tables[0]}'s {columns}")
            rows.extend(reader)
    write_csv(rows, out, columns)


def sha256_of(path: str | Path) -> str:
    """Hex sha256 of a file, read in 4 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while piece := handle.read(1 << 22):
            digest.update(piece)
    return digest.hexdigest()
