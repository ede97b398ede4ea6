"""The config of a science-scale GPU run: config/science.yaml with the run's choices.

    python3 benchmarks/science_config.py --out /root/science_gpu.yaml [--seed N]
        [--gpus N] [--stage2-steps N] [--physics-backend NAME] [--inversion-seeds 0,1]
        [--fid-weights PATH] [--set "a.b=YAML; c.d=YAML"]

benchmarks/h100_science_plan.sh writes its config with it. On one GPU (the default) the
science recipe is kept as it is; `--gpus N` (N > 1: one machine of N GPUs, the run of every
paper table with three seeds) gives each training job all N GPUs at the one-GPU run's batch
per GPU, so the global batch grows N-fold and each step sees N times the samples:

- Stage 1 and Stage 2: `batch_size` x N (the per-GPU batch of the one-GPU run: it keeps
  each GPU busy, where dividing the one-GPU batch by N left Stage 2 slower on 2 GPUs than
  on one), the same steps and learning rate, so the run trains N times the epochs in about
  the one-GPU run's time; `lr_decay` per epoch to the power 1 / N and the validation every
  N times the epochs, so that the schedule and the validations fall at the same steps;
- both Stage-1 variants (Table 1 compares them), Table 8's single-modality baselines, and
  the sampled pairs in N shards (one per GPU at once).

`--set` is applied last: any key, a YAML value each ("stage2.training.max_steps=2000").
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import yaml

from wavediffusion.training.loop import TrainConfig

SCIENCE = Path(__file__).resolve().parents[1] / "config" / "science.yaml"


def several_gpus(config: dict, gpus: int) -> dict:
    """The science recipe over one machine of `gpus` GPUs (module docstring)."""
    config = copy.deepcopy(config)
    for stage in ("stage1", "stage2"):
        section = config[stage]
        training = section["training"]
        section["gpus"] = gpus
        training["batch_size"] = training["batch_size"] * gpus
        # absent keys take the loop's defaults, which the one-GPU run used
        training["lr_decay"] = float(training.get("lr_decay", TrainConfig.lr_decay)) ** (1.0 / gpus)
        every = training.get("validate_every_epochs", TrainConfig.validate_every_epochs)
        training["validate_every_epochs"] = every * gpus
    config["stage1"]["variants"] = ["1vq", "2vq"]
    config.setdefault("ablation", {}).setdefault("table8", {})["enabled"] = True
    sampling = config["sampling"]
    sampling["shard_size"] = -(-sampling["num_pairs"] // gpus)  # ceil: one shard per GPU
    return config


def set_key(config: dict, item: str) -> None:
    """Apply one "a.b.c=YAML" to `config` in place."""
    if "=" not in item:
        raise ValueError(f"--set item {item!r} is not KEY=VALUE (e.g. stage2.training.max_steps=2000)")
    path, value = item.split("=", 1)
    *parents, leaf = path.strip().split(".")
    node = config
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = yaml.safe_load(value)


def science_config(seed: int = 0, gpus: int = 1, stage2_steps: int | None = None, physics_backend: str | None = None,
                   inversion_seeds: list[int] | None = None, fid_weights: str | None = None,
                   sets: list[str] = ()) -> dict:  # fmt: skip
    """config/science.yaml with the run's choices (the command line's, in this order)."""
    config = yaml.safe_load(SCIENCE.read_text())
    config["seed"] = seed
    if gpus > 1:
        config = several_gpus(config, gpus)
    if stage2_steps is not None:
        config["stage2"]["training"]["max_steps"] = stage2_steps
    if physics_backend:
        config["physics"]["backend"] = physics_backend
    if inversion_seeds:
        config["inversionnet"]["seeds"] = inversion_seeds
    if fid_weights:
        config["fid"]["weights"] = fid_weights
    for item in sets:
        set_key(config, item)
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="the run's config file to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gpus", type=int, default=1, help="GPUs of the machine: > 1 trains over all of them")
    parser.add_argument("--stage2-steps", type=int, default=None)
    parser.add_argument("--physics-backend", default=None)
    parser.add_argument("--inversion-seeds", default=None, help="comma-separated, e.g. 0 or 0,1")
    parser.add_argument("--fid-weights", default=None)
    parser.add_argument("--set", default="", help='"a.b=YAML; c.d=YAML", applied last')
    args = parser.parse_args()
    seeds = [int(s) for s in args.inversion_seeds.split(",")] if args.inversion_seeds else None
    sets = [item.strip() for item in args.set.split(";") if item.strip()]
    config = science_config(args.seed, args.gpus, args.stage2_steps, args.physics_backend, seeds,
                            args.fid_weights, sets)  # fmt: skip
    Path(args.out).write_text(yaml.safe_dump(config, sort_keys=False))
    for item in sets:
        print("set", item)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
