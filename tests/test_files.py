"""Damaged and half-written files: what killed writers leave behind, and damage named when read."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

from wavediffusion.data.pairs_store import open_pairs_store
from wavediffusion.data.store import open_dataset
from wavediffusion.files import atomic_directory, write_csv
from wavediffusion.training import checkpoint
from wavediffusion.training.stage2 import open_latents


def dead_pid() -> int:
    """The pid of a process that has ended."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_later_write_removes_what_a_killed_writer_left(tmp_path):
    pid = dead_pid()
    stale_dir = tmp_path / f".pairs.zarr.tmp-{pid}"
    (stale_dir / "c").mkdir(parents=True)
    stale_old = tmp_path / f".pairs.zarr.old-{pid}"
    stale_old.mkdir()
    stale_file = tmp_path / f".table.csv.tmp-{pid}.csv"
    stale_file.write_text("half a table")
    running = tmp_path / f".pairs.zarr.tmp-{os.getppid()}"  # a writer that still runs: kept
    running.mkdir()
    other = tmp_path / f".pairs.zarr.backup-{pid}"  # not a temporary of ours: kept
    other.mkdir()

    with atomic_directory(tmp_path / "pairs.zarr") as tmp:
        tmp.mkdir()
    write_csv([{"a": 1}], tmp_path / "table.csv", ["a"])

    assert not stale_dir.exists() and not stale_old.exists() and not stale_file.exists()
    assert running.exists() and other.exists()
    assert (tmp_path / "pairs.zarr").is_dir() and (tmp_path / "table.csv").read_text() == "a\n1\n"


def test_a_damaged_weights_file_is_named_with_what_to_do(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"modules": {"w": torch.ones(1000)}}, path)
    path.write_bytes(path.read_bytes()[:300])  # truncated, as by a full disk or a killed copy
    with pytest.raises(ValueError, match=r"model\.pt: not a readable weights file .*delete it and rerun"):
        checkpoint.load(path)
    path.write_bytes(b"not a weights file at all")
    with pytest.raises(ValueError, match=r"model\.pt: not a readable weights file"):
        checkpoint.load(path)
    with pytest.raises(FileNotFoundError):
        checkpoint.load(tmp_path / "missing.pt")


@pytest.mark.parametrize("opener, rule", [(open_dataset, "preprocess"), (open_pairs_store, "create_pairs_store"),
                                          (open_latents, "encode_latents")])
def test_a_damaged_store_is_named_with_the_rule_that_rewrites_it(tmp_path, opener, rule):
    store = tmp_path / "store.zarr"
    store.mkdir()
    (store / "zarr.json").write_text('{"zarr_format": 3, "node_type": "gr')  # cut short
    with pytest.raises(ValueError, match=rf"store\.zarr: a damaged .* delete it and rerun the {rule} rule"):
        opener(store)


def test_damaged_fid_weights_name_the_file_and_the_config_key(tmp_path):
    from wavediffusion.evaluation.fid import load_fid_inception

    weights = tmp_path / "pt_inception.pth"
    weights.write_bytes(b"not weights")
    with pytest.raises(ValueError, match=r"pt_inception\.pth \(config fid\.weights\): not readable Inception weights"):
        load_fid_inception(weights, download=False)


# --- damage inside a store: a missing shard file or changed bytes, never read as data --------------


@pytest.fixture
def dataset(tmp_path):
    from test_preprocess import make_small_store

    return make_small_store(tmp_path / "openfwi", tmp_path / "dataset.zarr", test_per_family=2)


def flip_a_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF  # inside the chunks, before the shard's index at its end
    path.write_bytes(bytes(data))


def test_a_deleted_dataset_shard_is_refused_naming_it_and_the_rule(dataset):
    (dataset / "train" / "seismic" / "c" / "1" / "0" / "0" / "0").unlink()  # rows 4..7 (4 per shard)
    with pytest.raises(ValueError, match=r"dataset\.zarr: damaged, 1 shard\(s\): train/seismic rows 4\.\.7: shard "
                                         r"file train/seismic/c/1/0/0/0 is missing.*rerun the preprocess rule"):
        open_dataset(dataset)


