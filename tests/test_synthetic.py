"""Synthetic velocity generators: contract, difficulty, faults, calibration, figure.

The calibration tests compare 1000 synthetic FlatVel-A / CurveVel-A maps with the 1000
embedded real test maps of each family on the statistics the generators were calibrated on.
The tolerances are several times the sampling noise of 1000 maps, far below the gap a
wrong recipe opens (e.g. layer-count frequencies differ by 0.2, not 0.05).
"""

from __future__ import annotations

import time

import matplotlib.image
import numpy as np
import pytest

from wavediffusion.data.embedded import load_real_velocity
from wavediffusion.data.families import FAMILIES
from wavediffusion.data.synthetic import GENERATORS, generate_velocity
from wavediffusion.evaluation.figures import plot_velocity_families

SYNTHETIC = list(GENERATORS)
A_B_PAIRS = [("FlatVel-A", "FlatVel-B"), ("CurveVel-A", "CurveVel-B"), ("FlatFault-A", "FlatFault-B"), ("CurveFault-A", "CurveFault-B")]


# --- statistics of a batch of maps (N, 1, 70, 70) ----------------------------------------


def layer_counts(maps: np.ndarray) -> np.ndarray:
    """Distinct velocities per map: the number of layers it shows."""
    return np.array([len(np.unique(m)) for m in maps[:, 0]])


def interface_contrasts(maps: np.ndarray) -> np.ndarray:
    """|velocity jump| (m/s) at every vertical layer boundary of every map."""
    jumps = np.abs(np.diff(maps[:, 0].astype(np.float64), axis=1))
    return jumps[jumps > 0]


def increasing_with_depth(maps: np.ndarray) -> np.ndarray:
    """Per map: velocity never decreases downward in any column."""
    return np.all(np.diff(maps[:, 0], axis=1) >= 0, axis=(1, 2))


def interface_spacing(maps: np.ndarray) -> np.ndarray:
    """Per map: median vertical distance (cells) between successive interfaces, every 7th column."""
    spacing = []
    for m in maps[:, 0]:
        gaps = [np.diff(np.flatnonzero(np.diff(m[:, c]) != 0)) for c in range(0, m.shape[1], 7)]
        gaps = np.concatenate(gaps)
        spacing.append(np.median(gaps) if gaps.size else m.shape[0])
    return np.array(spacing)


def fold_amplitude(maps: np.ndarray) -> np.ndarray:
    """Per map: std (cells) of the depth of its shallowest interface that stays inside the map.

    For maps whose velocity increases with depth (the A families), so that the layers in
    order of velocity are the layers in order of depth. Maps with no such interface: NaN.
    """
    amplitude = np.full(len(maps), np.nan)
    for i, m in enumerate(maps[:, 0]):
        for value in np.unique(m)[1:]:
            present = m == value
            top = np.argmax(present, axis=0)
            if present.any(axis=0).all() and (top > 0).all() and (top < m.shape[0] - 1).all():
                amplitude[i] = top.std()
                break
    return amplitude


def top_layer_pinched(maps: np.ndarray) -> np.ndarray:
    """Per map: the top row holds more than one velocity (a fold lifts a layer to the surface)."""
    top = maps[:, 0, 0, :]
    return np.any(top != top[:, :1], axis=1)


def lateral_change(maps: np.ndarray) -> np.ndarray:
    """Per map: fraction of neighbouring column pairs that differ anywhere. Flat layers: 0."""
    return np.mean(np.any(np.diff(maps[:, 0], axis=2) != 0, axis=1), axis=1)


def thickness_variation(maps: np.ndarray) -> np.ndarray:
    """Per map: the largest lateral change of a layer's vertical thickness (cells).

    A layer's thickness in a column is its number of cells there; columns where the layer
    touches the top or bottom edge are left out. Parallel layers, flat or folded, keep their
    thickness (up to rounding and jitter); a fault cuts layers, and a cut layer's thickness
    changes by up to the throw where the fault plane passes through it.
    """
    variation = np.zeros(len(maps))
    for i, m in enumerate(maps[:, 0]):
        for value in np.unique(m):
            present = m == value
            cells = present.sum(axis=0)
            interior = (cells > 0) & ~present[0] & ~present[-1]
            if interior.sum() >= 2:
                variation[i] = max(variation[i], np.ptp(cells[interior]))
    return variation


def frequencies(counts: np.ndarray, values: range) -> np.ndarray:
    return np.array([np.mean(counts == v) for v in values])


