"""Preprocessing an OpenFWI-layout tree into the dataset store, and reading it back."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from torch.utils.data import DataLoader

from wavediffusion.data.dataset import PairDataset
from wavediffusion.data.families import FAMILY_NAMES, get_family
from wavediffusion.data.openfwi import write_split_file
from wavediffusion.data.preprocess import PreprocessSettings, plan_family, preprocess
from wavediffusion.data.store import open_dataset, representation_of
from wavediffusion.data.transforms import velocity_from_model


def fake_pairs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seismic-like (n, 5, 1000, 70) and two-layer velocity (n, 1, 70, 70) arrays."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, 1000, dtype=np.float32)[None, None, :, None]
    r = np.linspace(0, 1, 70, dtype=np.float32)[None, None, None, :]
    amplitude = rng.uniform(1, 30, size=(n, 5, 1, 1)).astype(np.float32)
    seismic = amplitude * np.sin(40 * t + 5 * r + rng.uniform(0, 6, (n, 5, 1, 1))) * np.exp(-4 * t)
    depth = rng.integers(10, 60, size=n)
    velocity = np.where(np.arange(70)[None, :, None] < depth[:, None, None], 2000.0, 3500.0)
    return seismic.astype(np.float32), velocity[:, None].astype(np.float32).repeat(70, axis=3)[:, :, :, :70]


def make_family(root: Path, family: str, files: dict[str, list[int]], seed: int = 0) -> Path:
    """An OpenFWI-layout family folder with a split.json; files[split] = samples per file."""
    spec = get_family(family)
    folder = root / spec.directory
    folder.mkdir(parents=True)
    pairs, number = {"train": [], "test": []}, 1
    for split, sizes in files.items():
        for size in sizes:
            seismic, velocity = fake_pairs(size, seed + number)
            names = (f"{spec.seismic_prefix}{number}.npy", f"{spec.velocity_prefix}{number}.npy")
            np.save(folder / names[0], seismic)
            np.save(folder / names[1], velocity)
            pairs[split].append(list(names))
            number += 1
    write_split_file(folder / "split.json", family, pairs)
    return folder


def make_small_store(root: Path, out: Path, test_per_family: int) -> Path:
    """A dataset store of two families (10 train maps each, `test_per_family` test maps) at a
    small representation: 64 time samples, 16 receivers, 16 x 16 velocity; val 20 %."""
    make_family(root, "FlatVel-A", {"train": [10], "test": [test_per_family]}, seed=0)
    make_family(root, "CurveFault-A", {"train": [10], "test": [test_per_family]}, seed=50)
    preprocess(root, out, PreprocessSettings(families=("FlatVel-A", "CurveFault-A"), time_samples=64, receivers=16,
                                             velocity_size=16, samples_per_shard=4, val_fraction=0.2), progress=False)
    return out


@pytest.fixture
def tree(tmp_path) -> Path:
    root = tmp_path / "openfwi"
    make_family(root, "FlatVel-A", {"train": [6, 4], "test": [3]}, seed=0)
    make_family(root, "CurveFault-B", {"train": [5], "test": [2]}, seed=100)
    return root


SETTINGS = PreprocessSettings(families=("FlatVel-A", "CurveFault-B"), samples_per_shard=4, val_fraction=0.2, seed=3)


def test_store_layout_counts_and_values(tree, tmp_path):
    out = tmp_path / "dataset.zarr"
    rep = preprocess(tree, out, SETTINGS, progress=False)
    root = open_dataset(out)
    assert representation_of(root) == rep
    counts = root.attrs["counts"]
    assert counts == {"train": 8 + 4, "val": 2 + 1, "test": 3 + 2}
    train = root["train"]
    assert train["seismic"].shape == (12, 3, 1024, 64)
    assert train["velocity"].shape == (12, 1, 64, 64)
    assert train["velocity_native"].shape == (12, 1, 70, 70)
    # one sample per chunk, samples_per_shard samples per shard
    assert train["seismic"].chunks == (1, 3, 1024, 64)
    assert train["seismic"].shards == (4, 3, 1024, 64)
    # min-max constants come from train: train spans exactly [-1, 1]
    seismic = train["seismic"][:]
    assert seismic.min() == pytest.approx(-1.0, abs=1e-6) and seismic.max() == pytest.approx(1.0, abs=1e-6)
    velocity = train["velocity"][:]
    assert velocity.min() >= -1.0 and velocity.max() <= 1.0
    labels = [FAMILY_NAMES[i] for i in np.unique(train["family"][:])]
    assert labels == ["FlatVel-A", "CurveFault-B"]
    # the native map comes back from the 64x64 representation up to resize smearing
    back = velocity_from_model(torch.from_numpy(velocity), rep).numpy()
    assert np.median(np.abs(back - train["velocity_native"][:])) < 1.0
    # each split opens with xarray, its arrays' axes named
    import xarray as xr

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        splits = xr.open_datatree(out, engine="zarr", consolidated=False)
    assert set(splits.children) == {"train", "val", "test"}
    assert splits["train"]["seismic"].dims == ("sample", "shot", "time", "receiver")
    assert splits["train"]["velocity"].dims == ("sample", "velocity_channel", "depth", "lateral")
    assert splits["train"]["velocity_native"].dims == ("sample", "velocity_channel", "native_depth", "native_lateral")
    assert splits["test"]["family"].dims == splits["test"]["source_index"].dims == ("sample",)
    # provenance: every source file with its checksum
    files = {f["path"]: f for f in root.attrs["provenance"]["files"]}
    assert len(files) == 2 * (3 + 2)
    seis1 = tree / "FlatVel_A" / "data1.npy"
    assert files["FlatVel_A/data1.npy"]["sha256"] == hashlib.sha256(seis1.read_bytes()).hexdigest()


def test_val_is_a_seeded_subset_of_train_and_runs_are_identical(tree, tmp_path):
    first = preprocess(tree, tmp_path / "a.zarr", SETTINGS, progress=False)
    second = preprocess(tree, tmp_path / "b.zarr", SETTINGS, workers=3, progress=False)  # threads change nothing
    assert first == second
    a, b = open_dataset(tmp_path / "a.zarr"), open_dataset(tmp_path / "b.zarr")
    for split in ("train", "val", "test"):
        for name in ("seismic", "velocity", "source_index"):
            np.testing.assert_array_equal(a[split][name][:], b[split][name][:])
    train_index = set(zip(a["train"]["family"][:], a["train"]["source_index"][:]))
    val_index = set(zip(a["val"]["family"][:], a["val"]["source_index"][:]))
    assert not train_index & val_index
    assert len(train_index | val_index) == 10 + 5
    preprocess(tree, tmp_path / "c.zarr", PreprocessSettings(**{**SETTINGS.__dict__, "seed": 4}), progress=False)
    c = open_dataset(tmp_path / "c.zarr")
    assert set(zip(c["val"]["family"][:], c["val"]["source_index"][:])) != val_index


def test_limits_per_family(tree, tmp_path):
    settings = PreprocessSettings(**{**SETTINGS.__dict__, "max_train_per_family": 5, "max_test_per_family": 1})
    preprocess(tree, tmp_path / "d.zarr", settings, progress=False)
    counts = open_dataset(tmp_path / "d.zarr").attrs["counts"]
    assert counts == {"train": 4 + 4, "val": 1 + 1, "test": 2}


def corrupt(tree: Path, how: str) -> Path:
    path = tree / "CurveFault_B" / ("vel1.npy" if how in ("velocity-range", "nan") else "seis1.npy")
    array = np.load(path)
    if how == "shape":
        np.save(path, array[:, :, :900])
    elif how == "dtype":
        np.save(path, array.astype(np.float64))
    elif how == "nan":
        array[2, 0, 5, 5] = np.nan
        np.save(path, array)
    elif how == "velocity-range":
        array[1, 0, 0, 0] = 9000.0
        np.save(path, array)
    elif how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize(
    "how, words",
    [
        ("shape", "seismic shape (5, 5, 900, 70)"),
        ("dtype", "dtype float64, expected float32"),
        ("nan", "sample 2 holds NaN or Inf"),
        ("velocity-range", "outside OpenFWI's 1500-4500 m/s"),
        ("truncated", "truncated .npy file"),
    ],
)
def test_bad_input_names_the_file_and_keeps_the_old_store(tree, tmp_path, how, words):
    out = tmp_path / "dataset.zarr"
    preprocess(tree, out, SETTINGS, progress=False)
    before = open_dataset(out)["train"]["seismic"][:]
    bad = corrupt(tree, how)
    with pytest.raises(ValueError) as error:
        preprocess(tree, out, SETTINGS, progress=False)
    assert str(bad) in str(error.value) and words in str(error.value)
    # the previous, complete store is untouched and no temporary store is left behind
    np.testing.assert_array_equal(open_dataset(out)["train"]["seismic"][:], before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset.zarr", "openfwi"]


def test_failed_first_run_leaves_no_store(tree, tmp_path):
    corrupt(tree, "nan")
    with pytest.raises(ValueError):
        preprocess(tree, tmp_path / "dataset.zarr", SETTINGS, progress=False)
    assert not (tmp_path / "dataset.zarr").exists()


# --- a folder without split.json: its maps are split here -----------------------------------

SMALL = dict(time_samples=64, receivers=16, velocity_size=16, samples_per_shard=4)


def one_pair_folder(root: Path, n: int) -> Path:
    """FlatVel_A/ holding only data1.npy/model1.npy with n maps (no split.json)."""
    folder = root / "FlatVel_A"
    folder.mkdir(parents=True)
    seismic, velocity = fake_pairs(n, seed=7)
    np.save(folder / "data1.npy", seismic)
    np.save(folder / "model1.npy", velocity)
    return folder


def test_one_file_pair_without_split_json_splits_its_maps_into_disjoint_train_and_test(tmp_path):
    folder = one_pair_folder(tmp_path / "openfwi", 20)
    settings = PreprocessSettings(families=("FlatVel-A",), val_fraction=0.2, seed=5, **SMALL)
    with pytest.warns(UserWarning, match=f"{folder} has no split.json.*split here by seed 5: 4 test, 16 train"):
        preprocess(tmp_path / "openfwi", tmp_path / "dataset.zarr", settings, progress=False)
    store = open_dataset(tmp_path / "dataset.zarr")
    assert store.attrs["counts"] == {"train": 13, "val": 3, "test": 4}  # test: FlatVel-A's 6 000 of 30 000
    assert store.attrs["provenance"]["split_by"] == {"FlatVel-A": "maps"}
    index = {split: store[split]["source_index"][:].tolist() for split in ("train", "val", "test")}
    assert not set(index["test"]) & (set(index["train"]) | set(index["val"]))
    assert sorted(index["train"] + index["val"] + index["test"]) == list(range(20))
    # source_index is the map's row in data1.npy/model1.npy, so the check above is about the maps themselves
    native = np.load(folder / "model1.npy")
    np.testing.assert_array_equal(store["test"]["velocity_native"][:], native[index["test"]])


def test_map_split_follows_the_seed(tmp_path):
    root = tmp_path / "openfwi"
    one_pair_folder(root, 20)

    def test_rows(seed: int) -> list[int]:
        with pytest.warns(UserWarning, match="split here by seed"):
            refs, split_by = plan_family(root, "FlatVel-A", PreprocessSettings(families=("FlatVel-A",), seed=seed))
        assert split_by == "maps"
        return [r.source_index for r in refs["test"]]

    assert test_rows(0) == test_rows(0)
    assert test_rows(0) != test_rows(1)


def test_a_single_map_cannot_be_split(tmp_path):
    folder = one_pair_folder(tmp_path / "openfwi", 1)
    with pytest.raises(ValueError, match=f"{folder} holds 1 map.*split.json"):
        plan_family(tmp_path / "openfwi", "FlatVel-A", PreprocessSettings(families=("FlatVel-A",)))


@pytest.mark.parametrize("test_pair", [["data1.npy", "model1.npy"], ["copy/data1.npy", "copy/model1.npy"]])
def test_split_json_with_a_file_in_train_and_test_is_refused(tmp_path, test_pair):
    folder = make_family(tmp_path / "openfwi", "FlatVel-A", {"train": [4, 4], "test": [2]})
    # the test entry names data1.npy at its own path, or at one where it is then found by name
    pairs = {"train": [["data1.npy", "model1.npy"], ["data2.npy", "model2.npy"]], "test": [test_pair]}
    write_split_file(folder / "split.json", "FlatVel-A", pairs)
    settings = PreprocessSettings(families=("FlatVel-A",), **SMALL)
    with pytest.raises(ValueError) as error:
        preprocess(tmp_path / "openfwi", tmp_path / "dataset.zarr", settings, progress=False)
    message = str(error.value)
    assert str(folder / "split.json") in message and "data1.npy" in message and "both train and test" in message
    assert not (tmp_path / "dataset.zarr").exists()


def test_dataloader_reads_lazily_with_workers(tree, tmp_path):
    out = tmp_path / "dataset.zarr"
    preprocess(tree, out, SETTINGS, progress=False)
    dataset = PairDataset(out, "train")
    sample = dataset[3]
    assert sample["seismic"].shape == (3, 1024, 64) and sample["velocity"].shape == (1, 64, 64)
    np.testing.assert_array_equal(sample["seismic"].numpy(), zarr.open_group(str(out), mode="r")["train/seismic"][3])
    def shuffled_families(seed: int) -> list[list[int]]:
        loader = DataLoader(dataset, batch_size=5, shuffle=True, num_workers=2,
                            generator=torch.Generator().manual_seed(seed))
        return [batch["family"].tolist() for batch in loader]

    order, again = shuffled_families(7), shuffled_families(7)
    assert order == again and sum(len(b) for b in order) == 12
    with pytest.raises(FileNotFoundError, match="not a dataset store"):
        PairDataset(tmp_path / "missing.zarr", "train")
