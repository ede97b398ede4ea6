"""Stage-1 training throughput: samples/s and peak GPU memory of the paper-size autoencoder.

Runs the real Stage-1 task through the project's training loop on random tensors of the
paper's shapes (seismic [3,1024,64], velocity [1,64,64]), with and without the
adversarial step, in bf16 and fp32. Prints a markdown table.

    python benchmarks/stage1_throughput.py --steps 30 --batch-size 16 --machine "1x H100 80GB"
"""

from __future__ import annotations

import argparse
import datetime
import tempfile

import torch
from torch.utils.data import Dataset

from wavediffusion.models.autoencoder import AutoencoderConfig
from wavediffusion.models.discriminator import DiscriminatorConfig
from wavediffusion.training.loop import TrainConfig, train
from wavediffusion.training.stage1 import Stage1Losses, Stage1Task


class RandomPairs(Dataset):
    """Fixed random pairs of the paper's shapes (throughput does not depend on content)."""

    def __init__(self, n: int):
        generator = torch.Generator().manual_seed(0)
        self.seismic = torch.rand(n, 3, 1024, 64, generator=generator) * 2 - 1
        self.velocity = torch.rand(n, 1, 64, 64, generator=generator) * 2 - 1

    def __len__(self):
        return len(self.seismic)

    def __getitem__(self, i):
        return {"seismic": self.seismic[i], "velocity": self.velocity[i]}


def measure(variant: str, adversarial: bool, precision: str, steps: int, batch_size: int) -> dict:
    torch.cuda.reset_peak_memory_stats()
    config = TrainConfig(max_steps=steps, batch_size=batch_size, precision=precision, progress=False,
                         tensorboard=False, checkpoint_every_steps=10**9, log_every_steps=10**9, early_stop_patience=None)
    losses = Stage1Losses(disc_start=0 if adversarial else 10**9)
    task = Stage1Task(AutoencoderConfig.paper(variant), DiscriminatorConfig(), losses, config)
    with tempfile.TemporaryDirectory() as out:
        warm = train(task, RandomPairs(batch_size * 3), None,
                     TrainConfig(**{**config.__dict__, "max_steps": 3}), out + "/warm")  # compile/cudnn warm-up
        summary = train(task, RandomPairs(batch_size * steps), None, config, out + "/run")
    del warm
    return {
        "samples_per_s": summary["steps"] * batch_size / summary["seconds_this_call"],
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--machine", default="unknown machine")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA device")
    rows = []
    for variant, adversarial, precision in [("1vq", False, "bf16"), ("1vq", True, "bf16"), ("1vq", True, "fp32"), ("2vq", True, "bf16")]:
        result = measure(variant, adversarial, precision, args.steps, args.batch_size)
        rows.append(f"| {args.machine} | {variant} | {'G + D' if adversarial else 'G only'} | {precision} | {args.batch_size} "
                    f"| {result['samples_per_s']:.1f} | {result['peak_gib']:.1f} | {torch.__version__} | {datetime.date.today()} |")
        print(rows[-1], flush=True)
    print("\n| machine | variant | steps | precision | batch | samples/s | peak GiB | torch | date |\n|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
