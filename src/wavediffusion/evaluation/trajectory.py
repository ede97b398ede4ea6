"""The paper's central experiment: the PDE deviation along the diffusion process.

docs/trajectory.md says how it works and why."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import zarr
from tqdm import tqdm

from ..config import only_known
from ..data.transforms import Representation
from ..diffusion import NoiseSchedule, ddpm_sample, run_sampler, synchronize, unet_autocast
from ..diffusion.samplers import SAMPLER_LABELS
from ..physics.forward import BACKENDS
from ..seeds import Stream, derive_seed
from .stage1 import TABLE5_COLUMNS, decode_and_check, deviation_row, plot_examples, random_training_latents

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DEVIATION_COLUMNS = ("step", "direction", "mean", "std", "n")
DDIM_COLUMNS = ("sampler", "steps", "eta", "n", "mean", "std", "seconds_per_sample")  # eta: DDIM's only
CLEAN_STEP = -1  # the noise-free end of the process (ᾱ = 1) in deviation.csv
PRECISIONS = ("bf16", "fp32")
KEY = "stage2.trajectory"
# one independent random stream per part of the experiment
_STREAMS = {"forward": Stream.TRAJECTORY_FORWARD, "start": Stream.TRAJECTORY_START, "ddpm": Stream.TRAJECTORY_DDPM,
            "ddim": Stream.TRAJECTORY_DDIM}


@dataclass(frozen=True)
class TrajectorySettings:
    """config.yaml `stage2.trajectory`; the defaults follow the paper where it says."""

    n_forward: int = 13_200  # training latents noised along the grid (paper: 13.2k)
    n_backward: int = 1000  # DDPM samples from pure noise, decoded along the grid
    steps: tuple[int, ...] = (0, 100, 200, 300, 400, 500, 600, 700, 800, 900, 999)  # 0-based t, in [0, T-1]
    ddim_steps: tuple[int, ...] = (10, 25, 50, 100)  # DDIM settings, each in [1, T], run at every η of ddim_etas
    ddim_etas: tuple[float, ...] = (0.0, 1.0)  # 0: deterministic (the ODE); 1: stochastic, DDPM's noise on DDIM's grid
    dpm_solver_steps: tuple[int, ...] = (10, 20)  # DPM-Solver++(2M) settings, each in [2, T]; may be empty
    n_ddim: int = 1000  # samples per DDIM and per DPM-Solver++ setting
    batch_size: int = 64  # sampler, decoder and simulator batch
    backend: str = "deepwave"  # forward operator of the deviation: physics.backend, given by the rule
    precision: str = "bf16"  # the UNet under autocast on a GPU: "bf16" | "fp32" (CPU: always fp32)
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "ddim_steps", "dpm_solver_steps"):
            values = getattr(self, name)
            if isinstance(values, (int, str)) or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                                         for v in values):
                raise ValueError(f"{KEY}.{name} must be a list of integers, got {values!r}")
            if len(values) == 0 and name != "dpm_solver_steps":
                raise ValueError(f"{KEY}.{name} must not be empty")
            if len(set(values)) != len(values):
                raise ValueError(f"{KEY}.{name} has repeated values: {list(values)}")
            object.__setattr__(self, name, tuple(sorted(int(v) for v in values)))
        etas = self.ddim_etas
        if isinstance(etas, (int, float, str)) or not etas or not all(
                isinstance(e, (int, float)) and not isinstance(e, bool) and 0 <= e <= 1 for e in etas):
            raise ValueError(f"{KEY}.ddim_etas must be a non-empty list of numbers in [0, 1], got {etas!r}")
        if len(set(etas)) != len(etas):
            raise ValueError(f"{KEY}.ddim_etas has repeated values: {list(etas)}")
        object.__setattr__(self, "ddim_etas", tuple(sorted(float(e) for e in etas)))
        if self.steps[0] < 0:
            raise ValueError(f"{KEY}.steps must be timesteps in [0, T-1], got {list(self.steps)}")
        if self.ddim_steps[0] < 1:
            raise ValueError(f"{KEY}.ddim_steps must be at least 1, got {list(self.ddim_steps)}")
        if self.dpm_solver_steps and self.dpm_solver_steps[0] < 2:
            raise ValueError(f"{KEY}.dpm_solver_steps must be at least 2 (one step is DDIM's), "
                             f"got {list(self.dpm_solver_steps)}")
        for name in ("n_forward", "n_backward", "n_ddim", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{KEY}.{name} must be at least 1, got {getattr(self, name)}")
        if self.backend not in BACKENDS:
            raise ValueError(f"physics.backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"{KEY}.precision must be one of {PRECISIONS}, got {self.precision!r}")

    @classmethod
    def from_dict(cls, values: dict) -> TrajectorySettings:
        """From the config's dict, rejecting unknown keys (naming stage2.trajectory)."""
        return cls(**only_known(values, cls, KEY))

    def check_schedule(self, num_steps: int) -> None:
        """Raise if a grid step or a sampler setting does not fit a schedule of num_steps (T)."""
        outside = [t for t in self.steps if t > num_steps - 1]
        if outside:
            raise ValueError(f"{KEY}.steps {outside} lie outside [0, {num_steps - 1}] "
                             f"(the Stage-2 model has T = {num_steps} steps)")
        for name in ("ddim_steps", "dpm_solver_steps"):
            too_many = [k for k in getattr(self, name) if k > num_steps]
            if too_many:
                raise ValueError(f"{KEY}.{name} {too_many} exceed the Stage-2 model's T = {num_steps} steps")


