"""The DDPM noise schedule: q(z_t | z_0), the posterior q(z_{t-1} | z_t, z_0), and the
ε-prediction training loss.

Conventions
-----------
- Timesteps are 0-based indices t = 0 .. T-1 (ADM's convention): z_t has noise level
  ᾱ_t = prod_{s<=t} (1 - β_s), so t = 0 is the least noisy step (ᾱ_0 = 1 - β_0) and
  t = T-1 the noisiest. The paper's "step t" of 1..T is index t-1 here.
- "linear" is the LDM schedule the paper uses: β linear in sqrt(β),
  β_t = (sqrt(β_start) + t/(T-1) (sqrt(β_end) - sqrt(β_start)))², so β_0 = β_start and
  β_{T-1} = β_end exactly. "linear_beta" is DDPM's plain linspace(β_start, β_end, T).
- Every table is a float64 CPU tensor, computed once. Coefficients are gathered at t and
  cast to the latent's dtype (float32) on the latent's device, so sampling arithmetic runs
  in float32 from float64-exact coefficients; only the network may run in bf16.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SCHEDULE_KINDS = ("linear", "linear_beta")
LOSSES = ("l2", "l1")
PREDICTIONS = ("eps", "v")  # what the network predicts: ε (DDPM's, the paper's) or v = sqrt(ᾱ) ε - sqrt(1 - ᾱ) z_0


def make_betas(num_steps: int, beta_start: float, beta_end: float, kind: str) -> torch.Tensor:
    """β_0 .. β_{T-1} as float64: "linear" = LDM (linear in sqrt β), "linear_beta" = DDPM."""
    if kind == "linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=torch.float64) ** 2
    if kind == "linear_beta":
        return torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
    raise ValueError(f"schedule kind must be one of {SCHEDULE_KINDS}, got {kind!r}")


class NoiseSchedule:
    """The fixed forward process of a DDPM and the closed forms derived from it."""

    def __init__(self, num_steps: int = 1000, beta_start: float = 0.0015, beta_end: float = 0.0155,
                 kind: str = "linear"):
        if num_steps < 2:
            raise ValueError(f"num_steps must be >= 2, got {num_steps}")
        if not 0 < beta_start <= beta_end < 1:
            raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
        self.num_steps, self.beta_start, self.beta_end, self.kind = num_steps, beta_start, beta_end, kind

        betas = make_betas(num_steps, beta_start, beta_end, kind)  # (T,) float64
        alphas = 1.0 - betas
        abar = torch.cumprod(alphas, dim=0)
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        self.betas, self.alphas = betas, alphas
        self.alphas_cumprod, self.alphas_cumprod_prev = abar, abar_prev
        # q(z_t | z_0) = N(sqrt(ᾱ_t) z_0, (1 - ᾱ_t) I)
        self.sqrt_alphas_cumprod = abar.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - abar).sqrt()
        # z_0 = z_t / sqrt(ᾱ_t) - sqrt(1/ᾱ_t - 1) ε
        self.sqrt_recip_alphas_cumprod = (1.0 / abar).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / abar - 1.0).sqrt()
        # q(z_{t-1} | z_t, z_0) = N(c1_t z_0 + c2_t z_t, β̃_t I), β̃_t = β_t (1 - ᾱ_{t-1}) / (1 - ᾱ_t)
        self.posterior_variance = betas * (1.0 - abar_prev) / (1.0 - abar)
        # β̃_0 = 0: its log is taken from β̃_1 (DDPM/ADM "clipped"); sampling adds no noise at t = 0
        self.posterior_log_variance_clipped = torch.log(
            torch.cat([self.posterior_variance[1:2], self.posterior_variance[1:]]))
        self.posterior_mean_coef1 = betas * abar_prev.sqrt() / (1.0 - abar)
        self.posterior_mean_coef2 = (1.0 - abar_prev) * alphas.sqrt() / (1.0 - abar)
        self.snr = abar / (1.0 - abar)  # signal-to-noise ratio of z_t: ᾱ_t / (1 - ᾱ_t)
        self._on_device: dict[tuple[str, str], torch.Tensor] = {}

    def config(self) -> dict:
        """The four numbers that fix the schedule (stored with checkpoints)."""
        return {"num_steps": self.num_steps, "beta_start": self.beta_start, "beta_end": self.beta_end,
                "kind": self.kind}

    def coef(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Table `name` at timesteps t (B,), shaped (B, 1, ..., 1) to broadcast against
        `like`, in like's dtype on like's device."""
        key = (name, str(like.device))
        table = self._on_device.get(key)
        if table is None:
            table = self._on_device[key] = getattr(self, name).to(like.device)
        values = table[t.to(like.device).long()].to(like.dtype)  # (B,)
        return values.reshape(-1, *([1] * (like.ndim - 1)))

    # -- forward process ---------------------------------------------------------------

    def q_sample(self, z0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """z_t = sqrt(ᾱ_t) z_0 + sqrt(1 - ᾱ_t) ε: a draw from q(z_t | z_0) given ε."""
        return self.coef("sqrt_alphas_cumprod", t, z0) * z0 + self.coef("sqrt_one_minus_alphas_cumprod", t, z0) * noise

    def predict_z0_from_eps(self, z_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """The z_0 that, noised with ε, gives z_t (inverse of q_sample)."""
        return (self.coef("sqrt_recip_alphas_cumprod", t, z_t) * z_t
                - self.coef("sqrt_recipm1_alphas_cumprod", t, z_t) * eps)

    def predict_eps_from_z0(self, z_t: torch.Tensor, t: torch.Tensor, z0: torch.Tensor) -> torch.Tensor:
        """The ε that takes z_0 to z_t: (z_t - sqrt(ᾱ_t) z_0) / sqrt(1 - ᾱ_t)."""
        return ((self.coef("sqrt_recip_alphas_cumprod", t, z_t) * z_t - z0)
                / self.coef("sqrt_recipm1_alphas_cumprod", t, z_t))

    def v_target(self, z0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """v = sqrt(ᾱ_t) ε - sqrt(1 - ᾱ_t) z_0 (Salimans & Ho 2022): ε at low noise, -z_0 at high."""
        return self.coef("sqrt_alphas_cumprod", t, z0) * noise - self.coef("sqrt_one_minus_alphas_cumprod", t, z0) * z0

    def eps_from_v(self, z_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The ε of a v-prediction: ε = sqrt(1 - ᾱ_t) z_t + sqrt(ᾱ_t) v."""
        return self.coef("sqrt_one_minus_alphas_cumprod", t, z_t) * z_t + self.coef("sqrt_alphas_cumprod", t, z_t) * v

    def posterior(self, z0: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor):
        """Mean, variance and clipped log-variance of q(z_{t-1} | z_t, z_0) (DDPM's "fixed
        small" reverse variance)."""
        mean = self.coef("posterior_mean_coef1", t, z_t) * z0 + self.coef("posterior_mean_coef2", t, z_t) * z_t
        return (mean, self.coef("posterior_variance", t, z_t),
                self.coef("posterior_log_variance_clipped", t, z_t))

    # -- training ------------------------------------------------------------------------

    def sample_timesteps(self, batch: int, device: torch.device | str,
                         generator: torch.Generator | None = None) -> torch.Tensor:
        """t ~ Uniform{0 .. T-1}, (batch,) long, drawn from `generator` (on its device) or
        from the global RNG of `device`."""
        where = generator.device if generator is not None else device
        return torch.randint(0, self.num_steps, (batch,), generator=generator, device=where).to(device)

    def training_loss(self, model: nn.Module, z0: torch.Tensor, *, t: torch.Tensor | None = None,
                      noise: torch.Tensor | None = None, generator: torch.Generator | None = None,
                      loss: str = "l2", prediction: str = "eps", min_snr_gamma: float | None = None) -> torch.Tensor:
        """The ε-prediction loss E_{t, ε} ‖ε - ε_θ(z_t, t)‖ (mean over all elements), or with
        prediction="v" the v-prediction loss ‖v - v_θ(z_t, t)‖ (v_target). With
        `min_snr_gamma`, each sample's loss is weighted by min_snr_weight (Min-SNR-γ).

        t and ε are drawn (t uniform, ε standard normal) unless given, from `generator` if
        given (then moved to z0's device) or else from the global RNG of z0's device — the
        stream the training loop seeds and checkpoints. Call under autocast if wanted; the
        loss itself is computed in float32.
        """
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        if t is None:
            t = self.sample_timesteps(z0.shape[0], z0.device, generator)
        if noise is None:
            where = generator.device if generator is not None else z0.device
            noise = torch.randn(z0.shape, generator=generator, device=where, dtype=z0.dtype).to(z0.device)
        z_t = self.q_sample(z0, t, noise)
        output = model(z_t, t).float()
        target = (noise if prediction == "eps" else self.v_target(z0, t, noise)).float()
        if min_snr_gamma is None:
            return F.mse_loss(output, target) if loss == "l2" else F.l1_loss(output, target)
        error = (output - target).square() if loss == "l2" else (output - target).abs()
        per_sample = error.flatten(1).mean(dim=1)
        return (self.min_snr_weight(t, prediction, min_snr_gamma, per_sample) * per_sample).mean()

    def min_snr_weight(self, t: torch.Tensor, prediction: str, gamma: float, like: torch.Tensor) -> torch.Tensor:
        """Min-SNR-γ's loss weight at timesteps t (Hang et al., ICCV 2023): the loss on z_0
        weighted by min(SNR_t, γ) instead of SNR_t (ε's loss) or SNR_t + 1 (v's), so that the
        many nearly noise-free steps, whose targets are easy, stop dominating the gradient:
        min(SNR_t, γ) / SNR_t for ε, min(SNR_t, γ) / (SNR_t + 1) for v. Shaped like `like`."""
        if gamma <= 0:
            raise ValueError(f"min_snr_gamma must be positive, got {gamma}")
        snr = self.coef("snr", t, like)
        return snr.clamp(max=gamma) / (snr if prediction == "eps" else snr + 1.0)


class EpsFromV(nn.Module):
    """A v-prediction network seen as the ε-prediction network every sampler takes."""

    def __init__(self, model: nn.Module, schedule: NoiseSchedule):
        super().__init__()
        self.model, self.schedule = model, schedule

    @property
    def config(self):
        return self.model.config

    def forward(self, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.schedule.eps_from_v(z_t.float(), t, self.model(z_t, t).float())
