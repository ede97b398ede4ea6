"""Training, sampling and checking throughput on one GPU, for the `wavediffusion` on the
Python path: run it once per commit (benchmarks/throughput.sh does: the base commit's
source and this one's, in one session on one machine) and the rows land in one CSV.

    PYTHONPATH=src python benchmarks/throughput.py --commit abc1234 --work /tmp/tp \
        --out throughput.csv [--parts stage1,stage2,inversionnet,unet_forward,sampling,check] \
        [--reference] [--device cuda|cpu] [--tiny]

Parts (columns `part, setting, commit, samples_per_s, tflops, mfu, gpu, torch, …`):
- stage1, stage2, inversionnet: the real tasks through the project's training loop
  (`train()`), reading the real store layouts (a dataset store and a latents store of
  random values, written first), with the mini config's settings (batch, DataLoader
  workers) and, where the commit has them, the speed settings (data held on the GPU,
  compiled modules, channels-last). samples/s over the logged windows after the first
  two (the first holds compilation and start-up, reported as warmup_s). Each run's loss
  curve goes to curves.csv: every run of one part starts from the same seed and sees the
  same batches, so the curves of eager and compiled runs, old and new code, can be laid
  over each other.
- unet_forward: the paper's UNet forward (as in sampling), bf16, eager and compiled;
  `--reference` adds a diffusers UNet2DModel of the same size (the LDM reference).
- sampling: `sample_shard` (`--samplers`, default DDIM-50 and DPM-Solver++(2M)-20; bf16, batch
  500) on paper-size networks with random weights, eager and compiled: one shard to warm up
  (compilation), one timed.
- check: `check_shard` (deepwave) on the timed shard.

FLOPs are counted with torch's FlopCounterMode (matrix products, convolutions and
attention; forward and backward) on one eager step, so tflops = FLOPs per sample x
samples/s and mfu = tflops / 989.4 (the H100/H200 SXM dense bf16 peak by the datasheet).
Settings that a commit does not have are skipped for it (the base has no speed settings).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import multiprocessing
import re
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import zarr
from torch.utils.flop_counter import FlopCounterMode

from wavediffusion.data.dataset import PairDataset
from wavediffusion.data.store import create_split_arrays
from wavediffusion.data.transforms import Representation
from wavediffusion.diffusion.samplers import synchronize
from wavediffusion.models.autoencoder import AutoencoderConfig, VQAutoencoder
from wavediffusion.models.unet import UNet, UNetConfig
from wavediffusion.sampling.shard import SamplingSettings, check_shard, create_store_for_models, sample_shard
from wavediffusion.training import stage1, stage2
from wavediffusion.training.inversionnet import InversionNetSettings, RealPairs, train_inversionnet
from wavediffusion.training.loop import TrainConfig, train

PEAK_BF16_TFLOPS = 989.4
# speed settings a base commit does not know, with the value that means "as before"
AS_BEFORE = {"data_on_device": False, "compile": False, "channels_last": False}
FAST = {"data_on_device": True, "compile": True, "channels_last": True}
COLUMNS = ["part", "setting", "commit", "samples_per_s", "tflops", "mfu", "gpu", "torch", "batch", "steps",
           "warmup_s", "peak_gib", "notes"]


@dataclasses.dataclass
class Scale:
    """Sizes: the paper's networks on the GPU, toy ones for a CPU try-out of this script."""

    autoencoder: AutoencoderConfig
    unet: UNetConfig
    inversionnet: dict
    train_pairs: int
    latents: int
    steps: dict  # part -> optimiser steps per run
    log_every: int
    unet_batch: int
    sampling_pairs: int
    sampling_batch: int


def paper_scale() -> Scale:
    return Scale(AutoencoderConfig.paper(), UNetConfig.paper(), {}, train_pairs=3072, latents=8192,
                 steps={"stage1": 160, "stage2": 200, "inversionnet": 300}, log_every=20, unet_batch=512,
                 sampling_pairs=1000, sampling_batch=500)