# --- small pieces -----------------------------------------------------------------------------


def _generator(seed: int, stream: str) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, _STREAMS[stream]))


def _stats(deviation: torch.Tensor) -> dict:
    return {"mean": float(deviation.mean()), "std": float(deviation.std()) if len(deviation) > 1 else 0.0,
            "n": len(deviation)}


def _check_table5(rows: list[dict], variant: str) -> None:
    """Stage 1's table5.csv rows must be evaluate_stage1's, of this autoencoder."""
    columns = next((tuple(row) for row in rows if tuple(row) != TABLE5_COLUMNS), None)
    if columns is not None:
        raise ValueError(f"Stage 1's table5.csv: columns {list(columns)}, expected {list(TABLE5_COLUMNS)} "
                         "(evaluate_stage1's table5.csv)")
    others = sorted({row["variant"] for row in rows} - {variant})
    if others:
        raise ValueError(f"Stage 1's table5.csv: rows of variant(s) {others}, but the Stage-1 model is {variant!r}")


def _check_inputs(autoencoder, unet, scale: float, latents_root: zarr.Group, stage1_sha256: str) -> None:
    """The three artifacts belong together: same latent shape, same autoencoder, same scale."""
    shape = tuple(latents_root["train"]["latent"].shape[1:])
    if shape != tuple(autoencoder.config.latent_shape):
        raise ValueError(f"the latents store holds latents {shape} but the Stage-1 model's are "
                         f"{autoencoder.config.latent_shape}")
    unet_shape = (unet.config.in_channels, unet.config.image_size, unet.config.image_size)
    if unet_shape != shape:
        raise ValueError(f"the Stage-2 model generates latents {unet_shape}; the store holds {shape}")
    recorded = latents_root.attrs.get("model_sha256")
    if recorded and recorded != stage1_sha256:
        raise ValueError(f"the latents store was encoded by another Stage-1 model (sha256 {recorded}) than this one "
                         f"({stage1_sha256})")
    std = float(latents_root.attrs["stats"]["train"]["std"])
    if scale != 1.0 and not math.isclose(scale, 1.0 / std, rel_tol=1e-4):
        raise ValueError(f"the Stage-2 model's scale factor {scale:.6g} is neither 1 nor 1/std of these latents "
                         f"({1.0 / std:.6g}): it was trained on other latents")


# --- the three measurements -------------------------------------------------------------------


def forward_deviation(autoencoder, schedule: NoiseSchedule, scale: float, latents_root, rep: Representation,
                      settings: TrajectorySettings, progress: bool = True) -> dict[int, torch.Tensor]:
    """{step: per-sample deviation} of noised training latents, CLEAN_STEP the clean ones."""
    generator = _generator(settings.seed, "forward")
    z0_all = random_training_latents(latents_root["train"]["latent"], settings.n_forward, generator)
    order = [*sorted(settings.steps, reverse=True), CLEAN_STEP]
    parts: dict[int, list[torch.Tensor]] = {t: [] for t in order}
    with tqdm(total=len(z0_all) * len(order), desc="forward (noised training latents)", unit="decode",
              disable=not progress, dynamic_ncols=True) as bar:
        for z0 in z0_all.split(settings.batch_size):
            noise = torch.randn(z0.shape, generator=generator)
            for t in order:
                if t == CLEAN_STEP:
                    z = z0
                else:
                    timesteps = torch.full((len(z0),), t, dtype=torch.long)
                    z = schedule.q_sample(z0 * scale, timesteps, noise) / scale
                decoded = decode_and_check(autoencoder, z, rep, settings.backend, settings.batch_size,
                                           desc="", progress=False)
                parts[t].append(decoded["deviation"])
                bar.update(len(z0))
    return {t: torch.cat(values) for t, values in parts.items()}


