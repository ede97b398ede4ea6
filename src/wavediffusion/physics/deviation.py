"""The PDE deviation: how far a seismic section is from what the wave equation gives.

The paper's metric: for a pair (seismic s, velocity v) in the model representation, the
mean squared error between s and F(v) mapped into the same representation (same shots,
resize, log transform and normalisation), F being the acoustic forward operator on
OpenFWI's acquisition.  The floor is this deviation for the data set's own true pairs: no
generated pair can be expected to do better than the simulator agrees with the data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..data.families import indices_per_family
from ..data.store import open_dataset, representation_of
from ..data.transforms import Representation, seismic_to_model, velocity_from_model
from ..devices import resolve_device
from .forward import forward_model


def simulate_in_model_space(velocity_native: torch.Tensor, rep: Representation, backend: str, batch_size: int) -> torch.Tensor:
    """(B, 1, 70, 70) m/s -> F(v) as (B, S, T, R) in the model's normalised seismic space."""
    return seismic_to_model(forward_model(velocity_native, backend=backend, batch_size=batch_size), rep)


def simulate_model_velocity(velocity: torch.Tensor, rep: Representation, backend: str, batch_size: int) -> torch.Tensor:
    """F of velocity maps in the model's space, (B, 1, V, V) in [-1, 1]: taken back to OpenFWI's
    70 x 70 m/s, simulated, and returned as (B, S, T, R) in the model's seismic space -- the
    path of every generated or decoded pair through the physics check."""
    return simulate_in_model_space(velocity_from_model(velocity, rep), rep, backend, batch_size)


def per_sample_mse(seismic: torch.Tensor, simulated: torch.Tensor) -> torch.Tensor:
    """The paper's deviation metric: MSE over (S, T, R) per sample, (B,)."""
    return ((seismic.to(simulated) - simulated) ** 2).mean(dim=(1, 2, 3))


FLOOR_COLUMNS = ("family", "backend", "velocity_input", "n", "deviation_mean", "deviation_std", "deviation_max")


TRUE_PAIR_COLUMNS = ("family", "deviation")


def pde_floor(
    dataset: str | Path, samples_per_family: int, backends: list[str], batch_size: int, device: str | None = None, progress: bool = True
) -> tuple[list[dict], list[dict]]:
    """The deviation of the test split's true pairs, per family, backend and velocity input.

    velocity_input "native70": OpenFWI's own 70x70 map, the simulators' disagreement alone;
    "model64": the stored 64x64 map taken back to 70x70, the path every generated pair takes
    through the physics check, so it is the floor those numbers are read against;
    "model64_other_pair" (families with two samples or more): pair i's seismic against the
    model64 velocity of pair i - 1 of the same family, the chance level -- a pair whose two
    halves merely look like the family, without belonging together.

    Returns (the rows of FLOOR_COLUMNS, every true pair's own deviation as the physics check
    measures a generated pair's -- deepwave, model64 -- in TRUE_PAIR_COLUMNS).
    """
    device = resolve_device(device)
    root = open_dataset(dataset)
    rep = representation_of(root)
    test = root["test"]
    chosen = indices_per_family(np.asarray(test["family"][:]), samples_per_family)
    rows, true_pairs = [], []
    for family in tqdm(root.attrs["families_used"], desc="pde floor", unit="family", disable=not progress):
        if family not in chosen:  # no test pair of this family
            continue
        index = chosen[family]
        seismic = torch.from_numpy(test["seismic"].get_orthogonal_selection((index,))).to(device)
        inputs = {
            "native70": torch.from_numpy(test["velocity_native"].get_orthogonal_selection((index,))).to(device),
            "model64": velocity_from_model(torch.from_numpy(test["velocity"].get_orthogonal_selection((index,))).to(device), rep),
        }
        if len(index) > 1:
            inputs["model64_other_pair"] = inputs["model64"].roll(1, dims=0)
        for backend in backends:
            for name, velocity in inputs.items():
                simulated = simulate_in_model_space(velocity, rep, backend, batch_size)
                deviation = per_sample_mse(seismic, simulated).double().cpu()
                if (backend, name) == ("deepwave", "model64"):
                    true_pairs += [{"family": family, "deviation": float(d)} for d in deviation]
                rows.append(
                    {
                        "family": family,
                        "backend": backend,
                        "velocity_input": name,
                        "n": len(index),
                        "deviation_mean": float(deviation.mean()),
                        "deviation_std": float(deviation.std()) if len(index) > 1 else 0.0,
                        "deviation_max": float(deviation.max()),
                    }
                )
    return rows, true_pairs