def test_every_array_is_written_whole_even_where_it_equals_the_fill_value(dataset):
    import zarr

    from wavediffusion.data.integrity import all_rows, find_damage

    root = zarr.open_group(str(dataset), mode="r")
    assert find_damage(dataset, root, all_rows(root)) == []
    assert len(all_rows(root)) == 3 * 5  # 3 splits x (seismic, velocity, velocity_native, family, source_index)


def test_changed_bytes_fail_their_checksum_and_verify_names_the_shard(dataset, capsys):
    from wavediffusion.cli import main

    assert main(["verify", str(dataset)]) == 0
    assert "a dataset store, intact" in capsys.readouterr().out
    flip_a_byte(dataset / "train" / "velocity_native" / "c" / "0" / "0" / "0" / "0")
    open_dataset(dataset)  # every file is there: opening is cheap and cannot see it ...
    # ... but the first read does, and the message says how to find the shard
    out = str(dataset.parent / "families.png")
    assert main(["plot-velocity-families", "--dataset", str(dataset), "--out", out]) == 2
    error = capsys.readouterr().err
    assert "checksum" in error and f"damaged ({dataset})" in error and "wavediffusion verify STORE" in error
    assert not os.path.exists(out)
    assert main(["verify", str(dataset)]) == 2
    assert re.search(r"train/velocity_native rows 0\.\.3: cannot be decoded .*rerun the preprocess rule",
                     capsys.readouterr().err)


def complete_pairs(path, n=6, shard_size=2):
    from test_inversionnet import make_pairs

    make_pairs(path, n=n, shard_size=shard_size, seed=0)
    return path


def test_a_deleted_pairs_shard_is_refused_naming_the_sampling_job_that_rewrites_it(tmp_path):
    store = complete_pairs(tmp_path / "pairs.zarr")
    open_pairs_store(store, mode="r")  # as every reader opens it (gather, the physics report, export, FID)
    (store / "velocity" / "c" / "1" / "0" / "0" / "0").unlink()  # rows 2..3: shard 1
    with pytest.raises(ValueError, match=r"velocity rows 2\.\.3: shard file .* missing.*Shard\(s\) \[1\] must be "
                                         r"sampled again: delete their records shards/sample-<k>\.json"):
        open_pairs_store(store, mode="r")


def test_a_filter_mask_of_all_false_is_written_and_its_loss_is_seen(tmp_path):
    from wavediffusion.sampling.physics_filter import apply_physics_filter

    store = complete_pairs(tmp_path / "pairs.zarr")
    valid = apply_physics_filter(open_pairs_store(store), threshold=1e-12)  # nothing passes: all fill values
    assert not valid.any()
    open_pairs_store(store, mode="r")
    (store / "valid" / "c" / "0").unlink()
    with pytest.raises(ValueError, match=r"valid rows 0\.\.1: shard file .* rerun the physics_report rule"):
        open_pairs_store(store, mode="r")


def test_gather_names_the_records_to_delete_when_a_shard_was_resampled_by_hand(tmp_path, capsys):
    from wavediffusion.cli import main
    from wavediffusion.data.pairs_store import clear_done

    store = complete_pairs(tmp_path / "pairs.zarr")
    records = {kind: [str(tmp_path / "shards" / f"{kind}-{k}.json") for k in range(3)] for kind in ("sample", "check")}
    clear_done(store, "check", 1)  # what a hand-run sample-shard leaves: shard 1's check is gone from the store
    out = tmp_path / "manifest.json"
    assert main(["gather-samples", "--store", str(store), "--out", str(out), "--sample-records", *records["sample"],
                 "--check-records", *records["check"]]) == 2
    error = capsys.readouterr().err
    assert f"delete {records['check'][1]} and rerun" in error and records["sample"][1] not in error
    assert not out.exists()
