"""Table 8, joint vs separate diffusion: sample the single-modality baselines, pair them by
index, check the pairs against the wave equation, and score both against the joint model.

Three steps, three rules (workflow/rules/ablation.smk), after each modality's autoencoder
(training/single_modality.py) and its Stage-2 model (training/stage2.py) are trained:

- `sample_separate`: n samples of one modality from its own latent diffusion model, with
  the joint store's sampler settings, the start noise seeded per modality (`sample_seed`),
  so the two modalities' samples share no draw with each other or with the joint shards;
- `independent_pair_deviation`: seismic sample i beside velocity sample i -- two independent
  draws, paired by nothing but their index -- through the project's physics check
  (F(velocity) with deepwave in the model's seismic space, its MSE to the seismic, as
  sampling.shard.check_shard measures a joint pair);
- `table8_rows`: per modality the FID of the separate samples beside that of the joint
  store's first n pairs (fid_scores' features, weights and reference), and the PDE deviation
  of the independent pairs beside the joint pairs', with pde_floor.csv's controls: the data's
  own pairs (the floor) and another pair's velocity (the chance level).
Details: docs/ablation.md.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import zarr
from tqdm import tqdm

from ..data import dims, integrity
from ..data.transforms import Representation
from ..diffusion import run_sampler, unet_autocast
from ..files import atomic_directory, open_zarr_store, sha256_of
from ..gpu_speed import compile_module
from ..physics.deviation import per_sample_mse, simulate_model_velocity
from ..sampling.shard import SamplingSettings
from ..seeds import Stream, derive_seed
from ..training.single_modality import load_single_modality
from ..training.stage2 import load_stage2
from .fid import fid_from_features
from .fid_scores import MODALITIES, FIDReference, FIDSettings, _features
from .stage1 import plot_examples
from .table8 import COLUMNS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FORMAT = "wavediffusion-separate-samples-v1"  # the samples store's attrs["format"]
SAMPLES_REMEDY = "Delete the store and rerun the sample_separate rule (Snakemake then rewrites it)."
EXAMPLES = 3  # pairs of each kind in the figure


def sample_seed(seed: int, modality: str) -> int:
    """The seed of one modality's samples: keyed by the modality's index, so that the two
    modalities' start noises are independent draws (their latents have the same shape: one
    seed for both would start them from the same noise, which would pair them after all)."""
    return derive_seed(seed, Stream.SEPARATE_SAMPLES, MODALITIES.index(modality))


@torch.no_grad()
def sample_separate(stage1_model: str | Path, stage2_model: str | Path, out: str | Path, n: int,
                    settings: SamplingSettings, device: torch.device, progress: bool = True) -> dict:
    """n samples of a single-modality model into a Zarr store at `out`: `samples` (n, C, H, W)
    in [-1, 1] and `latent` (n, C', h, w); `settings`: the sampler (sampler, steps, eta,
    batch_size, precision, compile) and the global seed. Returns what the store's attributes record."""
    model = load_single_modality(stage1_model, device)
    unet, schedule, scale = load_stage2(stage2_model, device)
    latent_shape = tuple(model.config.latent_shape)
    unet_shape = (unet.config.in_channels, unet.config.image_size, unet.config.image_size)
    if unet_shape != latent_shape:
        raise ValueError(f"{stage2_model} generates latents {unet_shape}; {stage1_model} decodes {latent_shape}")
    settings.check_schedule(schedule.num_steps)
    if settings.compile and device.type == "cuda":  # as sample_shard: the first batch pays for compiling
        compile_module(unet)
        compile_module(model)
    seed = sample_seed(settings.seed, model.modality)
    generator = torch.Generator(device=device).manual_seed(seed)
    autocast = unet_autocast(device, settings.precision)
    block = min(settings.batch_size, n)
    info = {"format": FORMAT, "modality": model.modality, "n": n, "seed": seed, "sampler": settings.sampler,
            "steps": schedule.num_steps if settings.sampler == "ddpm" else settings.steps,
            "eta": settings.eta if settings.sampler == "ddim" else None, "settings": asdict(settings),
            "stage1_sha256": sha256_of(stage1_model), "stage2_sha256": sha256_of(stage2_model),
            "scale_factor": scale}
    with atomic_directory(out) as tmp:
        root = zarr.open_group(str(tmp), mode="w")
        arrays = {}
        data_dims = dims.SEISMIC if model.modality == "seismic" else dims.VELOCITY
        for name, shape, names in (("samples", model.data_shape, (dims.SAMPLE, *data_dims)),
                                   ("latent", latent_shape, (dims.SAMPLE, *dims.LATENT))):
            arrays[name] = root.create_array(name, shape=(n, *shape), chunks=(1, *shape), shards=(block, *shape),
                                             dtype="float32", fill_value=float("nan"),
                                             compressors=integrity.COMPRESSORS, dimension_names=names)
        for start in tqdm(range(0, n, block), desc=f"{model.modality}-only samples", unit="batch",
                          disable=not progress):
            count = min(block, n - start)
            z = run_sampler(settings.sampler, unet, schedule, (count, *latent_shape), num_steps=settings.steps,
                            eta=settings.eta, generator=generator, device=device, autocast=autocast).z0
            z = z.float() / scale
            arrays["latent"][start : start + count] = z.cpu().numpy()
            arrays["samples"][start : start + count] = model.decode_latent(z).float().cpu().numpy()
        root.attrs.update({**info, integrity.ATTRIBUTE: integrity.VERSION})
    return info