def tiny_scale() -> Scale:
    autoencoder = AutoencoderConfig.tiny()
    unet = dataclasses.replace(UNetConfig.tiny(), in_channels=autoencoder.latent_channels,
                               out_channels=autoencoder.latent_channels, image_size=autoencoder.latent_height)
    return Scale(autoencoder, unet, {"channels": [4, 8, 8, 16, 16], "decoder_start": 1},
                 train_pairs=320, latents=320, steps={"stage1": 12, "stage2": 12, "inversionnet": 12}, log_every=2,
                 unet_batch=4, sampling_pairs=4, sampling_batch=2)


# ---------------------------------------------------------------------------------------
# Stores of the real layouts, random values (throughput does not depend on the values).


def representation(scale: Scale) -> Representation:
    config = scale.autoencoder
    return Representation(shots=tuple(range(0, 2 * config.seismic_channels, 2)), time_samples=config.time_samples,
                          receivers=config.receivers, velocity_size=config.velocity_size)


def write_dataset_store(path: Path, scale: Scale) -> Path:
    """A dataset store (data/store.py's layout) of random pairs in [-1, 1]."""
    if (path / "zarr.json").exists():
        return path
    rep = representation(scale)
    rng = np.random.default_rng(0)
    root = zarr.open_group(str(path), mode="w")
    counts = {"train": scale.train_pairs, "val": 64, "test": 64}
    for split, n in counts.items():
        group = root.create_group(split)
        create_split_arrays(group, n, rep, samples_per_shard=64)
        for start in range(0, n, 64):
            count = min(64, n - start)
            group["seismic"][start:start + count] = rng.uniform(-1, 1, (count, *rep.seismic_shape)).astype(np.float32)
            group["velocity"][start:start + count] = rng.uniform(-1, 1, (count, *rep.velocity_shape)).astype(np.float32)
        group["family"][:] = (np.arange(n) % 2).astype(np.int16)
    root.attrs.update({"representation": rep.to_attrs(), "families": ["FlatVel-A", "CurveVel-A"],
                       "counts": counts, "provenance": {"files": []}})
    return path


def write_latents_store(path: Path, scale: Scale) -> Path:
    """A latents store (encode_latents' layout) of unit-variance random latents."""
    if (path / "zarr.json").exists():
        return path
    shape = (scale.unet.in_channels, scale.unet.image_size, scale.unet.image_size)
    rng = np.random.default_rng(1)
    root = zarr.open_group(str(path), mode="w")
    stats = {}
    for split, n in (("train", scale.latents), ("val", 64)):
        group = root.create_group(split)
        block = min(256, n)
        latent = group.create_array("latent", shape=(n, *shape), chunks=(1, *shape), shards=(block, *shape),
                                    dtype="float32")
        for start in range(0, n, block):
            latent[start:start + block] = rng.standard_normal((min(block, n - start), *shape), dtype=np.float32)
        group.create_array("family", data=np.zeros(n, dtype=np.int16), chunks=(n,))
        stats[split] = {"n": n, "channel_mean": [0.0] * shape[0], "channel_std": [1.0] * shape[0], "std": 1.0}
    root.attrs.update({"variant": "1vq", "latent_shape": list(shape), "model_sha256": "random",
                       "dataset": "random", "stats": stats})
    return path


# ---------------------------------------------------------------------------------------
# Training parts.


def applicable(overrides: dict) -> dict | None:
    """The overrides this commit's TrainConfig takes, or None when it lacks a setting asked for."""
    known = {field.name for field in dataclasses.fields(TrainConfig)}
    kept = {}
    for key, value in overrides.items():
        if key in known:
            kept[key] = value
        elif AS_BEFORE.get(key, object()) != value:
            return None
    return kept


def windows(log: Path, batch: int) -> list[tuple[int, int, float, float]]:
    """(step, steps in the window, seconds, mean loss) of each logged training window, from
    the loop's log.csv (its samples_per_s is the window's steps x batch over its seconds)."""
    out, previous = [], 0
    with open(log, newline="") as handle:
        for row in csv.DictReader(handle):
            if not row.get("samples_per_s"):
                continue
            step = int(row["step"])
            seconds = (step - previous) * batch / float(row["samples_per_s"])
            out.append((step, step - previous, seconds, float(row["train/loss"])))
            previous = step
    return out


