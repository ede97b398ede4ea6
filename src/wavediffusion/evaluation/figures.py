"""The workflow's figures of data and training: velocity maps per family, training curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.families import VELOCITY_MAX, VELOCITY_MIN
from ..plotting import plt, save_figure

VELOCITY_CMAP = "jet"  # as OpenFWI's own figures draw velocity
GRID_SPACING_M = 10  # OpenFWI's grid: 70 x 70 cells of 10 m


def show_velocity(axis, velocity):
    """A velocity map in m/s on OpenFWI's 700 m x 700 m grid: square, depth down, the
    1500-4500 m/s scale every figure shares. Returns the image (for a colourbar)."""
    size = GRID_SPACING_M * velocity.shape[-1]
    image = axis.imshow(velocity, cmap=VELOCITY_CMAP, vmin=VELOCITY_MIN, vmax=VELOCITY_MAX,
                        extent=(0, size, size, 0), interpolation="nearest")
    axis.set_xticks([])
    axis.set_yticks([])
    return image


def plot_velocity_families(
    samples: dict[str, np.ndarray],
    path: str | Path,
    per_family: int = 4,
    real: set[str] | None = None,
) -> Path:
    """Grid of velocity maps: one row per family, `per_family` examples per row.

    samples: family name -> maps (N, 1, 70, 70) or (N, 70, 70) in m/s; rows keep the dict's
    order and show the first `per_family` maps (fewer if a family has fewer). All panels
    share one colour scale, OpenFWI's 1500-4500 m/s, with one colourbar; each row is labelled
    with the family name and "(real OpenFWI)" if the name is in `real`, else "(synthetic)".
    """
    if not samples:
        raise ValueError("plot_velocity_families: no families to plot")
    if per_family < 1:
        raise ValueError(f"per_family must be at least 1, got {per_family}")
    real = real or set()
    rows = len(samples)
    figure, axes = plt.subplots(
        rows, per_family, figsize=(1.9 * per_family + 1.2, 1.9 * rows + 0.3), squeeze=False, layout="constrained"
    )
    image = None
    for row, (family, maps) in enumerate(samples.items()):
        maps = np.asarray(maps)
        if maps.ndim == 4:
            maps = maps[:, 0]  # (N, 1, H, W) -> (N, H, W)
        if maps.ndim != 3:
            raise ValueError(f"{family}: expected maps (N, 1, H, W) or (N, H, W), got shape {maps.shape}")
        for column in range(per_family):
            ax = axes[row, column]
            ax.set_xticks([])
            ax.set_yticks([])
            if column >= len(maps):  # fewer maps than columns: a blank panel, label kept
                for spine in ax.spines.values():
                    spine.set_visible(False)
                continue
            image = ax.imshow(maps[column], cmap=VELOCITY_CMAP, vmin=VELOCITY_MIN, vmax=VELOCITY_MAX, interpolation="nearest")
        origin = "real OpenFWI" if family in real else "synthetic"
        axes[row, 0].set_ylabel(f"{family}\n({origin})", fontsize=9)
    if image is not None:
        colourbar = figure.colorbar(image, ax=axes, shrink=0.6, aspect=30)
        colourbar.set_label("velocity (m/s)")
    return save_figure(figure, path)


def plot_dataset_velocity(dataset: str | Path, path: str | Path, per_family: int = 4, split: str = "train") -> Path:
    """plot_velocity_families for a dataset store: the first `per_family` maps of each family.

    Rows follow the store's family order and show OpenFWI's native 70 x 70 maps (m/s).
    A family counts as real OpenFWI unless the store was built from the embedded source and
    that family's embedded maps are synthetic.
    """
    from ..data.families import get_family
    from ..data.store import open_dataset

    root = open_dataset(dataset)
    names = list(root.attrs["families"])
    group = root[split]
    family_of_sample = group["family"][:]
    samples = {}
    for name in root.attrs.get("families_used", names):
        rows = np.flatnonzero(family_of_sample == names.index(name))[:per_family]
        if rows.size:
            samples[name] = np.stack([group["velocity_native"][int(row)] for row in rows])
    embedded = root.attrs["provenance"]["source"] == "embedded"
    real = {name for name in samples if not embedded or get_family(name).embedded == "real"}
    return plot_velocity_families(samples, path, per_family=per_family, real=real)


def plot_training_curves(log_csv: str | Path, path: str | Path, title: str = "") -> Path:
    """A training run's log.csv as curves against the step: one panel per validation metric
    (val/...) and one for the training loss, so a plateau (or its absence) shows at a glance."""
    import csv

    with open(log_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    columns = [c for c in (rows[0].keys() if rows else ()) if c.startswith("val/")] + ["train/loss"]
    series = {c: [(int(r["step"]), float(r[c])) for r in rows if r.get(c)] for c in columns}
    series = {c: points for c, points in series.items() if points}
    figure, axes = plt.subplots(1, max(len(series), 1), figsize=(3.6 * max(len(series), 1), 3.2),
                                layout="constrained", squeeze=False)
    for ax, (name, points) in zip(axes[0], series.items()):
        steps, values = zip(*points)
        ax.plot(steps, values, "o-" if len(points) < 40 else "-", markersize=3)
        if min(values) > 0:
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(name, fontsize=9)
    if title:
        figure.suptitle(title, fontsize=10)
    return save_figure(figure, path)