def open_samples(path: str | Path, modality: str) -> zarr.Group:
    """A samples store of sample_separate, read-only, refused unless it holds `modality` and every shard is there."""
    root = open_zarr_store(path, "separate samples store", "sample_separate")
    if root.attrs.get("format") != FORMAT:
        raise ValueError(f"{path}: not a separate samples store (format {root.attrs.get('format')!r}, expected "
                         f"{FORMAT!r})")
    if root.attrs["modality"] != modality:
        raise ValueError(f"{path}: holds {root.attrs['modality']} samples where {modality} ones are expected")
    integrity.check_complete(path, root, integrity.all_rows(root), SAMPLES_REMEDY)
    return root


def _check_independent(seismic: zarr.Group, velocity: zarr.Group, n: int) -> None:
    """The two sets come from separate models and separate seeds, and each holds n samples."""
    for root in (seismic, velocity):
        if root.attrs["n"] != n:
            raise ValueError(f"the {root.attrs['modality']}-only samples number {root.attrs['n']}, expected {n}; "
                             "rerun sample_separate")
    same = [key for key in ("seed", "stage2_sha256") if seismic.attrs[key] == velocity.attrs[key]]
    if same:
        raise ValueError(f"the seismic-only and velocity-only samples share their {' and '.join(same)}: "
                         "their pairs would not be independent")


def _example(seismic: np.ndarray, velocity: np.ndarray, simulated: np.ndarray, title: str) -> dict:
    return {"seismic": torch.from_numpy(np.asarray(seismic)), "velocity": torch.from_numpy(np.asarray(velocity)),
            "simulated": torch.from_numpy(np.asarray(simulated)), "title": title}


@torch.no_grad()
def independent_pair_deviation(seismic: zarr.Group, velocity: zarr.Group, n: int, rep: Representation, backend: str,
                               batch_size: int, device: torch.device,
                               progress: bool = True) -> tuple[np.ndarray, list[dict]]:
    """The PDE deviation (n,) of pairs (seismic sample i, velocity sample i) of two samples
    stores, and the first EXAMPLES pairs for the figure."""
    _check_independent(seismic, velocity, n)
    deviations, examples = [], []
    for start in tqdm(range(0, n, batch_size), desc="independent pairs", unit="batch", disable=not progress):
        s = torch.from_numpy(seismic["samples"][start : start + batch_size]).to(device)
        v = torch.from_numpy(velocity["samples"][start : start + batch_size]).to(device)
        simulated = simulate_model_velocity(v, rep, backend, batch_size).float()
        deviations.append(per_sample_mse(s, simulated).double().cpu().numpy())
        for i in range(min(EXAMPLES - len(examples), len(s))):
            examples.append(_example(s[i].cpu(), v[i].cpu(), simulated[i].cpu(), f"independent pair {start + i}"))
    deviation = np.concatenate(deviations)
    if not np.isfinite(deviation).all():
        raise FloatingPointError("non-finite PDE deviations of independent pairs")
    return deviation, examples


