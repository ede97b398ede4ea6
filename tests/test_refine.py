"""Diffusion-refined inversion and its perturbation ablation (evaluation/refine.py) on tiny,
untrained models: the search's invariants, its determinism, and the table rows.

The tiny Stage-2 model gets a short schedule with large noise (betas 0.05 -> 0.3) so that
candidates land on other codebook entries and decode differently; with the paper's small
betas an untrained 1vq quantiser snaps almost every candidate back onto z0's codes, and
the selection would have nothing to choose between.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import zarr

from wavediffusion.data.store import create_split_arrays, open_dataset
from wavediffusion.data.transforms import Representation
from wavediffusion.diffusion import ddpm_sample, draw_noise
from wavediffusion.evaluation.refine import (
    COLUMNS,
    METHODS,
    TABLE_COLUMNS,
    RefineSettings,
    best_of_candidates,
    evaluate_refinement,
    perturb_latents,
    plot_refinement,
    refine_latents,
    refined_indices,
    refinement_tables,
    score_latents,
)
from wavediffusion.files import write_csv
from wavediffusion.physics.deviation import per_sample_mse
from wavediffusion.plotting import save_figure
from wavediffusion.training import checkpoint as ckpt
from wavediffusion.training.stage1 import load_autoencoder
from wavediffusion.training.stage2 import load_stage2

from tiny_models import save_tiny_autoencoder, save_tiny_stage2

T = 10
BETA_START, BETA_END = 0.05, 0.3
REP = Representation(time_samples=64, receivers=16, velocity_size=16, seismic_log_min=-4.0, seismic_log_max=4.0)
B = 3
CPU = torch.device("cpu")


def random_seismic(n: int, seed: int) -> torch.Tensor:
    """Observations (n, 3, 64, 16) uniform in [-1, 1]."""
    return torch.rand(n, *REP.seismic_shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def settings(**changes) -> RefineSettings:
    values = dict(start_step=4, candidates=4, perturbations=6, sigma=1.0, batch_size=2, candidate_batch=5,
                  precision="fp32", seed=0)
    return RefineSettings(**{**values, **changes})


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny Stage-1 and Stage-2 weights files (loaded too), the Stage-2 one with a noisy short schedule."""
    root = tmp_path_factory.mktemp("refine")
    stage1, stage2 = root / "stage1.pt", root / "stage2.pt"
    autoencoder = save_tiny_autoencoder(stage1)
    with torch.no_grad():
        std = float(autoencoder.latent_for_diffusion(random_seismic(8, seed=5)).std())
    save_tiny_stage2(stage2, num_steps=T, scale_factor=1.0 / std)
    weights = ckpt.load(stage2)
    weights["config"]["task"]["diffusion"].update(beta_start=BETA_START, beta_end=BETA_END)
    ckpt.atomic_save(weights, stage2)
    unet, schedule, scale = load_stage2(stage2)
    return {"stage1": stage1, "stage2": stage2, "autoencoder": autoencoder, "unet": unet, "schedule": schedule,
            "scale": scale, "observed": random_seismic(B, seed=1)}


def refine(models, config: RefineSettings, seed: int = 0):
    return refine_latents(models["autoencoder"], models["unet"], models["schedule"], models["scale"],
                          models["observed"], config, torch.Generator().manual_seed(seed), CPU)


def decoded_score(autoencoder, z, observed) -> torch.Tensor:
    """Each latent's decoded-seismic MSE through decode_latent, the path of every generated pair."""
    with torch.no_grad():
        return per_sample_mse(autoencoder.decode_latent(z)[0], observed)


def stage1_latents(models) -> torch.Tensor:
    with torch.no_grad():
        return models["autoencoder"].latent_for_diffusion(models["observed"])


# --- settings -----------------------------------------------------------------------------------


