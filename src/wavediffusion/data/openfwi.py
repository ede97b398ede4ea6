"""OpenFWI's native files: the manifest, the train/test pairs, and finding them on disk.

The manifest (openfwi_manifest.json, built by make_openfwi_manifest.py) lists every native
file of the ten families with its path relative to the family folder, as OpenFWI lays it
out: `FlatVel_A/data/data1.npy` + `FlatVel_A/model/model1.npy`, `FlatFault_A/seis2_1_0.npy`
+ `FlatFault_A/vel2_1_0.npy`.  How a local family folder divides into train and test
(`local_family`): its `split.json` if it has one (written by this workflow for data it
simulates, or by a user); else OpenFWI's own split by file, if every file of it is there;
else every seismic/velocity file pair in the folder, whose maps preprocessing splits by seed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path, PurePosixPath

from ..files import atomic_file
from .families import Family, get_family

MANIFEST_NAME = "openfwi_manifest.json"
SPLIT_FILE_NAME = "split.json"
SPLITS = ("train", "test")


@dataclass(frozen=True)
class ManifestEntry:
    """One native OpenFWI file."""

    family: str  # paper name, e.g. "FlatVel-A"
    split: str  # "train" or "test" (OpenFWI's "val")
    kind: str  # "seismic" or "velocity"
    path: str  # POSIX path relative to the family folder, e.g. "data/data1.npy"
    size: int | None  # bytes, None if unknown
    sha256: str | None  # hex digest, None where none is published
    url: str | None  # direct per-file URL, None where only folder_url is published
    folder_url: str  # where OpenFWI publishes the family (a Google Drive folder)

    @property
    def directory(self) -> str:
        """The family folder name, e.g. "FlatVel_A"."""
        return get_family(self.family).directory

    @property
    def relative_path(self) -> str:
        """Path below a root holding family folders, e.g. "FlatVel_A/data/data1.npy"."""
        return f"{self.directory}/{self.path}"


@lru_cache(maxsize=1)
def _manifest_entries() -> tuple[ManifestEntry, ...]:
    text = resources.files(__package__).joinpath(MANIFEST_NAME).read_text()
    document = json.loads(text)
    folders = {name: info["folder_url"] for name, info in document["families"].items()}
    return tuple(ManifestEntry(**entry, folder_url=folders[entry["family"]]) for entry in document["files"])


def load_manifest() -> list[ManifestEntry]:
    """Every native file of the ten families, in OpenFWI's split order (read once, cached)."""
    return list(_manifest_entries())


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _pair_key(path: str, prefix: str) -> str:
    """The part of a file name after its prefix: "data/data7.npy" -> "7.npy", "vel2_1_0.npy" -> "2_1_0.npy"."""
    name = PurePosixPath(path).name
    if not name.startswith(prefix):
        raise ValueError(f"OpenFWI file {path!r} does not start with {prefix!r}")
    return name[len(prefix) :]


def family_files(
    family_name: str, split: str, manifest: Sequence[ManifestEntry] | None = None
) -> list[tuple[str, str]]:
    """(seismic, velocity) paths relative to the family folder, one pair per native file, in order.

    Pairs are matched by name (data7 <-> model7, seis2_1_0 <-> vel2_1_0), not by position
    alone, so a manifest with a missing or reordered file fails here instead of pairing
    seismic data with the wrong velocity maps.
    """
    family = get_family(family_name)
    _check_split(split)
    manifest = manifest if manifest is not None else _manifest_entries()
    entries = [e for e in manifest if e.family == family.name and e.split == split]
    seismic = [e.path for e in entries if e.kind == "seismic"]
    velocity = [e.path for e in entries if e.kind == "velocity"]
    pairs = list(zip(seismic, velocity))
    if len(seismic) != len(velocity) or any(
        _pair_key(s, family.seismic_prefix) != _pair_key(v, family.velocity_prefix) for s, v in pairs
    ):
        raise ValueError(f"manifest: {family.name} {split}: seismic and velocity files do not pair up")
    if not pairs:
        raise ValueError(f"manifest: {family.name} has no {split} files")
    return pairs


# --- split.json ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SplitFile:
    """The content of a family folder's split.json."""

    family: str
    pairs: dict[str, list[tuple[str, str]]]  # split -> [(seismic, velocity)] relative to the folder


def _checked_pairs(pairs: object, where: str) -> list[tuple[str, str]]:
    """Pairs as tuples of safe relative POSIX paths (no absolute paths, no '..')."""
    if not isinstance(pairs, (list, tuple)):
        raise ValueError(f"{where}: expected a list of [seismic, velocity] pairs, got {type(pairs).__name__}")
    checked = []
    for pair in pairs:
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            raise ValueError(f"{where}: expected a [seismic, velocity] pair of strings, got {pair!r}")
        for p in pair:
            posix = PurePosixPath(p)
            if not p or posix.is_absolute() or ".." in posix.parts or "\\" in p:
                raise ValueError(f"{where}: {p!r} must be a relative POSIX path inside the family folder")
        checked.append((pair[0], pair[1]))
    return checked


