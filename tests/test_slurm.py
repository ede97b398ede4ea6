"""The workflow through a real SLURM cluster: `snakemake --profile slurm` on localhost.

tests/slurm/local_cluster.sh brings up munged, slurmctld and slurmd from Debian's packages
(installing them if missing; needs root); every job of a cluster rule (all but the
Snakefile's localrules) then goes through sbatch and the SLURM executor plugin, exactly as
on a site cluster. tests/slurm/profile/ is the test
layer (squeue for status, since the test cluster keeps no accounting; short intervals).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from wavediffusion.data.store import open_dataset

from conftest import REPO

CLUSTER_DIR = Path("/tmp/wavediffusion-slurm-test")
SCRIPT = REPO / "tests" / "slurm" / "local_cluster.sh"
# Every kind of job up to the gathered samples (CPU and GPU rules, training, scattered
# shards); the evaluation rules after them submit the same way, and tests/test_workflow.py
# runs the whole DAG locally. Kept to this set so the cluster test stays within CI's time.
TARGETS = ("results/figures/velocity_families.png", "results/physics/pde_floor.csv", "results/samples/1vq/manifest.json")

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("apt-get") is None,
                       reason="the local SLURM cluster needs root and Debian's apt-get"),
]


@pytest.fixture(scope="module")
def cluster():
    started = subprocess.run(["bash", str(SCRIPT), "start", str(CLUSTER_DIR)], capture_output=True, text=True, timeout=600)
    assert started.returncode == 0, f"local SLURM cluster did not start:\n{started.stderr[-3000:]}"
    yield {**os.environ, "SLURM_CONF": str(CLUSTER_DIR / "slurm.conf")}
    subprocess.run(["bash", str(SCRIPT), "stop", str(CLUSTER_DIR)], capture_output=True, text=True, timeout=120)


def run_snakemake(workdir: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    """Snakemake from the repository root, as a user types it, on `workdir`'s config."""
    command = [sys.executable, "-m", "snakemake", "--directory", str(workdir), *args]
    # `timeout -k`: a plugin that lost track of its jobs must not hang the test suite
    return subprocess.run(["timeout", "-k", "10", "900", *command], cwd=REPO, env=env, capture_output=True, text=True)


def tiny_workdir(path: Path, config: dict | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    config = config or yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    return path


def test_tiny_dag_through_sbatch_equals_a_local_run(cluster, tiny_run, tmp_path):
    on_slurm = tiny_workdir(tmp_path / "slurm")
    result = run_snakemake(on_slurm, cluster, "--profile", "slurm", "--workflow-profile", "tests/slurm/profile",
                           *TARGETS)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]

    # every job of every cluster rule was submitted with sbatch and left its SLURM log; the
    # Snakefile's localrules (seconds-long bookkeeping) ran beside Snakemake instead
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+) \(log: (\S+)\)", result.stdout + result.stderr)
    rules = sorted(re.search(r"slurm_logs/(rule_\w+)/", log).group(1) for _, log in submitted)
    shards = 3  # tiny: 5 pairs in shards of 2
    assert rules == ["rule_check_shard"] * shards + ["rule_encode_latents", "rule_pde_floor", "rule_preprocess"] + [
                     "rule_sample_shard"] * shards + ["rule_simulate", "rule_simulate",
                     "rule_train_stage1", "rule_train_stage2"]
    local = sorted(re.findall(r"^localrule (\w+):", result.stdout + result.stderr, re.MULTILINE))
    assert local == ["create_pairs_store", "gather_samples", "velocity_figure"]
    for jobid, log in submitted:
        assert Path(log).name == f"{jobid}.log" and Path(log).exists()
    # the rules that declare `gpu` asked SLURM for one (the test node's GPUs are fake: the
    # job sees CUDA_VISIBLE_DEVICES, finds no CUDA device, and runs on the CPU)
    gpu_rules = {"rule_train_stage1", "rule_encode_latents", "rule_train_stage2", "rule_sample_shard", "rule_check_shard"}
    for jobid, log in submitted:
        job = subprocess.run(["scontrol", "show", "job", "-o", jobid], env=cluster, capture_output=True, text=True).stdout
        rule = re.search(r"slurm_logs/(rule_\w+)/", log).group(1)
        assert ("TresPerJob=gres:gpu:1" in job) == (rule in gpu_rules), (rule, job)

    # the local twin: the tests' shared tiny run, on the same config.yaml (tests/conftest.py)
    local, config = tiny_run
    assert yaml.safe_load((on_slurm / "config.yaml").read_text()) == config
    # the same numbers, up to float32 rounding (the jobs' thread counts differ)
    a, b = open_dataset(on_slurm / "results/data/dataset.zarr"), open_dataset(local / "results/data/dataset.zarr")
    assert a.attrs["counts"] == b.attrs["counts"]
    for split in ("train", "val", "test"):
        for name in ("seismic", "velocity", "velocity_native", "family"):
            np.testing.assert_allclose(a[split][name][:], b[split][name][:], rtol=0, atol=1e-5)
    floors = [np.genfromtxt(w / "results/physics/pde_floor.csv", delimiter=",", names=True, dtype=None, encoding=None)
              for w in (on_slurm, local)]
    np.testing.assert_allclose(floors[0]["deviation_mean"], floors[1]["deviation_mean"], rtol=1e-4, atol=1e-12)


def test_a_failed_cluster_job_is_reported_with_its_slurm_log(cluster, tmp_path):
    # an OpenFWI copy whose family folder is empty: the preprocess job fails on the node
    (tmp_path / "openfwi" / "FlatVel_A").mkdir(parents=True)
    config = {"data": {"source": "openfwi", "openfwi_root": str(tmp_path / "openfwi"), "families": ["FlatVel-A"]}}
    workdir = tiny_workdir(tmp_path / "run", config)
    result = run_snakemake(workdir, cluster, "--profile", "slurm", "--workflow-profile", "tests/slurm/profile",
                           "results/data/dataset.zarr")
    assert result.returncode == 1
    report = result.stdout + result.stderr
    log = re.search(r"log: logs/preprocess\.log, (\S+/slurm_logs/rule_preprocess/\d+\.log)", report)
    assert log and Path(log.group(1)).exists(), report[-3000:]
    assert "FlatVel_A" in (workdir / "logs" / "preprocess.log").read_text()
    assert not (workdir / "results" / "data" / "dataset.zarr").exists()
