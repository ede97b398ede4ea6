"""Where a training step's GPU time goes: torch.profiler over a few steady-state steps of
Stage 1 (generator only, the science scale's recipe) and Stage 2 (the paper UNet), through
the project's own loop, on throughput.py's stores of random values.

    PYTHONPATH=src python benchmarks/profile_training.py --work /tmp/tp --out profile.csv \
        [--parts stage1,stage2] [--device cuda|cpu] [--tiny]

Each run skips its first steps (start-up, cuDNN's autotuning, the allocator's growth),
then profiles `--steps` steps. One row per kernel category per run (`part, setting,
category, ms_per_step, share, kernels_per_step`), a row `all kernels` (their sum) and a
row `wall under the profiler`. The profiler slows the host (on an H100, 2026-12-07, a
100 ms Stage-1 step took 257 ms profiled), so the GPU's busy fraction is the kernels'
time over the step time of an unprofiled run (throughput.py's rows), not over this wall.
The top kernels by time go to the log. On the CPU (a try-out) the categories are over the
CPU operators instead.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import re
import shutil
import time
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, schedule

from throughput import paper_scale, tiny_scale, write_dataset_store, write_latents_store
from wavediffusion.data.dataset import PairDataset
from wavediffusion.training import stage1, stage2
from wavediffusion.training.loop import train

# the first pattern a kernel's name matches (lower case) names its category; the order
# matters: copies run inside torch's elementwise kernels, convolutions are implicit gemms
CATEGORIES = [
    ("attention", r"flash|fmha|attention|softmax"),
    ("copy and layout", r"copy|memcpy|memset|nchwtonhwc|nhwctonchw|transpose|permute|fill|cat_"),
    ("convolution", r"conv|cudnn|implicit|dgrad|wgrad|fprop|winograd"),
    ("matrix product", r"gemm|nvjet|cutlass|xmma|cublas|addmm|matmul"),
    ("optimiser", r"adam|multi_tensor|foreach"),
    ("normalisation", r"norm|welford|rowwisemoments|computeinternalgradients|gammabeta"),
    ("reduction", r"reduce"),
    ("elementwise", r"elementwise|vectorized|unrolled"),
]
COLUMNS = ["part", "setting", "category", "ms_per_step", "share", "kernels_per_step"]


def category(name: str) -> str:
    lowered = name.lower()
    return next((label for label, pattern in CATEGORIES if re.search(pattern, lowered)), "other")


class ProfiledTask:
    """A training task whose every train_step advances the profiler's schedule; the wall
    time of the active steps is read between two device synchronisations."""

    def __init__(self, task, profiler, skip: int, device: torch.device):
        self._task, self._profiler, self._skip, self._device = task, profiler, skip, device
        self.calls, self.active_started, self.active_ended = 0, None, None

    def __getattr__(self, name):  # everything else is the wrapped task's
        return getattr(self._task, name)

    def train_step(self, batch, step, run):
        if self.calls == self._skip:
            self._sync()
            self.active_started = time.perf_counter()
        out = self._task.train_step(batch, step, run)
        self.calls += 1
        self._profiler.step()
        return out

    def end(self) -> None:
        self._sync()
        self.active_ended = time.perf_counter()

    def _sync(self) -> None:
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)


def profile_run(args, part: str, setting: str, build, dataset, training: dict) -> list[dict]:
    """Train `--skip + --steps` steps of `build(training)`'s task and profile the last `--steps`."""
    device = torch.device(args.device)
    args.runs += 1
    out = args.work / "profile" / f"{part}-{args.runs}"
    shutil.rmtree(out, ignore_errors=True)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    training = {**training, "max_steps": args.skip + args.steps, "max_epochs": 10**6, "checkpoint_every_steps": 10**9,
                "early_stop_patience": None, "progress": False, "tensorboard": False, "device": args.device,
                "seed": 0, "log_every_steps": 10**6}
    task, config = build(training)
    # the active steps are the last `steps`: the profiler's own warm-up takes the step before them
    with profile(activities=activities, schedule=schedule(wait=args.skip - 1, warmup=1, active=args.steps)) as prof:
        profiled = ProfiledTask(task, prof, args.skip, device)
        train(profiled, dataset, None, config, out)
        profiled.end()
    wall_ms = 1000 * (profiled.active_ended - profiled.active_started) / args.steps
    # GPU-side kernels; ProfilerStep# is the schedule's own range, drawn on the GPU's timeline too
    kernels = [e for e in prof.key_averages()
               if e.device_type == DeviceType.CUDA and not e.key.startswith("ProfilerStep")]
    on_gpu = bool(kernels)
    if not on_gpu:  # CPU try-out: the operators' own CPU time
        kernels = [e for e in prof.key_averages() if e.self_cpu_time_total > 0 and not e.key.startswith("ProfilerStep")]
    own_us = (lambda e: e.self_device_time_total) if on_gpu else (lambda e: e.self_cpu_time_total)
    totals: dict[str, list[float]] = {}
    for event in kernels:
        entry = totals.setdefault(category(event.key), [0.0, 0])
        entry[0] += own_us(event) / 1000 / args.steps
        entry[1] += event.count / args.steps
    busy = sum(ms for ms, _ in totals.values())
    rows = [{"part": part, "setting": setting, "category": name, "ms_per_step": f"{ms:.3f}",
             "share": f"{ms / busy:.3f}", "kernels_per_step": f"{count:.0f}"}
            for name, (ms, count) in sorted(totals.items(), key=lambda item: -item[1][0])]
    rows.append({"part": part, "setting": setting, "category": "all kernels" if on_gpu else "all operators",
                 "ms_per_step": f"{busy:.3f}", "share": "1.000",
                 "kernels_per_step": f"{sum(count for _, count in totals.values()):.0f}"})
    rows.append({"part": part, "setting": setting, "category": "wall under the profiler",
                 "ms_per_step": f"{wall_ms:.3f}", "share": "", "kernels_per_step": ""})
    print(f"\n{part} / {setting}: kernels {busy:.1f} ms per step ({wall_ms:.1f} ms wall under the profiler)")
    for event in sorted(kernels, key=lambda e: -own_us(e))[:args.top]:
        print(f"  {own_us(event) / 1000 / args.steps:8.3f} ms  x{event.count / args.steps:5.1f}  "
              f"[{category(event.key)}] {event.key[:110]}")
    return rows


