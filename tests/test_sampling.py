"""Sharded sampling into one pairs store, its physics check and the gather, on tiny,
hand-built artifacts (an untrained tiny autoencoder and an untrained tiny UNet, as in
tests/test_trajectory.py): completeness, determinism, crash recovery, concurrency."""

from __future__ import annotations

import csv
import json
import multiprocessing
import shutil
import warnings
from dataclasses import asdict, replace

import h5py
import numpy as np
import pytest
import torch
import zarr

from wavediffusion.data.families import FAMILY_NAMES
from wavediffusion.data.store import open_dataset
from wavediffusion.data.transforms import Representation, seismic_to_model, velocity_from_model
from wavediffusion.diffusion import dpm_solver_sample
from wavediffusion.evaluation.stage1 import decode_and_check
from wavediffusion.files import read_csv, readable
from wavediffusion.physics.deviation import per_sample_mse
from wavediffusion.physics.forward import forward_model
from wavediffusion.plotting import plt
from wavediffusion.sampling.export import ExportSettings, export_openfwi
from wavediffusion.sampling.physics_filter import (
    ACCEPTANCE_COLUMNS,
    REPORT_COLUMNS,
    FilterSettings,
    apply_physics_filter,
    physics_report,
)
from wavediffusion.sampling.shard import (
    SamplingSettings,
    block_runs,
    check_shard,
    create_store_for_models,
    gather,
    sample_shard,
    write_manifest,
)
from wavediffusion.data.pairs_store import (
    ARRAYS,
    BlockWriter,
    create_pairs_store,
    default_block,
    done_folder,
    is_done,
    mark_done,
    num_shards,
    open_pairs_store,
    read_done,
    shard_range,
)
from wavediffusion.seeds import Stream, derive_seed
from wavediffusion.steps.sampling import run_physics_report
from wavediffusion.training.stage1 import load_autoencoder
from wavediffusion.training.stage2 import load_stage2

from tiny_models import save_tiny_autoencoder, save_tiny_stage2

T = 50
REP = Representation(time_samples=64, receivers=16, velocity_size=16, seismic_log_min=-4.0, seismic_log_max=4.0)
# store_block 1 < batch_size 2 < shard_size 3: a batch spans blocks and a job writes several blocks
SETTINGS = SamplingSettings(num_pairs=7, shard_size=3, store_block=1, sampler="ddim", steps=3, eta=0.5,
                            batch_size=2, precision="fp32", seed=11)
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
    create_store_for_models(artifacts["stage1"], path, SETTINGS, attrs={"note": "abc"})
    return path


def copy_store(source, target):
    """A copy of a pairs store with its completion markers (the folder beside it)."""
    shutil.copytree(source, target)
    shutil.copytree(done_folder(source), done_folder(target))
    return target


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
    assert not list(root.groups())  # the markers live beside the store, outside its Zarr tree
    shapes = {"latent": (8, 8, 8), "seismic": REP.seismic_shape, "velocity": REP.velocity_shape,
              "seismic_simulated": REP.seismic_shape, "deviation": (), "seed": (), "index_in_shard": (),
              "valid": (), "family": ()}
    for name, sample_shape in shapes.items():
        array = root[name]
        assert array.shape == (7, *sample_shape), name
        assert array.shards == (1, *sample_shape), name  # one block (store_block rows) = one Zarr shard
        assert array.chunks == (1, *sample_shape), name
    values = arrays(reference)
    for name in ("latent", "seismic", "velocity", "seismic_simulated", "deviation"):
        assert np.isfinite(values[name]).all(), name  # every row written, the partial last shard too
    assert np.abs(values["seismic"]).max() <= 1 and np.abs(values["velocity"]).max() <= 1
    seeds = [derive_seed(SETTINGS.seed, Stream.SAMPLING_SHARD, k) for k in range(K)]
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
        # where the shard's time went: its parts, none longer than the whole job
        check = read_done(reference, "check", k)
        for record, parts in ((info, {"denoise", "decode", "write"}), (check, {"read", "simulate", "write"})):
            assert set(record["seconds_by_part"]) == parts
            assert all(s > 0 for s in record["seconds_by_part"].values())
            assert sum(record["seconds_by_part"].values()) <= record["seconds"]
    manifest = gather(reference)
    for kind in ("sample", "check"):
        parts = [read_done(reference, kind, k)["seconds_by_part"] for k in range(K)]
        assert manifest[f"{kind}_seconds_by_part"] == pytest.approx(
            {name: sum(p[name] for p in parts) for name in parts[0]})
    assert manifest["num_pairs"] == 7 and manifest["num_shards"] == 3 and manifest["n_checked"] == 7
    assert manifest["shards_done"] == {"sample": 3, "check": 3} and manifest["seeds"] == seeds
    assert manifest["attrs"]["note"] == "abc" and manifest["attrs"]["settings"]["seed"] == 11
    assert manifest["config_sha256"] == SETTINGS.sha256() != SamplingSettings(seed=12).sha256()
    assert manifest["deviation_mean"] == pytest.approx(values["deviation"].mean())
    assert manifest["deviation_quantiles"]["0.5"] == pytest.approx(np.median(values["deviation"]))