@pytest.fixture(scope="module")
def batches() -> dict[str, np.ndarray]:
    """200 maps of every synthetic family (seed 3)."""
    return {family: generate_velocity(family, 200, seed=3) for family in SYNTHETIC}


# --- the contract -------------------------------------------------------------------------


@pytest.mark.parametrize("family", SYNTHETIC)
def test_shape_dtype_range(family, batches):
    maps = batches[family]
    assert maps.shape == (200, 1, 70, 70)
    assert maps.dtype == np.float32
    assert maps.min() >= 1500.0 and maps.max() <= 4500.0
    assert np.all(np.isfinite(maps))


def test_every_non_style_family_has_a_generator():
    assert set(GENERATORS) == {name for name in FAMILIES if not name.startswith("Style")}


@pytest.mark.parametrize("family", SYNTHETIC)
def test_deterministic_and_seed_dependent(family):
    first = generate_velocity(family, 6, seed=11)
    np.testing.assert_array_equal(first, generate_velocity(family, 6, seed=11))
    other = generate_velocity(family, 6, seed=12)
    assert not np.array_equal(first, other)
    # Maps within one batch differ from one another too.
    assert len({m.tobytes() for m in first}) == 6


@pytest.mark.parametrize("family", SYNTHETIC)
def test_prefix_property(family):
    np.testing.assert_array_equal(generate_velocity(family, 9, seed=5)[:4], generate_velocity(family, 4, seed=5))


def test_families_with_one_seed_are_independent():
    # The seed is shared by the families of one run; their maps must not share draws.
    flat = generate_velocity("FlatVel-A", 20, seed=0)
    faulted = generate_velocity("FlatFault-A", 20, seed=0)
    assert not np.array_equal(layer_counts(flat), layer_counts(faulted))


def test_zero_maps():
    assert generate_velocity("FlatVel-B", 0, seed=0).shape == (0, 1, 70, 70)


@pytest.mark.parametrize(
    "family, n, seed, message",
    [
        ("Style-A", 2, 0, "no synthetic generator"),
        ("Style-B", 2, 0, "no synthetic generator"),
        ("NotAFamily", 2, 0, "unknown OpenFWI family"),
        ("FlatVel-B", -1, 0, "n must be"),
        ("FlatVel-B", 2.0, 0, "n must be"),
        ("FlatVel-B", True, 0, "n must be"),
        ("FlatVel-B", 2, -3, "seed must be"),
    ],
)
def test_errors(family, n, seed, message):
    with pytest.raises(ValueError, match=message):
        generate_velocity(family, n, seed)


def test_thousand_maps_are_fast():
    start = time.perf_counter()
    generate_velocity("CurveFault-B", 1000, seed=0)  # the slowest family (~1 s here)
    assert time.perf_counter() - start < 10.0


# --- B is harder than A -------------------------------------------------------------------


@pytest.mark.parametrize("a, b", A_B_PAIRS)
def test_b_is_harder_than_a(a, b, batches):
    maps_a, maps_b = batches[a], batches[b]
    # More layers ...
    assert layer_counts(maps_b).mean() >= layer_counts(maps_a).mean() + 2.0
    # ... with larger contrasts between them ...
    assert np.median(interface_contrasts(maps_b)) >= 2.0 * np.median(interface_contrasts(maps_a))
    # ... and velocity inversions (slow under fast), which A stacks never have unfaulted.
    assert np.mean(increasing_with_depth(maps_b)) < 0.05
    if "Vel" in a:
        assert increasing_with_depth(maps_a).all()


# --- faults ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fault, layered", [("FlatFault-A", "FlatVel-A"), ("FlatFault-B", "FlatVel-B")])
def test_faults_break_flat_layers(fault, layered, batches):
    assert np.all(lateral_change(batches[layered]) == 0)
    assert np.all(thickness_variation(batches[layered]) == 0)
    assert np.all(lateral_change(batches[fault]) > 0)
    assert np.all(thickness_variation(batches[fault]) > 0)


@pytest.mark.parametrize("fault, layered", [("CurveFault-A", "CurveVel-A"), ("CurveFault-B", "CurveVel-B")])
def test_faults_cut_folded_layers(fault, layered, batches):
    # Folds bend layers but keep their thickness (up to a few cells of jitter near the
    # right edge); a fault changes a cut layer's thickness by up to its throw.
    folded, faulted = thickness_variation(batches[layered]), thickness_variation(batches[fault])
    assert np.median(faulted) > np.quantile(folded, 0.9)
    assert np.mean(faulted > np.median(folded)) > 0.9


# --- calibration against the real FlatVel-A / CurveVel-A maps ------------------------------


