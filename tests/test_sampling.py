"""Sharded sampling into one pairs store, its physics check and the gather, on tiny,
hand-built artifacts (an untrained tiny autoencoder and an untrained tiny UNet, as in
tests/test_trajectory.py): completeness, determinism, crash recovery, concurrency."""

from __future__ import annotations

import json
import multiprocessing
import shutil
from dataclasses import asdict

import numpy as np
import pytest
import torch
import zarr

from wavediffusion.data.transforms import Representation
from wavediffusion.evaluation.stage1 import decode_and_check
from wavediffusion.physics.deviation import per_sample_mse
from wavediffusion.sampling import shard as shard_module
from wavediffusion.sampling import (
    ARRAYS,
    SamplingSettings,
    check_shard,
    create_pairs_store,
    create_store_for_models,
    gather,
    is_done,
    mark_done,
    num_shards,
    read_done,
    sample_shard,
    shard_range,
    write_manifest,
)
from wavediffusion.training.loop import derive_seed
from wavediffusion.training.stage1 import load_autoencoder

from tiny_models import save_tiny_autoencoder, save_tiny_stage2

T = 50
REP = Representation(time_samples=64, receivers=16, velocity_size=16, seismic_log_min=-4.0, seismic_log_max=4.0)
SETTINGS = SamplingSettings(num_pairs=7, shard_size=3, sampler="ddim", steps=3, eta=0.5, batch_size=2,
                            precision="fp32", seed=11)
K = num_shards(7, 3)  # 3 shards: rows 0-2, 3-5, 6


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """Stage-1 and Stage-2 weights files in the format load_autoencoder / load_stage2 read."""
    root = tmp_path_factory.mktemp("sampling")
    stage1 = root / "stage1.pt"
    save_tiny_autoencoder(stage1)
    stage2 = root / "stage2.pt"
    save_tiny_stage2(stage2, num_steps=T, scale_factor=2.0)
    # a minimal dataset store: only its representation attribute is read by check_shard
    dataset = root / "dataset.zarr"
    zarr.open_group(str(dataset), mode="w").attrs["representation"] = REP.to_attrs()
    return {"stage1": stage1, "stage2": stage2, "dataset": dataset}


def sample_all(artifacts, store, shards=range(K), check=True):
    for k in shards:
        sample_shard(artifacts["stage1"], artifacts["stage2"], store, k, SETTINGS, device="cpu", progress=False)
    if check:
        for k in shards:
            check_shard(store, k, REP, "deepwave", batch_size=2, device="cpu", progress=False)


def new_store(artifacts, path):
    create_store_for_models(artifacts["stage1"], path, SETTINGS, attrs={"config_sha256": "abc"})
    return path


def arrays(store) -> dict[str, np.ndarray]:
    root = zarr.open_group(str(store), mode="r")
    return {name: root[name][:] for name in ARRAYS}


def assert_stores_equal(a, b):
    left, right = arrays(a), arrays(b)
    for name in ARRAYS:
        np.testing.assert_array_equal(left[name], right[name], err_msg=name)


@pytest.fixture(scope="module")
def reference(artifacts, tmp_path_factory):
    """An uninterrupted, sequential run: every shard sampled, then checked."""
    store = new_store(artifacts, tmp_path_factory.mktemp("reference") / "pairs.zarr")
    sample_all(artifacts, store)
    return store


