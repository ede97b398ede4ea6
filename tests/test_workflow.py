"""The whole tiny DAG through real Snakemake, and re-runs after config edits."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from wavediffusion.data.store import open_dataset

from conftest import REPO

SNAKEMAKE = [sys.executable, "-m", "snakemake"]
# `all` plus Stage 1, which is not yet part of `all`
TARGETS = ("all", "results/stage1/1vq/latents.zarr")


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    command = [*SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), "--cores", "2", *args]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    if result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def scheduled(workdir: Path) -> dict[str, int]:
    """Rule -> job count of a dry run (empty when nothing would run)."""
    output = snakemake(workdir, "--dry-run", *TARGETS).stdout
    if "Nothing to be done" in output:
        return {}
    table = output.split("Job stats:")[1].split("total")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.MULTILINE)}


def write_config(workdir: Path, config: dict) -> None:
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, dict]:
    workdir = tmp_path_factory.mktemp("tiny")
    config = yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())
    write_config(workdir, config)
    snakemake(workdir, *TARGETS)
    return workdir, config


def test_tiny_dag_produces_every_output(tiny_run):
    workdir, config = tiny_run
    root = open_dataset(workdir / "results/data/dataset.zarr")
    assert root.attrs["families_used"] == config["data"]["families"]
    n = config["data"]["embedded"]["train_per_family"] * 2
    assert root.attrs["counts"]["train"] + root.attrs["counts"]["val"] == n
    assert root["test"]["seismic"].shape == (4, 3, 64, 16)  # tiny's representation
    with open(workdir / "results/physics/pde_floor.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["family"], r["backend"], r["velocity_input"]) for r in rows} == {
        (f, b, v) for f in config["data"]["families"] for b in ("deepwave", "openfwi") for v in ("native70", "model64")
    }
    deviation = {(r["family"], r["backend"], r["velocity_input"]): float(r["deviation_mean"]) for r in rows}
    # the embedded data were made by deepwave from the native maps: deepwave reproduces them
    # to float rounding; the other backend and the 64x64 round trip cost more
    for family in config["data"]["families"]:
        assert deviation[(family, "deepwave", "native70")] < 1e-8
        assert deviation[(family, "openfwi", "native70")] > deviation[(family, "deepwave", "native70")]
        assert deviation[(family, "deepwave", "model64")] > deviation[(family, "deepwave", "native70")]
    assert (workdir / "results/figures/velocity_families.png").stat().st_size > 10_000
    for log in ("preprocess.log", "pde_floor.log", "velocity_figure.log", "train_stage1/1vq.log", "encode_latents/1vq.log"):
        assert (workdir / "logs" / log).exists()
    weights = torch.load(workdir / "results/stage1/1vq/model.pt", weights_only=False)
    assert weights["step"] == config["stage1"]["training"]["max_steps"]
    assert weights["config"]["task"]["model"]["time_samples"] == 64  # sizes taken from the dataset


def test_config_edits_rerun_exactly_what_they_touch(tiny_run):
    workdir, config = tiny_run
    assert scheduled(workdir) == {}

    edited = yaml.safe_load(yaml.safe_dump(config))
    edited["data"]["embedded"]["synthetic_seed"] = 1  # FlatFault-B is synthetic, FlatVel-A real
    write_config(workdir, edited)
    assert scheduled(workdir) == {"simulate": 1, "preprocess": 1, "pde_floor": 1, "velocity_figure": 1, "train_stage1": 1, "encode_latents": 1, "all": 1}

    edited = yaml.safe_load(yaml.safe_dump(config))
    edited["preprocess"]["shots"] = [0, 1, 2]
    write_config(workdir, edited)
    assert scheduled(workdir) == {"preprocess": 1, "pde_floor": 1, "velocity_figure": 1, "train_stage1": 1, "encode_latents": 1, "all": 1}

    edited = yaml.safe_load(yaml.safe_dump(config))
    edited["physics"]["floor_samples_per_family"] = 2
    write_config(workdir, edited)
    assert scheduled(workdir) == {"pde_floor": 1, "all": 1}

    edited = yaml.safe_load(yaml.safe_dump(config))
    edited["stage1"]["training"]["max_steps"] = 7
    write_config(workdir, edited)
    assert scheduled(workdir) == {"train_stage1": 1, "encode_latents": 1}

    edited = yaml.safe_load(yaml.safe_dump(config))
    edited["scale"] = "tiny-renamed"  # a label no rule reads
    write_config(workdir, edited)
    assert scheduled(workdir) == {}
    write_config(workdir, config)


def test_invalid_config_stops_the_run_naming_the_key(tmp_path):
    config = yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())
    config["data"]["families"] = ["FlatVel-A", "FlatVel-Z"]
    write_config(tmp_path, config)
    with pytest.raises(AssertionError, match=r"data\.families\[1\]: 'FlatVel-Z' is not one of"):
        snakemake(tmp_path, "--dry-run", "all")


def test_lint_is_clean():
    result = subprocess.run([*SNAKEMAKE, "--lint", "--snakefile", str(REPO / "Snakefile"), "--directory", str(REPO)],
                            capture_output=True, text=True, timeout=300)
    assert "Congratulations" in result.stdout + result.stderr, result.stdout + result.stderr
