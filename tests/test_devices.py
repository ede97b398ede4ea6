"""claim_local_gpu: concurrent local jobs on a machine of several GPUs each take their own."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch

from wavediffusion.devices import claim_local_gpu

# A job: claim one of two GPUs, say which, hold it for argv[2] seconds.
JOB = """
import os, sys, time
from wavediffusion.devices import claim_local_gpu
index = claim_local_gpu(gpu_count=2, lock_dir=sys.argv[1], poll_seconds=0.05)
print(index, os.environ["CUDA_VISIBLE_DEVICES"], flush=True)
time.sleep(float(sys.argv[2]))
"""


def start_job(lock_dir, hold_seconds):
    env = {key: value for key, value in os.environ.items() if key not in ("CUDA_VISIBLE_DEVICES", "LOCAL_RANK")}
    return subprocess.Popen([sys.executable, "-c", JOB, str(lock_dir), str(hold_seconds)],
                            stdout=subprocess.PIPE, text=True, env=env)


def test_concurrent_jobs_take_distinct_gpus_and_a_third_waits(tmp_path):
    first, second = start_job(tmp_path, 60), start_job(tmp_path, 60)
    try:
        first_gpu, second_gpu = first.stdout.readline().split()[0], second.stdout.readline().split()[0]
        assert {first_gpu, second_gpu} == {"0", "1"}
        third = start_job(tmp_path, 0)
        time.sleep(1.0)
        assert third.poll() is None, "a third job must wait while both GPUs are held"
        first.kill()  # a crashed job: the kernel drops its lock
        first.wait()
        claimed, visible = third.stdout.readline().split()
        assert third.wait(timeout=30) == 0
        assert claimed == visible == first_gpu
    finally:
        for job in (first, second):
            job.kill()
            job.wait()


def test_claims_nothing_where_the_gpu_is_already_chosen(tmp_path, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")  # as SLURM sets it
    assert claim_local_gpu(gpu_count=4, lock_dir=tmp_path) is None
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setenv("LOCAL_RANK", "1")  # a torchrun rank
    assert claim_local_gpu(gpu_count=4, lock_dir=tmp_path) is None
    monkeypatch.delenv("LOCAL_RANK")
    assert claim_local_gpu(gpu_count=1, lock_dir=tmp_path) is None  # one GPU: nothing to choose
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    assert list(tmp_path.iterdir()) == []


@pytest.mark.gpu
def test_gpu_commands_on_a_machine_of_several_gpus_each_see_their_own(tmp_path):
    """On the device machine with several GPUs: two concurrent claims see different GPUs."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    probe = ("import sys, time, torch; from wavediffusion.devices import claim_local_gpu;"
             f" claim_local_gpu(lock_dir={str(tmp_path)!r});"
             " print(torch.cuda.get_device_properties(0).uuid, torch.cuda.device_count(), flush=True); time.sleep(5)")
    env = {key: value for key, value in os.environ.items() if key not in ("CUDA_VISIBLE_DEVICES", "LOCAL_RANK")}
    jobs = [subprocess.Popen([sys.executable, "-c", probe], stdout=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    lines = [job.communicate(timeout=120)[0].split() for job in jobs]
    assert [count for _, count in lines] == ["1", "1"]
    assert lines[0][0] != lines[1][0]


# --------------------------------------------------------------------------- which device a GPU step runs on


def gpu_command(tmp_path, **environ):
    """A real GPU command (encode-latents) whose model does not exist: the step, when it runs,
    fails at once naming the file; `environ` is added to a copy of the environment."""
    env = {key: value for key, value in os.environ.items() if key != "WAVEDIFFUSION_REQUIRE_GPU"} | environ
    argv = [sys.executable, "-m", "wavediffusion.cli", "encode-latents", "--model", str(tmp_path / "missing.pt"),
            "--dataset", str(tmp_path / "dataset.zarr"), "--out", str(tmp_path / "latents.zarr")]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without CUDA")
def test_a_gpu_step_without_cuda_warns_first_then_runs_on_the_cpu(tmp_path):
    result = gpu_command(tmp_path)
    first = result.stderr.splitlines()[0]
    assert "wavediffusion encode-latents: WARNING: no CUDA device found" in first
    assert "runs on the CPU" in first and "WAVEDIFFUSION_REQUIRE_GPU=1" in first
    assert result.returncode == 2 and "missing.pt" in result.stderr  # the step ran (and found no model)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without CUDA")
def test_require_gpu_stops_a_gpu_step_before_it_does_anything(tmp_path):
    result = gpu_command(tmp_path, WAVEDIFFUSION_REQUIRE_GPU="1")
    assert result.returncode == 4, result.stderr
    assert result.stderr.startswith("wavediffusion encode-latents: error: no CUDA device")
    assert "WAVEDIFFUSION_REQUIRE_GPU is set: refusing to run this GPU step on the CPU" in result.stderr
    assert "missing.pt" not in result.stderr  # the step never started
    assert not (tmp_path / "latents.zarr").exists()
    result = gpu_command(tmp_path, WAVEDIFFUSION_REQUIRE_GPU="maybe")
    assert result.returncode == 4 and "WAVEDIFFUSION_REQUIRE_GPU='maybe': give 1" in result.stderr


def test_require_gpu_does_not_touch_cpu_steps(tmp_path):
    env = os.environ | {"WAVEDIFFUSION_REQUIRE_GPU": "1"}
    result = subprocess.run([sys.executable, "-m", "wavediffusion.cli", "check-config", str(tmp_path / "none.yaml")],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2 and "CUDA" not in result.stderr and "none.yaml" in result.stderr


@pytest.mark.gpu
def test_a_gpu_step_names_its_gpu(tmp_path):
    result = gpu_command(tmp_path, WAVEDIFFUSION_REQUIRE_GPU="1")
    first = result.stderr.splitlines()[0]
    assert first.startswith("wavediffusion encode-latents: running on cuda:0, ")
    assert torch.cuda.get_device_name(0) in first
    assert result.returncode == 2 and "missing.pt" in result.stderr