@pytest.mark.parametrize("key, value", [
    ("start_step", -1), ("candidates", 0), ("candidates", 2.5), ("candidates", True), ("perturbations", -1),
    ("sigma", 0.0), ("sigma", float("nan")), ("sigma", "0.1"), ("batch_size", 0), ("candidate_batch", 0),
    ("precision", "fp16"), ("seed", -1),
])
def test_settings_reject_bad_values_naming_the_key(key, value):
    with pytest.raises(ValueError, match=rf"refine\.{key}"):
        RefineSettings(**{key: value})


def test_settings_from_dict_rejects_unknown_keys_and_checks_the_schedule(models):
    assert RefineSettings.from_dict({"candidates": 5, "sigma": 0.5}) == RefineSettings(candidates=5, sigma=0.5)
    with pytest.raises(ValueError, match=r"refine: unknown keys \['candidate'\]"):
        RefineSettings.from_dict({"candidate": 5})
    with pytest.raises(ValueError, match=r"refine\.start_step \(11\) exceeds .* T = 10"):
        refine(models, settings(start_step=T + 1))
    refine(models, settings(start_step=T, candidates=1))  # from the noisiest step: allowed


# --- decoding and selection ---------------------------------------------------------------------


def test_selection_keeps_each_observations_closest_candidate(models):
    """Chunks of 5 over 3 x 4 candidates cut through observations; the winner must still be each one's own best."""
    autoencoder, observed, scale = models["autoencoder"], models["observed"], models["scale"]
    count, chunk = 4, 5
    center = stage1_latents(models) * scale
    std = torch.tensor([0.5, 1.0, 2.0]).reshape(B, 1, 1, 1)
    best, best_score = best_of_candidates(autoencoder, center, std, count, observed, scale, chunk,
                                          torch.Generator().manual_seed(7), CPU)
    # the same draws, redone: chunk by chunk, observation-major
    generator = torch.Generator().manual_seed(7)
    noise = torch.cat([draw_noise((min(chunk, B * count - start), *center.shape[1:]), generator, CPU)
                       for start in range(0, B * count, chunk)])
    candidates = center.repeat_interleave(count, 0) + std.repeat_interleave(count, 0) * noise  # (B * count, C, h, w)
    scores = score_latents(autoencoder, candidates / scale, observed.repeat_interleave(count, 0), 64).reshape(B, count)
    assert len(set(scores.flatten().tolist())) > B  # the candidates decode differently: there is a choice to make
    torch.testing.assert_close(best_score, scores.min(dim=1).values)
    winners = candidates.reshape(B, count, *center.shape[1:])[torch.arange(B), scores.argmin(dim=1)]
    torch.testing.assert_close(best, winners, rtol=0, atol=0)


# --- refinement -------------------------------------------------------------------------------


def test_refinement_is_deterministic_given_the_seed(models):
    z_a, trace_a = refine(models, settings(), seed=0)
    z_b, trace_b = refine(models, settings(), seed=0)
    assert torch.equal(z_a, z_b)
    assert torch.equal(trace_a.kept, trace_b.kept) and torch.equal(trace_a.step_best, trace_b.step_best)
    _, trace_c = refine(models, settings(), seed=1)
    assert not torch.equal(trace_a.step_best, trace_c.step_best)


def test_kept_score_never_increases_and_is_the_returned_latents_score(models):
    config = settings(start_step=6, candidates=4)
    z, trace = refine(models, config, seed=2)
    autoencoder, observed = models["autoencoder"], models["observed"]
    assert trace.kept.shape == (B, 7) and trace.step_best.shape == (B, 6)
    torch.testing.assert_close(trace.kept[:, 0], decoded_score(autoencoder, stage1_latents(models), observed))
    assert (trace.kept[:, 1:] <= trace.kept[:, :-1]).all()
    # the kept score is the running minimum of the start and the path's step-best scores
    running = torch.cummin(torch.cat([trace.kept[:, :1], trace.step_best], dim=1), dim=1).values
    assert torch.equal(trace.kept, running)
    torch.testing.assert_close(decoded_score(autoencoder, z, observed), trace.kept[:, -1])
    # not vacuous: some step improved on Stage 1, and the path was somewhere worse than the kept latent
    assert (trace.kept[:, -1] < trace.kept[:, 0]).any()
    assert (trace.step_best > trace.kept[:, :-1]).any()


