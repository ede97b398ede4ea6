"""The whole tiny DAG through real Snakemake, and re-runs after config edits."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
import zarr

from wavediffusion.data.store import open_dataset

from conftest import REPO

SNAKEMAKE = [sys.executable, "-m", "snakemake"]
TARGETS = ("all",)


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

    with open(workdir / "results/stage1/metrics.csv") as handle:
        metrics = list(csv.DictReader(handle))
    assert [row["family"] for row in metrics] == [*config["data"]["families"], "all"]
    for row in metrics:
        assert row["variant"] == "1vq" and int(row["n"]) >= 1
        assert 0 < float(row["mse_seismic"]) and 0 < float(row["pde_deviation"])
        assert -1 <= float(row["ssim"]) <= 1
    with open(workdir / "results/stage1/1vq/table5.csv") as handle:
        table5 = list(csv.DictReader(handle))
    evaluation = config["stage1"]["evaluation"]
    assert [(row["latents"], row["weight"]) for row in table5] == [
        ("test_reconstruction", ""), ("train_reconstruction", ""), ("random_gaussian", ""),
        *[("interpolation", str(w)) for w in evaluation["interpolation_weights"]]]
    assert int(table5[2]["n"]) == evaluation["random_latents"]
    assert (workdir / "results/stage1/1vq/examples.png").stat().st_size > 10_000
    stage2 = torch.load(workdir / "results/stage2/1vq/model.pt", weights_only=False)
    assert stage2["step"] == config["stage2"]["training"]["max_steps"]
    assert stage2["config"]["task"]["model"]["in_channels"] == config["stage1"]["model"]["latent_channels"]

    trajectory = config["stage2"]["trajectory"]
    with open(workdir / "results/trajectory/1vq/deviation.csv") as handle:
        deviation = list(csv.DictReader(handle))
    steps = {int(row["step"]) for row in deviation if row["direction"] == "backward"}
    assert steps == {*trajectory["steps"], -1}  # -1: the noise-free end (the final sample)
    with open(workdir / "results/trajectory/1vq/table5.csv") as handle:
        names = [row["latents"] for row in csv.DictReader(handle)]
    assert names[:3] == ["test_reconstruction", "train_reconstruction", "random_gaussian"]
    assert names[-3:] == ["diffusion_ddpm", *[f"diffusion_ddim_{k}" for k in trajectory["ddim_steps"]]]
    for figure in ("deviation.png", "trajectory_examples.png"):
        assert (workdir / "results/trajectory/1vq" / figure).stat().st_size > 10_000

    manifest = json.loads((workdir / "results/samples/1vq/manifest.json").read_text())
    n = config["sampling"]["num_pairs"]
    assert manifest["n_checked"] == n and manifest["num_pairs"] == n
    pairs = zarr.open_group(str(workdir / "results/samples/1vq/pairs.zarr"), mode="r")
    assert pairs["seismic"].shape == pairs["seismic_simulated"].shape == (n, 3, 64, 16)
    assert pairs["velocity"].shape == (n, 1, 16, 16)
    assert np.isfinite(pairs["deviation"][:]).all()


def test_config_edits_rerun_exactly_what_they_touch(tiny_run):
    workdir, config = tiny_run
    assert scheduled(workdir) == {}

    edited = yaml.safe_load(yaml.safe_dump(config))
    edited["data"]["embedded"]["synthetic_seed"] = 1  # FlatFault-B is synthetic, FlatVel-A real
    write_config(workdir, edited)
    shards = -(-config["sampling"]["num_pairs"] // config["sampling"]["shard_size"])
    sampling_on = {"sample_shard": shards, "check_shard": shards, "gather_samples": 1}
    stage1_on = {"train_stage1": 1, "encode_latents": 1, "evaluate_stage1": 1, "stage1_metrics": 1, "train_stage2": 1,
                 "diffusion_trajectory": 1, "create_pairs_store": 1, **sampling_on}
    assert scheduled(workdir) == {"simulate": 1, "preprocess": 1, "pde_floor": 1, "velocity_figure": 1, **stage1_on, "all": 1}

    edited = yaml.safe_load(yaml.safe_dump(config))
    edited["preprocess"]["shots"] = [0, 1, 2]
    write_config(workdir, edited)
    assert scheduled(workdir) == {"preprocess": 1, "pde_floor": 1, "velocity_figure": 1, **stage1_on, "all": 1}

    edited = yaml.safe_load(yaml.safe_dump(config))
    edited["physics"]["floor_samples_per_family"] = 2
    write_config(workdir, edited)
    assert scheduled(workdir) == {"pde_floor": 1, "all": 1}

    edited = yaml.safe_load(yaml.safe_dump(config))
    edited["stage1"]["training"]["max_steps"] = 7
    write_config(workdir, edited)
    assert scheduled(workdir) == {**stage1_on, "all": 1}

    edited = yaml.safe_load(yaml.safe_dump(config))
    edited["stage1"]["evaluation"]["random_latents"] = 3
    write_config(workdir, edited)
    assert scheduled(workdir) == {"evaluate_stage1": 1, "stage1_metrics": 1, "diffusion_trajectory": 1, "all": 1}

    edited = yaml.safe_load(yaml.safe_dump(config))
    edited["stage2"]["training"]["max_steps"] = 5
    write_config(workdir, edited)
    assert scheduled(workdir) == {"train_stage2": 1, "diffusion_trajectory": 1, **sampling_on, "all": 1}

    edited = yaml.safe_load(yaml.safe_dump(config))
    edited["sampling"]["steps"] = 4
    write_config(workdir, edited)
    assert scheduled(workdir) == {"create_pairs_store": 1, **sampling_on, "all": 1}

    edited = yaml.safe_load(yaml.safe_dump(config))
    edited["stage2"]["trajectory"]["n_forward"] = 3
    write_config(workdir, edited)
    assert scheduled(workdir) == {"diffusion_trajectory": 1, "all": 1}

    edited = yaml.safe_load(yaml.safe_dump(config))
    edited["scale"] = "tiny-renamed"  # a label no rule reads
    write_config(workdir, edited)
    assert scheduled(workdir) == {}
    write_config(workdir, config)


def test_a_training_rule_with_two_gpus_runs_two_processes(tiny_run):
    """stage1.gpus: 2 starts the training through torchrun (two gloo processes on this CPU
    machine) and ends where the 1-process run ends: the batch size is global."""
    workdir, config = tiny_run
    weights = {}
    for gpus in (2, 1):
        edited = yaml.safe_load(yaml.safe_dump(config))
        edited["stage1"]["gpus"] = gpus
        edited["stage1"]["losses"]["disc_start"] = 100  # no discriminator: CPU BatchNorm is per process
        write_config(workdir, edited)
        snakemake(workdir, "results/stage1/1vq/model.pt")
        log = (workdir / "logs/train_stage1/1vq.log").read_text()
        assert f"{gpus} process(es)" in log
        weights[gpus] = torch.load(workdir / "results/stage1/1vq/model.pt", weights_only=False)["modules"]["autoencoder"]
    write_config(workdir, config)
    largest = max(float((weights[2][k].float() - weights[1][k].float()).abs().max()) for k in weights[1])
    assert largest < 1e-4, largest


def test_a_killed_training_job_resumes_on_rerun(tiny_run, tmp_path):
    """SIGKILL the whole snakemake process group mid-training (a preempted or failed SLURM job),
    then rerun as a user would (--unlock, then the same target): the training resumes from
    its last checkpoint and ends with the weights of an uninterrupted run."""
    import signal
    import time

    workdir, config = tiny_run
    edited = yaml.safe_load(yaml.safe_dump(config))
    edited["stage1"]["training"].update(max_steps=60, checkpoint_every_steps=4, early_stop_patience=None)
    edited["stage1"]["losses"]["disc_start"] = 30
    write_config(workdir, edited)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    command = [*SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), "--cores", "2",
               "results/stage1/1vq/model.pt"]
    before = set((workdir / "results/stage1/1vq/runs").iterdir())
    job = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not any(p.name.startswith("step_") for run in
                                             set((workdir / "results/stage1/1vq/runs").iterdir()) - before
                                             for p in (run / "checkpoints").glob("*.pt")):
        time.sleep(0.2)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    (run,) = set((workdir / "results/stage1/1vq/runs").iterdir()) - before
    assert not (run / "final.pt").exists(), "the training finished before it could be killed"

    snakemake(workdir, "--unlock")
    snakemake(workdir, "--rerun-incomplete", "results/stage1/1vq/model.pt")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed_from"] and summary["steps"] == 60
    resumed = torch.load(workdir / "results/stage1/1vq/model.pt", weights_only=False)["modules"]["autoencoder"]

    settings = {key: edited["stage1"][key] for key in ("model", "discriminator", "losses", "training")}
    subprocess.run([Path(sys.executable).parent / "wavediffusion", "train-stage1", "--dataset",
                    str(workdir / "results/data/dataset.zarr"), "--variant", "1vq", "--settings", json.dumps(settings),
                    "--threads", "2", "--out", str(tmp_path / "model.pt")], check=True, capture_output=True, env=env)
    uninterrupted = torch.load(tmp_path / "model.pt", weights_only=False)["modules"]["autoencoder"]
    write_config(workdir, config)
    for name in uninterrupted:
        assert torch.equal(resumed[name], uninterrupted[name]), name


def test_configfile_on_the_command_line_replaces_config_yaml(tmp_path):
    """--configfile X uses X alone (schema defaults fill the rest): no key of config.yaml leaks in."""
    config = yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())
    write_config(tmp_path, config)  # config.yaml: tiny, whose stage1.model sets dead_code_steps
    other = yaml.safe_load(yaml.safe_dump(config))
    del other["stage1"]["model"]["dead_code_steps"]
    other["stage1"]["model"]["codebook_size"] = 32
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other))
    printed = snakemake(tmp_path, "--dry-run", "--printshellcmds", "--configfile", str(tmp_path / "other.yaml"),
                        "--", "results/stage1/1vq/model.pt").stdout
    command = next(line for line in printed.splitlines() if "wavediffusion train-stage1" in line)
    assert '"codebook_size": 32' in command
    assert "dead_code_steps" not in command


def test_paper_plan_through_the_slurm_profile(tmp_path):
    """`snakemake -n --profile slurm all` on config/paper.yaml: the jobs a paper run submits,
    and a GPU requested by exactly the rules that train, encode, decode or sample."""
    write_config(tmp_path, yaml.safe_load((REPO / "config" / "paper.yaml").read_text()))
    command = [*SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
               "--profile", "slurm", "--dry-run", "all"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)  # the profile is ./slurm
    assert result.returncode == 0, result.stderr[-3000:]
    variants = 2  # paper: 1vq and 2vq
    per_variant = ("train_stage1", "encode_latents", "evaluate_stage1", "train_stage2", "diffusion_trajectory")
    table = result.stdout.split("Job stats:")[1].split("total")[0]
    counts = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.MULTILINE)}
    shards = 375_000 // 25_000  # paper: sampling.num_pairs / sampling.shard_size
    assert counts == {"download_openfwi": 10, "preprocess": 1, "pde_floor": 1, "velocity_figure": 1,
                      **{rule: variants for rule in per_variant}, "stage1_metrics": 1, "create_pairs_store": variants,
                      "sample_shard": variants * shards, "check_shard": variants * shards, "gather_samples": variants,
                      "all": 1}
    jobs = re.findall(r"^(?:local)?rule (\w+):\n(.*?)(?=^\S|\Z)", result.stdout, re.MULTILINE | re.DOTALL)
    gpus = {}
    for rule, body in jobs:
        resources = re.search(r"resources: (.*)", body).group(1) if "resources:" in body else ""
        gpus.setdefault(rule, set()).add(re.search(r"\bgpu=(\d+)", resources).group(1) if "gpu=" in resources else "0")
    gpu_rules = {*per_variant, "sample_shard", "check_shard"}
    assert {rule for rule, counts_ in gpus.items() if counts_ != {"0"}} == gpu_rules
    assert all(gpus[rule] == {"1"} for rule in gpu_rules)


def test_multi_node_training_plan(tmp_path):
    """stage1.gpus 4 x stage1.nodes 2: one SLURM job with 8 GPUs on 2 nodes, whose command
    is an srun of one task per GPU."""
    config = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    config["stage1"].update(gpus=4, nodes=2)
    write_config(tmp_path, config)
    command = [*SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path), "--profile", "slurm",
               "--dry-run", "--printshellcmds", "results/stage1/1vq/model.pt"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    job = result.stdout.split("rule train_stage1:")[1]
    assert "gpu=8, nodes=2, tasks=8, tasks_per_gpu=1, mpi=srun" in job
    assert "srun --nodes 2 --ntasks-per-node 4 --gpus-per-task 1 wavediffusion train-stage1" in job


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
