"""Atomic writes (a result appears under its final name complete, or not at all), and reads
that name the file when it is missing or damaged."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import zarr


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(final: Path) -> None:
    """Remove what killed writers of `final` left beside it (.<name>.tmp-<pid>, .<name>.old-<pid>):
    a process that no longer runs on this machine cannot finish them."""
    for path in final.parent.glob(f".{final.name}.*-*"):
        kind, _, rest = path.name[len(final.name) + 2:].partition("-")
        pid = rest.split(".")[0]
        if kind in ("tmp", "old") and pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)


@contextmanager
def atomic_directory(final: str | Path):
    """Yield a temporary sibling path; on success it replaces `final`, on error it is removed.

    A directory that failed half-way never appears under its final name, and one that
    already exists there is only replaced once the new one is complete.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final)
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
    remove_stale_temporaries(final)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}{final.suffix}")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, final)


def write_csv(rows: list[dict], path: str | Path, columns: tuple[str, ...] | list[str]) -> None:
    """Write rows (dicts keyed by `columns`) as a CSV file, atomically; floats with 7
    significant digits (FLOAT_FORMAT)."""
    with atomic_file(path) as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(columns))
            writer.writeheader()
            writer.writerows({key: readable(value) for key, value in row.items()} for row in rows)


# 7 significant digits: all that the float32 computations behind every table carry, and
# short enough to read (0.001270960 rather than 0.001270960234789527)
FLOAT_FORMAT = ".7g"


def readable(value):
    """A float (Python's or NumPy's) as FLOAT_FORMAT writes it; anything else as it is."""
    is_float = isinstance(value, float) or getattr(getattr(value, "dtype", None), "kind", None) == "f"
    return format(float(value), FLOAT_FORMAT) if is_float else value


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


def open_zarr_store(path: str | Path, kind: str, rule: str, mode: str = "r") -> zarr.Group:
    """A Zarr store the workflow wrote, with errors that name it and the rule that writes it:
    missing, or damaged (an unreadable zarr.json)."""
    import zarr  # here, not at the top: most modules import this one

    path = Path(path)
    if not (path / "zarr.json").exists():
        raise FileNotFoundError(f"{path}: not a {kind} (no zarr.json); run the {rule} rule first")
    try:
        return zarr.open_group(str(path), mode=mode)
    except (ValueError, KeyError, OSError) as error:  # a damaged zarr.json is a JSON error (a ValueError)
        raise ValueError(f"{path}: a damaged {kind} ({type(error).__name__}: {error}); delete it and rerun "
                         f"the {rule} rule") from error


def sha256_of(path: str | Path) -> str:
    """Hex sha256 of a file, read in 4 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while piece := handle.read(1 << 22):
            digest.update(piece)
    return digest.hexdigest()
