"""Which device a job runs on.

`resolve_device`: the GPU if there is one, else the CPU, when the caller does not say.

`announce_device`: the first line of every GPU step's log says where it runs; a job that finds
no CUDA device warns loudly, or, with WAVEDIFFUSION_REQUIRE_GPU=1 in its environment, stops.

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

# A cluster user exports this once (shell profile, SLURM profile, sbatch script): a GPU job
# that lands without CUDA then fails at once instead of running for days on the CPU.
REQUIRE_GPU = "WAVEDIFFUSION_REQUIRE_GPU"


class NoGPUError(RuntimeError):
    """A GPU step found no CUDA device while WAVEDIFFUSION_REQUIRE_GPU is set."""


def gpu_required(environ=None) -> bool:
    """WAVEDIFFUSION_REQUIRE_GPU as a switch: 1/true/yes/on, or 0/false/no/off/unset."""
    value = (os.environ if environ is None else environ).get(REQUIRE_GPU, "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise ValueError(f"{REQUIRE_GPU}={value!r}: give 1 (refuse to run a GPU step on the CPU) or 0")


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """`device` as a torch.device; None means CUDA when available, else the CPU."""
    return torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))


def announce_device(command: str) -> str:
    """Say, in one line on stderr, which device this GPU step runs on, and return the line.

    With CUDA: the GPU this process uses (under torchrun or srun its local rank's, as
    training.distributed.pick_device chooses it) and its name. Without: a warning that says
    why (a CPU-only torch, or no device visible) and that the step runs on the CPU; with
    WAVEDIFFUSION_REQUIRE_GPU=1 a NoGPUError instead, before the step does any work.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    where = f"CUDA_VISIBLE_DEVICES={visible}" if visible is not None else "CUDA_VISIBLE_DEVICES unset"
    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", 0)))
        index = local_rank % torch.cuda.device_count()
        properties = torch.cuda.get_device_properties(index)
        line = (f"wavediffusion {command}: running on cuda:{index}, {properties.name} "
                f"({properties.total_memory / 2**30:.0f} GiB; {where}; torch {torch.__version__})")
    else:
        why = ("this torch is built without CUDA" if torch.version.cuda is None
               else f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device; {where}")
        if gpu_required():
            raise NoGPUError(f"no CUDA device ({why}), and {REQUIRE_GPU} is set: refusing to run this GPU step "
                             f"on the CPU (host {os.uname().nodename})")
        line = (f"wavediffusion {command}: WARNING: no CUDA device found ({why}): this GPU step runs on the CPU, "
                f"many times slower; set {REQUIRE_GPU}=1 to make it fail instead")
    print(line, file=sys.stderr, flush=True)
    return line


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