def fixed_overrides(args, steps: int) -> dict:
    """What every benchmark run sets: a fixed length, no checkpoints, logs or early stop in the way."""
    return {"max_steps": steps, "max_epochs": 10**6, "checkpoint_every_steps": 10**9, "early_stop_patience": None,
            "progress": False, "tensorboard": False, "device": args.device, "seed": 0}


def run_training(args, part: str, setting: str, overrides: dict, run, flops_key: str | None = None) -> None:
    """One training run, `run(TrainConfig overrides, out_dir)`: a row and its loss curve
    (its TFLOP/s from the FLOPs counted under `flops_key`, default the part's)."""
    if args.only and not re.search(args.only, setting):
        return
    overrides = applicable(overrides)
    if overrides is None:
        print(f"{part} / {setting}: this commit has no such settings; skipped", flush=True)
        return
    args.runs += 1
    out = args.work / "runs" / f"{args.commit}-{args.runs}-{part}"
    shutil.rmtree(out, ignore_errors=True)
    steps = args.scale.steps[part]
    overrides = {**overrides, **fixed_overrides(args, steps), "log_every_steps": args.scale.log_every}
    reset_peak()
    started = time.perf_counter()
    run(overrides, out)
    wall = time.perf_counter() - started
    batch = overrides["batch_size"]
    logged = windows(out / "log.csv", batch)
    warmup, timed = logged[:2], logged[2:]  # the first two windows hold compilation and start-up
    rate = batch * sum(w[1] for w in timed) / sum(w[2] for w in timed)  # samples over seconds
    record(args, part, setting, rate, batch, steps, sum(w[2] for w in warmup), f"wall {wall:.1f} s", flops_key)
    curves = args.work / "curves.csv"
    new_file = not curves.exists()
    with open(curves, "a", newline="") as handle:
        writer = csv.writer(handle)
        if new_file:
            writer.writerow(["part", "setting", "commit", "step", "loss"])
        for step, _, _, loss in logged:
            writer.writerow([part, setting, args.commit, step, f"{loss:.6g}"])


def stage1_part(args) -> None:
    dataset = write_dataset_store(args.work / "dataset.zarr", args.scale)
    model = {k: v for k, v in dataclasses.asdict(args.scale.autoencoder).items() if k not in (
        "variant", "seismic_channels", "time_samples", "receivers", "velocity_size")}
    disc = {} if not args.tiny else {"base_channels": 16, "n_layers": 2}

    def trainer(disc_start: int):
        def run(training: dict, out: Path):
            settings = stage1.Stage1Settings(model=model, discriminator=disc, losses={"disc_start": disc_start},
                                             training={"lr": 2e-4, "precision": "bf16", **training})
            task, config = stage1.build_task(dataset, "1vq", settings)
            train(task, PairDataset(dataset, "train"), None, config, out)
        return run

    count_flops(args, "stage1", trainer(0))
    count_flops(args, "stage1/G", trainer(10**9))
    loader = {"batch_size": 16, "num_workers": 6, **AS_BEFORE}
    on_gpu = {**loader, "data_on_device": True}
    g_only = {"run": trainer(10**9), "flops_key": "stage1/G"}
    run_training(args, "stage1", "G+D, batch 16, DataLoader (6 workers), eager", loader, trainer(0))
    run_training(args, "stage1", "G only, batch 16, DataLoader (6 workers), eager", loader, **g_only)
    run_training(args, "stage1", "G only, batch 16, data on GPU, eager", on_gpu, **g_only)
    run_training(args, "stage1", "G only, batch 16, data on GPU, eager, channels-last",
                 {**on_gpu, "channels_last": True}, **g_only)
    run_training(args, "stage1", "G+D, batch 16, data on GPU, compiled, channels-last",
                 {"batch_size": 16, **FAST}, trainer(0))
    run_training(args, "stage1", "G only, batch 16, data on GPU, compiled, channels-last",
                 {"batch_size": 16, **FAST}, **g_only)
    run_training(args, "stage1", "G+D, batch 64, data on GPU, compiled, channels-last",
                 {"batch_size": 64, **FAST}, trainer(0))