def _start_noise(shape: tuple[int, ...], n: int, settings: TrajectorySettings) -> torch.Tensor:
    """The z_{T-1} ~ N(0, I) of samples 0..n-1, shared by the DDPM and every DDIM run."""
    return torch.randn((n, *shape), generator=_generator(settings.seed, "start"))


def backward_deviation(autoencoder, unet, schedule: NoiseSchedule, scale: float, start: torch.Tensor,
                       rep: Representation, settings: TrajectorySettings, device: torch.device,
                       progress: bool = True) -> tuple[dict[int, torch.Tensor], list[dict], float, torch.Tensor]:
    """DDPM from pure noise: ({step: per-sample deviation}, the first sample's decoded pairs
    per step (for the strip), sampling seconds per sample, the final latents (unscaled))."""
    generator = _generator(settings.seed, "ddpm")
    autocast = unet_autocast(device, settings.precision)
    T = schedule.num_steps
    order = [*sorted(settings.steps, reverse=True), CLEAN_STEP]
    parts: dict[int, list[torch.Tensor]] = {t: [] for t in order}
    example: list[dict] = []
    finals: list[torch.Tensor] = []
    seconds = 0.0
    batches = start.split(settings.batch_size)
    with tqdm(total=len(batches) * T, desc="backward (DDPM)", unit="step", disable=not progress,
              dynamic_ncols=True) as bar:
        for index, batch in enumerate(batches):
            synchronize(device)
            began = time.perf_counter()
            result = ddpm_sample(unet, schedule, generator=generator, device=device, start=(batch, T - 1),
                                 record_at=settings.steps, callback=lambda *_: bar.update(1), autocast=autocast)
            synchronize(device)
            seconds += time.perf_counter() - began
            finals.append(result.z0.float().cpu() / scale)
            for t in order:
                z = result.z0.float().cpu() if t == CLEAN_STEP else result.states[t]
                decoded = decode_and_check(autoencoder, z / scale, rep, settings.backend, settings.batch_size,
                                           desc="", progress=False)
                parts[t].append(decoded["deviation"])
                if index == 0:  # the first sample of the first batch, for the strip
                    title = "final sample" if t == CLEAN_STEP else f"t={t}"
                    example.append({"seismic": decoded["seismic"][0], "velocity": decoded["velocity"][0],
                                    "simulated": decoded["simulated"][0], "title": title, "step": t})
    return {t: torch.cat(values) for t, values in parts.items()}, example, seconds / len(start), torch.cat(finals)


def ode_deviation(autoencoder, unet, schedule: NoiseSchedule, scale: float, start: torch.Tensor, sampler: str,
                  num_steps: int, eta: float, rep: Representation, settings: TrajectorySettings, device: torch.device,
                  progress: bool = True) -> tuple[torch.Tensor, float, torch.Tensor]:
    """(per-sample deviation of the final samples of `sampler` ("ddim" at η = eta, or "dpmpp2m")
    with num_steps steps, sampling seconds per sample, the final latents (unscaled))."""
    generator = _generator(settings.seed, "ddim")  # draws only for DDIM with η > 0
    autocast = unet_autocast(device, settings.precision)
    T = schedule.num_steps
    deviations, finals, seconds = [], [], 0.0
    batches = start.split(settings.batch_size)
    with tqdm(total=len(batches) * num_steps, desc=sampler_label(sampler, num_steps, eta), unit="step",
              disable=not progress, dynamic_ncols=True) as bar:
        for batch in batches:
            synchronize(device)
            began = time.perf_counter()
            result = run_sampler(sampler, unet, schedule, num_steps=num_steps, eta=eta, generator=generator,
                                 device=device,
                                 start=(batch, T - 1), callback=lambda *_: bar.update(1), autocast=autocast)
            synchronize(device)
            seconds += time.perf_counter() - began
            finals.append(result.z0.float().cpu() / scale)
            decoded = decode_and_check(autoencoder, finals[-1], rep, settings.backend,
                                       settings.batch_size, desc="", progress=False)
            deviations.append(decoded["deviation"])
    return torch.cat(deviations), seconds / len(start), torch.cat(finals)


def sampler_key(sampler: str, steps: int, eta: float = 0.0) -> str:
    """A sampler setting's name in final_latents.npz: "ddpm-1000", "ddim-50", "ddim-50-eta1",
    "dpmpp2m-20" (η only where it is not 0, and only DDIM has one)."""
    return f"{sampler}-{steps}" + (f"-eta{eta:g}" if eta else "")