@pytest.fixture(scope="module", params=["FlatVel-A", "CurveVel-A"])
def real_and_synthetic(request):
    family = request.param
    return family, load_real_velocity(family, "test"), generate_velocity(family, 1000, seed=2024)


def test_calibrated_layers_and_velocities(real_and_synthetic):
    family, real, synthetic = real_and_synthetic
    # Layer counts: FlatVel-A shows 3-8 layers, CurveVel-A 4-8, in near-equal shares.
    counts = range(2, 10)
    np.testing.assert_allclose(
        frequencies(layer_counts(synthetic), counts), frequencies(layer_counts(real), counts), atol=0.05
    )
    # Velocity increases with depth in every map.
    assert increasing_with_depth(real).all() and increasing_with_depth(synthetic).all()
    # Pixel velocities (m/s): mean ~2780, std ~790.
    assert abs(synthetic.mean() - real.mean()) < 60
    assert abs(synthetic.std() - real.std()) < 40
    # Jumps at interfaces (m/s): median ~310.
    assert abs(np.median(interface_contrasts(synthetic)) - np.median(interface_contrasts(real))) < 40
    # Layer thickness: spacing T = 70 / M for M in 3..7 (quartiles ~12, 14, 18 cells).
    np.testing.assert_allclose(
        np.quantile(interface_spacing(synthetic), [0.25, 0.5, 0.75]),
        np.quantile(interface_spacing(real), [0.25, 0.5, 0.75]),
        atol=1.0,
    )


def test_calibrated_geometry(real_and_synthetic):
    family, real, synthetic = real_and_synthetic
    if family == "FlatVel-A":
        assert np.all(lateral_change(real) == 0) and np.all(lateral_change(synthetic) == 0)
        return
    # Folds: std of an interface's depth (median ~5.5 cells) and how often the top layer
    # is folded out of the map somewhere (~28 % of the maps).
    real_fold, synthetic_fold = fold_amplitude(real), fold_amplitude(synthetic)
    assert abs(np.nanmedian(synthetic_fold) - np.nanmedian(real_fold)) < 0.75
    assert abs(np.nanquantile(synthetic_fold, 0.9) - np.nanquantile(real_fold, 0.9)) < 1.5
    assert abs(top_layer_pinched(synthetic).mean() - top_layer_pinched(real).mean()) < 0.06
    # Folds are parallel up to a cell or two: layer thickness varies by ~5 cells (median).
    assert abs(np.median(thickness_variation(synthetic)) - np.median(thickness_variation(real))) <= 1.0


# --- the figure -----------------------------------------------------------------------------


def test_plot_velocity_families_writes_png(tmp_path):
    samples = {
        "FlatVel-A": load_real_velocity("FlatVel-A", "test")[:3],
        "CurveFault-B": generate_velocity("CurveFault-B", 2, seed=0),  # fewer maps than columns
        "FlatVel-B": generate_velocity("FlatVel-B", 3, seed=0)[:, 0],  # (N, H, W) accepted too
    }
    path = tmp_path / "figures" / "families.png"
    assert plot_velocity_families(samples, path, per_family=3, real={"FlatVel-A"}) == path
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image.std() > 0.05  # not blank
    assert [p.name for p in path.parent.iterdir()] == ["families.png"]  # no temporary left


def test_plot_velocity_families_rejects_nothing_to_plot(tmp_path):
    with pytest.raises(ValueError):
        plot_velocity_families({}, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_plot_dataset_velocity_reads_a_store(tmp_path):
    import zarr

    from wavediffusion.data.families import FAMILY_NAMES
    from wavediffusion.evaluation.figures import plot_dataset_velocity

    # The part of the dataset store layout (data/store.py) the figure reads.
    store = zarr.open_group(str(tmp_path / "dataset.zarr"), mode="w")
    store.attrs.update(
        {
            "representation": {},
            "families": list(FAMILY_NAMES),
            "families_used": ["FlatVel-A", "FlatFault-B"],
            "provenance": {"source": "embedded"},
        }
    )
    maps = np.concatenate([load_real_velocity("FlatVel-A", "test")[:3], generate_velocity("FlatFault-B", 3, seed=0)])
    train = store.create_group("train")
    train.create_array("velocity_native", data=maps, chunks=(1, 1, 70, 70))
    train.create_array("family", data=np.array([0, 0, 0, 5, 5, 5], dtype=np.int16))
    path = plot_dataset_velocity(tmp_path / "dataset.zarr", tmp_path / "velocity_families.png", per_family=2)
    assert matplotlib.image.imread(path).std() > 0.05
