"""OpenFWI native layout -> one Zarr dataset store (the `preprocess` rule).

Three passes over the source files, each streaming block by block:
  1. headers: every .npy file's shape, dtype and length, before anything is read or written;
  2. values and statistics: NaN/Inf and the velocity range on every split, and the
     min/max of the log-transformed resized train seismic (the normalisation constants);
  3. writing, into a temporary store that replaces the final one only when complete.
"""

from __future__ import annotations

import json
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import zarr
from tqdm import tqdm

from .families import FAMILY_NAMES, SEISMIC_SHAPE, VELOCITY_MAX, VELOCITY_MIN, VELOCITY_SHAPE, get_family
from .openfwi import LocalFamily, local_family
from ..files import atomic_directory, sha256_of
from . import integrity
from .store import SPLITS, create_split_arrays
from .transforms import Representation, seismic_log_resized, seismic_to_model, velocity_to_model

VELOCITY_TOLERANCE = 1.0  # m/s beyond OpenFWI's 1500-4500 still accepted (float rounding)
TEST_SPLIT_STREAM = 1  # keeps the test draw's random stream apart from val's, which uses (seed, family)


@dataclass(frozen=True)
class PreprocessSettings:
    families: tuple[str, ...]
    shots: tuple[int, ...] = (0, 2, 4)
    time_samples: int = 1024
    receivers: int = 64
    velocity_size: int = 64
    samples_per_shard: int = 256
    max_train_per_family: int | None = None
    max_test_per_family: int | None = None
    val_fraction: float = 0.1
    seed: int = 0
    source: str = "embedded"  # provenance only: where the OpenFWI-layout files came from


@dataclass(frozen=True)
class SampleRef:
    """One sample of the source: which files, which row, which family."""

    seismic_path: Path
    velocity_path: Path
    row: int
    family: str
    source_index: int  # position in its family's source split (the whole folder where maps are split here)


# --- pass 1: headers ----------------------------------------------------------------------


def npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a .npy file; raise ValueError naming the file if it is unreadable or truncated."""
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(handle)
            data_start = handle.tell()
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable .npy file ({error})") from error
    expected = data_start + int(np.prod(shape)) * dtype.itemsize
    actual = path.stat().st_size
    if actual < expected:
        raise ValueError(f"{path}: truncated .npy file: {actual} bytes, header promises {expected}")
    if fortran:
        raise ValueError(f"{path}: Fortran-ordered arrays are not OpenFWI's layout")
    return tuple(shape), dtype


def check_pair_headers(seismic_path: Path, velocity_path: Path) -> int:
    """Validate one (seismic, velocity) file pair against OpenFWI's layout; return its sample count."""
    s_shape, s_dtype = npy_header(seismic_path)
    v_shape, v_dtype = npy_header(velocity_path)
    if len(s_shape) != 4 or s_shape[1:] != SEISMIC_SHAPE:
        raise ValueError(f"{seismic_path}: seismic shape {s_shape}, expected (N, {', '.join(map(str, SEISMIC_SHAPE))})")
    if len(v_shape) != 4 or v_shape[1:] != VELOCITY_SHAPE:
        raise ValueError(f"{velocity_path}: velocity shape {v_shape}, expected (N, {', '.join(map(str, VELOCITY_SHAPE))})")
    for path, dtype in ((seismic_path, s_dtype), (velocity_path, v_dtype)):
        if dtype != np.float32:
            raise ValueError(f"{path}: dtype {dtype}, expected float32")
    if s_shape[0] != v_shape[0]:
        raise ValueError(
            f"{seismic_path} holds {s_shape[0]} samples but its velocity file {velocity_path} holds {v_shape[0]}"
        )
    return s_shape[0]


def maps_of(pairs: list[tuple[Path, Path]], family: str) -> list[SampleRef]:
    """Every map of the file pairs, in order, after the headers check; source_index counts from 0."""
    samples: list[SampleRef] = []
    for seismic_path, velocity_path in pairs:
        count = check_pair_headers(Path(seismic_path), Path(velocity_path))
        samples += [SampleRef(Path(seismic_path), Path(velocity_path), row, family, len(samples) + row) for row in range(count)]
    return samples