def split_key(key: str) -> tuple[str, int, float]:
    """sampler_key's inverse: "ddim-50-eta1" -> ("ddim", 50, 1.0)."""
    sampler, steps, *eta = key.split("-")
    return sampler, int(steps), float(eta[0][len("eta"):]) if eta else 0.0


def sampler_label(sampler: str, steps: int, eta: float = 0.0) -> str:
    """What tables and figures call a setting: "DDIM-50 η=1"."""
    return f"{SAMPLER_LABELS[sampler]}-{steps}" + (f" η={eta:g}" if eta else "")


# --- figures ------------------------------------------------------------------------------------

MARKERS = {"ddim": "s-", "dpmpp2m": "^-", "ddpm": "D"}  # stochastic DDIM: "o-"


def row_eta(row: dict) -> float:
    """The η of a ddim.csv-like row (read back or in memory); empty (not DDIM) reads as 0."""
    return float(row["eta"]) if row.get("eta") not in (None, "") else 0.0


def sampler_series(rows: list[dict]) -> list[tuple[str, float, str, str]]:
    """(sampler, η, marker, label) of each distinct sampler setting in ddim.csv-like rows,
    for the figures."""
    settings = sorted({(r["sampler"], row_eta(r)) for r in rows})
    return [(sampler, eta, "o-" if eta else MARKERS[sampler], SAMPLER_LABELS[sampler] + (f" η={eta:g}" if eta else ""))
            for sampler, eta in settings]


def same_setting(row: dict, sampler: str, eta: float) -> bool:
    return row["sampler"] == sampler and row_eta(row) == eta


def plot_trajectory(deviation_rows: list[dict], ddim_rows: list[dict], stage1_rows: list[dict],
                    num_steps: int) -> Figure:
    """Fig. 5: deviation against t, forward and backward, and the final deviation per sampler."""
    from matplotlib.ticker import NullLocator

    from ..plotting import plt

    figure, (ax, ax_steps) = plt.subplots(1, 2, figsize=(11, 4), width_ratios=(2, 1), layout="constrained")
    styles = {"forward": ("tab:blue", "forward: noised training latents"),
              "backward": ("tab:red", "backward: DDPM from pure noise")}
    for direction, (colour, label) in styles.items():
        rows = sorted((r for r in deviation_rows if r["direction"] == direction), key=lambda r: r["step"])
        x = np.array([r["step"] for r in rows])
        mean = np.array([r["mean"] for r in rows])
        std = np.array([r["std"] for r in rows])
        ax.plot(x, mean, "o-", color=colour, label=label, markersize=3)
        ax.fill_between(x, mean - std, mean + std, color=colour, alpha=0.2, linewidth=0)
    references = {"train_reconstruction": ("k", "Stage 1: decoded training latents"),
                  "random_gaussian": ("tab:gray", "Stage 1: random Gaussian latents")}
    for row in stage1_rows:
        if row["latents"] in references and not row["weight"]:
            colour, label = references[row["latents"]]
            for axis in (ax, ax_steps):
                axis.axhline(float(row["deviation_mean"]), color=colour, linestyle="--", linewidth=1,
                             label=label if axis is ax else None)
    ax.set_xlim(num_steps - 1 + 0.02 * num_steps, CLEAN_STEP - 0.02 * num_steps)  # reversed: noise -> data
    ax.set_xlabel(f"diffusion step t (0-based, T = {num_steps}; {CLEAN_STEP} = noise-free end)")
    ax.set_ylabel("PDE deviation (MSE, [-1, 1] space)")
    ax.set_title("deviation along the diffusion process (mean ± std)", fontsize=10)
    ax.legend(fontsize=8)

    for sampler, eta, marker, label in sampler_series(ddim_rows):
        rows = sorted((r for r in ddim_rows if same_setting(r, sampler, eta)), key=lambda r: r["steps"])
        ax_steps.errorbar([r["steps"] for r in rows], [r["mean"] for r in rows], yerr=[r["std"] for r in rows],
                          fmt=marker, capsize=3, markersize=4, label=label)
    ax_steps.set_xscale("log")
    ax_steps.set_xticks(sorted({r["steps"] for r in ddim_rows}), [str(r) for r in sorted({r["steps"] for r in ddim_rows})])
    ax_steps.xaxis.set_minor_locator(NullLocator())
    ax_steps.set_xlabel("sampler steps")
    ax_steps.set_title("final samples: deviation vs steps", fontsize=10)
    ax_steps.legend(fontsize=8)
    return figure