def test_layout_markers_and_deviation(artifacts, reference):
    root = zarr.open_group(str(reference), mode="r")
    assert sorted(name for name, _ in root.arrays()) == sorted(ARRAYS)
    assert [name for name, _ in root.groups()] == ["done"]  # the markers' folder
    shapes = {"latent": (8, 8, 8), "seismic": REP.seismic_shape, "velocity": REP.velocity_shape,
              "seismic_simulated": REP.seismic_shape, "deviation": (), "seed": (), "index_in_shard": ()}
    for name, sample_shape in shapes.items():
        array = root[name]
        assert array.shape == (7, *sample_shape), name
        assert array.shards == (3, *sample_shape), name  # one sampling shard = one Zarr shard
        assert array.chunks == ((1, *sample_shape) if sample_shape else (3,)), name
    values = arrays(reference)
    for name in ("latent", "seismic", "velocity", "seismic_simulated", "deviation"):
        assert np.isfinite(values[name]).all(), name  # every row written, the partial last shard too
    assert np.abs(values["seismic"]).max() <= 1 and np.abs(values["velocity"]).max() <= 1
    seeds = [derive_seed(SETTINGS.seed, k) for k in range(K)]
    assert values["seed"].tolist() == [seeds[0]] * 3 + [seeds[1]] * 3 + [seeds[2]]
    assert values["index_in_shard"].tolist() == [0, 1, 2, 0, 1, 2, 0]
    # the stored deviation is the paper's metric between the stored seismic arrays
    expected = per_sample_mse(torch.from_numpy(values["seismic"]), torch.from_numpy(values["seismic_simulated"]))
    np.testing.assert_allclose(values["deviation"], expected.double().numpy(), rtol=1e-6)
    assert (values["deviation"] > 0).all()
    # ... and the same numbers Stage 1's evaluation gets from the stored latents
    model = load_autoencoder(artifacts["stage1"])
    again = decode_and_check(model, torch.from_numpy(values["latent"]), REP, "deepwave", 2, desc="", progress=False)
    # (not bitwise: the decoder's float32 sums depend on the batch a sample sits in)
    np.testing.assert_allclose(again["seismic"].numpy(), values["seismic"], atol=1e-4)
    np.testing.assert_allclose(again["deviation"].numpy(), values["deviation"], rtol=1e-3)

    for k in range(K):
        assert is_done(reference, "sample", k) and is_done(reference, "check", k)
        info = read_done(reference, "sample", k)
        assert info["n"] == len(shard_range(k, 3, 7)) and info["seed"] == seeds[k]
        assert (info["sampler"], info["steps"], info["precision"]) == ("ddim", 3, "fp32")
        assert len(info["stage1_sha256"]) == 64 and info["scale_factor"] == 2.0
    manifest = gather(reference)
    assert manifest["num_pairs"] == 7 and manifest["num_shards"] == 3 and manifest["n_checked"] == 7
    assert manifest["shards_done"] == {"sample": 3, "check": 3} and manifest["seeds"] == seeds
    assert manifest["attrs"]["config_sha256"] == "abc" and manifest["attrs"]["settings"]["seed"] == 11
    assert manifest["deviation_mean"] == pytest.approx(values["deviation"].mean())
    assert manifest["deviation_quantiles"]["0.5"] == pytest.approx(np.median(values["deviation"]))


def test_write_manifest(reference, tmp_path):
    manifest = write_manifest(reference, tmp_path / "manifest.json")
    assert json.loads((tmp_path / "manifest.json").read_text()) == json.loads(json.dumps(manifest))


def test_rerun_is_identical_and_shards_differ(artifacts, reference, tmp_path):
    store = tmp_path / "pairs.zarr"
    shutil.copytree(reference, store)
    sample_shard(artifacts["stage1"], artifacts["stage2"], store, 1, SETTINGS, device="cpu", progress=False)
    assert not is_done(store, "check", 1)  # new samples invalidate the old check
    with pytest.raises(RuntimeError, match=r"check: shards \[1\]"):
        gather(store)
    check_shard(store, 1, artifacts["dataset"], "deepwave", batch_size=2, device="cpu", progress=False)
    assert_stores_equal(store, reference)
    latent = arrays(reference)["latent"]
    assert not np.allclose(latent[0:3], latent[3:6])