def write_split_file(path: str | Path, family: str, pairs: Mapping[str, Sequence[Sequence[str]]]) -> Path:
    """Write split.json at `path` (atomically) for `family` with `pairs` = {"train": [...], "test": [...]}.

    The workflow writes one beside the data it simulates, whose files are not OpenFWI's own
    (other names, possibly fewer than 500 samples per file).
    """
    path = Path(path)
    family = get_family(family).name
    if set(pairs) != set(SPLITS):
        raise ValueError(f"{path}: pairs must have exactly the splits {SPLITS}, got {sorted(pairs)}")
    document = {"family": family}
    for split in SPLITS:
        document[split] = [list(p) for p in _checked_pairs(pairs[split], f"{path} [{split}]")]
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(document, indent=1) + "\n")
    return path


def read_split_file(path: str | Path) -> SplitFile:
    """Read and check a split.json; errors name the file."""
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(document, dict) or "family" not in document:
        raise ValueError(f"{path}: expected {{'family': ..., 'train': [...], 'test': [...]}}")
    try:
        family = get_family(document["family"]).name
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    missing = [s for s in SPLITS if s not in document]
    if missing:
        raise ValueError(f"{path}: missing split(s) {missing}")
    return SplitFile(family, {s: _checked_pairs(document[s], f"{path} [{s}]") for s in SPLITS})


# --- local copies --------------------------------------------------------------------------


def local_family_folder(root: str | Path, family_name: str) -> Path:
    """The family folder under `root`: `root/<directory>`, or `root` itself if it is that folder.

    Accepting the folder itself spares users the common slip of pointing
    data.openfwi_root at `.../FlatVel_A` instead of its parent.
    """
    root = Path(root)
    directory = get_family(family_name).directory
    if (root / directory).is_dir():
        return root / directory
    if root.name == directory and root.is_dir():
        return root
    raise FileNotFoundError(
        f"OpenFWI family {family_name}: no folder {directory}/ under {root} "
        f"(data.openfwi_root must be the folder that holds {directory}/)"
    )


def _find_files(folder: Path, family: Family, wanted: Sequence[tuple[str, str]]) -> tuple[list[tuple[Path, Path]], list[str]]:
    """The (seismic, velocity) pairs of `wanted` found in `folder`, and the relative paths not found.

    A file is taken at its relative path in the folder, else found by name anywhere below it
    (copies are often re-arranged, e.g. without data/ and model/).
    """
    by_name: dict[str, list[Path]] | None = None  # built on the first file not at its path

    def find(relative: str) -> Path | None:
        nonlocal by_name
        direct = folder / relative
        if direct.is_file():
            return direct
        if by_name is None:
            by_name = {}
            for found in sorted(folder.rglob("*.npy")):
                by_name.setdefault(found.name, []).append(found)
        matches = by_name.get(PurePosixPath(relative).name, [])
        if len(matches) > 1:
            listed = ", ".join(str(m) for m in matches)
            raise ValueError(f"OpenFWI {family.name}: {relative} is ambiguous under {folder}: {listed}")
        return matches[0] if matches else None

    pairs, missing = [], []
    for seismic, velocity in wanted:
        found = [find(seismic), find(velocity)]
        missing += [rel for rel, path in zip((seismic, velocity), found) if path is None]
        if None not in found:
            pairs.append((found[0], found[1]))
    return pairs, missing


def local_family_pairs(root: str | Path, family_name: str, split: str) -> list[tuple[Path, Path]]:
    """(seismic, velocity) paths of one split of a local copy, by file: from the family folder's
    split.json if there is one, else from the manifest (OpenFWI's own split).

    Files are found as `_find_files` says. Missing files raise FileNotFoundError naming them
    and the root.
    """
    family = get_family(family_name)
    _check_split(split)
    folder = local_family_folder(root, family.name)
    split_path = folder / SPLIT_FILE_NAME
    if split_path.is_file():
        split_file = read_split_file(split_path)
        if split_file.family != family.name:
            raise ValueError(f"{split_path} is for {split_file.family}, found in the folder of {family.name}")
        wanted = split_file.pairs[split]
        if not wanted:
            raise ValueError(f"{split_path}: no {split} files")
    else:
        wanted = family_files(family.name, split)
    pairs, missing = _find_files(folder, family, wanted)
    if missing:
        shown = "\n  ".join(missing[:20]) + (f"\n  ... and {len(missing) - 20} more" if len(missing) > 20 else "")
        raise FileNotFoundError(
            f"OpenFWI {family.name} {split}: {len(missing)} file(s) missing under {folder} "
            f"(root {Path(root)}):\n  {shown}"
        )
    return pairs