def split_maps(local: LocalFamily, family: str, seed: int) -> dict[str, list[SampleRef]]:
    """train/test of a folder that splits no files: a seeded permutation of all its maps picks
    OpenFWI's own test fraction of them, so each map is in exactly one split."""
    maps = maps_of(local.pairs_to_split, family)
    if len(maps) < 2:
        raise ValueError(
            f"OpenFWI {family}: {local.folder} holds {len(maps)} map(s); train and test need one each at least. "
            "Add files, or write a split.json naming the train and test files"
        )
    test_fraction = get_family(family).test_fraction
    n_test = min(max(int(round(test_fraction * len(maps))), 1), len(maps) - 1)
    rng = np.random.default_rng([seed, FAMILY_NAMES.index(family), TEST_SPLIT_STREAM])
    test_rows = set(rng.permutation(len(maps))[:n_test].tolist())
    # loud on purpose: a test set drawn here is not OpenFWI's, so scores are not comparable with it
    warnings.warn(
        f"OpenFWI {family}: {local.folder} has no split.json and not every file of OpenFWI's own train/test "
        f"split ({local.official_missing} missing), so its {len(maps)} maps ({len(local.pairs_to_split)} file "
        f"pair(s)) are split here by seed {seed}: {n_test} test, {len(maps) - n_test} train (OpenFWI's test "
        f"fraction {test_fraction:.3f}). Scores are not comparable with OpenFWI's test set; add a split.json "
        "to choose the test files yourself"
    )
    return {
        "train": [m for i, m in enumerate(maps) if i not in test_rows],
        "test": [m for i, m in enumerate(maps) if i in test_rows],
    }


def plan_family(root: Path, family: str, settings: PreprocessSettings) -> tuple[dict[str, list[SampleRef]], str]:
    """The samples of one family per split (train/val/test), after the headers check, and how
    train and test were divided (LocalFamily.split_by: "split.json", "openfwi" or "maps")."""
    local = local_family(root, family)
    if local.file_split is None:
        sources = split_maps(local, family, settings.seed)
    else:
        sources = {split: maps_of(local.file_split[split], family) for split in ("train", "test")}
    refs: dict[str, list[SampleRef]] = {}
    for split, limit in (("train", settings.max_train_per_family), ("test", settings.max_test_per_family)):
        samples = sources[split]
        if not samples:
            raise ValueError(f"{root}: family {family} has no {split} samples")
        refs[split] = samples[:limit] if limit else samples
    # val: a seeded random subset of train, the same for a given (seed, family)
    train = refs["train"]
    n_val = int(round(settings.val_fraction * len(train))) if settings.val_fraction > 0 else 0
    n_val = min(max(n_val, 1 if settings.val_fraction > 0 else 0), len(train) - 1)
    rng = np.random.default_rng([settings.seed, FAMILY_NAMES.index(family)])
    val_rows = set(rng.choice(len(train), size=n_val, replace=False).tolist()) if n_val else set()
    refs["val"] = [r for i, r in enumerate(train) if i in val_rows]
    refs["train"] = [r for i, r in enumerate(train) if i not in val_rows]
    return refs, local.split_by


# --- reading blocks -----------------------------------------------------------------------


class BlockReader:
    """Reads samples by SampleRef from memory-mapped .npy files (each file mapped once; thread-safe)."""

    def __init__(self):
        self._maps: dict[Path, np.ndarray] = {}
        self._lock = threading.Lock()

    def _map(self, path: Path) -> np.ndarray:
        with self._lock:
            if path not in self._maps:
                self._maps[path] = np.load(path, mmap_mode="r")
            return self._maps[path]

    def read(self, refs: list[SampleRef]) -> tuple[np.ndarray, np.ndarray]:
        """(B, 5, 1000, 70) seismic and (B, 1, 70, 70) velocity of the refs, checked for bad values."""
        seismic = np.stack([self._map(r.seismic_path)[r.row] for r in refs])
        velocity = np.stack([self._map(r.velocity_path)[r.row] for r in refs])
        for ref, s, v in zip(refs, seismic, velocity):
            where = f"sample {ref.row}"
            if not np.isfinite(s).all():
                raise ValueError(f"{ref.seismic_path}: {where} holds NaN or Inf")
            if not np.isfinite(v).all():
                raise ValueError(f"{ref.velocity_path}: {where} holds NaN or Inf")
            if v.min() < VELOCITY_MIN - VELOCITY_TOLERANCE or v.max() > VELOCITY_MAX + VELOCITY_TOLERANCE:
                raise ValueError(
                    f"{ref.velocity_path}: {where} has velocities {v.min():.1f}..{v.max():.1f} m/s, "
                    f"outside OpenFWI's {VELOCITY_MIN:.0f}-{VELOCITY_MAX:.0f} m/s"
                )
        return seismic, velocity


def blocks(refs: list[SampleRef], size: int):
    """(start, refs[start:start+size]) in order: blocks align with Zarr shards."""
    for start in range(0, len(refs), size):
        yield start, refs[start : start + size]


