"""OpenFWI's acquisition geometry and source wavelet.

OpenFWI (Deng et al., NeurIPS 2022) simulates every family on a 70 x 70 grid with 10 m
cells, 1 ms time steps, a 15 Hz Ricker source, five sources and 70 receivers one cell
below the top edge, and no free surface. Its generator descends from the CSIM/KAUST
Matlab code ``a2d_mod_abc24`` (Xin Wang, 2012) whose Ricker wavelet is reproduced by
:func:`ricker`; see docs/physics.md for sources.

Everything that changes the simulated data lives in one frozen dataclass, so a test can
shrink the grid or the record length without touching the propagators.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# Largest stable Courant number  dt * v * sqrt(1/dx^2 + 1/dz^2)  of the leapfrog scheme
# with 4th-order space stencil (-1/12, 4/3, -5/2, 4/3, -1/12): 2 / sqrt(16/3) = sqrt(3)/2.
# In OpenFWI's terms (v*dt/dx per axis, 2-D) this is sqrt(3/8) = 0.612.
CRITICAL_COURANT_NUMBER = math.sqrt(3.0) / 2.0


@dataclass(frozen=True)
class Acquisition:
    """Grid, time axis, source and receivers of one forward-modelling setup.

    Defaults are OpenFWI's. Grid indices are (depth row, lateral column), 0-based, in
    the velocity map's own cells (absorbing layers are added outside it).
    """

    nz: int = 70  # grid rows (depth)
    nx: int = 70  # grid columns (lateral)
    dx: float = 10.0  # m, square cells
    dt: float = 1e-3  # s
    nt: int = 1000  # recorded time samples per trace
    # OpenFWI simulates nt + 1 steps and drops the first recorded sample.
    dropped_samples: int = 1
    peak_frequency: float = 15.0  # Hz, Ricker source
    source_columns: tuple[int, ...] = (0, 17, 34, 52, 69)  # one shot per source
    source_depth: int = 1  # grid row of every source
    receiver_columns: tuple[int, ...] | None = None  # None: a receiver at every column
    receiver_depth: int = 1  # grid row of every receiver
    # OpenFWI's absorbing layer (openfwi backend): cells added on each side.
    absorbing_cells: int = 120
    # deepwave's C-PML (deepwave backend): cells added on each side.
    pml_width: int = 20
    # Velocities forward_model accepts, m/s. The upper bound is also deepwave's max_vel
    # (PML strength, time step); both schemes must be stable there at dt (checked below).
    min_velocity: float = 1000.0
    max_velocity: float = 5000.0

    def __post_init__(self) -> None:
        if self.nz < 1 or self.nx < 1 or self.nt < 1 or self.dropped_samples < 0:
            raise ValueError(f"grid and time axis must be positive: {self}")
        if not (self.dx > 0 and self.dt > 0 and self.peak_frequency > 0):
            raise ValueError(f"dx, dt and peak_frequency must be positive: {self}")
        if not self.source_columns:
            raise ValueError("at least one source is needed")
        for name, depth, columns in (
            ("source", self.source_depth, self.source_columns),
            ("receiver", self.receiver_depth, self.receivers),
        ):
            if not 0 <= depth < self.nz or not all(0 <= c < self.nx for c in columns):
                raise ValueError(f"{name} outside the {self.nz} x {self.nx} grid: {self}")
        if not 0 < self.min_velocity < self.max_velocity:
            raise ValueError(f"need 0 < min_velocity < max_velocity: {self}")
        if self.courant_number >= CRITICAL_COURANT_NUMBER:
            raise ValueError(
                f"max_velocity {self.max_velocity} m/s with dt={self.dt} s and dx={self.dx} m "
                f"gives Courant number {self.courant_number:.3f}; the 2nd/4th-order scheme "
                f"is unstable above {CRITICAL_COURANT_NUMBER:.3f}"
            )

    @property
    def receivers(self) -> tuple[int, ...]:
        """Receiver columns, resolved (every column when ``receiver_columns`` is None)."""
        if self.receiver_columns is None:
            return tuple(range(self.nx))
        return self.receiver_columns

    @property
    def n_shots(self) -> int:
        return len(self.source_columns)

    @property
    def n_receivers(self) -> int:
        return len(self.receivers)

    @property
    def n_steps(self) -> int:
        """Time steps simulated: the recorded samples plus the dropped ones."""
        return self.nt + self.dropped_samples

    @property
    def courant_number(self) -> float:
        """dt * max_velocity * sqrt(2) / dx: the largest Courant number this setup allows."""
        return self.dt * self.max_velocity * math.sqrt(2.0) / self.dx

    @property
    def seismic_shape(self) -> tuple[int, int, int]:
        """One sample's seismic data: (shots, time samples, receivers), OpenFWI's layout."""
        return (self.n_shots, self.nt, self.n_receivers)

    @property
    def velocity_shape(self) -> tuple[int, int, int]:
        """One velocity map: (1, depth, lateral)."""
        return (1, self.nz, self.nx)

    def wavelet(self, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
        """The source wavelet sampled at every simulated step, (n_steps,)."""
        return ricker(self.peak_frequency, self.dt, self.n_steps, dtype=dtype, device=device)


def ricker_peak_sample(peak_frequency: float, dt: float) -> int:
    """Index of the Ricker wavelet's peak: floor(nw / 2), nw = 2 floor(1.1 / (f dt)) + 1.

    For OpenFWI (15 Hz, 1 ms) this is 73: the peak is 73 ms after the first sample.
    """
    half_width = math.floor(2.2 / peak_frequency / dt / 2.0)
    return half_width


def ricker(
    peak_frequency: float,
    dt: float,
    nt: int,
    dtype: torch.dtype = torch.float32,
    device=None,
) -> torch.Tensor:
    """Ricker wavelet as the CSIM Matlab code (and so OpenFWI's generator) builds it.

    w(t) = (1 - 2 a^2) exp(-a^2),  a = pi f (t - t0),  sampled at t = k dt, k = 0..nt-1.

    Peak delay: t0 = nc * dt with nc = floor(nw / 2) and nw = 2 floor(1.1 / (f dt)) + 1,
    i.e. about 1.1 / f. For f = 15 Hz and dt = 1 ms: nw = 147 samples, nc = 73, so the
    peak is at sample 73 (t0 = 73 ms). The wavelet is truncated to its nw samples
    (|a| <= 3.44 at 15 Hz, where it has decayed to 1.6e-4 of the peak) and zero after.
    Amplitude: 1 at the peak (dimensionless; the propagators scale it, see forward.py).
    """
    n_wavelet = 2 * ricker_peak_sample(peak_frequency, dt) + 1
    if nt < n_wavelet:
        raise ValueError(f"nt={nt} is shorter than the {n_wavelet}-sample Ricker wavelet")
    center = n_wavelet // 2
    k = torch.arange(n_wavelet, dtype=torch.float64)
    a2 = ((center - k) * peak_frequency * dt * math.pi) ** 2
    wavelet = torch.zeros(nt, dtype=torch.float64)
    wavelet[:n_wavelet] = (1.0 - 2.0 * a2) * torch.exp(-a2)
    return wavelet.to(dtype=dtype, device=device)


OPENFWI_ACQUISITION = Acquisition()
