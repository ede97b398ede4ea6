"""Real OpenFWI velocity maps shipped inside the package (see embedded/README.md)."""

from __future__ import annotations

import io
import zipfile
from importlib import resources

import numpy as np

from .families import VELOCITY_SHAPE, get_family

EMBEDDED_REAL = {"FlatVel-A": "flatvel-a", "CurveVel-A": "curvevel-a"}


def load_real_velocity(family: str, split: str) -> np.ndarray:
    """All embedded maps of one family and split, float32 (N, 1, 70, 70) in m/s."""
    get_family(family)
    if family not in EMBEDDED_REAL:
        raise ValueError(
            f"family {family!r} has no embedded real velocity maps; "
            f"embedded real families: {', '.join(EMBEDDED_REAL)}"
        )
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    name = f"{EMBEDDED_REAL[family]}_{split}.zip"
    with resources.files(__package__).joinpath("embedded", name).open("rb") as raw:
        with zipfile.ZipFile(io.BytesIO(raw.read())) as archive:
            # vmodel1 .. vmodel12: numeric order, not lexical
            members = sorted(archive.namelist(), key=lambda m: int(m[len("vmodel") : -len(".npy")]))
            maps = [np.load(io.BytesIO(archive.read(m))) for m in members]
    velocity = np.concatenate(maps).astype(np.float32)
    assert velocity.shape[1:] == VELOCITY_SHAPE, velocity.shape
    return velocity