def stage2_part(args) -> None:
    latents = write_latents_store(args.work / "latents.zarr", args.scale)
    model = {k: v for k, v in dataclasses.asdict(args.scale.unet).items()
             if k not in ("in_channels", "out_channels", "image_size")}

    def run(training: dict, out: Path):
        settings = stage2.Stage2Settings(model=model, diffusion={},
                                         training={"lr": 1e-4, "warmup_steps": 500, "precision": "bf16", **training})
        task, config = stage2.build_task(latents, settings)
        train(task, stage2.LatentDataset(latents, "train"), None, config, out)

    count_flops(args, "stage2", run)
    loader = {"batch_size": 64, "num_workers": 4, **AS_BEFORE}
    run_training(args, "stage2", "batch 64, DataLoader (4 workers), eager", loader, run)
    run_training(args, "stage2", "batch 64, data on GPU, eager", {**loader, "data_on_device": True}, run)
    run_training(args, "stage2", "batch 64, data on GPU, compiled", {"batch_size": 64, **FAST, "channels_last": False},
                 run)
    run_training(args, "stage2", "batch 256, data on GPU, eager", {**loader, "batch_size": 256, "data_on_device": True},
                 run)
    run_training(args, "stage2", "batch 256, data on GPU, eager, channels-last",
                 {**loader, "batch_size": 256, "data_on_device": True, "channels_last": True}, run)
    run_training(args, "stage2", "batch 256, data on GPU, compiled", {"batch_size": 256, **FAST, "channels_last": False},
                 run)
    run_training(args, "stage2", "batch 256, data on GPU, compiled, channels-last", {"batch_size": 256, **FAST}, run)


def inversionnet_part(args) -> None:
    dataset = write_dataset_store(args.work / "dataset.zarr", args.scale)
    rep = representation(args.scale)

    def run(training: dict, out: Path):
        settings = InversionNetSettings(model=args.scale.inversionnet, training={"precision": "bf16", **training})
        train_inversionnet(RealPairs(dataset, "train"), None, settings, rep.seismic_shape, rep.velocity_size, out)

    count_flops(args, "inversionnet", run)
    loader = {"batch_size": 64, "lr": 2e-4, "num_workers": 8, **AS_BEFORE}
    run_training(args, "inversionnet", "batch 64, DataLoader (8 workers), eager", loader, run)
    run_training(args, "inversionnet", "batch 64, data on GPU, eager", {**loader, "data_on_device": True}, run)
    run_training(args, "inversionnet", "batch 64, data on GPU, compiled, channels-last",
                 {"batch_size": 64, "lr": 2e-4, **FAST}, run)
    run_training(args, "inversionnet", "batch 256, data on GPU, compiled, channels-last",
                 {"batch_size": 256, "lr": 2e-4, **FAST}, run)


# ---------------------------------------------------------------------------------------
# FLOPs, records.


def count_flops(args, part: str, run) -> None:
    """FLOPs per sample of one eager training step of `part` (batch 2), kept for the rows."""
    batch = 2
    folder = args.work / "runs" / f"{args.commit}-flops-{part}"
    shutil.rmtree(folder, ignore_errors=True)
    with FlopCounterMode(display=False) as counter:
        run({"batch_size": batch, **fixed_overrides(args, 1), **applicable(AS_BEFORE)}, folder)
    args.flops[part] = counter.get_total_flops() / batch