def _natural_order(name: str) -> list:
    """Sort key that puts numbers in numeric order: "2_1_0.npy" before "10_1_0.npy"."""
    # re.split with a group alternates text and digits, so every position compares like with like
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def folder_pairs(folder: Path, family_name: str) -> list[tuple[Path, Path]]:
    """Every (seismic, velocity) file pair anywhere below `folder`, matched by the name after the
    family's prefixes (data7.npy <-> model7.npy, seis2_1_0.npy <-> vel2_1_0.npy), in numeric order.

    A file without its partner, or two files of the same name, is an error naming them: guessing
    would pair seismic data with the wrong velocity maps.
    """
    family = get_family(family_name)
    prefixes = (family.seismic_prefix, family.velocity_prefix)
    by_key: list[dict[str, Path]] = []
    for prefix in prefixes:
        found: dict[str, Path] = {}
        for path in sorted(p for p in folder.rglob(f"{prefix}*.npy") if p.is_file()):
            key = path.name[len(prefix) :]
            if key in found:
                raise ValueError(
                    f"OpenFWI {family.name}: {path.name} is in two places under {folder}: {found[key]} and {path}; "
                    "keep one of them"
                )
            found[key] = path
        by_key.append(found)
    seismic, velocity = by_key
    unpaired = [seismic.get(key) or velocity.get(key) for key in sorted(set(seismic) ^ set(velocity), key=_natural_order)]
    if unpaired:
        listed = "\n  ".join(str(p) for p in unpaired)
        raise ValueError(
            f"OpenFWI {family.name}: under {folder}, each {prefixes[0]}<n>.npy needs a {prefixes[1]}<n>.npy and "
            f"the other way round; these have no partner (add it, or move the file out of the folder):\n  {listed}"
        )
    if not seismic:
        raise FileNotFoundError(
            f"OpenFWI {family.name}: no {prefixes[0]}*.npy / {prefixes[1]}*.npy file pairs under {folder}; "
            "put the family's files there, in OpenFWI's naming"
        )
    return [(seismic[key], velocity[key]) for key in sorted(seismic, key=_natural_order)]


@dataclass(frozen=True)
class LocalFamily:
    """A family folder of a local copy, and how its maps divide into train and test."""

    folder: Path
    split_by: str  # "split.json", "openfwi" (OpenFWI's own files per split) or "maps" (split by seed)
    file_split: dict[str, list[tuple[Path, Path]]] | None  # train/test file pairs; None for "maps"
    pairs_to_split: list[tuple[Path, Path]]  # for "maps": every pair in the folder; else empty
    official_missing: int = 0  # files of OpenFWI's own split not in the folder (why it is "maps")


def _refuse_shared_files(file_split: dict[str, list[tuple[Path, Path]]], where: Path, family: str, fix: str) -> None:
    """Raise if one file feeds two pairs (e.g. both train and test): its maps would be scored on
    the very data the model was trained on. Paths are resolved, so links and copies found by
    name under another folder count as the same file."""
    seen: dict[Path, str] = {}
    for split in SPLITS:
        for pair in file_split[split]:
            for path in pair:
                real = path.resolve()
                if real in seen:
                    places = "both train and test" if seen[real] != split else f"{split} twice"
                    raise ValueError(
                        f"OpenFWI {family}: {where} puts {path.name} ({real}) in {places}, so the same maps would be "
                        f"trained on and tested on; {fix}"
                    )
                seen[real] = split


def local_family(root: str | Path, family_name: str) -> LocalFamily:
    """One family folder of a local copy and its train/test division, chosen in this order:

    1. the folder's split.json, if it has one (a file in both train and test is refused);
    2. OpenFWI's own split by file number (the manifest's), if every one of its files is there;
    3. every seismic/velocity pair in the folder (`folder_pairs`); the caller splits their maps.
    """
    family = get_family(family_name)
    folder = local_family_folder(root, family.name)
    split_path = folder / SPLIT_FILE_NAME
    if split_path.is_file():
        file_split = {split: local_family_pairs(root, family.name, split) for split in SPLITS}
        _refuse_shared_files(file_split, split_path, family.name, f"list each file once in {split_path}, or remove it "
                             "to have the maps split into train and test by the config's seed")
        return LocalFamily(folder, SPLIT_FILE_NAME, file_split, [])
    official = {split: _find_files(folder, family, family_files(family.name, split)) for split in SPLITS}
    missing = sum(len(official[split][1]) for split in SPLITS)
    if missing == 0:
        file_split = {split: official[split][0] for split in SPLITS}
        _refuse_shared_files(file_split, folder, family.name, "replace links by copies, or write a split.json")
        return LocalFamily(folder, "openfwi", file_split, [])
    return LocalFamily(folder, "maps", None, folder_pairs(folder, family.name), missing)
