"""Sampling and physics-check throughput, and what bf16 changes, with trained models.

Each configuration runs the workflow's own jobs -- sample_shard, then check_shard (deepwave)
-- on one shard of N pairs in a fresh pairs store, so the numbers include decoding and the
Zarr writes, as in the DAG. Every configuration uses the same seed, so a bf16 run and its
fp32 twin start from the same noise and their difference is bf16's alone.

    python benchmarks/sampling_throughput.py --stage1 results/stage1/1vq/model.pt \
        --stage2 results/stage2/1vq/model.pt --dataset results/data/dataset.zarr --n 500 --out OUT

Writes OUT/sampling_throughput.csv and prints a markdown table; the extrapolation to the
paper's 375 000 pairs is pairs / (pairs per second) / 3600 GPU-hours (sampling + check).

`--untrained` measures speed alone, on a bare machine: it saves untrained networks of the
paper's sizes (AutoencoderConfig.paper(), UNetConfig.paper()) and runs sample_shard only
(no check, which needs the dataset store). The work per pair does not depend on the
weights' values, so the pairs/s are those of trained networks; deviations are not recorded.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
import zarr

from wavediffusion.devices import claim_local_gpu
from wavediffusion.models.autoencoder import AutoencoderConfig, VQAutoencoder
from wavediffusion.models.unet import UNet, UNetConfig
from wavediffusion.sampling.shard import SamplingSettings, check_shard, create_store_for_models, sample_shard
from wavediffusion.training.stage1 import save_autoencoder
from wavediffusion.training.stage2 import DiffusionSettings, save_stage2

PAPER_PAIRS = 375_000
CONFIGS = [  # (sampler, steps, precision)
    ("ddim", 50, "fp32"),
    ("ddim", 50, "bf16"),
    ("ddim", 10, "bf16"),
    ("ddim", 25, "bf16"),
    ("ddim", 100, "bf16"),
    ("ddpm", 1000, "bf16"),
]


def save_untrained(folder: Path) -> tuple[Path, Path]:
    """Untrained Stage-1 and Stage-2 weights files of the paper's sizes, as the rules read them."""
    torch.manual_seed(0)
    stage1, stage2 = folder / "untrained_stage1.pt", folder / "untrained_stage2.pt"
    save_autoencoder(VQAutoencoder(AutoencoderConfig.paper()), stage1)
    save_stage2(UNet(UNetConfig.paper()), DiffusionSettings(), 1.0, stage2)
    return stage1, stage2


def ms_per_pair(kind: str, record: dict, n: int) -> dict[str, float]:
    """A shard record's seconds_by_part as milliseconds per pair, one column per part."""
    return {f"{kind}_ms_per_pair_{part}": 1000 * seconds / n for part, seconds in record["seconds_by_part"].items()}


def run(args, sampler: str, steps: int, precision: str, folder: Path) -> tuple[dict, Path]:
    settings = SamplingSettings(num_pairs=args.n, shard_size=args.n, sampler=sampler, steps=steps,
                                batch_size=args.batch_size, precision=precision, compile=args.compile, seed=args.seed)
    store = folder / f"{sampler}-{steps}-{precision}.zarr"
    create_store_for_models(args.stage1, store, settings)
    sample = sample_shard(args.stage1, args.stage2, store, 0, settings)
    row = {"sampler": sampler, "steps": steps if sampler == "ddim" else sample["steps"], "precision": sample["precision"],
           "n": args.n, "batch_size": args.batch_size, "compiled": sample["compiled"],
           "weights": "untrained" if args.untrained else "trained",
           "sample_pairs_per_s": sample["pairs_per_second"],
           "sample_gpu_hours": PAPER_PAIRS / sample["pairs_per_second"] / 3600,
           **ms_per_pair("sample", sample, args.n)}  # denoise, decode, write
    if args.untrained:
        return row, store
    check = check_shard(store, 0, args.dataset, "deepwave", batch_size=args.check_batch_size)
    row.update({**ms_per_pair("check", check, args.n),  # read, simulate, write
                "check_pairs_per_s": check["pairs_per_second"], "deviation_mean": check["deviation_mean"],
                "deviation_median": check["deviation_quantiles"]["0.5"],
                "paper_gpu_hours": row["sample_gpu_hours"] + PAPER_PAIRS / check["pairs_per_second"] / 3600})
    return row, store


def compare(bf16: Path, fp32: Path) -> dict:
    a, b = zarr.open_group(str(bf16), mode="r"), zarr.open_group(str(fp32), mode="r")
    latent = np.abs(a["latent"][:] - b["latent"][:])
    velocity = np.abs(a["velocity"][:] - b["velocity"][:])
    deviation = a["deviation"][:] - b["deviation"][:]
    return {"latent_max_abs": float(latent.max()), "latent_mean_abs": float(latent.mean()),
            "velocity_mean_abs": float(velocity.mean()), "deviation_mean_diff": float(deviation.mean()),
            "deviation_mean_abs_diff": float(np.abs(deviation).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage1", help="Stage-1 weights file (train_stage1's model.pt)")
    parser.add_argument("--stage2", help="Stage-2 weights file (train_stage2's model.pt)")
    parser.add_argument("--dataset", help="the dataset store, for the physics check")
    parser.add_argument("--untrained", action="store_true", help="speed only: untrained paper-size networks, no check")
    parser.add_argument("--compile", action="store_true", help="sampling.compile: torch.compile the UNet")
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--check-batch-size", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--configs", default="all", help="comma-separated indices into CONFIGS, or all")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if not args.untrained and not (args.stage1 and args.stage2 and args.dataset):
        parser.error("--stage1, --stage2 and --dataset are needed unless --untrained")
    claim_local_gpu()  # beside a running DAG on a machine of several GPUs: a GPU of its own
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    chosen = CONFIGS if args.configs == "all" else [CONFIGS[int(i)] for i in args.configs.split(",")]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    folder = Path(tempfile.mkdtemp(prefix="sampling-bench-"))
    rows, stores = [], {}
    try:
        if args.untrained:
            args.stage1, args.stage2 = save_untrained(folder)
        for sampler, steps, precision in chosen:
            row, stores[(sampler, steps, precision)] = run(args, sampler, steps, precision, folder)
            rows.append({"device": device, **row})
            print(rows[-1], flush=True)
        with open(out / "sampling_throughput.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        print("| sampler | steps | precision | batch | pairs/s (sample) | pairs/s (check) | deviation mean | "
              "GPU-h for 375k (sample + check) |\n|---|---|---|---|---|---|---|---|")
        for r in rows:
            check = (f"{r['check_pairs_per_s']:.1f} | {r['deviation_mean']:.5f} | {r['paper_gpu_hours']:.2f}"
                     if "check_pairs_per_s" in r else f"– | – | {r['sample_gpu_hours']:.2f} (sampling only)")
            print(f"| {r['sampler']} | {r['steps']} | {r['precision']} | {r['batch_size']} | "
                  f"{r['sample_pairs_per_s']:.1f} | {check} |")
        if not args.untrained and ("ddim", 50, "bf16") in stores and ("ddim", 50, "fp32") in stores:
            difference = compare(stores[("ddim", 50, "bf16")], stores[("ddim", 50, "fp32")])
            print("bf16 vs fp32 (DDIM-50, same noise):", difference)
            (out / "bf16_vs_fp32.txt").write_text(repr(difference) + "\n")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
