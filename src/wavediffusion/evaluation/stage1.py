"""Evaluate a trained Stage-1 autoencoder: reconstruction, inversion and physics.

Three questions, one rule (`evaluate_stage1`):

1. How well does it reconstruct?  On the test split, seismic -> latent -> both decoders:
   MSE of each modality in the normalised [-1, 1] space, and the velocity decoder read as
   an inversion model (seismic -> latent -> D_v) with OpenFWI's MAE / RMSE / SSIM; and how
   the test latents use the codebook (perplexity, unused codes).
2. Are its reconstructions physical?  The PDE deviation ||D_s(z) - F(D_v(z))||^2 (MSE in
   the normalised seismic space, see physics/deviation.py), beside the same measure for
   the test pairs themselves (the floor a model cannot beat).
3. Is the latent space itself physical away from the data?  The paper's Table 5 rows for
   Stage 1 alone: latents drawn from a Gaussian fitted to the training latents, and
   interpolations between pairs of training latents, decoded and measured the same way;
   with decoded training latents (the paper's 0.0016) as the reference.

Every decoded pair goes through `VQAutoencoder.decode_latent` (quantise per variant,
decode, clamp to [-1, 1]) -- the same path a diffusion sample takes -- so all rows of
Table 5 and the later diffusion rows are measured alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import zarr
from tqdm import tqdm

from ..data.families import indices_per_family
from ..data.store import representation_of
from ..data.transforms import Representation, velocity_from_model
from ..metrics import inversion_metrics
from ..models.autoencoder import VQAutoencoder
from ..physics.deviation import per_sample_mse, simulate_model_velocity
from ..seeds import Stream, derive_seed

if TYPE_CHECKING:
    from matplotlib.figure import Figure

METRICS_COLUMNS = ("variant", "family", "n", "mse_seismic", "mse_velocity", "mae", "rmse", "ssim",
                   "pde_deviation", "pde_deviation_data", "codebook_perplexity", "codebook_unused")
TABLE5_COLUMNS = ("variant", "latents", "weight", "n", "deviation_mean", "deviation_std", "deviation_median")


@dataclass(frozen=True)
class Stage1Evaluation:
    """config.yaml `stage1.evaluation`."""

    test_per_family: int | None = None  # test samples per family; None = all
    train_latents: int = 5000  # decoded training latents (the paper's reconstruction deviation)
    random_latents: int = 5000  # paper: 5 000 latents from the fitted Gaussian
    interpolation_pairs: int = 1000  # pairs of training latents, each at every weight
    interpolation_weights: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)
    backend: str = "deepwave"  # forward operator of the deviation: physics.backend, given by the rule
    batch_size: int = 64  # decoder and simulator batch
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "interpolation_weights", tuple(float(w) for w in self.interpolation_weights))
        for name in ("train_latents", "random_latents", "interpolation_pairs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"stage1.evaluation.{name} must be at least 1, got {getattr(self, name)}")
        if not all(0.0 <= w <= 1.0 for w in self.interpolation_weights):
            raise ValueError(f"stage1.evaluation.interpolation_weights must lie in [0, 1], got {self.interpolation_weights}")


# --- decoding and measuring -----------------------------------------------------------------


@torch.no_grad()
def decode_and_check(model: VQAutoencoder, latents: torch.Tensor, rep: Representation, backend: str,
                     batch_size: int, desc: str, progress: bool = True) -> dict[str, torch.Tensor]:
    """Decode latents (N, C, h, w) and measure each pair's PDE deviation.

    Returns CPU tensors: seismic (N, S, T, R), velocity (N, 1, V, V), simulated = F(velocity)
    in the model's seismic space, and deviation (N,).
    """
    device = next(model.parameters()).device
    parts = {"seismic": [], "velocity": [], "simulated": [], "deviation": []}
    for z in tqdm(latents.split(batch_size), desc=desc, unit="batch", disable=not progress):
        seismic, velocity = model.decode_latent(z.to(device))
        simulated = simulate_model_velocity(velocity.float(), rep, backend, batch_size)
        parts["seismic"].append(seismic.float().cpu())
        parts["velocity"].append(velocity.float().cpu())
        parts["simulated"].append(simulated.float().cpu())
        parts["deviation"].append(per_sample_mse(seismic.float(), simulated).double().cpu())
    return {name: torch.cat(values) for name, values in parts.items()}


def deviation_row(variant: str, latents: str, weight: float | None, deviation: torch.Tensor) -> dict:
    return {
        "variant": variant,
        "latents": latents,
        "weight": "" if weight is None else weight,
        "n": len(deviation),
        "deviation_mean": float(deviation.mean()),
        "deviation_std": float(deviation.std()) if len(deviation) > 1 else 0.0,
        "deviation_median": float(deviation.median()),
    }


# --- 1 and 2: the test split ------------------------------------------------------------------


def codebook_usage(model: VQAutoencoder, codes: dict[str, torch.Tensor]) -> dict[str, float]:
    """How the codebooks serve a set of latents, from the code index of every latent position
    ({codebook name: indices}): the perplexity exp(entropy) of code use (the number of
    equally used codes it equals) and the codes no position uses, each averaged over the
    variant's codebooks (1vq: one, 2vq: two)."""
    perplexity, unused = [], []
    for name, indices in codes.items():
        counts = torch.bincount(indices, minlength=model.quantizers()[name].codebook_size).double()
        p = counts / counts.sum()
        perplexity.append(float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum())))
        unused.append(float((counts == 0).sum()))
    return {"codebook_perplexity": sum(perplexity) / len(perplexity), "codebook_unused": sum(unused) / len(unused)}


