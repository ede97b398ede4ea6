"""Diffusion-refined inversion (the paper's Sec. 3.3, Table 9) and its perturbation
ablation (Table 7): starting from the Stage-1 latent of an observed seismic section, keep
among the diffusion model's candidates over its last reverse steps the one whose decoded
seismic is closest to the observation. docs/refinement.md says how and why (candidates,
the two latents carried, the score, batching and randomness)."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import zarr
from tqdm import tqdm

from ..config import only_known
from ..data.families import FAMILY_NAMES, indices_per_family
from ..devices import resolve_device
from ..diffusion.samplers import ddpm_mean_std, draw_noise, synchronize, unet_autocast
from ..diffusion.schedule import NoiseSchedule
from ..metrics import inversion_metrics
from ..models.autoencoder import VQAutoencoder
from ..physics.deviation import per_sample_mse
from ..seeds import Stream, derive_seed

if TYPE_CHECKING:
    from matplotlib.figure import Figure

KEY = "refine"
PRECISIONS = ("bf16", "fp32")
METHODS = ("stage1", "refined", "perturbed")
COLUMNS = ("method", "family", "n", "mae", "rmse", "ssim", "seismic_l2")
# one independent random stream per method (see evaluate_refinement; "stage1" draws nothing)
_STREAMS = {"stage1": Stream.REFINE_STAGE1, "refined": Stream.REFINE_REFINED, "perturbed": Stream.REFINE_PERTURBED}


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@dataclass(frozen=True)
class RefineSettings:
    """config.yaml `refine`; the defaults follow the paper where it says."""

    start_step: int = 10  # K: reverse steps run from q(z_K | z0) (paper: the last 10); 0 = no refinement
    candidates: int = 100  # M: candidates drawn per reverse step (paper: 100)
    perturbations: int = 1000  # M': Gaussian perturbations of z0 in the ablation, z0 not among them (paper: 1000); 0 = z0
    # σ of the ablation's perturbations, in the diffusion's unit-variance latent space (latent * scale);
    # 0.1 is about the noise of the last 10 steps of the paper's schedule (sqrt(1 - ᾱ_9) ≈ 0.12)
    sigma: float = 0.1
    batch_size: int = 8  # observations refined together (the UNet's batch)
    # most candidate latents decoded in one decoder call (chunks of B x M); paper sizes: ~15 GiB at 128
    # (H200, fp32), and larger chunks were no faster (~650 candidate decodes/s, the seismic decoder bound)
    candidate_batch: int = 128
    precision: str = "bf16"  # the UNet under autocast on a GPU: "bf16" | "fp32" (CPU: always fp32)
    seed: int = 0

    def __post_init__(self):
        minimum = {"start_step": 0, "candidates": 1, "perturbations": 0, "batch_size": 1, "candidate_batch": 1,
                   "seed": 0}
        for name, lowest in minimum.items():
            value = getattr(self, name)
            if not _is_int(value) or value < lowest:
                raise ValueError(f"{KEY}.{name} must be an integer of at least {lowest}, got {value!r}")
        if isinstance(self.sigma, bool) or not isinstance(self.sigma, (int, float)) \
                or not math.isfinite(self.sigma) or self.sigma <= 0:
            raise ValueError(f"{KEY}.sigma must be a positive number, got {self.sigma!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"{KEY}.precision must be one of {PRECISIONS}, got {self.precision!r}")

    @classmethod
    def from_dict(cls, values: dict) -> RefineSettings:
        """From the config's dict, rejecting unknown keys (naming `refine`)."""
        return cls(**only_known(values, cls, KEY))

    def check_schedule(self, num_steps: int) -> None:
        """Raise if K does not fit a schedule of num_steps (T) steps."""
        if self.start_step > num_steps:
            raise ValueError(f"{KEY}.start_step ({self.start_step}) exceeds the Stage-2 model's T = {num_steps} steps")


@dataclass
class RefineTrace:
    """Scores (decoded-seismic MSE to d) along one search, per observation, on the CPU.

    Refinement: step i is timestep t = K-1-i.  Ablation: one step, the M' perturbations.
    kept[:, 0] is the start z0's score; kept[:, i+1] = min(kept[:, i], step_best[:, i]).
    """

    kept: torch.Tensor  # (B, steps + 1) score of the kept latent: z0, then after each step (never increases)
    step_best: torch.Tensor  # (B, steps) score of each step's best candidate (refinement: the path)


