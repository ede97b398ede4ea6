"""Synthetic OpenFWI-like velocity maps for the families with no embedded real data.

Layered FlatVel / CurveVel / FlatFault / CurveFault maps (A and B) on OpenFWI's 70 x 70 grid
(10 m cells), 1500-4500 m/s. OpenFWI's generator is unreleased, so the recipes are ours: the
A recipes are calibrated against the embedded real FlatVel-A and CurveVel-A maps, the B and
fault parameters are our choices; no Style-A/B. Each map has its own generator, seeded by
(seed, family, index), so generate_velocity(f, n, s)[:k] equals generate_velocity(f, k, s).
Details: docs/data.md, 'The synthetic velocity families'.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .families import VELOCITY_MAX, VELOCITY_MIN, VELOCITY_SHAPE, get_family

NZ, NX = VELOCITY_SHAPE[1:]  # 70 depth cells, 70 lateral cells
_DEPTH, _LATERAL = np.mgrid[0:NZ, 0:NX].astype(np.float64)  # (NZ, NX) cell coordinates
_COLUMNS = np.arange(NX, dtype=np.float64)

KNOT_SPACING = 10  # columns between the independent offsets of a curved interface (real CurveVel-A)
JITTER_A = 0.75  # cells of per-interface knot jitter (A stacks; calibrated on the real maps)
JITTER_B = 0.5  # (B stacks; our choice)
MIN_CONTRAST_B = 300.0  # m/s between adjacent layers of a B stack


@dataclass(frozen=True)
class LayerStack:
    """Layered earth model: layer j + 1 starts at depth interfaces[j] (cells, per column).

    The top layer extends upward and the bottom layer downward without end, so the stack can
    be sampled anywhere, which is what fault displacement needs.
    """

    interfaces: np.ndarray  # (L, NX) depth of each interface at each column, top one first
    # A point's layer is the number of interfaces above it, so where jittered interfaces
    # cross, the layer between them pinches out.
    velocities: np.ndarray  # (L + 1,) m/s, top layer first

    def sample(self, depth: np.ndarray, lateral: np.ndarray) -> np.ndarray:
        """Velocity at real-valued (depth, lateral) cell coordinates of equal shape."""
        # Interface depth under each point; constant beyond the left/right edges.
        under = np.stack([np.interp(lateral, _COLUMNS, curve) for curve in self.interfaces])
        layer = np.sum(depth[None] >= under, axis=0)  # how many interfaces lie above
        return self.velocities[layer]


# --- velocity stacks -------------------------------------------------------------------


def _sorted_velocities(rng: np.random.Generator, count: int) -> np.ndarray:
    """A-families: sorted uniform draws, whole m/s, so velocity increases with depth."""
    return np.sort(np.round(rng.uniform(VELOCITY_MIN, VELOCITY_MAX, count)))


def _contrasting_velocities(rng: np.random.Generator, count: int) -> np.ndarray:
    """B-families: independent uniform draws, each at least MIN_CONTRAST_B from the one above."""
    velocities = [np.round(rng.uniform(VELOCITY_MIN, VELOCITY_MAX))]
    while len(velocities) < count:
        candidate = np.round(rng.uniform(VELOCITY_MIN, VELOCITY_MAX))
        if abs(candidate - velocities[-1]) >= MIN_CONTRAST_B:
            velocities.append(candidate)
    return np.array(velocities)


# --- interface geometry ----------------------------------------------------------------


def _fold_curve(knots: np.ndarray) -> np.ndarray:
    """A C1 piecewise-quadratic curve over columns 0..NX-1 through knots at 0, 10, ..., 60.

    A parabola through the first three knots starts the curve; each later 10-column segment
    is the quadratic that keeps the slope it inherits and meets the next knot; after the
    last knot the curve keeps its slope and levels off at the right edge. Built from the
    left, the curve bends harder toward the right: the pattern of the real CurveVel-A
    interfaces, whose spread between knots grows from left to right while the knots
    themselves stay within +-T/2, and which miss their top layer at column 65 in 16 % of
    the maps (this curve: 16 %) and never left of column 30.
    """
    h = float(KNOT_SPACING)
    last = len(knots) - 1
    curve = np.empty(NX)
    # First two segments: the parabola through (0, k0), (h, k1), (2h, k2).
    a = (knots[2] - 2 * knots[1] + knots[0]) / (2 * h * h)
    b = (knots[1] - knots[0]) / h - a * h
    t = _COLUMNS[: 2 * KNOT_SPACING]
    curve[: 2 * KNOT_SPACING] = knots[0] + b * t + a * t * t
    slope = b + 2 * a * 2 * h
    # Then one quadratic per segment, slope-continuous, through the next knot ...
    for k in range(2, last):
        a = (knots[k + 1] - knots[k] - slope * h) / (h * h)
        t = _COLUMNS[k * KNOT_SPACING : (k + 1) * KNOT_SPACING] - k * KNOT_SPACING
        curve[k * KNOT_SPACING : (k + 1) * KNOT_SPACING] = knots[k] + slope * t + a * t * t
        slope = slope + 2 * a * h
    # ... and a last one that keeps the slope and is level at the right edge.
    t = _COLUMNS[last * KNOT_SPACING :] - last * KNOT_SPACING
    width = NX - last * KNOT_SPACING
    curve[last * KNOT_SPACING :] = knots[last] + slope * t - slope * t * t / (2 * width)
    return curve


def _interface_offsets(
    rng: np.random.Generator, count: int, amplitude: float, curved: bool, jitter: float
) -> np.ndarray:
    """(count, NX) vertical shift of each interface, in cells.

    One shared shift, drawn from U(-amplitude, amplitude) (flat) or a fold through knots so
    drawn (curved), plus a small per-interface jitter U(-jitter, jitter) at every knot: the
    real CurveVel-A interfaces are parallel up to a cell or two, not exactly.
    """
    knots_count = len(range(0, NX, KNOT_SPACING)) if curved else 1
    shared = rng.uniform(-amplitude, amplitude, knots_count)
    knots = shared[None, :] + rng.uniform(-jitter, jitter, (count, knots_count))
    if not curved:
        return np.repeat(knots, NX, axis=1)
    return np.stack([_fold_curve(k) for k in knots])


def stack_a(rng: np.random.Generator, curved: bool) -> LayerStack:
    """FlatVel-A / CurveVel-A stack, calibrated on the real maps (see the module docstring)."""
    interfaces_count = int(rng.integers(3, 8))  # M
    spacing = NZ / interfaces_count  # T
    depths = spacing * np.arange(1, interfaces_count + 1)  # the last one at the bottom edge
    offsets = _interface_offsets(rng, interfaces_count, spacing / 2, curved, JITTER_A)
    return LayerStack(depths[:, None] + offsets, _sorted_velocities(rng, interfaces_count + 1))


def stack_b(rng: np.random.Generator, curved: bool) -> LayerStack:
    """FlatVel-B / CurveVel-B stack: more, uneven layers; unsorted, high-contrast velocities."""
    interfaces_count = int(rng.integers(6, 12))
    mean_spacing = NZ / interfaces_count
    gaps = mean_spacing * rng.uniform(0.4, 1.6, interfaces_count)
    depths = np.cumsum(gaps) * NZ / gaps.sum()  # uneven layers; the last interface at the bottom
    offsets = _interface_offsets(rng, interfaces_count, mean_spacing if curved else mean_spacing / 2, curved, JITTER_B)
    return LayerStack(depths[:, None] + offsets, _contrasting_velocities(rng, interfaces_count + 1))


# --- faults ----------------------------------------------------------------------------


def fault_coordinates(
    rng: np.random.Generator, depth: np.ndarray, lateral: np.ndarray, throw_range: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Where each point of the faulted section was before one fault slipped.

    The fault plane passes through (depth 35, lateral x0) with dip angle theta from the
    horizontal, dipping toward +x or -x. Points above the plane (the hanging wall) moved
    along it by a slip whose vertical part is the throw: down for a normal fault, up for a
    reverse one. Sampling the unfaulted model at the returned coordinates gives the faulted
    map.
    """
    x0 = rng.uniform(15.0, NX - 15.0)
    theta = np.deg2rad(rng.uniform(45.0, 80.0))
    dips_toward = rng.choice([-1.0, 1.0])  # +1: the plane deepens toward +x
    throw = rng.uniform(*throw_range) * rng.choice([-1.0, 1.0])  # > 0: normal fault (down)
    plane_depth = NZ / 2 + dips_toward * (lateral - x0) * np.tan(theta)
    hanging_wall = depth < plane_depth
    heave = dips_toward * throw / np.tan(theta)  # lateral part of the slip along the plane
    return (
        np.where(hanging_wall, depth - throw, depth),
        np.where(hanging_wall, lateral - heave, lateral),
    )


