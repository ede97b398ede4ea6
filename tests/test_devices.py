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