def test_one_candidate_is_plain_ddpm_from_the_noised_stage1_latent(models):
    """M = 1: the path is ddpm_sample started from q(z_{K-1} | z0) with the same draws."""
    k = 5
    _, trace = refine(models, settings(start_step=k, candidates=1, candidate_batch=64), seed=3)
    schedule, scale = models["schedule"], models["scale"]
    generator = torch.Generator().manual_seed(3)
    z0 = stage1_latents(models)
    start = schedule.q_sample(z0 * scale, torch.full((B,), k - 1), draw_noise(z0.shape, generator, CPU))
    path = ddpm_sample(models["unet"], schedule, generator=generator, device=CPU, start=(start, k - 1)).z0
    torch.testing.assert_close(trace.step_best[:, -1], decoded_score(models["autoencoder"], path / scale,
                                                                     models["observed"]))


def test_no_steps_returns_the_stage1_latents_and_draws_nothing(models):
    generator = torch.Generator().manual_seed(4)
    before = generator.get_state()
    z, trace = refine_latents(models["autoencoder"], models["unet"], models["schedule"], models["scale"],
                              models["observed"], settings(start_step=0), generator, CPU)
    assert torch.equal(z, stage1_latents(models))
    assert trace.kept.shape == (B, 1) and trace.step_best.shape == (B, 0)
    assert torch.equal(generator.get_state(), before)


# --- the ablation -------------------------------------------------------------------------------


def perturb(models, config: RefineSettings, seed: int = 0):
    return perturb_latents(models["autoencoder"], models["observed"], config, torch.Generator().manual_seed(seed),
                           CPU, scale=models["scale"])


def test_perturbation_keeps_the_best_perturbation_even_when_z0_fits_better(models):
    """The paper's ablation: z0 is not a candidate, so the kept latent is the best of the M'
    perturbations, which can fit worse than z0 itself."""
    z, trace = perturb(models, settings(perturbations=6, sigma=1.0))
    autoencoder, observed = models["autoencoder"], models["observed"]
    assert trace.kept.shape == (B, 2) and trace.step_best.shape == (B, 1)
    assert torch.equal(trace.kept[:, 1], trace.step_best[:, 0])  # the best perturbation, whatever z0 scored
    torch.testing.assert_close(decoded_score(autoencoder, z, observed), trace.kept[:, 1])
    assert not torch.equal(z, stage1_latents(models))
    # σ = 3 lands far from z0: the best of six fits worse than z0 for some observation
    _, far = perturb(models, settings(perturbations=6, sigma=3.0))
    assert (far.kept[:, 1] > far.kept[:, 0]).any()


def test_perturbation_without_perturbations_is_z0(models):
    z, trace = perturb(models, settings(perturbations=0))
    assert torch.equal(z, stage1_latents(models)) and trace.kept.shape == (B, 1)


# --- the evaluation -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A dataset store whose test split holds 3 FlatVel-A and 2 CurveVel-A samples (interleaved)."""
    path = tmp_path_factory.mktemp("refine_data") / "dataset.zarr"
    families = np.array([2, 0, 0, 2, 0, 0], dtype=np.int16)  # the 6th sample (FlatVel-A) lies beyond per_family=3
    root = zarr.open_group(str(path), mode="w")
    root.attrs["representation"] = REP.to_attrs()
    test = root.create_group("test")
    create_split_arrays(test, len(families), REP, samples_per_shard=4)
    test["seismic"][:] = random_seismic(len(families), seed=9).numpy()
    test["velocity"][:] = (torch.rand(len(families), *REP.velocity_shape, generator=torch.Generator().manual_seed(10))
                           * 2 - 1).numpy()
    test["family"][:] = families
    return path