def test_the_pairs_store_opens_with_xarray_without_a_warning(tmp_path):
    """Every array has dims and attributes; the markers beside the store are no Zarr node
    that Zarr (hence xarray) would warn about."""
    import xarray as xr

    store = tmp_path / "pairs.zarr"
    root = create_pairs_store(store, 4, 2, (8, 8, 8), REP.seismic_shape, REP.velocity_shape, representation=REP)
    root["deviation"][:] = 0.5
    mark_done(store, "sample", 0, {"seed": 1})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pairs = xr.open_zarr(store, consolidated=False)
        assert set(xr.open_datatree(store, engine="zarr", consolidated=False).children) == set()
    assert pairs["seismic"].dims == pairs["seismic_simulated"].dims == ("pair", "shot", "time", "receiver")
    assert pairs["velocity"].dims == ("pair", "velocity_channel", "depth", "lateral")
    assert pairs["latent"].dims == ("pair", "latent_channel", "latent_row", "latent_column")
    assert all(pairs[name].dims == ("pair",) for name in ("deviation", "seed", "index_in_shard", "valid", "family"))
    assert dict(pairs.sizes) == {"pair": 4, "shot": 3, "time": 64, "receiver": 16, "velocity_channel": 1,
                                 "depth": 16, "lateral": 16, "latent_channel": 8, "latent_row": 8,
                                 "latent_column": 8}
    assert pairs["deviation"].values.tolist() == [0.5] * 4 and pairs["seed"].values.tolist() == [-1] * 4
    seismic, velocity = pairs["seismic"].attrs, pairs["velocity"].attrs
    assert seismic["units"] == "1" and "expm1" in seismic["to_openfwi"]
    assert (seismic["seismic_log_min"], seismic["seismic_log_max"], seismic["openfwi_shots"]) == (-4.0, 4.0, [0, 2, 4])
    assert (velocity["velocity_min_m_s"], velocity["velocity_max_m_s"]) == (1500.0, 4500.0)
    assert "mean squared error" in pairs["deviation"].attrs["description"]
    assert pairs["family"].attrs["flag_meanings"].split() == list(FAMILY_NAMES)
    assert pairs.attrs["representation"] == REP.to_attrs() and pairs.attrs["format"] == "wavediffusion-pairs-v1"
    # the seismic maps back to OpenFWI's amplitudes from the store's own attributes
    x = np.linspace(-1, 1, 5)
    y = (x + 1) / 2 * (seismic["seismic_log_max"] - seismic["seismic_log_min"]) + seismic["seismic_log_min"]
    raw = torch.from_numpy(np.sign(y) * np.expm1(np.abs(y))).float().reshape(1, 1, 1, 5).expand(1, 5, 64, 5)
    np.testing.assert_allclose(seismic_to_model(raw.contiguous(), replace(REP, receivers=5))[0, 0, 0].numpy(), x,
                               atol=1e-5)


def test_the_store_step_records_the_datasets_representation(artifacts, tmp_path):
    from wavediffusion.steps.sampling import run_create_pairs_store

    store = tmp_path / "pairs.zarr"
    settings = {key: value for key, value in asdict(SETTINGS).items() if key != "seed"}
    run_create_pairs_store(str(artifacts["stage1"]), json.dumps(settings), str(store), 11, str(artifacts["dataset"]))
    root = open_pairs_store(store, mode="r")
    assert root.attrs["representation"] == REP.to_attrs() and root.attrs["settings"]["seed"] == 11
    assert root["velocity"].attrs["velocity_max_m_s"] == REP.velocity_max


