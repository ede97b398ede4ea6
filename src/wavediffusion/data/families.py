"""The ten OpenFWI families: names, file naming, split sizes.

Facts from the OpenFWI paper (Deng et al., NeurIPS 2022 Datasets and Benchmarks) and its
data pages: every native file holds 500 samples; seismic files are float32
[500, 5, 1000, 70] (shots, time samples, receivers) and velocity files float32
[500, 1, 70, 70] in m/s.  "Vel" and "Style" families name their files data{n}.npy /
model{n}.npy, "Fault" families seis{...}.npy / vel{...}.npy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLES_PER_FILE = 500
SEISMIC_SHAPE = (5, 1000, 70)  # (shots, time samples, receivers)
VELOCITY_SHAPE = (1, 70, 70)  # (channel, depth, lateral)
VELOCITY_MIN = 1500.0  # m/s, OpenFWI's velocity range
VELOCITY_MAX = 4500.0


@dataclass(frozen=True)
class Family:
    name: str  # as the paper writes it, e.g. "FlatVel-A"
    directory: str  # OpenFWI's folder name, e.g. "FlatVel_A"
    seismic_prefix: str  # "data" or "seis"
    velocity_prefix: str  # "model" or "vel"
    train_samples: int
    test_samples: int
    embedded: str  # how the offline default provides it: "real" maps, "synthetic" maps, or "none"

    @property
    def train_files(self) -> int:
        return self.train_samples // SAMPLES_PER_FILE

    @property
    def test_files(self) -> int:
        return self.test_samples // SAMPLES_PER_FILE

    @property
    def test_fraction(self) -> float:
        """OpenFWI's own share of test samples, used where a local folder's maps are split here."""
        return self.test_samples / (self.train_samples + self.test_samples)


def _vel(name: str, embedded: str) -> Family:
    return Family(name, name.replace("-", "_"), "data", "model", 24_000, 6_000, embedded)


def _fault(name: str, embedded: str) -> Family:
    return Family(name, name.replace("-", "_"), "seis", "vel", 48_000, 6_000, embedded)


def _style(name: str) -> Family:
    return Family(name, name.replace("-", "_"), "data", "model", 60_000, 7_000, "none")


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        _vel("FlatVel-A", "real"),
        _vel("FlatVel-B", "synthetic"),
        _vel("CurveVel-A", "real"),
        _vel("CurveVel-B", "synthetic"),
        _fault("FlatFault-A", "synthetic"),
        _fault("FlatFault-B", "synthetic"),
        _fault("CurveFault-A", "synthetic"),
        _fault("CurveFault-B", "synthetic"),
        _style("Style-A"),
        _style("Style-B"),
    )
}

FAMILY_NAMES: tuple[str, ...] = tuple(FAMILIES)


def indices_per_family(families: np.ndarray, per_family: int | None) -> dict[str, np.ndarray]:
    """Indices of a split's samples, given their family codes, per family present (in
    FAMILIES order): the first `per_family` of each, or all of them for None."""
    chosen = {}
    for code in sorted(set(families.tolist())):
        index = np.flatnonzero(families == code)
        chosen[FAMILY_NAMES[code]] = index if per_family is None else index[:per_family]
    return chosen


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(
            f"unknown OpenFWI family {name!r}; known: {', '.join(FAMILY_NAMES)}"
        ) from None
