"""Multi-GPU scaling of the training loop: the same run on 1 and on N processes.

Trains the paper-size Stage-1 autoencoder (with its discriminators) or the paper-size
Stage-2 UNet on fixed random tensors of the paper's shapes, through the project's one
loop, at one GLOBAL batch size, so the 1-process and the N-process runs take the same
optimisation steps on the same samples. Launch once per world size and compare:

    python benchmarks/ddp_scaling.py run --model stage1 --out /tmp/ddp/stage1-1
    torchrun --nproc_per_node 2 benchmarks/ddp_scaling.py run --model stage1 --out /tmp/ddp/stage1-2
    python benchmarks/ddp_scaling.py compare /tmp/ddp/stage1-1 /tmp/ddp/stage1-2 --machine "2x H100"

`compare` prints a markdown row per run: steady-state samples/s (the log windows after the
first, so start-up and cuDNN autotuning are left out), speed-up over the first run, and
the largest relative difference of the logged training loss between the runs. Stage 1's
only random draw (dead-code re-initialisation) is made by rank 0 from the gathered global
batch, as one process makes it, so its curves should agree to bf16 rounding; Stage 2
draws (t, noise) per sample from each rank's own stream, so its curves agree only
statistically (the windowed means are compared).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
from pathlib import Path

import torch
from torch.utils.data import Dataset

from wavediffusion.models.autoencoder import AutoencoderConfig
from wavediffusion.models.discriminator import DiscriminatorConfig
from wavediffusion.training.loop import TrainConfig, train
from wavediffusion.training.stage1 import Stage1Losses, Stage1Task


class RandomTensors(Dataset):
    """n fixed random samples of the given shapes, in [-1, 1] (content does not change speed)."""

    def __init__(self, n: int, shapes: dict[str, tuple[int, ...]]):
        generator = torch.Generator().manual_seed(0)
        self.tensors = {name: torch.rand(n, *shape, generator=generator) * 2 - 1 for name, shape in shapes.items()}
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {name: tensor[i] for name, tensor in self.tensors.items()}


def make_task(model: str, config: TrainConfig, disc_start: int):
    if model == "stage1":
        task = Stage1Task(AutoencoderConfig.paper(), DiscriminatorConfig(), Stage1Losses(disc_start=disc_start), config)
        return task, {"seismic": (3, 1024, 64), "velocity": (1, 64, 64)}
    from wavediffusion.models.unet import UNetConfig
    from wavediffusion.training.stage2 import DiffusionSettings, Stage2Task

    return Stage2Task(UNetConfig.paper(), DiffusionSettings(), 1.0, config), {"latent": (32, 32, 32)}


def run(args) -> None:
    config = TrainConfig(max_steps=args.steps, batch_size=args.batch_size, precision="bf16", lr=1e-4,
                         early_stop_patience=None, checkpoint_every_steps=10**9, log_every_steps=args.log_every,
                         tensorboard=False, progress=False, seed=0)
    task, shapes = make_task(args.model, config, args.disc_start)
    summary = train(task, RandomTensors(args.samples, shapes), None, config, args.out)
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun's rank; rank 0 reports
        return
    summary["model"] = args.model
    summary["batch_size"] = args.batch_size
    summary["device_name"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    Path(args.out, "bench.json").write_text(json.dumps(summary, indent=2))


def read_log(folder: Path) -> list[dict]:
    with open(folder / "log.csv", newline="") as handle:
        return [row for row in csv.DictReader(handle) if row.get("train/loss")]


def compare(args) -> None:
    base_rows = read_log(Path(args.runs[0]))
    base_speed = None
    print("| machine | model | processes | global batch | steps | samples/s | speed-up | max rel. loss difference vs 1st | torch | date |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for folder in map(Path, args.runs):
        bench = json.loads((folder / "bench.json").read_text())
        rows = read_log(folder)
        steady = [float(row["samples_per_s"]) for row in rows[1:]] or [float(rows[0]["samples_per_s"])]
        speed = sum(steady) / len(steady)
        base_speed = base_speed or speed
        differences = [abs(float(a["train/loss"]) - float(b["train/loss"])) / abs(float(a["train/loss"]))
                       for a, b in zip(base_rows, rows)]
        print(f"| {args.machine} | {bench['model']} | {bench['world_size']} | {bench['batch_size']} | {bench['steps']} "
              f"| {speed:.1f} | {speed / base_speed:.2f} | {max(differences):.2e} | {torch.__version__} | {datetime.date.today()} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("run")
    p.add_argument("--model", choices=["stage1", "stage2"], required=True)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=32, help="global, over all processes")
    p.add_argument("--samples", type=int, default=512, help="distinct random samples (epochs repeat them)")
    p.add_argument("--disc-start", type=int, default=100, help="Stage 1: step at which the discriminators join")
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--out", required=True)
    p.set_defaults(func=run)
    p = commands.add_parser("compare")
    p.add_argument("runs", nargs="+", help="run folders; the first is the baseline")
    p.add_argument("--machine", default="unknown machine")
    p.set_defaults(func=compare)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