@torch.no_grad()
def test_split_metrics(model: VQAutoencoder, dataset: zarr.Group, variant: str, settings: Stage1Evaluation,
                       progress: bool = True) -> tuple[list[dict], torch.Tensor, dict]:
    """Per-family reconstruction, inversion and PDE-deviation rows (plus an "all" row) of a
    dataset store's test split.

    Also returns every evaluated sample's PDE deviation (N,) and the first family's first
    decoded pair, for the example figure.
    """
    device = next(model.parameters()).device
    rep = representation_of(dataset)
    test = dataset["test"]
    per_family = indices_per_family(np.asarray(test["family"][:]), settings.test_per_family)
    rows, columns, all_codes, example = [], {}, {}, {}
    for family, index in per_family.items():
        seismic = torch.from_numpy(test["seismic"].get_orthogonal_selection((index,)))
        velocity = torch.from_numpy(test["velocity"].get_orthogonal_selection((index,)))
        latents, codes = [], {name: [] for name in model.quantizers()}
        for part in seismic.split(settings.batch_size):
            z = model.encode(part.to(device))
            latents.append(z.float().cpu())  # the latent Stage 2 learns (latent_for_diffusion)
            for name, quantizer in model.quantizers().items():
                codes[name].append(quantizer.nearest(z).flatten().cpu())
        latents = torch.cat(latents)
        decoded = decode_and_check(model, latents, rep, settings.backend, settings.batch_size,
                                   desc=f"test {family}", progress=progress)
        # the data's own pairs through the same operator: the floor of the deviation
        data_simulated = simulate_model_velocity(velocity.to(device), rep, settings.backend, settings.batch_size).cpu()
        per_sample = {
            "mse_seismic": per_sample_mse(decoded["seismic"], seismic).double(),
            "mse_velocity": per_sample_mse(decoded["velocity"], velocity).double(),
            **{name: value.double() for name, value in inversion_metrics(decoded["velocity"], velocity).items()},
            "pde_deviation": decoded["deviation"],
            "pde_deviation_data": per_sample_mse(seismic, data_simulated).double(),
        }
        codes = {name: torch.cat(values) for name, values in codes.items()}
        rows.append({"variant": variant, "family": family, "n": len(index),
                     **{name: float(value.mean()) for name, value in per_sample.items()},
                     **codebook_usage(model, codes)})
        for name, value in per_sample.items():
            columns.setdefault(name, []).append(value)
        for name, value in codes.items():
            all_codes.setdefault(name, []).append(value)
        if not example:
            example = {"seismic": decoded["seismic"][0], "velocity": decoded["velocity"][0],
                       "simulated": decoded["simulated"][0], "title": f"test reconstruction ({family})"}
    everything = {name: torch.cat(values) for name, values in columns.items()}
    rows.append({"variant": variant, "family": "all", "n": len(everything["pde_deviation"]),
                 **{name: float(value.mean()) for name, value in everything.items()},
                 **codebook_usage(model, {name: torch.cat(values) for name, values in all_codes.items()})})
    return rows, everything["pde_deviation"], example


