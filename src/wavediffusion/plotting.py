"""matplotlib with the Agg backend (no display needed), and the one way figures are saved.

A figure is written atomically: saved to a temporary file in the target directory and
renamed over the target, so an interrupted run never leaves a truncated PNG that Snakemake
would take as up to date.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

from .data.families import VELOCITY_MAX, VELOCITY_MIN  # noqa: E402
from .files import atomic_file  # noqa: E402

VELOCITY_CMAP = "jet"  # as OpenFWI's own figures draw velocity
GRID_SPACING_M = 10  # OpenFWI's grid: 70 x 70 cells of 10 m


def show_velocity(axis, velocity, label_axes: bool = False):
    """A velocity map in m/s on OpenFWI's 700 m x 700 m grid: square, depth down, the
    1500-4500 m/s scale every figure shares. Returns the image (for a colourbar)."""
    size = GRID_SPACING_M * velocity.shape[-1]
    image = axis.imshow(velocity, cmap=VELOCITY_CMAP, vmin=VELOCITY_MIN, vmax=VELOCITY_MAX,
                        extent=(0, size, size, 0), interpolation="nearest")
    if label_axes:
        axis.set_xlabel("offset (m)", fontsize=7)
        axis.set_ylabel("depth (m)", fontsize=7)
    else:
        axis.set_xticks([])
        axis.set_yticks([])
    return image


def save_figure(figure: plt.Figure, path: str | Path, dpi: int = 120) -> Path:
    """Save `figure` to `path` atomically and close it."""
    path = Path(path)
    try:
        with atomic_file(path) as tmp:
            figure.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or "png")
    finally:
        plt.close(figure)
    return path