# --- decoding and scoring ----------------------------------------------------------------------


@torch.no_grad()
def score_latents(autoencoder: VQAutoencoder, z: torch.Tensor, observed: torch.Tensor,
                  batch_size: int) -> torch.Tensor:
    """Decoded-seismic MSE to the observation of each latent: z (N, C, h, w) latents (the
    autoencoder's space, not scaled), observed (N, S, T, R) -> (N,) float32, in chunks."""
    scores = [per_sample_mse(autoencoder.decode_latent_seismic(part.float()), target.float())
              for part, target in zip(z.split(batch_size), observed.split(batch_size))]
    return torch.cat(scores)


@torch.no_grad()
def best_of_candidates(autoencoder: VQAutoencoder, center: torch.Tensor, std: torch.Tensor, count: int,
                       observed: torch.Tensor, scale: float, candidate_batch: int, generator: torch.Generator,
                       device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw `count` candidates center + std * ε for each observation and keep, per
    observation, the one whose decoded seismic is closest to it.

    center: (B, C, h, w) in the scaled (diffusion) space; std: (B, 1, 1, 1); observed:
    (B, S, T, R).  The B x count candidates are flattened observation-major and handled in
    chunks of `candidate_batch`, each chunk's noise drawn in turn from `generator`.  Ties
    go to the earlier candidate.  Returns (best (B, C, h, w) scaled, its score (B,)).
    """
    batch = center.shape[0]
    best = torch.empty_like(center)  # every observation gets at least one candidate: all rows are written
    best_score = torch.full((batch,), math.inf, device=device)
    total = batch * count
    for start in range(0, total, candidate_batch):
        flat = torch.arange(start, min(start + candidate_batch, total), device=device)  # (n,)
        owner = flat // count  # (n,) the observation each candidate belongs to
        noise = draw_noise((len(flat), *center.shape[1:]), generator, device)  # (n, C, h, w)
        z = center[owner] + std[owner] * noise  # (n, C, h, w) scaled
        score = per_sample_mse(autoencoder.decode_latent_seismic(z / scale), observed[owner].float())  # (n,)
        for b in owner.unique().tolist():
            positions = torch.nonzero(owner == b).squeeze(1)
            i = positions[score[positions].argmin()]
            if score[i] < best_score[b]:
                best_score[b] = score[i]
                best[b] = z[i]
    return best, best_score


def keep_better(kept: torch.Tensor, kept_score: torch.Tensor, new: torch.Tensor,
                new_score: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per observation, `new` where its score is strictly lower, else `kept`: latents (B, C, h, w), scores (B,)."""
    better = new_score < kept_score  # (B,)
    return torch.where(better[:, None, None, None], new, kept), torch.where(better, new_score, kept_score)


# --- the two searches ---------------------------------------------------------------------------


@torch.no_grad()
def refine_latents(autoencoder: VQAutoencoder, unet: torch.nn.Module, schedule: NoiseSchedule, scale: float,
                   seismic: torch.Tensor, settings: RefineSettings, generator: torch.Generator,
                   device: torch.device | str) -> tuple[torch.Tensor, RefineTrace]:
    """Diffusion-refined latents of observations `seismic` (B, S, T, R) (see the module doc).

    Returns the kept latents (B, C, h, w) on `device`, in the autoencoder's latent space
    (divided by `scale`, what `decode_latent` takes), and the score trace (K steps).  With
    K = 0 the Stage-1 latents come back unchanged and nothing is drawn.
    """
    device = torch.device(device)
    settings.check_schedule(schedule.num_steps)
    autocast = unet_autocast(device, settings.precision)
    observed = seismic.to(device=device, dtype=torch.float32)  # (B, S, T, R)
    z0 = autoencoder.latent_for_diffusion(observed).float()  # (B, C, h, w) unscaled
    kept, kept_score = z0, score_latents(autoencoder, z0, observed, settings.candidate_batch)
    trace_kept, trace_best = [kept_score], []
    if settings.start_step > 0:
        t_start = settings.start_step - 1
        timesteps = torch.full((len(z0),), t_start, dtype=torch.long, device=device)
        z = schedule.q_sample(z0 * scale, timesteps, draw_noise(z0.shape, generator, device))  # (B, C, h, w) scaled
        for t in range(t_start, -1, -1):
            mean, std, _ = ddpm_mean_std(unet, schedule, z, t, autocast)
            if t > 0:
                z, score = best_of_candidates(autoencoder, mean, std, settings.candidates, observed, scale,
                                              settings.candidate_batch, generator, device)
            else:  # DDPM's last step adds no noise: the mean is the only candidate
                z = mean
                score = score_latents(autoencoder, mean / scale, observed, settings.candidate_batch)
            kept, kept_score = keep_better(kept, kept_score, z / scale, score)
            trace_best.append(score)
            trace_kept.append(kept_score)
    return kept, _trace(trace_kept, trace_best, len(z0))


@torch.no_grad()
def perturb_latents(autoencoder: VQAutoencoder, seismic: torch.Tensor, settings: RefineSettings,
                    generator: torch.Generator, device: torch.device | str, *,
                    scale: float = 1.0) -> tuple[torch.Tensor, RefineTrace]:
    """The ablation: M' perturbations z0 + (σ / scale) ε, keep the closest in decoded seismic
    (z0 itself is not a candidate; M' = 0 returns z0).

    σ is measured in the scaled space latent * scale, so with the Stage-2 scale factor it
    means the same as the diffusion's noise levels; with scale = 1 it is in the
    autoencoder's latent units.  Returns the kept latents (B, C, h, w) on `device` in the
    autoencoder's latent space, and the trace (z0's score, then the kept perturbation's).
    """
    device = torch.device(device)
    observed = seismic.to(device=device, dtype=torch.float32)  # (B, S, T, R)
    z0 = autoencoder.latent_for_diffusion(observed).float()  # (B, C, h, w) unscaled
    kept, kept_score = z0, score_latents(autoencoder, z0, observed, settings.candidate_batch)
    trace_kept, trace_best = [kept_score], []
    if settings.perturbations > 0:
        std = torch.full((len(z0), 1, 1, 1), float(settings.sigma), device=device)
        z, score = best_of_candidates(autoencoder, z0 * scale, std, settings.perturbations, observed, scale,
                                      settings.candidate_batch, generator, device)
        kept, kept_score = z / scale, score
        trace_best.append(score)
        trace_kept.append(kept_score)
    return kept, _trace(trace_kept, trace_best, len(z0))


def _trace(kept: list[torch.Tensor], best: list[torch.Tensor], batch: int) -> RefineTrace:
    """Stack per-step (B,) scores into a RefineTrace on the CPU."""
    step_best = torch.stack(best, dim=1).cpu() if best else torch.empty((batch, 0))
    return RefineTrace(kept=torch.stack(kept, dim=1).cpu(), step_best=step_best)


# --- the evaluation -----------------------------------------------------------------------------


def _rows_for(method: str, per_family: dict[str, dict[str, list[torch.Tensor]]]) -> list[dict]:
    """One row per family (in the order evaluated) and one for all of them together."""
    rows, everything = [], {}
    for family, columns in per_family.items():
        values = {name: torch.cat(parts).double() for name, parts in columns.items()}
        rows.append({"method": method, "family": family, "n": len(values["mae"]),
                     **{name: float(value.mean()) for name, value in values.items()}})
        for name, value in values.items():
            everything.setdefault(name, []).append(value)
    merged = {name: torch.cat(parts) for name, parts in everything.items()}
    rows.append({"method": method, "family": "all", "n": len(merged["mae"]),
                 **{name: float(value.mean()) for name, value in merged.items()}})
    return rows


def _measure(autoencoder: VQAutoencoder, z: torch.Tensor, observed: torch.Tensor,
             velocity: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Decode latents (B, C, h, w) with `decode_latent`; per-sample metrics (CPU) against
    the true velocity (B, 1, V, V) and the observation (B, S, T, R), and the decoded velocity."""
    seismic_hat, velocity_hat = autoencoder.decode_latent(z)
    velocity_hat = velocity_hat.float().cpu()
    metrics = inversion_metrics(velocity_hat, velocity)
    metrics["seismic_l2"] = per_sample_mse(seismic_hat.float(), observed).cpu()
    return metrics, velocity_hat


def _latents_for(method: str, autoencoder: VQAutoencoder, unet: torch.nn.Module, schedule: NoiseSchedule,
                 scale: float, seismic: torch.Tensor, settings: RefineSettings, generator: torch.Generator,
                 device: torch.device) -> torch.Tensor:
    """The latents (B, C, h, w) one method inverts observations (B, S, T, R) into."""
    if method == "stage1":
        return autoencoder.latent_for_diffusion(seismic).float()
    if method == "refined":
        return refine_latents(autoencoder, unet, schedule, scale, seismic, settings, generator, device)[0]
    if method == "perturbed":
        return perturb_latents(autoencoder, seismic, settings, generator, device, scale=scale)[0]
    raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")


def _check_models(autoencoder: VQAutoencoder, unet: torch.nn.Module, settings: RefineSettings,
                  schedule: NoiseSchedule) -> None:
    shape = tuple(autoencoder.config.latent_shape)
    unet_shape = (unet.config.in_channels, unet.config.image_size, unet.config.image_size)
    if unet_shape != shape:
        raise ValueError(f"the Stage-2 model generates latents {unet_shape}; the Stage-1 model's are {shape}")
    settings.check_schedule(schedule.num_steps)


def refined_indices(dataset: zarr.Group, per_family: int | None, split: str = "test") -> np.ndarray:
    """The indices of the split's samples that evaluate_refinement evaluates with this cap,
    sorted (Table 9 evaluates InversionNet on exactly these)."""
    chosen = indices_per_family(np.asarray(dataset[split]["family"][:]), per_family)
    return np.sort(np.concatenate(list(chosen.values())))


@torch.no_grad()
def evaluate_refinement(autoencoder: VQAutoencoder, unet: torch.nn.Module, schedule: NoiseSchedule, scale: float,
                        dataset: zarr.Group, settings: RefineSettings, split: str = "test",
                        per_family: int | None = None, device: str | torch.device | None = None,
                        progress: bool = True) -> tuple[dict[str, list[dict]], dict, dict]:
    """Table 9 and Table 7 on a split of the opened dataset store: invert each observed
    seismic section three ways, with the Stage-1 autoencoder and the Stage-2 model
    (load_stage2's unet, schedule and scale), both on `device`.

    - "stage1": the velocity decoded from the Stage-1 latent (Stage 1 alone);
    - "refined": `refine_latents` (the diffusion model with candidate selection);
    - "perturbed": `perturb_latents` (the ablation, σ in the Stage-2 scaled space).

    Samples: per family, the first `per_family` samples of the split (all if None) -- the
    same ones Stage 1's evaluation takes with the same cap (`indices_per_family`), so the
    rows sit beside its metrics.  Randomness: each (method, family, batch) gets its own
    CPU generator seeded by derive_seed(seed, the method's stream, family code, batch index),
    so a sample's result depends on the seed, its family, its position and
    `batch_size`, not on which other families or methods are evaluated.

    Returns (rows, info, examples):
    - rows: {method: [one row per family in FAMILIES order, then "all"]} with `COLUMNS`
      (mae, rmse, ssim: OpenFWI's metrics of the velocity in [-1, 1]; seismic_l2: mean
      over samples of the decoded seismic's MSE to the observation);
    - info (JSON-serialisable): per method n, seconds and samples_per_second (wall time of
      encoding, search and final decoding on `device`; data reading excluded), plus the
      settings, device, precision used and scale factor;
    - examples: the first sample of each family for `plot_refinement`: "family" (names)
      and velocities (n, 1, V, V) "true", "stage1", "refined", "perturbed" (CPU).
    """
    if per_family is not None and (not _is_int(per_family) or per_family < 1):
        raise ValueError(f"per_family must be a positive integer or None, got {per_family!r}")
    device = resolve_device(device)
    _check_models(autoencoder, unet, settings, schedule)
    data = dataset[split]
    chosen = indices_per_family(np.asarray(data["family"][:]), per_family)
    if not chosen:
        raise ValueError(f"{dataset}: the {split} split holds no samples")

    per_method = {method: {} for method in METHODS}  # method -> family -> column -> [per-sample tensors]
    seconds = dict.fromkeys(METHODS, 0.0)
    examples = {"family": [], **{name: [] for name in ("true", *METHODS)}}
    with tqdm(total=sum(len(index) for index in chosen.values()), desc=f"refine ({split})", unit="sample",
              disable=not progress, dynamic_ncols=True) as bar:
        for family, index in chosen.items():
            bar.set_postfix_str(family)
            code = FAMILY_NAMES.index(family)
            for number, start in enumerate(range(0, len(index), settings.batch_size)):
                picked = index[start : start + settings.batch_size]
                seismic = torch.from_numpy(data["seismic"].get_orthogonal_selection((picked,))).to(device)  # (B, S, T, R)
                velocity = torch.from_numpy(data["velocity"].get_orthogonal_selection((picked,)))  # (B, 1, V, V) CPU

                for method in METHODS:
                    generator = torch.Generator().manual_seed(
                        derive_seed(settings.seed, _STREAMS[method], code, number))
                    synchronize(device)
                    began = time.perf_counter()
                    z = _latents_for(method, autoencoder, unet, schedule, scale, seismic, settings, generator, device)
                    metrics, velocity_hat = _measure(autoencoder, z, seismic, velocity)
                    synchronize(device)
                    seconds[method] += time.perf_counter() - began
                    columns = per_method[method].setdefault(family, {})
                    for name, value in metrics.items():
                        columns.setdefault(name, []).append(value)
                    if start == 0:
                        examples[method].append(velocity_hat[:1])
                if start == 0:
                    examples["family"].append(family)
                    examples["true"].append(velocity[:1])
                bar.update(len(picked))

    n = sum(len(index) for index in chosen.values())
    table = {method: _rows_for(method, per_method[method]) for method in METHODS}
    info = {
        "split": split, "per_family": per_family, "n": n, "device": str(device),
        "precision": settings.precision if unet_autocast(device, settings.precision) is not None else "fp32",
        "scale_factor": scale, "num_steps": schedule.num_steps, "settings": asdict(settings),
        "throughput": {method: {"n": n, "seconds": seconds[method],
                                "samples_per_second": n / seconds[method] if seconds[method] > 0 else None}
                       for method in METHODS},
    }
    examples = {name: (values if name == "family" else torch.cat(values)) for name, values in examples.items()}
    return table, info, examples


# --- the figure ---------------------------------------------------------------------------------


TABLE_COLUMNS = ("variant", *COLUMNS)


def refinement_tables(rows: dict[str, list[dict]], inversionnet_rows: list[dict], variant: str
                      ) -> tuple[list[dict], list[dict]]:
    """(Table 9, Table 7) of one variant, in TABLE_COLUMNS, from evaluate_refinement's rows
    and evaluate_inversionnet's (InversionNet trained on all real pairs, on refined_indices).
    Table 9 sets the refinement beside Stage 1 alone and InversionNet evaluated on exactly the
    samples refined; Table 7 beside the perturbation ablation."""
    rows = {**rows, "inversionnet": [{"method": "inversionnet", **row, "seismic_l2": float("nan")}
                                     for row in inversionnet_rows]}
    table9 = [{"variant": variant, **row} for method in ("inversionnet", "stage1", "refined") for row in rows[method]]
    table7 = [{"variant": variant, **row} for method in ("stage1", "perturbed", "refined") for row in rows[method]]
    return table9, table7


def plot_refinement(examples: dict,
                    title: str = "Inversion: Stage 1 alone, diffusion-refined, perturbation ablation") -> Figure:
    """One row per example: true velocity, Stage-1, refined and perturbed velocity (all in
    [-1, 1], one colour scale), each inversion titled with its MAE."""
    from ..plotting import plt

    panels = (("true", "true velocity"), ("stage1", "Stage 1"), ("refined", "refined"), ("perturbed", "perturbed"))
    count = len(examples["family"])
    if count == 0:
        raise ValueError("plot_refinement: no examples")
    figure, axes = plt.subplots(count, len(panels), figsize=(2.2 * len(panels) + 0.8, 2.2 * count + 0.4),
                                squeeze=False, layout="constrained")
    image = None
    for row in range(count):
        truth = examples["true"][row]  # (1, V, V)
        for column, (name, label) in enumerate(panels):
            velocity = examples[name][row]  # (1, V, V)
            ax = axes[row, column]
            image = ax.imshow(velocity[0].numpy(), cmap="viridis", vmin=-1, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if name != "true":
                label = f"{label}\nMAE {float((velocity - truth).abs().mean()):.4f}"
            ax.set_title(label, fontsize=8)
        axes[row, 0].set_ylabel(examples["family"][row], fontsize=8)
    figure.colorbar(image, ax=axes, shrink=0.6, label="velocity ([-1, 1])")
    figure.suptitle(title, fontsize=9)
    return figure