def test_an_old_store_with_markers_inside_is_refused_naming_the_move(tmp_path):
    store = tmp_path / "pairs.zarr"
    create_pairs_store(store, 4, 2, (1, 2, 2), (1, 4, 2), (1, 2, 2))
    zarr.open_group(str(store), mode="r+").create_group("done")
    with pytest.raises(ValueError, match=r"markers are inside it.*move .*done/\*\.json into .*pairs\.zarr\.done/"):
        open_pairs_store(store, mode="r")


def test_dpm_solver_shard_stores_the_solver_samples(artifacts, tmp_path):
    settings = replace(SETTINGS, sampler="dpmpp2m", eta=0.0)
    store = tmp_path / "pairs.zarr"
    create_store_for_models(artifacts["stage1"], store, settings)
    sample_shard(artifacts["stage1"], artifacts["stage2"], store, 0, settings, device="cpu", progress=False)
    info = read_done(store, "sample", 0)
    assert (info["sampler"], info["steps"], info["eta"]) == ("dpmpp2m", 3, None)
    # the shard's first batch is the solver's output from the shard's seed, unscaled
    unet, schedule, scale = load_stage2(artifacts["stage2"], torch.device("cpu"))
    generator = torch.Generator().manual_seed(derive_seed(settings.seed, Stream.SAMPLING_SHARD, 0))
    first = dpm_solver_sample(unet, schedule, (2, 8, 8, 8), num_steps=3, generator=generator).z0 / scale
    np.testing.assert_allclose(arrays(store)["latent"][:2], first.numpy(), rtol=1e-5, atol=1e-6)


