"""Shared test fixtures: paths, the repository root, tiny configs, and the tiny DAG run once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from wavediffusion.config import SCHEMA as PACKAGE_SCHEMA

REPO = Path(__file__).resolve().parents[1]
SCHEMA = PACKAGE_SCHEMA  # shipped with the package

# One thread: tiny tensors gain nothing from two, and two OpenMP threads on a shared
# 2-core machine can spin-wait each other into 10x slowdowns.
torch.set_num_threads(1)

# The tests run GPU steps on the CPU: a cluster user's WAVEDIFFUSION_REQUIRE_GPU=1 would refuse them.
os.environ.pop("WAVEDIFFUSION_REQUIRE_GPU", None)


def pytest_collection_modifyitems(config, items):
    """GPU tests run on the device machine only."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def repo() -> Path:
    return REPO


SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    """Real Snakemake on the repository's Snakefile in `workdir`, 2 cores; raises with its output on failure."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    command = [*SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), "--cores", "2", *args]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    if result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def write_config(workdir: Path, config: dict) -> None:
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> tuple[Path, dict]:
    """The whole tiny DAG (`all`, Table 8 included), run once for every test module that reads it.
    Tests that edit its config restore it; the ones that change its results run last
    (test_workflow.py, after test_ablation.py)."""
    workdir = tmp_path_factory.mktemp("tiny")
    config = yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())
    write_config(workdir, config)
    snakemake(workdir, "all")
    return workdir, config
