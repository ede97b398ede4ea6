"""Stage 2's diffusion process, separate from the network that learns it: the noise
schedule with its closed forms and the ε-prediction loss (:mod:`.schedule`), and the
reverse-process samplers, DDPM, DDIM and DPM-Solver++(2M) (:mod:`.samplers`)."""

from .samplers import (
    SampleResult,
    ddim_sample,
    ddim_timesteps,
    ddpm_mean_std,
    ddpm_sample,
    dpm_solver_sample,
    draw_noise,
    predict_eps,
    run_sampler,
    synchronize,
    unet_autocast,
)
from .schedule import LOSSES, SCHEDULE_KINDS, NoiseSchedule, make_betas

__all__ = [
    "LOSSES", "SCHEDULE_KINDS", "NoiseSchedule", "SampleResult", "ddim_sample", "ddim_timesteps", "ddpm_mean_std",
    "ddpm_sample", "dpm_solver_sample", "draw_noise", "make_betas", "predict_eps", "run_sampler", "synchronize", "unet_autocast",
]