def test_block_runs_cut_rows_at_block_boundaries():
    """check_shard's processes each get consecutive whole blocks (Zarr shards): every row once,
    no block split between two, as many runs as asked where the blocks allow."""
    for rows, block, count in ((range(0, 1000), 250, 4), (range(1000, 2000), 250, 3), (range(6, 13), 3, 5),
                               (range(0, 7), 1, 2), (range(30, 31), 10, 4)):
        runs = block_runs(rows, block, count)
        assert [r for run in runs for r in run] == list(rows)
        assert all(run.start % block == 0 and len(run) > 0 for run in runs)
        assert len(runs) == min(count, -(-len(rows) // block))
    assert block_runs(range(0, 1000), 250, 4) == [range(0, 250), range(250, 500), range(500, 750), range(750, 1000)]


def test_checking_in_several_processes_stores_the_same(artifacts, reference, tmp_path):
    """check_shard with processes > 1 (each its own run of blocks, spawned) stores what one
    process stores, and its record counts them; processes < 1 is refused."""
    store = copy_store(reference, tmp_path / "pairs.zarr")
    info = check_shard(store, 0, REP, "deepwave", batch_size=2, device="cpu", progress=False, processes=3)
    assert info["processes"] == 3 and info["n"] == 3  # store_block 1: a block per row
    assert_stores_equal(store, reference)
    assert read_done(store, "check", 0)["deviation_mean"] == read_done(reference, "check", 0)["deviation_mean"]
    with pytest.raises(ValueError, match="processes"):
        check_shard(store, 0, REP, "deepwave", processes=0)


def test_write_manifest(reference, tmp_path):
    manifest = write_manifest(reference, tmp_path / "manifest.json")
    assert json.loads((tmp_path / "manifest.json").read_text()) == json.loads(json.dumps(manifest))


def test_rerun_is_identical_and_shards_differ(artifacts, reference, tmp_path):
    store = tmp_path / "pairs.zarr"
    copy_store(reference, store)
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
    real, calls = BlockWriter._write, []

    def dies_after_first_block(writer, count):
        if calls:
            raise KeyboardInterrupt("killed")
        calls.append(writer.position)
        real(writer, count)

    monkeypatch.setattr(BlockWriter, "_write", dies_after_first_block)
    with pytest.raises(KeyboardInterrupt):
        sample_shard(artifacts["stage1"], artifacts["stage2"], store, 1, SETTINGS, device="cpu", progress=False)
    monkeypatch.setattr(BlockWriter, "_write", real)
    latent = arrays(store)["latent"]
    assert calls == [3] and np.isfinite(latent[3]).all() and np.isnan(latent[4]).all()  # a third of a shard ...
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


@pytest.mark.gpu
def test_gpu_shard_reruns_identically_and_matches_the_cpu_statistically(artifacts, reference, tmp_path):
    """On a GPU the shard's noise comes from a generator of its own on the GPU: a re-run
    gives the same pairs; the CPU run (other draws from the same seed) the same statistics."""
    runs = []
    for name in ("first", "second"):
        store = new_store(artifacts, tmp_path / f"{name}.zarr")
        for k in range(K):
            sample_shard(artifacts["stage1"], artifacts["stage2"], store, k, SETTINGS, device="cuda", progress=False)
        runs.append(arrays(store))
    for name in ("latent", "seismic", "velocity"):
        np.testing.assert_allclose(runs[0][name], runs[1][name], rtol=0, atol=1e-6, err_msg=name)
    cpu = arrays(reference)["latent"]
    assert not np.allclose(runs[0]["latent"], cpu)  # other draws ...
    assert abs(runs[0]["latent"].std() - cpu.std()) < 0.1 * cpu.std()  # ... of the same distribution


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
    assert (tmp_path / "pairs.zarr.done" / "sample-00000.json").is_file()  # beside the store, not in it
    create_pairs_store(path, 5, 2, (1, 2, 2), (1, 4, 2), (1, 2, 2), overwrite=True)
    assert not is_done(path, "sample", 0)
    mark_done(path, "sample", 0, {"seed": 1})
    shutil.rmtree(path)  # as Snakemake does before rerunning create_pairs_store: the markers stay behind ...
    create_pairs_store(path, 5, 2, (1, 2, 2), (1, 4, 2), (1, 2, 2))
    assert not is_done(path, "sample", 0)  # ... and do not count for the new store
    assert [len(shard_range(k, 2, 5)) for k in range(num_shards(5, 2))] == [2, 2, 1]
    with pytest.raises(ValueError, match="shard index 3"):
        shard_range(3, 2, 5)


def test_every_zarr_shard_is_written_once_whole(artifacts, tmp_path, monkeypatch):
    """Writes go a whole block (Zarr shard) at a time, whatever the batch size: Zarr never
    has to read back and rewrite a shard file."""
    settings = SamplingSettings(**{**asdict(SETTINGS), "num_pairs": 14, "shard_size": 6, "store_block": 2,
                                   "batch_size": 3})
    store = tmp_path / "pairs.zarr"
    create_store_for_models(artifacts["stage1"], store, settings)
    assert zarr.open_array(str(store / "seismic"), mode="r").shards[0] == 2
    real, writes = BlockWriter._write, []

    def recorded(writer, count):
        writes.append((writer.position, count))
        real(writer, count)

    monkeypatch.setattr(BlockWriter, "_write", recorded)
    for k in range(num_shards(14, 6)):
        sample_shard(artifacts["stage1"], artifacts["stage2"], store, k, settings, device="cpu", progress=False)
    assert writes == [(0, 2), (2, 2), (4, 2), (6, 2), (8, 2), (10, 2), (12, 2)]
    assert np.isfinite(arrays(store)["seismic"]).all()
    assert [default_block(s) for s in (7, 8, 5000, 25000, 300)] == [7, 8, 250, 250, 150]
    with pytest.raises(ValueError, match=r"sampling\.store_block \(4\) must be a positive divisor of "
                                         r"sampling\.shard_size \(6\)"):
        SamplingSettings(**{**asdict(settings), "store_block": 4})


def test_settings_must_match_the_store(artifacts, reference, tmp_path):
    store = tmp_path / "pairs.zarr"
    copy_store(reference, store)
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
    ({"compile": "yes"}, "compile"),
    ({"seed": -1}, "seed"),
])
def test_bad_settings_name_their_key(change, key):
    with pytest.raises(ValueError, match=rf"sampling\.{key}"):
        SamplingSettings(**{**asdict(SETTINGS), **change})
    with pytest.raises(ValueError, match=r"sampling: unknown keys \['shards'\]"):
        SamplingSettings.from_dict({"shards": 3})


