"""Transforms between OpenFWI's native arrays and the model representation."""

from __future__ import annotations

import math

import pytest
import torch

from wavediffusion.data.transforms import (
    Representation,
    inverse_log_transform,
    log_transform,
    minmax_denormalise,
    minmax_normalise,
    seismic_from_model,
    seismic_log_resized,
    seismic_to_model,
    velocity_from_model,
    velocity_to_model,
)


def smooth_seismic(batch=2, generator=None):
    """Band-limited wavefield-like traces: smooth in time and across receivers."""
    t = torch.linspace(0, 1, 1000).view(1, 1, 1000, 1)
    r = torch.linspace(0, 1, 70).view(1, 1, 1, 70)
    phase = torch.rand(batch, 5, 1, 1, generator=generator) * 6.28
    return 20.0 * torch.sin(25 * t + 3 * r + phase) * torch.exp(-3 * t)  # (B, 5, 1000, 70)


def test_log_and_minmax_are_exact_inverses():
    x = torch.randn(1000, dtype=torch.float64) * 50
    assert torch.allclose(inverse_log_transform(log_transform(x)), x, rtol=1e-12, atol=1e-12)
    assert torch.allclose(minmax_denormalise(minmax_normalise(x, -3.0, 7.0), -3.0, 7.0), x)
    assert minmax_normalise(torch.tensor([-3.0, 7.0]), -3.0, 7.0).tolist() == [-1.0, 1.0]
    # OpenFWI's transform is odd and compresses large amplitudes
    assert torch.equal(log_transform(-x), -log_transform(x))
    assert float(log_transform(torch.tensor(math.e - 1))) == pytest.approx(1.0)


def test_shapes_and_shot_selection():
    rep = Representation(shots=(1, 3, 4), seismic_log_min=-4.0, seismic_log_max=4.0)
    raw = smooth_seismic()
    model = seismic_to_model(raw, rep)
    assert model.shape == (2, 3, 1024, 64)
    # channel 1 of the model comes from shot 3 of the source
    only_shot3 = torch.zeros_like(raw)
    only_shot3[:, 3] = raw[:, 3]
    lifted = seismic_to_model(only_shot3, rep)
    assert not torch.allclose(lifted[:, 1], torch.full_like(lifted[:, 1], lifted[:, 0].mean()))
    assert torch.allclose(lifted[:, 0], minmax_normalise(torch.zeros(1), -4.0, 4.0).expand_as(lifted[:, 0]))
    velocity = torch.full((2, 1, 70, 70), 3000.0)
    assert velocity_to_model(velocity, rep).shape == (2, 1, 64, 64)
    assert torch.allclose(velocity_to_model(velocity, rep), torch.zeros(2, 1, 64, 64))


def test_seismic_round_trip_on_smooth_data():
    raw = smooth_seismic(generator=torch.Generator().manual_seed(0))
    rep0 = Representation()
    log_resized = seismic_log_resized(raw, rep0)
    rep = Representation(seismic_log_min=float(log_resized.min()), seismic_log_max=float(log_resized.max()))
    model = seismic_to_model(raw, rep)
    assert float(model.min()) == pytest.approx(-1.0) and float(model.max()) == pytest.approx(1.0)
    back = seismic_from_model(model, rep)  # (B, 3, 1000, 70) of shots 0, 2, 4
    error = (back - raw[:, [0, 2, 4]]).norm() / raw[:, [0, 2, 4]].norm()
    assert error < 0.02, float(error)


def test_velocity_round_trip():
    rep = Representation()
    depth = torch.linspace(1500, 4500, 70).view(1, 1, 70, 1).expand(3, 1, 70, 70)  # smooth gradient
    back = velocity_from_model(velocity_to_model(depth, rep), rep)
    assert (back - depth).abs().max() < 25.0  # m/s, on a 3000 m/s range
    assert back.min() >= 1500 and back.max() <= 4500
    # a sharp layer boundary survives up to a couple of cells of smearing
    layered = torch.where(torch.arange(70).view(1, 1, 70, 1) < 35, 2000.0, 4000.0).expand(1, 1, 70, 70)
    back = velocity_from_model(velocity_to_model(layered, rep), rep)
    assert (back - layered).abs().gt(100).sum(dim=2).max() <= 2 * 1  # at most 2 rows per column off


def test_decoded_velocity_is_clamped_to_openfwi_range():
    rep = Representation()
    decoded = torch.full((1, 1, 64, 64), 1.2)  # a little beyond the trained range
    assert float(velocity_from_model(decoded, rep).max()) == 4500.0
    assert float(velocity_from_model(decoded, rep, clamp=False).max()) > 4500.0


def test_representation_attrs_round_trip_and_checks():
    rep = Representation(shots=(0, 1, 2), seismic_log_min=-2.5, seismic_log_max=3.5)
    assert Representation.from_attrs(rep.to_attrs()) == rep
    with pytest.raises(ValueError, match="shots"):
        Representation(shots=(0, 5))
    with pytest.raises(ValueError, match="seismic_log_max"):
        Representation(seismic_log_min=1.0, seismic_log_max=1.0)
    with pytest.raises(ValueError, match=r"\(B, 5, T, R\)"):
        seismic_to_model(torch.zeros(1, 3, 1000, 70), rep)