def _faulted(stack: LayerStack, rng: np.random.Generator, faults: int, throw_range: tuple[float, float]) -> np.ndarray:
    """The stack cut by `faults` faults; each fault is younger than the next and displaces it."""
    depth, lateral = _DEPTH, _LATERAL
    for _ in range(faults):
        depth, lateral = fault_coordinates(rng, depth, lateral, throw_range)
    return stack.sample(depth, lateral)


# --- one function per family -----------------------------------------------------------


def flatvel_a(rng: np.random.Generator) -> np.ndarray:
    return stack_a(rng, curved=False).sample(_DEPTH, _LATERAL)


def curvevel_a(rng: np.random.Generator) -> np.ndarray:
    return stack_a(rng, curved=True).sample(_DEPTH, _LATERAL)


def flatvel_b(rng: np.random.Generator) -> np.ndarray:
    return stack_b(rng, curved=False).sample(_DEPTH, _LATERAL)


def curvevel_b(rng: np.random.Generator) -> np.ndarray:
    return stack_b(rng, curved=True).sample(_DEPTH, _LATERAL)


def flatfault_a(rng: np.random.Generator) -> np.ndarray:
    return _faulted(stack_a(rng, curved=False), rng, faults=1, throw_range=(4.0, 14.0))


def curvefault_a(rng: np.random.Generator) -> np.ndarray:
    return _faulted(stack_a(rng, curved=True), rng, faults=1, throw_range=(4.0, 14.0))