def test_out_of_gpu_memory_names_the_batch_key_and_writes_no_record(tmp_path, monkeypatch, capsys):
    """An out-of-memory error in a shard job: one line naming sampling.batch_size, exit 3,
    no record (so the job counts as not done); other errors keep their traceback."""
    from wavediffusion import cli
    from wavediffusion.sampling import shard

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(shard, "sample_shard", out_of_memory)
    record = tmp_path / "sample-0.json"
    args = ["sample-shard", "--stage1-model", "s1.pt", "--stage2-model", "s2.pt", "--store", "pairs.zarr",
            "--shard", "0", "--settings", json.dumps(asdict(SETTINGS)), "--seed", "0", "--record", str(record)]
    assert cli.main(args) == 3
    error = capsys.readouterr().err
    assert "out of GPU memory; lower sampling.batch_size" in error and "Tried to allocate 2.00 GiB" in error
    assert not record.exists()

    def broken(*args, **kwargs):
        raise RuntimeError("not a memory problem")

    monkeypatch.setattr(shard, "sample_shard", broken)
    with pytest.raises(RuntimeError, match="not a memory problem"):
        cli.main(args)


def floor_csv(path):
    path.write_text("family,backend,velocity_input,n,deviation_mean,deviation_std,deviation_max\n"
                    "FlatVel-A,deepwave,model64,4,0.001,0,0\nCurveVel-A,deepwave,model64,12,0.003,0,0\n"
                    "FlatVel-A,openfwi,model64,4,9,0,0\n")
    return path


def true_pairs_dataset(path, velocity: np.ndarray, codes: list[int]):
    """A dataset store holding only what the family assignment reads: the test split's maps."""
    root = zarr.open_group(str(path), mode="w")
    root.attrs["representation"] = REP.to_attrs()
    test = root.create_group("test")
    test.create_array("velocity", data=velocity.astype(np.float32))
    test.create_array("family", data=np.array(codes, dtype=np.int64))
    return path


