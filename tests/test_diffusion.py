"""Stage 2's diffusion process and network on CPU: schedule golden values, the closed
forms, DDPM/DDIM/DPM-Solver++ determinism and exactness with an oracle model, DPM-Solver++
against DDIM on Gaussian data, starting mid-way, and
the UNet (shapes, zero start, overfitting one batch)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wavediffusion.diffusion import (
    NoiseSchedule,
    ddim_sample,
    ddim_timesteps,
    ddpm_mean_std,
    ddpm_sample,
    dpm_solver_sample,
)
from wavediffusion.diffusion.schedule import EpsFromV
from wavediffusion.models.unet import (
    UNet,
    UNetConfig,
    count_parameters,
    timestep_embedding,
)

# ---------------------------------------------------------------------------------------
# Schedule.


def test_ldm_linear_schedule_golden_values():
    schedule = NoiseSchedule()  # the paper's: 1000 steps, 0.0015 -> 0.0155, linear in sqrt(beta)
    assert schedule.betas.dtype == torch.float64 and schedule.betas.shape == (1000,)
    assert abs(schedule.betas[0].item() - 0.0015) < 1e-12 and abs(schedule.betas[-1].item() - 0.0155) < 1e-12
    # independent recomputation with numpy
    betas = np.linspace(np.sqrt(0.0015), np.sqrt(0.0155), 1000) ** 2
    abar = np.cumprod(1.0 - betas)
    np.testing.assert_allclose(schedule.betas.numpy(), betas, rtol=1e-12)
    np.testing.assert_allclose(schedule.alphas_cumprod.numpy(), abar, rtol=1e-10)
    # literal golden values (numpy float64, 2026-11): the end of the schedule is not pure noise
    assert schedule.alphas_cumprod[-1].item() == pytest.approx(6.686651737398e-4, rel=1e-9)
    assert schedule.alphas_cumprod[499].item() == pytest.approx(0.1510774233475671, rel=1e-9)
    # the midpoint beta is the square of the mean of the square roots, not the mean
    assert schedule.betas[0].item() < schedule.betas[500].item() < (0.0015 + 0.0155) / 2


def test_plain_linear_beta_schedule():
    schedule = NoiseSchedule(kind="linear_beta")
    np.testing.assert_allclose(schedule.betas.numpy(), np.linspace(0.0015, 0.0155, 1000), rtol=1e-12)
    with pytest.raises(ValueError, match="schedule kind"):
        NoiseSchedule(kind="cosine")


def test_posterior_matches_the_ddpm_mean_in_epsilon_form():
    """q(z_{t-1}|z_t,z_0) mean = (z_t - β_t/sqrt(1-ᾱ_t) ε) / sqrt(α_t), with ε the noise that
    made z_t; variance β_t (1-ᾱ_{t-1})/(1-ᾱ_t), zero at t = 0 (its log clipped to t = 1's)."""
    schedule = NoiseSchedule()
    gen = torch.Generator().manual_seed(0)
    z0, eps = torch.randn(6, 2, 3, 3, generator=gen, dtype=torch.float64), torch.randn(6, 2, 3, 3, generator=gen, dtype=torch.float64)
    t = torch.tensor([0, 1, 10, 500, 998, 999])
    z_t = schedule.q_sample(z0, t, eps)
    mean, variance, log_variance = schedule.posterior(z0, z_t, t)
    b, a, abar = (schedule.betas[t].view(-1, 1, 1, 1), schedule.alphas[t].view(-1, 1, 1, 1),
                  schedule.alphas_cumprod[t].view(-1, 1, 1, 1))
    torch.testing.assert_close(mean, (z_t - b / (1 - abar).sqrt() * eps) / a.sqrt(), rtol=1e-10, atol=1e-10)
    assert variance[0].item() == 0.0
    assert log_variance[0].item() == pytest.approx(np.log(schedule.posterior_variance[1].item()))
    assert variance[3].item() == pytest.approx(b[3].item() * (1 - schedule.alphas_cumprod[499].item()) / (1 - abar[3].item()))


def test_q_sample_has_the_closed_form_mean_and_variance():
    schedule = NoiseSchedule()
    gen = torch.Generator().manual_seed(1)
    n, t = 200_000, 300
    z0 = torch.full((n, 1, 1, 1), 2.0)
    z_t = schedule.q_sample(z0, torch.full((n,), t), torch.randn(n, 1, 1, 1, generator=gen))
    abar = schedule.alphas_cumprod[t].item()
    assert z_t.mean().item() == pytest.approx(2.0 * abar**0.5, abs=0.01)
    assert z_t.var().item() == pytest.approx(1.0 - abar, abs=0.01)


def test_predict_z0_from_eps_inverts_q_sample():
    schedule = NoiseSchedule()
    gen = torch.Generator().manual_seed(2)
    z0, eps = torch.randn(4, 3, 5, 5, generator=gen), torch.randn(4, 3, 5, 5, generator=gen)
    t = torch.tensor([0, 100, 700, 999])
    z_t = schedule.q_sample(z0, t, eps)
    torch.testing.assert_close(schedule.predict_z0_from_eps(z_t, t, eps), z0, atol=2e-4, rtol=0)
    torch.testing.assert_close(schedule.predict_eps_from_z0(z_t, t, z0), eps, atol=2e-4, rtol=0)


def test_training_loss_is_zero_for_the_oracle_and_one_for_a_zero_model():
    schedule = NoiseSchedule()
    gen = torch.Generator().manual_seed(3)
    z0 = torch.randn(64, 2, 4, 4, generator=gen)
    t, noise = schedule.sample_timesteps(64, "cpu", gen), torch.randn(64, 2, 4, 4, generator=gen)
    z_t = schedule.q_sample(z0, t, noise)
    oracle = Oracle(schedule, z0)
    assert schedule.training_loss(oracle, z0, t=t, noise=noise).item() < 1e-8
    assert oracle.calls == 1 and torch.equal(oracle.last_z, z_t)
    zero = lambda z, t: torch.zeros_like(z)
    assert schedule.training_loss(zero, z0, generator=gen).item() == pytest.approx(1.0, abs=0.05)
    assert schedule.training_loss(zero, z0, generator=gen, loss="l1").item() == pytest.approx((2 / np.pi) ** 0.5, abs=0.05)


def test_min_snr_weights_the_z0_error_by_min_snr_gamma_for_eps_and_v_alike():
    """A model whose z_0 estimate is off by δ has ε-loss SNR_t ‖δ‖² and v-loss (SNR_t + 1) ‖δ‖²;
    Min-SNR-γ turns both into min(SNR_t, γ) ‖δ‖², and leaves the loss as it was without γ."""
    schedule = NoiseSchedule()
    gen = torch.Generator().manual_seed(7)
    z0 = torch.randn(6, 2, 4, 4, generator=gen, dtype=torch.float64)
    noise = torch.randn(6, 2, 4, 4, generator=gen, dtype=torch.float64)
    delta = 0.1 * torch.randn(6, 2, 4, 4, generator=gen, dtype=torch.float64)
    t = torch.tensor([0, 20, 150, 400, 800, 999])  # SNR from ~665 down to ~0.005

    def off_by_delta(prediction):
        def model(z_t, t):
            eps_hat = schedule.predict_eps_from_z0(z_t, t, z0 + delta)
            return eps_hat if prediction == "eps" else schedule.v_target(z0 + delta, t, eps_hat)
        return model

    snr = schedule.snr[t]
    z0_error = delta.square().flatten(1).mean(1)
    for gamma in (1.0, 5.0):
        expected = (snr.clamp(max=gamma) * z0_error).mean()
        for prediction in ("eps", "v"):
            weighted = schedule.training_loss(off_by_delta(prediction), z0, t=t, noise=noise, prediction=prediction,
                                              min_snr_gamma=gamma)
            torch.testing.assert_close(weighted, expected.float(), rtol=1e-5, atol=0)
    unweighted = schedule.training_loss(off_by_delta("v"), z0, t=t, noise=noise, prediction="v")
    torch.testing.assert_close(unweighted, ((snr + 1) * z0_error).mean().float(), rtol=1e-5, atol=0)
    with pytest.raises(ValueError, match="min_snr_gamma must be positive"):
        schedule.training_loss(off_by_delta("v"), z0, t=t, noise=noise, prediction="v", min_snr_gamma=0.0)


def test_v_prediction_target_and_its_epsilon():
    """v = sqrt(ᾱ) ε - sqrt(1 - ᾱ) z_0 turns back into ε exactly; an oracle v-model has zero loss
    and, seen through EpsFromV, is the ε oracle, so every sampler recovers z_0 from it."""
    schedule = NoiseSchedule()
    gen = torch.Generator().manual_seed(4)
    z0 = torch.randn(64, 2, 4, 4, generator=gen, dtype=torch.float64)
    t, noise = schedule.sample_timesteps(64, "cpu", gen), torch.randn(64, 2, 4, 4, generator=gen, dtype=torch.float64)
    z_t = schedule.q_sample(z0, t, noise)
    v = schedule.v_target(z0, t, noise)
    torch.testing.assert_close(schedule.eps_from_v(z_t, t, v), noise, atol=1e-10, rtol=0)
    at_noisiest = torch.full((64,), 999)
    torch.testing.assert_close(schedule.v_target(z0, at_noisiest, noise), -z0, atol=0.15, rtol=0)  # -z_0 + 0.026 ε

    eps_oracle = Oracle(schedule, z0[:3])
    v_oracle = lambda z, t: schedule.v_target(  # noqa: E731
        eps_oracle.z0.to(z.dtype), t, eps_oracle(z, t))
    assert schedule.training_loss(v_oracle, z0[:3].float(), t=t[:3], noise=noise[:3].float(), prediction="v") < 1e-8
    with pytest.raises(ValueError, match="prediction must be one of"):
        schedule.training_loss(v_oracle, z0[:3].float(), prediction="x0")
    result = ddim_sample(EpsFromV(lambda z, t: v_oracle(z, t), schedule), schedule, (3, 2, 4, 4), num_steps=10,
                         generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(result.z0.double(), z0[:3], atol=1e-3, rtol=0)


# ---------------------------------------------------------------------------------------
# Samplers.


class Oracle:
    """A model that knows z_0: it returns the exact noise ε = (z_t - sqrt(ᾱ_t) z_0) / sqrt(1 - ᾱ_t)."""

    def __init__(self, schedule: NoiseSchedule, z0: torch.Tensor):
        self.schedule, self.z0 = schedule, z0.double()
        self.calls, self.timesteps, self.last_z = 0, [], None

    def __call__(self, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.timesteps.append(int(t[0]))
        self.last_z = z_t
        abar = self.schedule.alphas_cumprod[t.long()].view(-1, 1, 1, 1)
        return ((z_t.double() - abar.sqrt() * self.z0) / (1 - abar).sqrt()).to(z_t.dtype)


def shrink(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A cheap, deterministic non-oracle 'model' for determinism tests."""
    return 0.3 * z + 1e-3 * t.float().view(-1, 1, 1, 1)


SHAPE = (3, 2, 4, 4)


def test_ddim_timesteps_are_evenly_spaced_from_t_start_to_zero():
    assert ddim_timesteps(999, 10) == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    assert ddim_timesteps(999, 1000) == list(range(999, -1, -1))
    assert ddim_timesteps(9, 4) == [9, 6, 3, 0] and ddim_timesteps(5, 1) == [5]
    steps = ddim_timesteps(999, 50)
    assert len(set(steps)) == 50 and steps[0] == 999 and steps[-1] == 0
    with pytest.raises(ValueError):
        ddim_timesteps(9, 11)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_samplers_are_deterministic_given_the_seed(sampler):
    schedule = NoiseSchedule(num_steps=100)

    def sample(seed):
        gen = torch.Generator().manual_seed(seed)
        if sampler == "ddpm":
            return ddpm_sample(shrink, schedule, SHAPE, generator=gen).z0
        return ddim_sample(shrink, schedule, SHAPE, num_steps=20, eta=0.5, generator=gen).z0

    a, b, c = sample(0), sample(0), sample(1)
    assert torch.equal(a, b) and not torch.allclose(a, c)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim10", "ddim50_eta1", "dpmpp2m10"])
def test_oracle_model_is_recovered_exactly(sampler):
    """With the true noise as the model's answer, every ẑ_0 is z_0 and the sample is z_0."""
    schedule = NoiseSchedule()
    z0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5))
    oracle = Oracle(schedule, z0)
    gen = torch.Generator().manual_seed(6)
    if sampler == "ddpm":
        result = ddpm_sample(oracle, schedule, SHAPE, generator=gen, record_at=[999, 500, 0])
        assert oracle.timesteps == list(range(999, -1, -1))
    elif sampler == "ddim10":
        result = ddim_sample(oracle, schedule, SHAPE, num_steps=10, eta=0.0, generator=gen, record_at=[999, 0])
        assert oracle.timesteps == ddim_timesteps(999, 10)
    elif sampler == "dpmpp2m10":
        result = dpm_solver_sample(oracle, schedule, SHAPE, num_steps=10, generator=gen, record_at=[999, 0])
        assert oracle.timesteps == ddim_timesteps(999, 10)
    else:
        result = ddim_sample(oracle, schedule, SHAPE, num_steps=50, eta=1.0, generator=gen)
    torch.testing.assert_close(result.z0, z0, atol=1e-4, rtol=0)
    for t, z0_pred in result.z0_preds.items():
        torch.testing.assert_close(z0_pred, z0, atol=1e-3, rtol=0, msg=f"t={t}")


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_starting_from_a_noised_latent_runs_only_the_remaining_steps(sampler):
    schedule = NoiseSchedule()
    gen = torch.Generator().manual_seed(7)
    z0 = torch.randn(SHAPE, generator=gen)
    t_start = 10
    z_t = schedule.q_sample(z0, torch.full((SHAPE[0],), t_start), torch.randn(SHAPE, generator=gen))
    oracle = Oracle(schedule, z0)
    seen = []
    callback = lambda t, z, z0_pred: seen.append(t)
    if sampler == "ddpm":
        result = ddpm_sample(oracle, schedule, generator=gen, start=(z_t, t_start), callback=callback,
                             record_at=[t_start])
        assert seen == list(range(10, -1, -1))
    else:
        result = ddim_sample(oracle, schedule, num_steps=4, generator=gen, start=(z_t, t_start),
                             callback=callback, record_at=[t_start])
        assert seen == [10, 7, 3, 0]
    assert oracle.calls == len(seen)
    assert torch.equal(result.states[t_start], z_t)  # the recorded state entering step t_start is the start
    torch.testing.assert_close(result.z0, z0, atol=1e-5, rtol=0)


def test_ddim_with_eta_one_and_every_step_is_ddpm():
    """σ_t(η=1) on consecutive steps is the DDPM posterior std, and both draw their noise in
    the same order, so the two samplers give the same trajectory from the same seed."""
    schedule = NoiseSchedule(num_steps=50)
    ddpm = ddpm_sample(shrink, schedule, SHAPE, generator=torch.Generator().manual_seed(8), record_at=[25])
    ddim = ddim_sample(shrink, schedule, SHAPE, num_steps=50, eta=1.0, generator=torch.Generator().manual_seed(8),
                       record_at=[25])
    torch.testing.assert_close(ddim.states[25], ddpm.states[25], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ddim.z0, ddpm.z0, atol=1e-5, rtol=1e-5)


class GaussianData:
    """The exact ε-prediction for data z_0 ~ N(mu, s² I): E[ε | z_t] = σ (z_t - α mu) / (α² s² + σ²)
    (α = sqrt(ᾱ_t), σ = sqrt(1 - ᾱ_t)). Its probability-flow ODE keeps u = (z_t - α mu) /
    sqrt(α² s² + σ²) constant, so the exact end of a deterministic sampler is known."""

    def __init__(self, schedule: NoiseSchedule, mu: float, s: float):
        self.schedule, self.mu, self.s = schedule, mu, s

    def __call__(self, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        abar = self.schedule.alphas_cumprod[t.long()].view(-1, 1, 1, 1)
        return ((1 - abar).sqrt() * (z_t.double() - abar.sqrt() * self.mu) / (abar * self.s**2 + 1 - abar)).float()

    def exact_end(self, z_start: torch.Tensor, t_start: int) -> torch.Tensor:
        """The samplers' output on the exact ODE path: ẑ_0 = E[z_0 | z] at the state it reaches at t = 0."""
        def spread(t):  # sqrt(α² s² + σ²) and α at step t
            abar = self.schedule.alphas_cumprod[t].item()
            return (abar * self.s**2 + 1 - abar) ** 0.5, abar**0.5
        spread_start, alpha_start = spread(t_start)
        u = (z_start.double() - alpha_start * self.mu) / spread_start
        spread_0, alpha_0 = spread(0)
        return (self.mu + alpha_0 * self.s**2 * u / spread_0).float()


def test_dpm_solver_beats_ddim_and_converges_on_gaussian_data():
    """On Gaussian data with the exact model: at 10, 20 and 40 steps DPM-Solver++(2M) ends at
    least 3x closer to the exact ODE end than DDIM does, and with every step visited it
    converges. (Its error does not fall smoothly with the steps: on the schedule's integer
    grid the last steps are long in log-SNR, and at 20 steps the errors partly cancel.
    The same numbers, to 1e-6, came from diffusers' DPMSolverMultistepScheduler at these
    timesteps, checked by hand.)"""
    schedule = NoiseSchedule()
    data = GaussianData(schedule, mu=0.3, s=0.2)
    z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(10))
    exact = data.exact_end(z, 999)

    def error(sample, steps):
        return (sample(data, schedule, start=(z, 999), num_steps=steps, generator=torch.Generator()).z0
                - exact).abs().max().item()

    for steps in (10, 20, 40):
        assert error(dpm_solver_sample, steps) < error(ddim_sample, steps) / 3, steps
    assert error(dpm_solver_sample, 1000) < min(error(dpm_solver_sample, 40) / 10, error(ddim_sample, 1000) / 3)


def test_dpm_solver_from_a_noised_latent_and_deterministic():
    schedule = NoiseSchedule(num_steps=100)
    z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(11))
    seen = []
    a = dpm_solver_sample(shrink, schedule, start=(z, 40), num_steps=5, generator=torch.Generator().manual_seed(0),
                          callback=lambda t, *_: seen.append(t))
    b = dpm_solver_sample(shrink, schedule, start=(z, 40), num_steps=5, generator=torch.Generator().manual_seed(1))
    assert seen == ddim_timesteps(40, 5) and torch.equal(a.z0, b.z0)
    # its first step is DDIM's: two steps (the first, then the final ẑ_0) are DDIM-2 exactly
    two = dpm_solver_sample(shrink, schedule, start=(z, 40), num_steps=2, generator=torch.Generator())
    torch.testing.assert_close(two.z0, ddim_sample(shrink, schedule, start=(z, 40), num_steps=2,
                                                   generator=torch.Generator()).z0)


def test_ddim_eta_zero_is_deterministic_given_the_start():
    schedule = NoiseSchedule(num_steps=100)
    z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(9))
    a = ddim_sample(shrink, schedule, start=(z, 99), num_steps=10, generator=torch.Generator().manual_seed(0))
    b = ddim_sample(shrink, schedule, start=(z, 99), num_steps=10, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.z0, b.z0)