def stage1_rows(args) -> list[dict]:
    dataset_path = write_dataset_store(args.work / "dataset.zarr", args.scale)
    model = {k: v for k, v in dataclasses.asdict(args.scale.autoencoder).items() if k not in (
        "variant", "seismic_channels", "time_samples", "receivers", "velocity_size")}
    disc = {} if not args.tiny else {"base_channels": 16, "n_layers": 2}

    def build(training: dict):
        settings = stage1.Stage1Settings(model=model, discriminator=disc, losses={"disc_start": 10**9},
                                         training={"lr": 2e-4, "precision": "bf16", **training})
        return stage1.build_task(dataset_path, "1vq", settings)

    dataset = PairDataset(dataset_path, "train")
    base = {"batch_size": 16, "data_on_device": True}
    return (profile_run(args, "stage1", "G only, batch 16, eager", build, dataset, base)
            + profile_run(args, "stage1", "G only, batch 16, eager, channels-last", build, dataset,
                          {**base, "channels_last": True}))


def stage2_rows(args) -> list[dict]:
    latents = write_latents_store(args.work / "latents.zarr", args.scale)
    model = {k: v for k, v in dataclasses.asdict(args.scale.unet).items()
             if k not in ("in_channels", "out_channels", "image_size")}

    def build(training: dict):
        settings = stage2.Stage2Settings(model=model, diffusion={"prediction": "v"},
                                         training={"lr": 1e-4, "warmup_steps": 200, "precision": "bf16", **training})
        return stage2.build_task(latents, settings)

    batch = 4 if args.tiny else 256
    return profile_run(args, "stage2", f"batch {batch}, eager", build,
                       stage2.LatentDataset(latents, "train"),
                       {"batch_size": batch, "data_on_device": True})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, type=Path, help="stores and runs (throughput.py's stores are reused)")
    parser.add_argument("--out", required=True, type=Path, help="the CSV to write")
    parser.add_argument("--parts", default="stage1,stage2")
    parser.add_argument("--skip", type=int, default=12, help="steps before the profiled ones")
    parser.add_argument("--steps", type=int, default=8, help="steps profiled")
    parser.add_argument("--top", type=int, default=25, help="kernels listed per run in the log")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--tiny", action="store_true", help="toy sizes: a CPU try-out of this script")
    args = parser.parse_args()
    if args.skip < 2:
        parser.error("--skip must be at least 2")
    args.work.mkdir(parents=True, exist_ok=True)
    args.scale = tiny_scale() if args.tiny else paper_scale()
    args.rows, args.runs = [], 0
    for part in args.parts.split(","):
        args.rows += {"stage1": stage1_rows, "stage2": stage2_rows}[part](args)
    with open(args.out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(args.rows)


if __name__ == "__main__":
    main()
