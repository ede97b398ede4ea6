"""Reverse-process samplers for an ε-prediction model: DDPM (the paper's), DDIM and
DPM-Solver++(2M).

All take any `model(z_t, t) -> ε` and a NoiseSchedule. Timesteps are the schedule's 0-based
indices: a run starts from z_{T-1} ~ N(0, I) (or from `start=(z_t, t_start)`) and returns z_0.
Every draw comes from the passed torch.Generator, in a fixed order; the update arithmetic is
float32 with float64 coefficients; `ddpm_mean_std` gives a DDPM step before its noise.
Details: docs/trajectory.md, 'The samplers' conventions'.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm import tqdm

from .schedule import NoiseSchedule

Callback = Callable[[int, torch.Tensor, torch.Tensor], None]
Autocast = Callable[[], contextlib.AbstractContextManager]


@dataclass
class SampleResult:
    """The final sample and what was recorded along the way (CPU tensors, keyed by t)."""

    z0: torch.Tensor  # (B, C, H, W) on the sampling device
    states: dict[int, torch.Tensor] = field(default_factory=dict)  # z_t as it entered step t
    z0_preds: dict[int, torch.Tensor] = field(default_factory=dict)  # the model's z_0 estimate at step t


def unet_autocast(device: torch.device, precision: str) -> Autocast | None:
    """The `autocast` argument of the samplers for a device and a precision setting:
    bf16 autocast for the UNet on a GPU when precision is "bf16", else none (fp32)."""
    if device.type == "cuda" and precision == "bf16":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return None


def synchronize(device: torch.device) -> None:
    """Wait for the GPU (for wall-clock timings); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def draw_noise(shape: Sequence[int], generator: torch.Generator, device: torch.device | str) -> torch.Tensor:
    """Standard normal float32 noise from `generator` (on its device), moved to `device`."""
    return torch.randn(tuple(shape), generator=generator, device=generator.device).to(device)


def predict_eps(model: nn.Module, z_t: torch.Tensor, t: int, autocast: Autocast | None = None) -> torch.Tensor:
    """ε_θ(z_t, t) for a whole batch at one timestep, in float32."""
    timesteps = torch.full((z_t.shape[0],), t, dtype=torch.long, device=z_t.device)
    with autocast() if autocast is not None else contextlib.nullcontext():
        eps = model(z_t, timesteps)
    return eps.float()


def _start(schedule: NoiseSchedule, shape, start, generator, device) -> tuple[torch.Tensor, int]:
    """(z, t) to start from: the given one, or pure noise at t = T-1."""
    if start is not None:
        z, t_start = start
        if not 0 <= t_start < schedule.num_steps:
            raise ValueError(f"t_start must be in [0, {schedule.num_steps - 1}], got {t_start}")
        return z.to(device=device, dtype=torch.float32), int(t_start)
    if shape is None:
        raise ValueError("give either a shape (start from pure noise) or start=(z_t, t_start)")
    return draw_noise(shape, generator, device), schedule.num_steps - 1


def _device(device, start) -> torch.device:
    if device is not None:
        return torch.device(device)
    return start[0].device if start is not None else torch.device("cpu")


class _Recorder:
    """Calls the user's callback and keeps the requested steps' tensors."""

    def __init__(self, record_at: Iterable[int], visited: Sequence[int], callback: Callback | None):
        self.record_at = {int(t) for t in record_at}
        missing = sorted(self.record_at - set(visited))
        if missing:
            raise ValueError(f"record_at steps {missing} are not visited by this sampler "
                             f"(it visits {len(visited)} steps from {visited[0]} to {visited[-1]})")
        self.callback = callback
        self.states: dict[int, torch.Tensor] = {}
        self.z0_preds: dict[int, torch.Tensor] = {}

    def __call__(self, t: int, z_t: torch.Tensor, z0_pred: torch.Tensor) -> None:
        if self.callback is not None:
            self.callback(t, z_t, z0_pred)
        if t in self.record_at:
            self.states[t] = z_t.detach().cpu()
            self.z0_preds[t] = z0_pred.detach().cpu()


# ---------------------------------------------------------------------------------------
# DDPM


