"""Samplers on a Stage-2 model that is not perfect: a toy any CPU can run.

The data are K fixed random latents (4 x 8 x 8, std ~0.4), each training latent one of
them; the tiny UNet of the tests learns them through the project's Stage-2 task, loop,
schedule (the paper's, T = 1000) and EMA. A sampler that follows the learned model lands
on the patterns; one that drifts lands between them. Each sampler's samples are measured
by their RMS distance to the nearest pattern (against the distance between patterns).

    python benchmarks/toy_mixture.py --steps 1500 --out docs/runs/DATE-toy-mixture

Writes OUT/samplers.csv (one row per sampler setting) and OUT/log.csv (the training log).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import zarr

from wavediffusion.diffusion import run_sampler
from wavediffusion.files import write_csv
from wavediffusion.training.stage2 import Stage2Settings, load_stage2, train_stage2

SHAPE = (4, 8, 8)
TINY_UNET = {"model_channels": 32, "channel_mult": (1, 2), "num_res_blocks": 1, "attention_resolutions": (4,),
             "num_heads": 2, "norm_groups": 8}
# (sampler, steps, eta)
SETTINGS = (("ddpm", 1000, 1.0), ("ddim", 50, 1.0), ("ddim", 50, 0.0), ("ddim", 200, 0.0), ("ddim", 1000, 0.0),
            ("dpmpp2m", 20, 0.0))
COLUMNS = ("sampler", "steps", "eta", "n", "distance_median", "distance_q25", "distance_q75", "between_patterns",
           "train_steps", "val_loss_ema", "seconds")


def write_patterns(path: Path, k: int, seed: int = 0) -> np.ndarray:
    """A latents store (encode_latents' layout) whose every latent is one of k patterns."""
    rng = np.random.default_rng(seed)
    patterns = (rng.standard_normal((k, *SHAPE)) * 0.4 + 0.2).astype(np.float32)
    root = zarr.open_group(str(path), mode="w")
    stats = {}
    for split, n in (("train", 2048), ("val", 256)):
        z = patterns[rng.integers(0, k, n)]
        group = root.create_group(split)
        group.create_array("latent", data=z, chunks=(1, *SHAPE))
        group.create_array("family", data=np.zeros(n, dtype=np.int64), chunks=(n,))
        stats[split] = {"n": n, "channel_mean": z.mean(axis=(0, 2, 3)).tolist(),
                        "channel_std": z.std(axis=(0, 2, 3)).tolist(), "std": float(z.std())}
    root.attrs.update({"variant": "1vq", "latent_shape": list(SHAPE), "model_sha256": "0" * 64, "dataset": "none",
                       "stats": stats})
    return patterns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1500, help="training steps (batch 64)")
    parser.add_argument("--patterns", type=int, default=8)
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="toy-mixture-"))
    patterns = torch.from_numpy(write_patterns(work / "latents.zarr", args.patterns)).flatten(1)
    settings = Stage2Settings(model=TINY_UNET, diffusion={}, training={
        "max_steps": args.steps, "batch_size": 64, "lr": 2e-4, "lr_decay": 1.0, "warmup_steps": 100,
        "precision": "fp32", "device": "cpu", "progress": False, "tensorboard": False, "log_every_steps": 100,
        "validate_every_epochs": 4, "checkpoint_every_steps": 10**9})
    summary = train_stage2(work / "latents.zarr", settings, work / "run")
    shutil.copy(work / "run" / "log.csv", args.out / "log.csv")
    unet, schedule, scale = load_stage2(work / "run" / "final.pt")
    between = torch.cdist(patterns, patterns) / patterns.shape[1] ** 0.5
    between = float(between[~torch.eye(len(patterns), dtype=torch.bool)].mean())
    rows = []
    for sampler, steps, eta in SETTINGS:
        start = time.perf_counter()
        with torch.no_grad():
            result = run_sampler(sampler, unet, schedule, (args.samples, *SHAPE), num_steps=steps, eta=eta,
                                 generator=torch.Generator().manual_seed(1))
        distance = (torch.cdist((result.z0 / scale).flatten(1), patterns) / patterns.shape[1] ** 0.5).min(dim=1).values
        q25, q50, q75 = torch.quantile(distance, torch.tensor([0.25, 0.5, 0.75])).tolist()
        rows.append({"sampler": sampler, "steps": steps, "eta": eta, "n": args.samples, "distance_median": q50,
                     "distance_q25": q25, "distance_q75": q75, "between_patterns": between,
                     "train_steps": summary["steps"], "val_loss_ema": summary["last_val"]["val_loss_ema"],
                     "seconds": time.perf_counter() - start})
        print(rows[-1], flush=True)
        write_csv(rows, args.out / "samplers.csv", COLUMNS)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