def in_parallel(function, items: list, workers: int, desc: str, progress: bool) -> list:
    """function(item) for every item on `workers` threads, results in order, with a progress bar.

    Threads suffice: reading memory-mapped files, torch's resize and Zarr's compression
    all release the GIL. Writers never share a Zarr shard because blocks align with shards.
    """
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(tqdm(pool.map(function, items), total=len(items), desc=desc, disable=not progress))


def measure_seismic_range(
    reader: BlockReader, refs: dict[str, list[SampleRef]], rep: Representation, block: int, workers: int, progress: bool
) -> tuple[float, float]:
    """Check every split's values; return min/max of the log-resized train seismic."""

    def check(part: list[SampleRef]) -> tuple[float, float]:
        seismic, _ = reader.read(part)  # raises on bad values
        if part[0] not in train:
            return np.inf, -np.inf
        log_resized = seismic_log_resized(torch.from_numpy(seismic), rep)
        return float(log_resized.min()), float(log_resized.max())

    train = set(refs["train"])
    parts = [part for split in SPLITS for _, part in blocks(refs[split], block)]
    ranges = in_parallel(check, parts, workers, "check values", progress)
    lo, hi = min(r[0] for r in ranges), max(r[1] for r in ranges)
    if not hi > lo:
        raise ValueError(f"train seismic is constant ({lo}); cannot normalise")
    return lo, hi


def write_split(
    group: zarr.Group, reader: BlockReader, refs: list[SampleRef], rep: Representation, block: int, workers: int, progress: bool
) -> None:
    group["family"][:] = np.array([FAMILY_NAMES.index(r.family) for r in refs], dtype=np.int16)
    group["source_index"][:] = np.array([r.source_index for r in refs], dtype=np.int32)

    def write(item: tuple[int, list[SampleRef]]) -> None:
        start, part = item
        seismic, velocity = reader.read(part)
        stop = start + len(part)
        group["seismic"][start:stop] = seismic_to_model(torch.from_numpy(seismic), rep).numpy()
        group["velocity"][start:stop] = velocity_to_model(torch.from_numpy(velocity), rep).numpy()
        group["velocity_native"][start:stop] = velocity

    in_parallel(write, list(blocks(refs, block)), workers, f"write {group.basename}", progress)


def preprocess(root: str | Path, out: str | Path, settings: PreprocessSettings, workers: int = 1, progress: bool = True) -> Representation:
    """Build the dataset store at `out` from the OpenFWI-layout copy under `root` (`workers` threads)."""
    root = Path(root)
    refs: dict[str, list[SampleRef]] = {split: [] for split in SPLITS}
    split_by: dict[str, str] = {}
    for family in settings.families:
        family_refs, split_by[family] = plan_family(root, family, settings)
        for split in SPLITS:
            refs[split] += family_refs[split]

    reader = BlockReader()
    partial = Representation(tuple(settings.shots), settings.time_samples, settings.receivers, settings.velocity_size)
    lo, hi = measure_seismic_range(reader, refs, partial, settings.samples_per_shard, workers, progress)
    rep = Representation(partial.shots, partial.time_samples, partial.receivers, partial.velocity_size, lo, hi)

    sources = sorted({p for split in SPLITS for r in refs[split] for p in (r.seismic_path, r.velocity_path)})
    provenance = {
        "source": settings.source,
        "root": str(root.resolve()),
        "split_by": split_by,  # per family: "split.json", "openfwi" (its own files) or "maps" (split by seed)
        "files": [
            {"path": str(p.relative_to(root)) if p.is_relative_to(root) else str(p), "bytes": p.stat().st_size, "sha256": digest}
            for p, digest in zip(sources, in_parallel(sha256_of, sources, workers, "checksums", progress))
        ],
    }
    with atomic_directory(out) as tmp:
        store = zarr.open_group(str(tmp), mode="w")
        store.attrs.update(
            {
                "representation": rep.to_attrs(),
                "families": list(FAMILY_NAMES),
                "families_used": list(settings.families),
                "counts": {split: len(refs[split]) for split in SPLITS},
                "settings": json.loads(json.dumps(asdict(settings))),
                "provenance": provenance,
                integrity.ATTRIBUTE: integrity.VERSION,
            }
        )
        for split in SPLITS:
            group = store.create_group(split)
            create_split_arrays(group, len(refs[split]), rep, settings.samples_per_shard)
            write_split(group, reader, refs[split], rep, settings.samples_per_shard, workers, progress)
    return rep