def forward_flops(model, *inputs) -> float:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(*inputs)
    return counter.get_total_flops() / inputs[0].shape[0]


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def record(args, part: str, setting: str, rate: float, batch: int, steps: int | None, warmup: float | None,
           notes: str = "", flops_key: str | None = None) -> None:
    flops = args.flops.get(flops_key or part)
    tflops = flops * rate / 1e12 if flops else None
    row = {"part": part, "setting": setting, "commit": args.commit, "samples_per_s": f"{rate:.1f}",
           "tflops": f"{tflops:.1f}" if tflops else "", "mfu": f"{tflops / PEAK_BF16_TFLOPS:.3f}" if tflops else "",
           "gpu": args.gpu, "torch": torch.__version__, "batch": batch, "steps": steps or "",
           "warmup_s": f"{warmup:.1f}" if warmup is not None else "",
           "peak_gib": f"{torch.cuda.max_memory_allocated() / 2**30:.1f}" if torch.cuda.is_available() else "",
           "notes": notes}
    new_file = not args.out.exists()
    with open(args.out, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        if new_file:
            writer.writeheader()
        writer.writerow(row)
    print(" | ".join(str(row[c]) for c in COLUMNS), flush=True)


# ---------------------------------------------------------------------------------------
# The UNet forward, sampling and the check.


def randomise(model: torch.nn.Module, std: float = 0.02) -> torch.nn.Module:
    """Every weight drawn at random: zero-initialised layers would time multiplications by zero."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * std)
    return model


def time_forward(model, inputs, iters: int) -> float:
    """Samples/s of `iters` forwards after 3 warm-up forwards (and compilation), bf16 autocast."""
    device = inputs[0].device
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    with torch.no_grad(), autocast:
        for _ in range(3):
            model(*inputs)
        synchronize(device)
        started = time.perf_counter()
        for _ in range(iters):
            model(*inputs)
        synchronize(device)
    return inputs[0].shape[0] * iters / (time.perf_counter() - started)


def compile_like_sampling(model):
    """The model compiled the way this commit compiles it for sampling, and how."""
    try:
        from wavediffusion.gpu_speed import compile_module
    except ImportError:  # the base compiled the whole UNet with torch.compile
        return torch.compile(model), "compiled (torch.compile)"
    return compile_module(model), "compiled (gpu_speed.compile_module)"


def diffusers_reference(config: UNetConfig):
    """diffusers' UNet2DModel at the LDM size: the same widths, blocks, attention levels and
    res-block resampling as the paper's UNet, with one attention head per block."""
    from diffusers import UNet2DModel

    levels = len(config.channel_mult)
    attention = [config.image_size // 2**i in config.attention_resolutions for i in range(levels)]
    return UNet2DModel(
        sample_size=config.image_size, in_channels=config.in_channels, out_channels=config.out_channels,
        block_out_channels=tuple(config.model_channels * m for m in config.channel_mult),
        layers_per_block=config.num_res_blocks,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
        resnet_time_scale_shift="scale_shift", attention_head_dim=None, norm_num_groups=config.norm_groups,
        downsample_type="resnet", upsample_type="resnet")


def unet_forward_part(args) -> None:
    config = args.scale.unet
    device = torch.device(args.device)
    x = torch.randn(args.scale.unet_batch, config.in_channels, config.image_size, config.image_size, device=device)
    t = torch.randint(0, 1000, (args.scale.unet_batch,), device=device)
    networks = [("paper UNet (8 heads)", args.commit, lambda: randomise(UNet(config)))]
    if args.one_head:  # the same UNet with diffusers' one head per block: what the heads cost
        one_head = dataclasses.replace(config, num_heads=1)
        networks.append(("paper UNet (1 head)", args.commit, lambda: randomise(UNet(one_head))))
    if args.reference:
        networks.append(("diffusers UNet2DModel, LDM size (1 head)", "reference",
                         lambda: randomise(diffusers_reference(config))))
    for name, commit, make in networks:
        try:
            model = make().to(device).eval()
        except ImportError as error:  # diffusers missing or at odds with the machine's packages
            print(f"{name}: skipped, {error}", flush=True)
            continue
        parameters = sum(p.numel() for p in model.parameters()) / 1e6
        key = f"unet_forward/{commit}"
        args.flops[key] = forward_flops(model, x[:2], t[:2])
        modes = [("eager", model)] if "eager" in args.modes else []
        if device.type == "cuda" and "compiled" in args.modes:
            if commit == "reference":
                modes.append(("compiled (whole network)", torch.compile(model)))
            else:
                compiled, how = compile_like_sampling(make().to(device).eval())
                modes.append((how, compiled))
        for mode, network in modes:
            reset_peak()
            started = time.perf_counter()
            network(x, t) if mode == "eager" else time_forward(network, (x, t), 1)  # compile outside the timing
            warmup = time.perf_counter() - started
            rate = time_forward(network, (x, t), 20)
            saved, args.commit = args.commit, commit
            record(args, "unet_forward", f"{name}, bf16, {mode}", rate, args.scale.unet_batch, None, warmup,
                   f"{parameters:.1f}M parameters", flops_key=key)
            args.commit = saved


def save_random_networks(folder: Path, scale: Scale) -> tuple[Path, Path]:
    """Stage-1 and Stage-2 weights files of the scale's sizes with random weights."""
    stage1_file, stage2_file = folder / "stage1.pt", folder / "stage2.pt"
    torch.manual_seed(0)
    stage1.save_autoencoder(VQAutoencoder(scale.autoencoder), stage1_file)
    stage2.save_stage2(randomise(UNet(scale.unet)), stage2.DiffusionSettings(), 1.0, stage2_file)
    return stage1_file, stage2_file


def sampling_part(args, check: bool) -> None:
    folder = args.work / f"sampling-{args.commit}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    stage1_file, stage2_file = save_random_networks(folder, args.scale)
    n = args.scale.sampling_pairs
    samplers = [(name, int(steps)) for name, steps in (item.rsplit("-", 1) for item in args.samplers.split(","))]
    runs = [(sampler, steps, mode == "compiled") for sampler, steps in samplers
            for mode in args.modes if args.device == "cuda" or mode == "eager"]
    for sampler, steps, compiled in runs:
        try:
            settings = SamplingSettings(num_pairs=max(2, args.check_processes) * n, shard_size=n, sampler=sampler,
                                        steps=steps, batch_size=args.scale.sampling_batch, precision="bf16",
                                        compile=compiled, seed=0)
        except ValueError as error:  # a commit without this sampler
            print(f"sampling {sampler}: skipped, {error}", flush=True)
            continue
        name = f"{sampler}-{steps}-{'compiled' if compiled else 'eager'}"
        store = folder / f"pairs-{name}.zarr"
        create_store_for_models(stage1_file, store, settings)
        reset_peak()
        first = sample_shard(stage1_file, stage2_file, store, 0, settings, progress=False)
        timed = sample_shard(stage1_file, stage2_file, store, 1, settings, progress=False)
        for k in range(2, args.check_processes):  # (untimed) one shard for each check process
            sample_shard(stage1_file, stage2_file, store, k, settings, progress=False)
        args.flops[f"sampling/{steps}"] = sampling_flops(stage1_file, stage2_file, steps, args)
        parts = {part: f"{1000 * s / n:.2f}" for part, s in timed["seconds_by_part"].items()}
        notes = (f"ms/pair {json.dumps(parts)}; writer thread {1000 * timed.get('writer_thread_seconds', 0) / n:.2f} ms/pair; "
                 f"375k pairs: {375_000 / timed['pairs_per_second'] / 3600:.2f} GPU-h")
        label = {"ddim": f"DDIM-{steps} (eta {getattr(settings, 'eta', 0.0):g})",
                 "dpmpp2m": f"DPM-Solver++(2M)-{steps}"}[sampler]
        record(args, "sampling", f"{label}, bf16, batch {settings.batch_size}, {'compiled' if compiled else 'eager'}",
               timed["pairs_per_second"], settings.batch_size, None, first["seconds"] - timed["seconds"], notes,
               flops_key=f"sampling/{steps}")
        if check and (sampler, steps) == samplers[0] and not compiled:  # (the check does not depend on how the pairs were made)
            rep, backends = representation(args.scale), args.check_backends.split(",")
            for backend in backends:
                check_job(store, 0, rep, backend)  # warm-up
                info = check_job(store, 1, rep, backend)
                parts = {part: f"{1000 * s / n:.2f}" for part, s in info["seconds_by_part"].items()}
                hours = 375_000 / info["pairs_per_second"] / 3600
                record(args, "check", f"{backend}, batch 256", info["pairs_per_second"], 256, None, None,
                       f"ms/pair {json.dumps(parts)}; 375k pairs: {hours:.2f} GPU-h")
            if args.check_processes > 1:
                for backend in backends:
                    check_in_processes(args.check_processes, store, rep, backend, n, args)
                    info = check_job(store, 1, rep, backend, processes=args.check_processes)
                    record(args, "check", f"{backend}, batch 256, {info['processes']} processes in one job",
                           info["pairs_per_second"], 256, None, None,
                           f"wall {info['seconds']:.1f} s with the processes' start-up (physics.check_processes); "
                           f"375k pairs: {375_000 / info['pairs_per_second'] / 3600:.2f} GPU-h")


def check_job(store: Path, k: int, rep, backend: str, processes: int = 1) -> dict:
    """check_shard on shard k at batch 256, as the timed rows label it (also run in a process
    of its own, as Snakemake would run a job)."""
    return check_shard(store, k, rep, backend, batch_size=256, progress=False, processes=processes)


def check_in_processes(processes: int, store: Path, rep, backend: str, n: int, args) -> None:
    """`processes` check_shard jobs at once on one GPU, each on its own shard of n pairs and
    in its own process (what `--resources gpu=N` gives on a machine of one GPU): pairs/s of
    all of them together, start-up (CUDA, the kernel's compilation) included."""
    torch.cuda.empty_cache()  # the sampling's cached memory (~70 GiB) would leave the jobs none
    started = time.perf_counter()
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        infos = list(pool.map(check_job, [store] * processes, range(processes),
                              [rep] * processes, [backend] * processes))
    wall = time.perf_counter() - started
    inside = sum(info["pairs_per_second"] for info in infos)
    record(args, "check", f"{backend}, batch 256, {processes} jobs at once", processes * n / wall, 256, None, None,
           f"wall {wall:.1f} s with start-up; the jobs' own rates summed {inside:.1f} pairs/s; "
           f"375k pairs: {375_000 * wall / (processes * n) / 3600:.2f} GPU-h")


def sampling_flops(stage1_file: Path, stage2_file: Path, steps: int, args) -> float:
    """FLOPs per generated pair: `steps` UNet forwards and one decoding (both decoders)."""
    device = torch.device(args.device)
    autoencoder = stage1.load_autoencoder(stage1_file, device)
    unet, _, _ = stage2.load_stage2(stage2_file, device)
    config = args.scale.unet
    z = torch.randn(2, config.in_channels, config.image_size, config.image_size, device=device)
    return steps * forward_flops(unet, z, torch.tensor([10, 10], device=device)) + forward_flops(autoencoder.decode_latent, z)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commit", required=True, help="the label of the source on the path (a commit hash)")
    parser.add_argument("--work", required=True, type=Path, help="stores and runs (shared by the commits' runs)")
    parser.add_argument("--out", required=True, type=Path, help="the CSV to append rows to")
    parser.add_argument("--parts", default="stage1,stage2,inversionnet,unet_forward,sampling,check")
    parser.add_argument("--reference", action="store_true", help="also time diffusers' UNet2DModel")
    parser.add_argument("--one-head", action="store_true", help="also time the paper UNet with num_heads 1")
    parser.add_argument("--only", default="", help="training parts: run only the settings this regex finds")
    parser.add_argument("--modes", default="eager,compiled", help="unet_forward and sampling: eager, compiled or both")
    parser.add_argument("--samplers", default="ddim-50,dpmpp2m-20",
                        help="sampling: comma-separated SAMPLER-STEPS (ddim, dpmpp2m); the first also runs the check")
    parser.add_argument("--check-backends", default="deepwave",
                        help="check: comma-separated physics backends to time check_shard with")
    parser.add_argument("--check-processes", type=int, default=1,
                        help="check: also run this many check_shard jobs at once, each in its own process, "
                             "and one job with this many processes (physics.check_processes)")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--tiny", action="store_true", help="toy sizes: a CPU try-out of this script")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "runs").mkdir(exist_ok=True)
    args.scale = tiny_scale() if args.tiny else paper_scale()
    args.gpu = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    args.flops = {}
    args.runs = 0
    args.modes = args.modes.split(",")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    parts = args.parts.split(",")
    for part in parts:
        started = time.perf_counter()
        if part == "stage1":
            stage1_part(args)
        elif part == "stage2":
            stage2_part(args)
        elif part == "inversionnet":
            inversionnet_part(args)
        elif part == "unet_forward":
            unet_forward_part(args)
        elif part == "sampling":
            sampling_part(args, check="check" in parts)
        elif part != "check":
            raise SystemExit(f"unknown part {part!r}")
        print(f"[{args.commit}] {part}: {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