def test_physics_filter_per_family_and_absolute(artifacts, reference, tmp_path):
    """Each pair gets the family of its nearest true map and that family's threshold; the
    report has a row per family and one for all; the absolute filter is one epsilon."""
    store = tmp_path / "pairs.zarr"
    copy_store(reference, store)
    values = arrays(store)
    deviation = values["deviation"]
    flat, curve = FAMILY_NAMES.index("FlatVel-A"), FAMILY_NAMES.index("CurveVel-A")
    # the true maps are the generated ones: rows 0-2 are nearest FlatVel-A's, rows 3-6 CurveVel-A's
    dataset = true_pairs_dataset(tmp_path / "dataset.zarr", values["velocity"], [flat] * 3 + [curve] * 4)
    flat_threshold = float(np.median(deviation[:3]))
    true_pairs = tmp_path / "true_pairs.csv"
    true_pairs.write_text(f"family,deviation\nFlatVel-A,{flat_threshold}\nFlatVel-A,{flat_threshold}\n"
                          f"CurveVel-A,{deviation[3:].min() / 4}\nCurveVel-A,{deviation[3:].min() / 2}\n")
    floor = floor_csv(tmp_path / "floor.csv")

    def report(settings: FilterSettings):
        """The report's rows and the acceptance curve's (the step writes and checks the figures)."""
        rows, points, *figures = physics_report(open_pairs_store(store), "1vq", settings, open_dataset(dataset), 4,
                                                read_csv(floor), read_csv(true_pairs))
        for figure in figures:
            plt.close(figure)
        return rows, points

    rows, points = report(FilterSettings())
    values = arrays(store)
    assert values["family"].tolist() == [flat] * 3 + [curve] * 4
    curve_threshold = deviation[3:].min() / 4 + 0.99 * (deviation[3:].min() / 4)  # the 0.99-quantile of two
    np.testing.assert_array_equal(values["valid"], deviation <= [flat_threshold] * 3 + [curve_threshold] * 4)
    assert values["valid"].sum() == 2  # FlatVel-A's two at or below their median; no CurveVel-A pair
    assert [(r["family"], r["n"], r["n_valid"]) for r in rows] == [("FlatVel-A", 3, 2), ("CurveVel-A", 4, 0),
                                                                    ("all", 7, 2)]
    assert rows[0]["threshold"] == pytest.approx(flat_threshold) and rows[-1]["threshold"] == ""
    assert rows[-1]["data_floor"] == pytest.approx((4 * 0.001 + 12 * 0.003) / 16)  # deepwave/model64 rows only
    assert rows[0]["data_floor"] == pytest.approx(flat_threshold)  # the family's true pairs' mean
    assert zarr.open_group(str(store), mode="r").attrs["physics_filter"]["filter"] == "per_family"
    # the acceptance curve: both sets rise from 0 to 1; each family's threshold is one of its points
    assert list(points[0]) == list(ACCEPTANCE_COLUMNS)
    for column in ("acceptance_generated", "acceptance_real"):
        accepted = [r[column] for r in points]
        assert accepted == sorted(accepted) and accepted[-1] == 1.0
    at_flat = next(r for r in points if r["threshold"] == pytest.approx(flat_threshold))
    assert at_flat["acceptance_generated"] == pytest.approx(np.mean(deviation <= flat_threshold))

    # the step: the same filter into the store, the report and the curve as CSVs, both figures
    outputs = [tmp_path / name for name in ("report.csv", "acceptance.csv", "acceptance.png", "histogram.png")]
    physics = json.dumps({**asdict(FilterSettings()), "floor_samples_per_family": 4})

    def step(on):
        run_physics_report(str(on), "1vq", physics, str(dataset), str(floor), str(true_pairs), *map(str, outputs))

    step(store)
    np.testing.assert_array_equal(arrays(store)["valid"], values["valid"])
    with open(outputs[0]) as handle:
        assert handle.readline().strip().split(",") == list(REPORT_COLUMNS)
    assert read_csv(outputs[0]) == [{k: str(readable(v)) for k, v in r.items()} for r in rows]
    with open(outputs[1]) as handle:
        assert [{k: float(v) for k, v in r.items()} for r in csv.DictReader(handle)] == [
            {k: float(readable(v)) for k, v in r.items()} for r in points]
    assert outputs[2].stat().st_size > 1000 and outputs[3].stat().st_size > 1000

    epsilon = float(np.median(deviation))
    rows = report(FilterSettings(filter="absolute", max_deviation=epsilon))[0]
    np.testing.assert_array_equal(arrays(store)["valid"], deviation <= epsilon)
    assert rows[-1]["n_valid"] == 4 and rows[-1]["threshold"] == epsilon
    assert {r["threshold"] for r in rows} == {epsilon}

    with pytest.raises(ValueError, match=r"physics\.filter must be one of"):
        FilterSettings(filter="global")
    with pytest.raises(ValueError, match=r"physics\.family_quantile must lie in"):
        FilterSettings(family_quantile=0)
    assert FilterSettings.from_dict({"filter": "absolute", "batch_size": 8}).filter == "absolute"
    with pytest.raises(ValueError, match=r"thresholds must be positive"):
        apply_physics_filter(open_pairs_store(store), 0.0)
    # an incomplete store is refused, naming the shards
    incomplete = new_store(artifacts, tmp_path / "incomplete.zarr")
    sample_all(artifacts, incomplete, shards=[0])
    with pytest.raises(RuntimeError, match=r"sample: shards \[1, 2\]"):
        step(incomplete)