def joint_examples(variant: str, pairs: zarr.Group) -> list[dict]:
    """The first EXAMPLES checked pairs of a joint pairs store, for the figure."""
    rows = slice(0, min(EXAMPLES, pairs["velocity"].shape[0]))
    return [_example(s, v, f, f"{variant} joint pair {i}") for i, (s, v, f) in
            enumerate(zip(pairs["seismic"][rows], pairs["velocity"][rows], pairs["seismic_simulated"][rows]))]


def pairs_figure(examples: list[dict], rep: Representation) -> Figure:
    """The joint pairs, then the independent pairs, each against the wave equation."""
    return plot_examples(examples, rep, title="Joint pairs (one latent) vs independent pairs (separate models)",
                         columns=("seismic s", "simulated F(v)", "difference s - F(v)", "velocity v"))


def floor_controls(floor_rows: list[dict]) -> dict[str, float | str]:
    """pde_floor.csv's controls at the physics check's setting (deepwave, the 64 x 64 map), each
    the mean over its families' pairs: "data_floor" (the true pairs) and "chance" (seismic of
    one true pair against the velocity of another of its family); "" where the floor lacks them."""
    controls = {}
    for name, velocity_input in (("data_floor", "model64"), ("chance", "model64_other_pair")):
        rows = [r for r in floor_rows if r["backend"] == "deepwave" and r["velocity_input"] == velocity_input]
        count = sum(int(r["n"]) for r in rows)
        controls[name] = sum(int(r["n"]) * float(r["deviation_mean"]) for r in rows) / count if count else ""
    return controls


def _std(values: np.ndarray) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def table8_rows(joint: dict[str, zarr.Group], seismic: zarr.Group, velocity: zarr.Group, n: int,
                independent: np.ndarray, floor_rows: list[dict], reference: FIDReference, settings: FIDSettings,
                device: torch.device) -> list[dict]:
    """Table 8's rows (COLUMNS) for each joint variant ({variant: its pairs store}): FID per
    modality of the store's first n pairs and of the n separate samples, and the PDE
    deviation of those joint pairs and of the n independent pairs (`independent`), with the
    floor's controls."""
    _check_independent(seismic, velocity, n)
    if len(independent) != n:
        raise ValueError(f"{len(independent)} independent pairs' deviations, expected {n}; "
                         "rerun check_independent_pairs")
    rows = np.arange(n)
    separate = _features(reference.inception, {"seismic": seismic["samples"], "velocity": velocity["samples"]}, rows,
                         settings, device, "separate samples")
    controls = floor_controls(floor_rows)
    scores = {"n_reference": reference.n, "weights_sha256": reference.weights["sha256"]}
    table = []
    for variant, pairs in joint.items():
        if pairs["velocity"].shape[0] < n:
            raise ValueError(f"the {variant} pairs store holds {pairs['velocity'].shape[0]} pairs, fewer than the "
                             f"{n} of Table 8")
        features = _features(reference.inception, {m: pairs[m] for m in MODALITIES}, rows, settings, device,
                             f"{variant} joint samples")
        for modality in MODALITIES:
            table.append({"variant": variant, "quantity": "fid", "modality": modality, "n": n,
                          "joint": fid_from_features(features[modality], reference.features[modality]),
                          "separate": fid_from_features(separate[modality], reference.features[modality]),
                          "joint_std": "", "separate_std": "", "data_floor": "", "chance": "", **scores})
        deviation = np.asarray(pairs["deviation"][:n], dtype=np.float64)
        if not np.isfinite(deviation).all():
            raise ValueError(f"the {variant} pairs store has unchecked pairs among its first {n}; run check_shard")
        table.append({"variant": variant, "quantity": "pde_deviation", "modality": "pair", "n": n,
                      "joint": float(deviation.mean()), "separate": float(independent.mean()),
                      "joint_std": _std(deviation), "separate_std": _std(independent), **controls,
                      "n_reference": "", "weights_sha256": ""})
    return [{column: row[column] for column in COLUMNS} for row in table]