def test_record_at_an_unvisited_step_is_an_error():
    schedule = NoiseSchedule(num_steps=100)
    with pytest.raises(ValueError, match=r"record_at steps \[50\]"):
        ddim_sample(shrink, schedule, SHAPE, num_steps=10, generator=torch.Generator(), record_at=[50])


def test_ddpm_mean_std_gives_the_step_before_its_noise():
    """Candidate selection builds z_{t-1} = mean + std * noise_k itself; this is DDPM's step."""
    schedule = NoiseSchedule(num_steps=100)
    z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(10))
    mean, std, _ = ddpm_mean_std(shrink, schedule, z, 40)
    gen = torch.Generator().manual_seed(11)
    stepped = ddpm_sample(shrink, schedule, start=(z, 40), generator=gen, record_at=[39]).states[39]
    gen = torch.Generator().manual_seed(11)
    torch.testing.assert_close(stepped, mean + std * torch.randn(SHAPE, generator=gen))
    assert std.shape == (SHAPE[0], 1, 1, 1)
    assert std[0].item() == pytest.approx(schedule.posterior_variance[40].item() ** 0.5, rel=1e-6)


def test_samplers_drive_the_unet_under_autocast():
    schedule = NoiseSchedule(num_steps=20)
    unet = randomised(UNet(UNetConfig.tiny())).eval()
    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    result = ddim_sample(unet, schedule, (2, 4, 8, 8), num_steps=5, generator=torch.Generator().manual_seed(0),
                         autocast=autocast)
    assert result.z0.dtype == torch.float32 and torch.isfinite(result.z0).all()