def flatfault_b(rng: np.random.Generator) -> np.ndarray:
    return _faulted(stack_b(rng, curved=False), rng, faults=int(rng.integers(1, 3)), throw_range=(6.0, 22.0))


def curvefault_b(rng: np.random.Generator) -> np.ndarray:
    return _faulted(stack_b(rng, curved=True), rng, faults=int(rng.integers(1, 3)), throw_range=(6.0, 22.0))


GENERATORS: dict[str, Callable[[np.random.Generator], np.ndarray]] = {
    "FlatVel-A": flatvel_a,
    "FlatVel-B": flatvel_b,
    "CurveVel-A": curvevel_a,
    "CurveVel-B": curvevel_b,
    "FlatFault-A": flatfault_a,
    "FlatFault-B": flatfault_b,
    "CurveFault-A": curvefault_a,
    "CurveFault-B": curvefault_b,
}


def sample_rng(family: str, seed: int, index: int) -> np.random.Generator:
    """The generator of map `index`: depends on (seed, family, index) only."""
    family_key = zlib.crc32(family.encode())  # stable across runs, unlike hash()
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(family_key, index)))


def generate_velocity(family: str, n: int, seed: int) -> np.ndarray:
    """n synthetic velocity maps of one OpenFWI family: float32 (n, 1, 70, 70) in m/s."""
    get_family(family)  # unknown names fail with the list of known families
    if family not in GENERATORS:
        raise ValueError(
            f"no synthetic generator for {family!r} (Style families come from natural images "
            f"by style transfer); families with one: {', '.join(GENERATORS)}"
        )
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    generate = GENERATORS[family]
    maps = np.empty((n, *VELOCITY_SHAPE), dtype=np.float32)
    for index in range(n):
        maps[index, 0] = generate(sample_rng(family, int(seed), index))
    return maps
