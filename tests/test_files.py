"""Damaged and half-written files: what killed writers leave behind, and damage named when read."""

from __future__ import annotations

import os
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