# --- 3: the latent space away from the data --------------------------------------------------


def streamed_moments(latents: zarr.Array, block: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-element mean and std (the sample shape) of an array's rows (training latents,
    velocity maps), streamed in blocks."""
    total = torch.zeros(latents.shape[1:], dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    for start in range(0, latents.shape[0], block):
        z = torch.from_numpy(latents[start : start + block]).double()
        total += z.sum(dim=0)
        total_sq += (z**2).sum(dim=0)
    n = latents.shape[0]
    mean = total / n
    return mean.float(), (total_sq / n - mean**2).clamp_min(0).sqrt().float()


def gaussian_latents(latents: zarr.Array, n: int, generator: torch.Generator) -> torch.Tensor:
    """n latents from the diagonal Gaussian fitted element-wise to the training latents."""
    mean, std = streamed_moments(latents)
    return mean + std * torch.randn((n, *mean.shape), generator=generator)


def random_training_latents(latents: zarr.Array, n: int, generator: torch.Generator) -> torch.Tensor:
    """n training latents drawn without replacement (all of them if there are fewer)."""
    index = torch.randperm(latents.shape[0], generator=generator)[:n].sort().values.numpy()
    return torch.from_numpy(latents.get_orthogonal_selection((index,)))


def interpolation_pairs(latents: zarr.Array, n_pairs: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n_pairs of distinct training latents (a, b), drawn with replacement across pairs."""
    n = latents.shape[0]
    if n < 2:
        raise ValueError("interpolation needs at least two training latents")
    first = torch.randint(n, (n_pairs,), generator=generator)
    second = (first + torch.randint(1, n, (n_pairs,), generator=generator)) % n  # never equal to first
    index = torch.cat([first, second])
    unique, position = torch.unique(index, return_inverse=True)
    chosen = torch.from_numpy(latents.get_orthogonal_selection((unique.numpy(),)))[position]
    return chosen[:n_pairs], chosen[n_pairs:]


def latent_space_rows(model: VQAutoencoder, latents: zarr.Array, rep: Representation, variant: str,
                      settings: Stage1Evaluation, progress: bool = True) -> tuple[list[dict], list[dict]]:
    """Table-5 rows of decoded training, Gaussian and interpolated latents (`latents`: the
    training latents), and one example of each."""
    generator = torch.Generator().manual_seed(derive_seed(settings.seed, Stream.TABLE5_LATENTS))
    rows, examples = [], []

    def measure(name: str, weight: float | None, z: torch.Tensor) -> None:
        label = name if weight is None else f"{name} {weight:g}"
        decoded = decode_and_check(model, z, rep, settings.backend, settings.batch_size, desc=label, progress=progress)
        rows.append(deviation_row(variant, name, weight, decoded["deviation"]))
        if weight is None or weight == 0.5:
            examples.append({"seismic": decoded["seismic"][0], "velocity": decoded["velocity"][0],
                             "simulated": decoded["simulated"][0], "title": label})

    measure("train_reconstruction", None, random_training_latents(latents, settings.train_latents, generator))
    measure("random_gaussian", None, gaussian_latents(latents, settings.random_latents, generator))
    a, b = interpolation_pairs(latents, settings.interpolation_pairs, generator)
    for weight in settings.interpolation_weights:
        measure("interpolation", weight, (1 - weight) * a + weight * b)
    return rows, examples