# ---------------------------------------------------------------------------------------
# UNet.


def randomised(unet: UNet) -> UNet:
    """Give the zero-initialised layers random weights, so the output depends on the input."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in unet.parameters():
            if not p.any():
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    return unet


def test_tiny_unet_shapes_and_zero_start():
    torch.manual_seed(0)
    unet = UNet(UNetConfig.tiny())
    x = torch.randn(3, 4, 8, 8)
    out = unet(x, torch.tensor([0, 500, 999]))
    assert out.shape == (3, 4, 8, 8)
    assert torch.equal(out, torch.zeros_like(out))  # zero-initialised head: ε_θ starts at 0
    unet = randomised(unet)
    out_long, out_float = unet(x, torch.tensor([0, 500, 999])), unet(x, torch.tensor([0.0, 500.0, 999.0]))
    torch.testing.assert_close(out_long, out_float)
    assert not torch.allclose(unet(x, torch.tensor([1, 500, 999]))[0], out_long[0])  # t matters
    assert not torch.allclose(unet(x, torch.tensor([0, 500, 999]))[1:], out_long[:1].expand(2, -1, -1, -1))


def test_paper_unet_builds_at_the_measured_size():
    unet = UNet(UNetConfig.paper())
    assert count_parameters(unet) == 131_214_112  # the docstring of models/unet.py quotes this
    assert count_parameters(UNet(UNetConfig(resblock_updown=False))) == 118_858_144
    with torch.no_grad():
        out = unet(torch.randn(1, 32, 32, 32), torch.tensor([10]))
    assert out.shape == (1, 32, 32, 32)


def test_timestep_embedding_is_cos_then_sin_of_geometric_frequencies():
    emb = timestep_embedding(torch.tensor([0.0, 3.0]), 8)
    freqs = 10_000 ** (-np.arange(4) / 4)
    np.testing.assert_allclose(emb[1].numpy(), np.concatenate([np.cos(3 * freqs), np.sin(3 * freqs)]), rtol=1e-6)
    np.testing.assert_allclose(emb[0].numpy(), [1, 1, 1, 1, 0, 0, 0, 0])


def test_unet_config_rejects_widths_that_groups_do_not_divide():
    with pytest.raises(ValueError, match="norm_groups"):
        UNetConfig(model_channels=24, norm_groups=32)


def test_tiny_unet_overfits_one_batch():
    """Fixed latents, fixed (t, ε): the ε-prediction loss must fall far below its start (1)."""
    torch.manual_seed(0)
    schedule = NoiseSchedule(num_steps=100)
    unet = UNet(UNetConfig.tiny())
    gen = torch.Generator().manual_seed(0)
    z0 = torch.randn(4, 4, 8, 8, generator=gen)
    t, noise = torch.tensor([5, 30, 60, 95]), torch.randn(4, 4, 8, 8, generator=gen)
    optimizer = torch.optim.Adam(unet.parameters(), lr=2e-3)
    losses = []
    for _ in range(40):
        loss = schedule.training_loss(unet, z0, t=t, noise=noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(1.0, abs=0.2)
    assert losses[-1] < 0.02, losses[::5]


# ---------------------------------------------------------------------------------------
# GPU: the same samples on the device (CPU generator) and bf16 autocast.


@pytest.mark.gpu
def test_cpu_generator_gives_the_same_samples_on_cuda():
    schedule = NoiseSchedule(num_steps=50)
    unet = randomised(UNet(UNetConfig.tiny())).eval()
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    cpu = ddpm_sample(unet, schedule, (4, 4, 8, 8), generator=torch.Generator().manual_seed(0)).z0
    gpu = ddpm_sample(unet.cuda(), schedule, (4, 4, 8, 8), generator=torch.Generator().manual_seed(0), device="cuda").z0
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-3, rtol=1e-3)
    autocast = lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    bf16 = ddim_sample(unet, schedule, (4, 4, 8, 8), num_steps=10, generator=torch.Generator().manual_seed(0),
                       device="cuda", autocast=autocast).z0
    assert bf16.dtype == torch.float32 and torch.isfinite(bf16).all()
