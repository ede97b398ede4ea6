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

from .files import atomic_file  # noqa: E402

def save_figure(figure: plt.Figure, path: str | Path, dpi: int = 120) -> Path:
    """Save `figure` to `path` atomically and close it."""
    path = Path(path)
    try:
        with atomic_file(path) as tmp:
            figure.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or "png")
    finally:
        plt.close(figure)
    return path
