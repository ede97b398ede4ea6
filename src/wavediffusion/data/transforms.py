"""OpenFWI's native arrays <-> the model representation, and back.

The paper feeds its networks seismic [3, 1024, 64] and velocity [1, 64, 64], both in
[-1, 1]: 3 of OpenFWI's 5 shots, resized to 1024 time samples x 64 receivers,
log-transformed with OpenFWI's own `sign(x) * log1p(|x|)`, then min-max normalised with
constants measured on the train split; velocity resized to 64 x 64 and min-max
normalised from OpenFWI's 1500-4500 m/s.  Everything that maps data into or out of that
representation lives here, so preprocessing, the physics check and every evaluation use
one definition.

Resizing is bilinear (align_corners=False).  It is not invertible: resizing back to the
native grid recovers smooth fields closely but not sharp steps exactly (see the tests).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from .families import SEISMIC_SHAPE, VELOCITY_MAX, VELOCITY_MIN, VELOCITY_SHAPE


@dataclass(frozen=True)
class Representation:
    """How one data set maps OpenFWI's native arrays into the model's [-1, 1] space."""

    shots: tuple[int, ...] = (0, 2, 4)
    time_samples: int = 1024
    receivers: int = 64
    velocity_size: int = 64
    # min / max of sign(x)*log1p(|x|) of the resized train seismic (preprocess measures them)
    seismic_log_min: float = -1.0
    seismic_log_max: float = 1.0
    velocity_min: float = VELOCITY_MIN
    velocity_max: float = VELOCITY_MAX

    def __post_init__(self):
        if not self.seismic_log_max > self.seismic_log_min:
            raise ValueError(
                f"seismic_log_max ({self.seismic_log_max}) must exceed seismic_log_min ({self.seismic_log_min})"
            )
        bad = [s for s in self.shots if not 0 <= s < SEISMIC_SHAPE[0]]
        if bad:
            raise ValueError(f"shots {bad} out of range: OpenFWI has shots 0..{SEISMIC_SHAPE[0] - 1}")

    def to_attrs(self) -> dict:
        """JSON-serialisable form, stored in the Zarr store's attributes."""
        attrs = asdict(self)
        attrs["shots"] = list(self.shots)
        return attrs

    @classmethod
    def from_attrs(cls, attrs: dict) -> "Representation":
        fields = dict(attrs)
        fields["shots"] = tuple(fields["shots"])
        return cls(**fields)

    @property
    def seismic_shape(self) -> tuple[int, int, int]:
        return (len(self.shots), self.time_samples, self.receivers)

    @property
    def velocity_shape(self) -> tuple[int, int, int]:
        return (1, self.velocity_size, self.velocity_size)


# --- elementwise transforms ---------------------------------------------------------------


def log_transform(x: torch.Tensor) -> torch.Tensor:
    """OpenFWI's seismic compression: sign(x) * log1p(|x|)."""
    return torch.sign(x) * torch.log1p(torch.abs(x))


def inverse_log_transform(y: torch.Tensor) -> torch.Tensor:
    return torch.sign(y) * torch.expm1(torch.abs(y))


def minmax_normalise(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """[lo, hi] -> [-1, 1] (values outside [lo, hi] map outside [-1, 1]; nothing is clipped)."""
    return 2.0 * (x - lo) / (hi - lo) - 1.0


def minmax_denormalise(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    return (x + 1.0) * 0.5 * (hi - lo) + lo


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of the last two axes of (B, C, H, W)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


# --- seismic ------------------------------------------------------------------------------


def seismic_log_resized(raw: torch.Tensor, rep: Representation) -> torch.Tensor:
    """(B, 5, 1000, 70) raw amplitudes -> (B, S, T, R) log-transformed, not yet normalised.

    Preprocessing measures its min-max constants on this intermediate.
    """
    if raw.ndim != 4 or raw.shape[1] != SEISMIC_SHAPE[0]:
        raise ValueError(f"seismic must be (B, {SEISMIC_SHAPE[0]}, T, R), got {tuple(raw.shape)}")
    selected = raw[:, list(rep.shots)].float()  # (B, S, 1000, 70)
    return log_transform(resize(selected, (rep.time_samples, rep.receivers)))


def seismic_to_model(raw: torch.Tensor, rep: Representation) -> torch.Tensor:
    """(B, 5, 1000, 70) raw amplitudes -> (B, S, T, R) in the model's [-1, 1] space."""
    return minmax_normalise(seismic_log_resized(raw, rep), rep.seismic_log_min, rep.seismic_log_max)


def seismic_from_model(x: torch.Tensor, rep: Representation) -> torch.Tensor:
    """(B, S, T, R) model space -> (B, S, 1000, 70) raw amplitudes of the kept shots."""
    log_values = minmax_denormalise(x.float(), rep.seismic_log_min, rep.seismic_log_max)
    return resize(inverse_log_transform(log_values), SEISMIC_SHAPE[1:])


# --- velocity -----------------------------------------------------------------------------


def velocity_to_model(velocity: torch.Tensor, rep: Representation) -> torch.Tensor:
    """(B, 1, 70, 70) m/s -> (B, 1, V, V) in [-1, 1]."""
    if velocity.ndim != 4 or velocity.shape[1] != 1:
        raise ValueError(f"velocity must be (B, 1, H, W), got {tuple(velocity.shape)}")
    resized = resize(velocity.float(), (rep.velocity_size, rep.velocity_size))
    return minmax_normalise(resized, rep.velocity_min, rep.velocity_max)


def velocity_from_model(x: torch.Tensor, rep: Representation, clamp: bool = True) -> torch.Tensor:
    """(B, 1, V, V) model space -> (B, 1, 70, 70) m/s on OpenFWI's grid.

    clamp=True keeps decoded maps inside [velocity_min, velocity_max]: a generated map a
    little outside [-1, 1] must not ask the simulator for 4600 m/s it was never trained on.
    """
    velocity = resize(minmax_denormalise(x.float(), rep.velocity_min, rep.velocity_max), VELOCITY_SHAPE[1:])
    if clamp:
        velocity = velocity.clamp(rep.velocity_min, rep.velocity_max)
    return velocity
