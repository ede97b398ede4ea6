"""Toy tasks for the training-loop tests, and a script that trains them.

Two tasks implement the `Task` protocol the way real models will:
- `RegressionTask`: a tiny MLP regression, one optimiser. With `noise > 0` its step draws
  from torch's, numpy's and Python's global generators, so an exact resume has to restore
  all three.
- `GanTask`: a generator and a discriminator with two optimisers and the two steps written
  out one after the other (hinge loss, discriminator switched on at a given step) — the
  Stage-1 pattern, including the DDP rule for several modules.

Used in-process by tests/test_training_loop.py, and as a script so a test can kill a run
with SIGKILL, rerun the same command, launch it under torchrun, or under srun-like
SLURM_* variables:

    python tests/toy_training.py --out DIR [--tasks regression,gan] [--noise 0.1]
        [--device cpu|cuda] [--kill-at-step K] [--kill-in-checkpoint S] [--marker-dir D]
        [--forbid-writes-off-rank0]

The kill switches fire once: each leaves a marker file in --marker-dir, so the identical
command run again resumes instead of dying at the same place.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from wavediffusion.seeds import Stream, derive_seed
from wavediffusion.training import TrainConfig, adam, cleanup, setup, train
from wavediffusion.training import checkpoint as ckpt_module


class KillSwitch:
    """SIGKILL this process once, at a given place; a marker file makes it fire only once."""

    def __init__(self, marker_dir: str | Path | None, name: str):
        self.marker = Path(marker_dir) / name if marker_dir else None

    def fire(self) -> None:
        if self.marker is None or self.marker.exists():
            return
        self.marker.parent.mkdir(parents=True, exist_ok=True)
        self.marker.write_text("fired\n")
        os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------------------------------
# Regression.


class RegressionData(Dataset):
    """y = tanh(x·w) + small noise, x ∈ R^8; w is the same for every split, the samples
    are fixed by `seed`."""

    def __init__(self, n: int, seed: int):
        w = torch.randn(8, 1, generator=torch.Generator().manual_seed(0))
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 8, generator=g)          # (N, 8)
        self.y = torch.tanh(self.x @ w) + 0.05 * torch.randn(n, 1, generator=g)  # (N, 1)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "y": self.y[i]}


class RegressionTask:
    val_metric = "loss"

    def __init__(self, config: TrainConfig, noise: float = 0.0, kill_at_step: int | None = None,
                 marker_dir: str | Path | None = None):
        torch.manual_seed(derive_seed(config.seed, Stream.INIT))  # model init: from the global seed
        self.net = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
        self.opt = adam(self.net.parameters(), config)
        self.noise = noise
        self.kill_at_step = kill_at_step
        self.kill = KillSwitch(marker_dir, "killed-in-train-step")

    def config_dict(self) -> dict:
        return {"hidden": 32, "noise": self.noise}

    def modules(self):
        return {"net": self.net}

    def optimizers(self):
        return {"net": self.opt}

    def train_step(self, batch, step, run):
        if step == self.kill_at_step:
            self.kill.fire()
        x, y = batch["x"], batch["y"]  # (B, 8), (B, 1)
        if self.noise:
            # input noise from all three global generators (torch, numpy, python)
            scale = self.noise * (1.0 + 0.5 * float(np.random.rand())) * (1.0 + 0.5 * random.random())
            x = x + scale * torch.randn_like(x)
        with run.autocast():
            loss = F.mse_loss(run.wrapped["net"](x).float(), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = run.clip_and_step(self.opt)
        return {"loss": loss.detach(), "grad_norm": grad_norm}

    def validate(self, batch, run):
        with run.autocast():
            prediction = self.net(batch["x"]).float()
        return {"loss": F.mse_loss(prediction, batch["y"]), "mae": (prediction - batch["y"]).abs().mean()}


# ---------------------------------------------------------------------------------------
# GAN.

GAN_MEAN = torch.tensor([2.0, -1.0])


class GanData(Dataset):
    """Real points around GAN_MEAN and the generator's input noise z, both fixed per index
    (so a step draws nothing from the global RNG and 1-process and 2-process runs agree)."""

    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.real = GAN_MEAN + 0.3 * torch.randn(n, 2, generator=g)  # (N, 2)
        self.z = torch.randn(n, 4, generator=g)                      # (N, 4)

    def __len__(self) -> int:
        return len(self.real)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"real": self.real[i], "z": self.z[i]}


class GanTask:
    val_metric = "gap"

    def __init__(self, config: TrainConfig, disc_start: int = 4):
        torch.manual_seed(derive_seed(config.seed, Stream.INIT))
        self.generator = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
        self.discriminator = nn.Sequential(nn.Linear(2, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))
        self.opt_g = adam(self.generator.parameters(), config)
        self.opt_d = adam(self.discriminator.parameters(), config, lr=2 * config.lr)
        self.disc_start = disc_start

    def config_dict(self) -> dict:
        return {"disc_start": self.disc_start}

    def modules(self):
        return {"generator": self.generator, "discriminator": self.discriminator}

    def optimizers(self):
        return {"generator": self.opt_g, "discriminator": self.opt_d}

    def train_step(self, batch, step, run):
        real, z = batch["real"], batch["z"]  # (B, 2), (B, 4)

        # Generator step: the wrapped generator (its gradients are averaged over ranks), the
        # plain discriminator (its gradients here are local and are zeroed before its step).
        with run.autocast():
            fake = run.wrapped["generator"](z)
            g_loss = -self.discriminator(fake).float().mean()
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        run.clip_and_step(self.opt_g)
        metrics = {"g_loss": g_loss.detach()}

        # Discriminator step (hinge), from `disc_start` on: ONE call of the wrapped
        # discriminator on real and fake together.
        if step >= self.disc_start:
            with run.autocast():
                logits = run.wrapped["discriminator"](torch.cat([real, fake.detach()])).float()
                d_real, d_fake = logits.split(len(real))
                d_loss = F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            run.clip_and_step(self.opt_d)
            metrics["d_loss"] = d_loss.detach()
        return metrics

    def validate(self, batch, run):
        fake = self.generator(batch["z"]).float()
        return {"gap": ((fake - GAN_MEAN.to(fake.device)) ** 2).sum(1).mean()}


# ---------------------------------------------------------------------------------------
# The script.


def toy_config(**overrides) -> TrainConfig:
    """The configuration every toy run uses unless a test overrides a field."""
    base = {"max_epochs": 3, "batch_size": 8, "lr": 1e-2, "lr_decay": 0.9, "warmup_steps": 4, "grad_clip": 1.0,
            "early_stop_patience": None, "checkpoint_every_steps": 5, "log_every_steps": 1, "seed": 7,
            "precision": "bf16", "device": "cpu", "progress": False, "tensorboard": False}
    base.update(overrides)
    return TrainConfig(**base)


def build(task: str, config: TrainConfig, noise: float = 0.0, kill_at_step: int | None = None,
          marker_dir=None):
    """(task, train set, validation set) for a toy task name."""
    if task == "regression":
        return (RegressionTask(config, noise, kill_at_step, marker_dir),
                RegressionData(96, seed=1), RegressionData(32, seed=2))
    if task == "gan":
        return GanTask(config), GanData(96, seed=3), GanData(32, seed=4)
    raise ValueError(task)


def kill_inside_checkpoint_write(step: int, marker_dir) -> None:
    """SIGKILL the process after checkpoint `step` is fully written to its temporary file
    but before the rename — the worst moment for a non-atomic writer."""
    switch = KillSwitch(marker_dir, "killed-in-checkpoint")
    target = ckpt_module.checkpoint_path("x", step).name
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(dst).name == target:
            switch.fire()
        return real_replace(src, dst, *args, **kwargs)

    os.replace = replace


def forbid_writes(out_dir: Path) -> None:
    """Make any write, rename, delete or mkdir under out_dir raise (installed on ranks > 0)."""
    root = os.path.realpath(out_dir)

    def inside(path) -> bool:
        try:
            return os.path.realpath(os.fsdecode(path)).startswith(root)
        except TypeError:  # file descriptors
            return False

    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            writing = (any(c in mode for c in "wax+") if isinstance(mode, str)
                       else bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)))
            if writing and inside(path):
                raise PermissionError(f"rank > 0 tried to write {path}")
        elif event in ("os.rename", "os.remove", "os.mkdir", "os.rmdir") and any(
                inside(a) for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))):
            raise PermissionError(f"rank > 0 tried {event} on {args[:2]}")

    sys.addaudithook(hook)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--tasks", default="regression", help="comma-separated: regression,gan")
    parser.add_argument("--noise", type=float, default=0.0)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    parser.add_argument("--precision", default="bf16", help="bf16 (autocast on GPU only) | fp32")
    parser.add_argument("--kill-at-step", type=int)
    parser.add_argument("--kill-in-checkpoint", type=int)
    parser.add_argument("--marker-dir", type=Path)
    parser.add_argument("--forbid-writes-off-rank0", action="store_true")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    env = setup(args.device)
    if args.kill_in_checkpoint is not None:
        kill_inside_checkpoint_write(args.kill_in_checkpoint, args.marker_dir)
    if args.forbid_writes_off_rank0 and env.rank > 0:
        forbid_writes(args.out)
    config = toy_config(max_epochs=args.epochs, device=args.device, precision=args.precision)
    summaries = {}
    for name in args.tasks.split(","):
        task, train_set, val_set = build(name, config, args.noise, args.kill_at_step, args.marker_dir)
        summaries[name] = train(task, train_set, val_set, config, args.out / name)
    if args.forbid_writes_off_rank0 and env.rank > 0:
        try:  # positive control: the guard really is active on this rank
            with open(args.out / "probe", "w"):
                pass
        except PermissionError:
            print(f"rank {env.rank}: write guard active", flush=True)
    if env.rank == 0:
        print(json.dumps({"launcher": env.launcher, "world_size": env.world_size, "device": str(env.device),
                          "summaries": summaries}))
    cleanup()


if __name__ == "__main__":
    main()