@torch.no_grad()
def ddpm_mean_std(model: nn.Module, schedule: NoiseSchedule, z_t: torch.Tensor, t: int,
                  autocast: Autocast | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One DDPM reverse step before its noise: p(z_{t-1} | z_t) = N(mean, std²) with the
    posterior q(z_{t-1} | z_t, ẑ_0) at the model's ẑ_0 and DDPM's "fixed small" variance
    β̃_t (zero at t = 0). Returns (mean, std, ẑ_0); std is (B, 1, 1, 1)."""
    eps = predict_eps(model, z_t, t, autocast)
    timesteps = torch.full((z_t.shape[0],), t, dtype=torch.long, device=z_t.device)
    z0_pred = schedule.predict_z0_from_eps(z_t, timesteps, eps)
    mean, variance, _ = schedule.posterior(z0_pred, z_t, timesteps)
    return mean, variance.sqrt(), z0_pred


@torch.no_grad()
def ddpm_sample(model: nn.Module, schedule: NoiseSchedule, shape: Sequence[int] | None = None, *,
                generator: torch.Generator, device: torch.device | str | None = None,
                start: tuple[torch.Tensor, int] | None = None, record_at: Iterable[int] = (),
                callback: Callback | None = None, autocast: Autocast | None = None,
                progress: bool = False) -> SampleResult:
    """DDPM ancestral sampling: z_{t-1} = mean + std · ε for t = t_start .. 0 (no noise at
    t = 0), from pure noise of `shape` or from `start=(z_t, t_start)`."""
    device = _device(device, start)
    z, t_start = _start(schedule, shape, start, generator, device)
    steps = list(range(t_start, -1, -1))
    recorder = _Recorder(record_at, steps, callback)
    for t in tqdm(steps, desc="DDPM", disable=not progress, dynamic_ncols=True):
        mean, std, z0_pred = ddpm_mean_std(model, schedule, z, t, autocast)
        recorder(t, z, z0_pred)
        z = mean + std * draw_noise(z.shape, generator, device) if t > 0 else mean
    return SampleResult(z, recorder.states, recorder.z0_preds)


# ---------------------------------------------------------------------------------------
# DDIM


def ddim_timesteps(t_start: int, num_steps: int) -> list[int]:
    """The DDIM visiting order: `num_steps` timesteps evenly spaced from t_start down to 0,
    both included, rounded half up (t_i = floor(t_start · (1 - i/(n-1)) + 0.5)).

    Starting at t_start = T-1 (not LDM's 0, c, 2c, … grid, which starts below T-1) keeps
    the first step's noise level equal to that of the pure-noise start, and with
    num_steps = T every step is visited, so DDIM with η = 1 then is DDPM. One step visits
    t_start only.
    """
    if not 1 <= num_steps <= t_start + 1:
        raise ValueError(f"num_steps must be in [1, {t_start + 1}] for t_start = {t_start}, got {num_steps}")
    if num_steps == 1:
        return [t_start]
    steps = [int(t_start * (1 - i / (num_steps - 1)) + 0.5) for i in range(num_steps)]
    assert len(set(steps)) == num_steps, steps
    return steps


@torch.no_grad()
def ddim_sample(model: nn.Module, schedule: NoiseSchedule, shape: Sequence[int] | None = None, *,
                num_steps: int, eta: float = 0.0, generator: torch.Generator,
                device: torch.device | str | None = None, start: tuple[torch.Tensor, int] | None = None,
                record_at: Iterable[int] = (), callback: Callback | None = None,
                autocast: Autocast | None = None, progress: bool = False) -> SampleResult:
    """DDIM (Song et al. 2021) over `ddim_timesteps(t_start, num_steps)`.

    From t to the next visited step s (ᾱ_s = 1 after the last step):
    z_s = sqrt(ᾱ_s) ẑ_0 + sqrt(1 - ᾱ_s - σ²) ε_θ + σ ε',
    σ = η sqrt((1 - ᾱ_s) / (1 - ᾱ_t)) sqrt(1 - ᾱ_t / ᾱ_s). η = 0 is deterministic given the
    start; η = 1 with every step visited is DDPM. Noise is drawn only when η > 0.
    """
    device = _device(device, start)
    z, t_start = _start(schedule, shape, start, generator, device)
    steps = ddim_timesteps(t_start, num_steps)
    recorder = _Recorder(record_at, steps, callback)
    abar = schedule.alphas_cumprod
    for i, t in enumerate(tqdm(steps, desc=f"DDIM-{num_steps}", disable=not progress, dynamic_ncols=True)):
        eps = predict_eps(model, z, t, autocast)
        timesteps = torch.full((z.shape[0],), t, dtype=torch.long, device=device)
        z0_pred = schedule.predict_z0_from_eps(z, timesteps, eps)
        recorder(t, z, z0_pred)
        a_t = abar[t].item()
        a_s = abar[steps[i + 1]].item() if i + 1 < len(steps) else 1.0  # float64 scalars
        sigma = eta * ((1 - a_s) / (1 - a_t) * (1 - a_t / a_s)) ** 0.5
        z = a_s**0.5 * z0_pred + max(1 - a_s - sigma**2, 0.0) ** 0.5 * eps
        if sigma > 0:
            z = z + sigma * draw_noise(z.shape, generator, device)
    return SampleResult(z, recorder.states, recorder.z0_preds)


# ---------------------------------------------------------------------------------------
# DPM-Solver++(2M)


@torch.no_grad()
def dpm_solver_sample(model: nn.Module, schedule: NoiseSchedule, shape: Sequence[int] | None = None, *,
                      num_steps: int, generator: torch.Generator, device: torch.device | str | None = None,
                      start: tuple[torch.Tensor, int] | None = None, record_at: Iterable[int] = (),
                      callback: Callback | None = None, autocast: Autocast | None = None,
                      progress: bool = False) -> SampleResult:
    """DPM-Solver++(2M) (Lu et al. 2022): the multistep second-order solver of the diffusion
    ODE in its data-prediction form, over `ddim_timesteps(t_start, num_steps)` with one model
    call per visited step, as DDIM (η = 0), of which it is the second-order correction.

    With α = sqrt(ᾱ), σ = sqrt(1 - ᾱ), λ = log(α / σ), from t to the next visited step s
    (h = λ_s - λ_t): z_s = (σ_s / σ_t) z_t + α_s (1 - e^{-h}) D, where D is the model's ẑ_0
    at t, corrected with the previous step's (r = h_previous / h):
    D = (1 + 1/(2r)) ẑ_0(t) - 1/(2r) ẑ_0(previous). The first step has no previous ẑ_0 and
    the last (to ᾱ = 1, λ = ∞) returns ẑ_0 itself: both are DDIM steps. Deterministic given
    the start; `generator` draws only the pure-noise start.
    """
    device = _device(device, start)
    z, t_start = _start(schedule, shape, start, generator, device)
    steps = ddim_timesteps(t_start, num_steps)
    recorder = _Recorder(record_at, steps, callback)
    abar = schedule.alphas_cumprod
    previous = None  # (ẑ_0, h) of the step before
    for i, t in enumerate(tqdm(steps, desc=f"DPM-Solver++(2M)-{num_steps}", disable=not progress,
                               dynamic_ncols=True)):
        eps = predict_eps(model, z, t, autocast)
        timesteps = torch.full((z.shape[0],), t, dtype=torch.long, device=device)
        z0_pred = schedule.predict_z0_from_eps(z, timesteps, eps)
        recorder(t, z, z0_pred)
        if i + 1 == len(steps):
            z = z0_pred
            break
        a_t, a_s = abar[t].item(), abar[steps[i + 1]].item()  # float64 scalars
        h = 0.5 * (math.log(a_s / (1 - a_s)) - math.log(a_t / (1 - a_t)))
        d = z0_pred
        if previous is not None:
            r = previous[1] / h
            d = (1 + 0.5 / r) * z0_pred - (0.5 / r) * previous[0]
        z = ((1 - a_s) / (1 - a_t)) ** 0.5 * z - a_s**0.5 * math.expm1(-h) * d
        previous = (z0_pred, h)
    return SampleResult(z, recorder.states, recorder.z0_preds)


# ---------------------------------------------------------------------------------------
# By name


SAMPLER_LABELS = {"ddpm": "DDPM", "ddim": "DDIM", "dpmpp2m": "DPM-Solver++(2M)"}  # name -> what figures call it
SAMPLERS = tuple(SAMPLER_LABELS)


def run_sampler(name: str, model: nn.Module, schedule: NoiseSchedule, shape: Sequence[int] | None = None, *,
                num_steps: int, eta: float = 0.0, **common) -> SampleResult:
    """The sampler of SAMPLERS called `name`: "ddpm" (every step from the start; num_steps
    and eta unused), "ddim" (num_steps, eta) or "dpmpp2m" (num_steps). `common`: the
    arguments all samplers take (generator, device, start, record_at, callback, autocast, progress)."""
    if name == "ddpm":
        return ddpm_sample(model, schedule, shape, **common)
    if name == "ddim":
        return ddim_sample(model, schedule, shape, num_steps=num_steps, eta=eta, **common)
    if name == "dpmpp2m":
        return dpm_solver_sample(model, schedule, shape, num_steps=num_steps, **common)
    raise ValueError(f"unknown sampler {name!r}; one of {SAMPLERS}")