# --- the figure ------------------------------------------------------------------------------


DECODED_COLUMNS = ("decoded seismic D_s(z)", "simulated F(D_v(z))", "difference", "decoded velocity D_v(z)")


def plot_examples(examples: list[dict], rep: Representation,
                  title: str = "Stage 1: decoded pairs against the wave equation", shot: int | None = None,
                  columns: tuple[str, str, str, str] = DECODED_COLUMNS) -> Figure:
    """One row per example: decoded seismic, F(decoded velocity), their difference (one shot,
    normalised seismic in [-1, 1]), and the decoded velocity in m/s on OpenFWI's grid;
    `columns`: the four columns' titles."""
    from ..plotting import plt
    from .figures import show_velocity

    rows = len(examples)
    figure, axes = plt.subplots(rows, 4, figsize=(11, 2.6 * rows + 0.6), squeeze=False, layout="constrained")
    s = shot if shot is not None else examples[0]["seismic"].shape[0] // 2  # the middle shot
    seismic_extent = (0, rep.receivers, 1.0, 0)  # receivers across, OpenFWI's 1 s record down
    images = [None] * 4
    for row, example in enumerate(examples):
        seismic, simulated = example["seismic"][s].numpy(), example["simulated"][s].numpy()
        panels = [(seismic, "gray", (-1, 1)), (simulated, "gray", (-1, 1)), (seismic - simulated, "RdBu_r", (-0.5, 0.5))]
        for column, (image, cmap, (lo, hi)) in enumerate(panels):
            axis = axes[row, column]
            images[column] = axis.imshow(image, cmap=cmap, vmin=lo, vmax=hi, aspect="auto", extent=seismic_extent,
                                         interpolation="nearest")
            axis.tick_params(labelsize=6)
            if column:
                axis.set_yticks([])
        velocity = velocity_from_model(example["velocity"][None].float(), rep)[0, 0].numpy()
        images[3] = show_velocity(axes[row, 3], velocity)
        deviation = float(((example["seismic"] - example["simulated"]) ** 2).mean())
        axes[row, 0].set_ylabel(f"{example['title']}\ndeviation {deviation:.4f}\ntime (s)", fontsize=8)
    for column, name in enumerate(columns):
        axes[0, column].set_title(name, fontsize=8)
        axes[-1, column].set_xlabel("receiver" if column < 3 else "", fontsize=7)
    for column, label in ((1, "normalised amplitude"), (2, "difference"), (3, "velocity (m/s)")):
        colourbar = figure.colorbar(images[column], ax=axes[:, column], shrink=0.5, aspect=30)
        colourbar.set_label(label, fontsize=7)
        colourbar.ax.tick_params(labelsize=6)
    figure.suptitle(f"{title} (shot {s}; deviation: mean squared difference, all shots)", fontsize=9)
    return figure


# --- the rule's one call ---------------------------------------------------------------------


def evaluate_stage1(model: VQAutoencoder, dataset: zarr.Group, latents: zarr.Array, settings: Stage1Evaluation,
                    progress: bool = True) -> tuple[list[dict], list[dict], Figure]:
    """Metrics rows (per family; METRICS_COLUMNS), Table-5 rows (deviation per kind of latent;
    TABLE5_COLUMNS) and the example figure, of an autoencoder on a dataset store and its
    training latents."""
    variant = model.config.variant
    rep = representation_of(dataset)
    metrics, test_deviation, test_example = test_split_metrics(model, dataset, variant, settings, progress)
    table5, examples = latent_space_rows(model, latents, rep, variant, settings, progress)
    table5.insert(0, deviation_row(variant, "test_reconstruction", None, test_deviation))
    return metrics, table5, plot_examples([test_example, *examples], rep)
