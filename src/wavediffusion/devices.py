"""Which device a job runs on.

`resolve_device`: the GPU if there is one, else the CPU, when the caller does not say.

`claim_local_gpu`: on one machine with several GPUs, Snakemake run without a cluster
(`snakemake --cores 32 --resources gpu=4`) starts up to four GPU jobs at once but tells
none of them which GPU to take, so every one would land on cuda:0. Each GPU command
therefore claims, before CUDA starts, a GPU that no other wavediffusion process on the
machine holds (an advisory file lock per GPU, released by the kernel when the process
ends, however it ends) and makes it the only one it sees.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

# Lock files stay open for the life of the process: closing one would release its GPU.
_CLAIMED: list = []


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """`device` as a torch.device; None means CUDA when available, else the CPU."""
    return torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))


def visible_gpu_count() -> int:
    """GPUs on this machine by `nvidia-smi -L`, which asks the driver without starting CUDA
    in this process (after CUDA starts, CUDA_VISIBLE_DEVICES no longer has any effect);
    0 without nvidia-smi."""
    if shutil.which("nvidia-smi") is None:
        return 0
    listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    if listing.returncode != 0:
        return 0
    return sum(line.startswith("GPU ") for line in listing.stdout.splitlines())


def claim_local_gpu(gpu_count: int | None = None, lock_dir: str | Path | None = None,
                    poll_seconds: float = 5.0) -> int | None:
    """Pin this process to one GPU that no other wavediffusion process here holds; returns
    its index, or None where nothing is to choose.

    Nothing is chosen when CUDA_VISIBLE_DEVICES is already set (SLURM sets it for a job's
    GPUs; a user may set it by hand), under torchrun (its ranks own their GPUs: LOCAL_RANK
    is set), or with fewer than two GPUs. When every GPU is held, it waits
    for one: more jobs than GPUs would otherwise share one and run out of memory.
    `gpu_count` defaults to visible_gpu_count(); the lock files live in `lock_dir`
    (default: a per-user folder under the temporary directory).
    """
    if "CUDA_VISIBLE_DEVICES" in os.environ or "LOCAL_RANK" in os.environ:
        return None
    count = visible_gpu_count() if gpu_count is None else gpu_count
    if count < 2:
        return None
    folder = Path(lock_dir) if lock_dir is not None else Path(tempfile.gettempdir()) / f"wavediffusion-gpus-{os.getuid()}"
    folder.mkdir(parents=True, exist_ok=True)
    waiting = False
    while True:
        for index in range(count):
            lock = open(folder / f"gpu{index}.lock", "w")
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.close()
                continue
            _CLAIMED.append(lock)
            # CUDA's default order ranks GPUs by speed; nvidia-smi's is the PCI bus order
            os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
            os.environ["CUDA_VISIBLE_DEVICES"] = str(index)
            return index
        if not waiting:
            print(f"all {count} GPUs are held by other wavediffusion jobs; waiting for one", file=sys.stderr)
            waiting = True
        time.sleep(poll_seconds)
