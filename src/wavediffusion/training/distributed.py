"""Device selection and process-group set-up, read from the environment.

One code path serves one process on a laptop, N GPUs under `torchrun`, and N nodes under
`srun`: the launcher only decides which environment variables exist. We read them here,
once, and everything else asks `rank()` / `world_size()` / `is_main()`.

Launchers recognised, in this order:
- torchrun (`python -m torch.distributed.run`): RANK, WORLD_SIZE, LOCAL_RANK,
  MASTER_ADDR, MASTER_PORT — all set by torchrun.
- srun, one task per GPU: SLURM_PROCID, SLURM_STEP_NUM_TASKS (or SLURM_NTASKS),
  SLURM_LOCALID. The rendezvous is the first node of the step's node list
  (SLURM_STEP_NODELIST, else SLURM_JOB_NODELIST) unless MASTER_ADDR is set, on port
  MASTER_PORT or, if unset, a port derived from SLURM_JOB_ID (so two jobs sharing a node
  do not collide). We require SLURM_STEP_NUM_TASKS or SLURM_STEP_ID, which only `srun`
  sets: a plain `python` inside an `sbatch --ntasks=4` script sees SLURM_NTASKS=4 and
  SLURM_PROCID=0 but is one process, and treating it as rank 0 of 4 would hang forever
  waiting for the other three.
- neither: one process, no process group.

Backends: NCCL when the device is a GPU, gloo on CPU.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Launch:
    """What the launcher told this process: its place among the others and the rendezvous."""

    rank: int
    world_size: int
    local_rank: int
    launcher: str  # "single" | "torchrun" | "slurm"
    master_addr: str | None = None
    master_port: int | None = None


@dataclass(frozen=True)
class DistEnv:
    """This process's rank, the world size, and the device it computes on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None  # None when there is no process group (one process)
    launcher: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def first_host(nodelist: str) -> str:
    """The first host name of a SLURM compact node list.

    "gpu[03-05,09],cpu1" → "gpu03"; "node-a,node-b" → "node-a"; "r1n[2-3]x[7-8]" → "r1n2x7".
    Parsed here rather than with `scontrol show hostnames` so it also works where the
    SLURM client tools are not installed in the job's environment.
    """
    depth, end = 0, len(nodelist)
    for i, char in enumerate(nodelist):  # the first comma outside brackets ends host 1
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        elif char == "," and depth == 0:
            end = i
            break
    first = nodelist[:end].strip()

    def first_of_range(match: re.Match) -> str:
        return re.split(r"[,-]", match.group(1))[0]  # "03-05,09" → "03" (padding kept)

    host = re.sub(r"\[([^\]]*)\]", first_of_range, first)
    if not host:
        raise ValueError(f"cannot read a host from SLURM node list {nodelist!r}")
    return host


def slurm_port(job_id: str | None) -> int:
    """A rendezvous port that differs between SLURM jobs: 20000 + job id mod 10000."""
    return 20000 + (int(job_id) % 10000 if job_id and job_id.isdigit() else 0)


def read_launch(environ: Mapping[str, str] | None = None) -> Launch:
    """Decide, from environment variables alone, how this process was launched."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return Launch(
            rank=int(env["RANK"]),
            world_size=int(env["WORLD_SIZE"]),
            local_rank=int(env.get("LOCAL_RANK", 0)),
            launcher="torchrun",
            master_addr=env.get("MASTER_ADDR"),
            master_port=int(env["MASTER_PORT"]) if "MASTER_PORT" in env else None,
        )
    in_srun_step = "SLURM_STEP_NUM_TASKS" in env or "SLURM_STEP_ID" in env or "SLURM_STEPID" in env
    if "SLURM_PROCID" in env and in_srun_step:
        ntasks = env.get("SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS", "1"))
        nodelist = env.get("SLURM_STEP_NODELIST", env.get("SLURM_JOB_NODELIST", env.get("SLURM_NODELIST")))
        if "MASTER_ADDR" in env:
            master_addr = env["MASTER_ADDR"]
        elif nodelist:
            master_addr = first_host(nodelist)
        else:
            master_addr = "localhost"
        return Launch(
            rank=int(env["SLURM_PROCID"]),
            world_size=int(ntasks),
            local_rank=int(env.get("SLURM_LOCALID", 0)),
            launcher="slurm",
            master_addr=master_addr,
            master_port=int(env["MASTER_PORT"]) if "MASTER_PORT" in env else slurm_port(env.get("SLURM_JOB_ID")),
        )
    return Launch(rank=0, world_size=1, local_rank=0, launcher="single")


def pick_device(local_rank: int, device: str = "auto") -> torch.device:
    """CUDA when present (the GPU of this local rank), else CPU; `device` may force one.

    Under srun with `--gpus-per-task=1` each task sees only its own GPU, so the local rank
    is taken modulo the visible device count.
    """
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if device not in ("auto", "cuda"):
        raise ValueError(f"device must be 'auto', 'cuda' or 'cpu', got {device!r}")
    if not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was asked for but no CUDA device is visible")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


_ENV: DistEnv | None = None


def setup(device: str = "auto", environ: Mapping[str, str] | None = None) -> DistEnv:
    """Select the device and, with more than one process, join the process group.

    Idempotent: the second call returns the first call's answer, so a command can call it
    to learn its device before building the model and `train()` can call it again.
    """
    global _ENV
    if _ENV is not None:
        return _ENV
    launch = read_launch(environ)
    dev = pick_device(launch.local_rank, device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    backend = None
    if launch.world_size > 1:
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if launch.master_addr is not None:
            os.environ.setdefault("MASTER_ADDR", launch.master_addr)
        if launch.master_port is not None:
            os.environ.setdefault("MASTER_PORT", str(launch.master_port))
        dist.init_process_group(
            backend=backend,
            init_method="env://",
            rank=launch.rank,
            world_size=launch.world_size,
            device_id=dev if dev.type == "cuda" else None,
        )
    _ENV = DistEnv(
        rank=launch.rank,
        world_size=launch.world_size,
        local_rank=launch.local_rank,
        device=dev,
        backend=backend,
        launcher=launch.launcher,
    )
    return _ENV


def cleanup() -> None:
    """Leave the process group (if any) so the next `setup()` starts afresh."""
    global _ENV
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _ENV = None


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if distributed() else 1


def is_main() -> bool:
    """Rank 0 alone writes files, logs and draws the progress bar."""
    return rank() == 0


def barrier() -> None:
    if distributed():
        dist.barrier()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (a copy; the identity with one process)."""
    out = values.clone()
    if distributed():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_reduce_mean(metrics: Mapping[str, float | torch.Tensor], device: torch.device | None = None) -> dict[str, float]:
    """The mean over ranks of each metric; every rank must pass the same keys.

    One collective for all metrics (stacked in sorted-key order), in float64 so the mean of
    a few ranks' float32 numbers is not rounded twice.
    """
    keys = sorted(metrics)
    if not keys:
        return {}
    if device is None:
        device = _ENV.device if _ENV is not None else torch.device("cpu")
    stacked = torch.stack([torch.as_tensor(metrics[k], dtype=torch.float64, device=device).detach().reshape(())
                           for k in keys])
    mean = all_reduce_sum(stacked) / world_size()
    return dict(zip(keys, mean.tolist()))


def gather_objects(obj) -> list:
    """Every rank's `obj`, in rank order, on every rank (e.g. per-rank RNG states)."""
    if not distributed():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out