def strip_examples(example: list[dict], count: int = 5) -> list[dict]:
    """About `count` grid steps of one backward trajectory (evenly spaced), plus its final sample."""
    grid, final = example[:-1], example[-1:]
    if len(grid) > count:
        grid = [grid[i] for i in sorted(set(np.linspace(0, len(grid) - 1, count).round().astype(int).tolist()))]
    return grid + final


# --- the rule's one call ---------------------------------------------------------------------


@dataclass
class TrajectoryResult:
    """What diffusion_trajectory measured and drew."""

    deviation: list[dict]  # DEVIATION_COLUMNS: the deviation along both chains
    table5: list[dict]  # TABLE5_COLUMNS: Stage 1's rows, then each sampler's final samples
    ddim: list[dict]  # DDIM_COLUMNS: each sampler setting's final deviation and speed
    figure: Figure  # Fig. 5 (plot_trajectory)
    strip_figure: Figure  # one reverse trajectory, decoded (Fig. 4)
    # each sampler setting's final latents (float32, unscaled: what the Stage-1 decoders take), under
    # sampler_key: the FID of each sampler (rule sampler_fid) decodes them
    final_latents: dict[str, np.ndarray]


def diffusion_trajectory(autoencoder, unet, schedule: NoiseSchedule, scale: float, latents_root: zarr.Group,
                         stage1_sha256: str, stage1_rows: list[dict], rep: Representation,
                         settings: TrajectorySettings, device: torch.device,
                         progress: bool = True) -> TrajectoryResult:
    """Run the forward, backward, DDIM and DPM-Solver++ measurements.

    autoencoder: the Stage-1 model (its weights file's sha256 `stage1_sha256`); unet, schedule,
    scale: load_stage2's; latents_root: the latents store; stage1_rows: Stage 1's table5.csv;
    rep: the representation the deviation is measured in (the dataset store's).
    """
    settings.check_schedule(schedule.num_steps)
    _check_inputs(autoencoder, unet, scale, latents_root, stage1_sha256)
    variant = autoencoder.config.variant
    _check_table5(stage1_rows, variant)

    forward = forward_deviation(autoencoder, schedule, scale, latents_root, rep, settings, progress)
    shape = tuple(latents_root["train"]["latent"].shape[1:])
    start = _start_noise(shape, max(settings.n_backward, settings.n_ddim), settings)
    backward, example, ddpm_seconds, ddpm_latents = backward_deviation(autoencoder, unet, schedule, scale,
                                                         start[: settings.n_backward], rep, settings, device, progress)
    ode_settings = [*(("ddim", k, eta) for eta in settings.ddim_etas for k in settings.ddim_steps),
                    *(("dpmpp2m", k, 0.0) for k in settings.dpm_solver_steps)]
    ode = {(sampler, k, eta): ode_deviation(autoencoder, unet, schedule, scale, start[: settings.n_ddim], sampler, k,
                                            eta, rep, settings, device, progress)
           for sampler, k, eta in ode_settings}

    deviation_rows = [{"step": t, "direction": direction, **_stats(values)}
                      for direction, per_step in (("forward", forward), ("backward", backward))
                      for t, values in per_step.items()]
    final = backward[CLEAN_STEP]
    ddim_rows = [{"sampler": sampler, "steps": k, "eta": eta if sampler == "ddim" else "", **_stats(values),
                  "seconds_per_sample": seconds}
                 for (sampler, k, eta), (values, seconds, _) in ode.items()]
    ddim_rows.append({"sampler": "ddpm", "steps": schedule.num_steps, "eta": "", **_stats(final),
                      "seconds_per_sample": ddpm_seconds})
    table5_rows = [*stage1_rows, deviation_row(variant, "diffusion_ddpm", None, final),
                   *(deviation_row(variant, "diffusion_" + sampler_key(sampler, k, eta).replace("-", "_"), None, values)
                     for (sampler, k, eta), (values, _, _) in ode.items())]

    finals = {sampler_key("ddpm", schedule.num_steps): ddpm_latents,
              **{sampler_key(sampler, k, eta): latents for (sampler, k, eta), (_, _, latents) in ode.items()}}
    return TrajectoryResult(
        deviation=deviation_rows, table5=table5_rows, ddim=ddim_rows,
        figure=plot_trajectory(deviation_rows, ddim_rows, stage1_rows, schedule.num_steps),
        strip_figure=plot_examples(strip_examples(example), rep, title="One reverse-diffusion trajectory, decoded"),
        final_latents={key: latents.numpy().astype(np.float32) for key, latents in finals.items()})