def test_evaluate_refinement_rows_per_method_and_family(models, dataset, tmp_path):
    config = settings(start_step=3, candidates=3, perturbations=4, batch_size=2)
    root = open_dataset(dataset)
    autoencoder, (unet, schedule, scale) = load_autoencoder(models["stage1"]), load_stage2(models["stage2"])
    rows, info, examples = evaluate_refinement(autoencoder, unet, schedule, scale, root, config, per_family=3,
                                               device="cpu", progress=False)
    assert list(rows) == list(METHODS)
    for method, table in rows.items():
        assert [(r["method"], r["family"], r["n"]) for r in table] == [
            (method, "FlatVel-A", 3), (method, "CurveVel-A", 2), (method, "all", 5)]
        for row in table:
            assert tuple(row) == COLUMNS
            assert all(math.isfinite(row[name]) for name in COLUMNS[3:])
        # the "all" row is the sample-weighted mean of the family rows
        assert table[2]["mae"] == pytest.approx((3 * table[0]["mae"] + 2 * table[1]["mae"]) / 5)
    # the refinement starts from the Stage-1 latent and keeps it unless something fits better
    # (the ablation does not keep it: it may fit worse)
    for searched, alone in zip(rows["refined"], rows["stage1"]):
        assert searched["seismic_l2"] <= alone["seismic_l2"] * (1 + 1e-6)

    # the Stage-1 row is Stage 1 alone: decode_latent of the encoded test seismic (FlatVel-A: samples 1, 2, 4)
    store = zarr.open_group(str(dataset), mode="r")["test"]
    seismic = torch.from_numpy(store["seismic"].get_orthogonal_selection(([1, 2, 4],)))
    velocity = torch.from_numpy(store["velocity"].get_orthogonal_selection(([1, 2, 4],)))
    autoencoder = models["autoencoder"]
    with torch.no_grad():
        velocity_hat = autoencoder.decode_latent(autoencoder.latent_for_diffusion(seismic))[1]
    assert rows["stage1"][0]["mae"] == pytest.approx(float((velocity_hat - velocity).abs().mean()), rel=1e-5)

    json.dumps(info)  # written next to the table
    assert info["n"] == 5 and info["precision"] == "fp32"
    assert all(info["throughput"][method]["samples_per_second"] > 0 for method in METHODS)
    assert examples["family"] == ["FlatVel-A", "CurveVel-A"]
    for name in ("true", *METHODS):
        assert examples[name].shape == (2, *REP.velocity_shape)
    torch.testing.assert_close(examples["true"][0], velocity[0])

    table = tmp_path / "refine.csv"
    write_csv([row for method in METHODS for row in rows[method]], table, COLUMNS)
    assert len(table.read_text().splitlines()) == 1 + 3 * 3
    figure = save_figure(plot_refinement(examples), tmp_path / "refine.png")
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the tables: InversionNet is evaluated on the samples refined (the 6th lies beyond per_family=3)
    assert refined_indices(root, 3).tolist() == [0, 1, 2, 3, 4]
    inversionnet = [{"family": family, "n": n, "mae": 0.1, "rmse": 0.2, "ssim": 0.3}
                    for family, n in (("FlatVel-A", 3), ("CurveVel-A", 2), ("all", 5))]
    table9, table7 = refinement_tables(rows, inversionnet, "1vq")
    assert all(tuple(row) == TABLE_COLUMNS and row["variant"] == "1vq" for row in table9 + table7)
    assert [r["method"] for r in table9] == [m for m in ("inversionnet", "stage1", "refined") for _ in range(3)]
    assert [r["method"] for r in table7] == [m for m in ("stage1", "perturbed", "refined") for _ in range(3)]
    assert [r["family"] for r in table9[:3]] == ["FlatVel-A", "CurveVel-A", "all"]
    assert all(math.isnan(r["seismic_l2"]) for r in table9[:3])
    assert table9[3:] == [{"variant": "1vq", **row} for method in ("stage1", "refined") for row in rows[method]]