def openfwi_items(annotation, file_size: int, preload: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every (data, label) that OpenFWI's FWIDataset (lanl/OpenFWI, dataset.py) yields from an
    annotation file, read the way it reads it: readlines(); a line is "data<TAB>label" and
    its last character, the newline, is cut off the label path; the dataset's length is
    lines x file_size, and item i is row i % file_size of line i // file_size's files, all
    loaded up front (preload, as its train.py does) or each time."""
    with open(annotation) as handle:
        lines = handle.readlines()

    def load(line: str) -> tuple[np.ndarray, np.ndarray]:
        data_path, label_path = line.split("\t")
        return np.load(data_path).astype("float32"), np.load(label_path[:-1]).astype("float32")

    loaded = [load(line) for line in lines] if preload else None
    items = []
    for i in range(len(lines) * file_size):
        data, label = loaded[i // file_size] if preload else load(lines[i // file_size])
        items.append((data[i % file_size], label[i % file_size]))  # a short file would fail here
    return items


def test_export_writes_whole_openfwi_files_that_openfwis_dataset_reads(artifacts, reference, tmp_path,
                                                                       monkeypatch):
    store = copy_store(reference, tmp_path / "pairs.zarr")
    dataset = tmp_path / "dataset.zarr"
    shutil.copytree(artifacts["dataset"], dataset)
    out = tmp_path / "openfwi"
    settings = ExportSettings(samples_per_file=2, hdf5=True, batch_size=2)
    with pytest.raises(RuntimeError, match="run the physics_report rule first"):
        export_openfwi(store, dataset, out, settings, device="cpu", progress=False)
    assert not out.exists()  # nothing half-written under the final name
    deviation = arrays(store)["deviation"]
    apply_physics_filter(open_pairs_store(store), float(np.sort(deviation)[4]))
    accepted = np.flatnonzero(arrays(store)["valid"])
    assert len(accepted) == 5
    info = export_openfwi(store, dataset, out, settings, device="cpu", progress=False)
    # two whole files of 2; the fifth accepted pair would make a short third file: left out
    assert (info["num_exported"], info["num_files"], info["num_accepted"], info["num_left_out"]) == (4, 2, 5, 1)
    assert not (out / "model3.npy").exists()
    models = [np.load(out / f"model{n}.npy") for n in (1, 2)]
    data = [np.load(out / f"data{n}.npy") for n in (1, 2)]
    assert [m.shape for m in models] == [(2, 1, 70, 70)] * 2 and [d.shape for d in data] == [(2, 5, 1000, 70)] * 2
    model = np.concatenate(models)
    # the velocity is the store's, in m/s on OpenFWI's grid; the data is its simulation
    expected = velocity_from_model(torch.from_numpy(arrays(store)["velocity"][accepted[:4]]), REP)
    np.testing.assert_allclose(model, expected.numpy(), rtol=1e-6)
    assert 1500 <= model.min() and model.max() <= 4500
    np.testing.assert_allclose(data[1], forward_model(torch.from_numpy(models[1])).numpy(), rtol=1e-5, atol=1e-7)
    with open(out / "index.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["store_row"]) for r in rows] == accepted[:4].tolist()
    assert [(r["file"], r["row_in_file"]) for r in rows] == [("1", "0"), ("1", "1"), ("2", "0"), ("2", "1")]

    # OpenFWI's training reads the files through the annotation, from any working folder
    config = json.loads((out / "dataset_config.json").read_text())["wavediffusion"]
    assert config["file_size"] == 2 and (config["label_min"], config["label_max"]) == (1500.0, 4500.0)
    all_data = np.concatenate(data)
    assert (config["data_min"], config["data_max"]) == (float(all_data.min()), float(all_data.max()))
    assert (config["nt"], config["ns"], config["ng"], config["n_grid"], config["dx"]) == (1000, 5, 70, 70, 10.0)
    monkeypatch.chdir(tmp_path.parent)
    for preload in (True, False):
        items = openfwi_items(out / "annotation.txt", config["file_size"], preload)
        assert len(items) == 4
        np.testing.assert_array_equal(np.stack([d for d, _ in items]), all_data)
        np.testing.assert_array_equal(np.stack([label for _, label in items]), model)

    with h5py.File(out / "pairs.h5", "r") as h5:
        np.testing.assert_array_equal(h5["model"][:], model)
        np.testing.assert_array_equal(h5["data"][:], all_data)
        assert h5["store_row"][:].tolist() == accepted[:4].tolist()
        assert h5["model"].attrs["units"] == "m/s" and h5["deviation"].attrs["units"] == "1"
        assert "OpenFWI" in h5["data"].attrs["units"] and h5["data"].attrs["time_step_s"] == 0.001
        assert [axis.label for axis in h5["data"].dims] == ["pair", "shot", "time", "receiver"]
        assert h5.attrs["config_sha256"] == SETTINGS.sha256() and h5.attrs["store"] == str(store)
        assert json.loads(h5.attrs["physics_filter"])["n_valid"] == 5

    # fewer accepted pairs than one file: no files, nothing for OpenFWI to trip over
    few = export_openfwi(store, dataset, tmp_path / "few", replace(settings, samples_per_file=6), device="cpu",
                         progress=False)
    assert (few["num_files"], few["num_left_out"]) == (0, 5) and (tmp_path / "few" / "annotation.txt").read_text() == ""
    with pytest.raises(ValueError, match=r"export\.max_pairs"):
        ExportSettings(max_pairs=0)