def test_crash_mid_shard_is_detected_and_redone(artifacts, reference, tmp_path, monkeypatch):
    store = new_store(artifacts, tmp_path / "pairs.zarr")
    sample_all(artifacts, store, shards=[0, 2], check=False)
    real, calls = shard_module._write_rows, []

    def dies_after_first_batch(root, start, rows):
        if calls:
            raise KeyboardInterrupt("killed")
        calls.append(start)
        real(root, start, rows)

    monkeypatch.setattr(shard_module, "_write_rows", dies_after_first_batch)
    with pytest.raises(KeyboardInterrupt):
        sample_shard(artifacts["stage1"], artifacts["stage2"], store, 1, SETTINGS, device="cpu", progress=False)
    monkeypatch.setattr(shard_module, "_write_rows", real)
    assert calls == [3] and np.isfinite(arrays(store)["latent"][3:5]).all()  # half a shard on disk ...
    assert not is_done(store, "sample", 1)  # ... but never counted as complete
    with pytest.raises(RuntimeError, match=r"check_shard|not been sampled"):
        check_shard(store, 1, REP, "deepwave", batch_size=2, device="cpu", progress=False)
    with pytest.raises(RuntimeError, match=r"sample: shards \[1\]; check: shards \[0, 1, 2\]"):
        gather(store)
    sample_all(artifacts, store, shards=[1], check=False)
    for k in range(K):
        check_shard(store, k, REP, "deepwave", batch_size=2, device="cpu", progress=False)
    assert_stores_equal(store, reference)
    assert gather(store)["seeds"] == gather(reference)["seeds"]


def _worker(stage1, stage2, store, k):
    torch.set_num_threads(1)
    sample_shard(stage1, stage2, store, k, SETTINGS, device="cpu", progress=False)
    check_shard(store, k, REP, "deepwave", batch_size=2, device="cpu", progress=False)


def test_concurrent_shards_lose_nothing(artifacts, reference, tmp_path):
    store = new_store(artifacts, tmp_path / "pairs.zarr")
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_worker, args=(artifacts["stage1"], artifacts["stage2"], store, k))
               for k in (0, 1)]
    for worker in workers:
        worker.start()
    _worker(artifacts["stage1"], artifacts["stage2"], store, 2)  # the last (partial) shard here meanwhile
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    assert_stores_equal(store, reference)
    assert gather(store)["shards_done"] == {"sample": 3, "check": 3}


def test_store_creation_refuses_to_overwrite(artifacts, reference, tmp_path):
    with pytest.raises(FileExistsError, match="refusing"):
        new_store(artifacts, reference)
    path = tmp_path / "pairs.zarr"
    create_pairs_store(path, 5, 2, (1, 2, 2), (1, 4, 2), (1, 2, 2))
    mark_done(path, "sample", 0, {"seed": 1})
    create_pairs_store(path, 5, 2, (1, 2, 2), (1, 4, 2), (1, 2, 2), overwrite=True)
    assert not is_done(path, "sample", 0)
    assert [len(shard_range(k, 2, 5)) for k in range(num_shards(5, 2))] == [2, 2, 1]
    with pytest.raises(ValueError, match="shard index 3"):
        shard_range(3, 2, 5)


def test_settings_must_match_the_store(artifacts, reference, tmp_path):
    store = tmp_path / "pairs.zarr"
    shutil.copytree(reference, store)
    other = SamplingSettings(**{**asdict(SETTINGS), "num_pairs": 8})
    with pytest.raises(ValueError, match=r"sampling\.num_pairs=7"):
        sample_shard(artifacts["stage1"], artifacts["stage2"], store, 0, other, device="cpu", progress=False)
    too_many = SamplingSettings(**{**asdict(SETTINGS), "steps": T + 1})
    with pytest.raises(ValueError, match=r"sampling\.steps"):
        sample_shard(artifacts["stage1"], artifacts["stage2"], store, 0, too_many, device="cpu", progress=False)
    assert is_done(store, "sample", 0)  # a refused job leaves the shard as it was


@pytest.mark.parametrize("change, key", [
    ({"num_pairs": 0}, "num_pairs"),
    ({"shard_size": 0}, "shard_size"),
    ({"sampler": "euler"}, "sampler"),
    ({"steps": 0}, "steps"),
    ({"eta": 2.0}, "eta"),
    ({"batch_size": 0}, "batch_size"),
    ({"precision": "fp16"}, "precision"),
    ({"seed": -1}, "seed"),
])
def test_bad_settings_name_their_key(change, key):
    with pytest.raises(ValueError, match=rf"sampling\.{key}"):
        SamplingSettings(**{**asdict(SETTINGS), **change})
    with pytest.raises(ValueError, match=r"sampling: unknown keys \['shards'\]"):
        SamplingSettings.from_dict({"shards": 3})
