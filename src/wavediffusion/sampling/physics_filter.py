"""The physics filter: which generated pairs satisfy the wave equation well enough to keep.

A pair is *valid* when its PDE deviation (the paper's metric, check_shard's `deviation`:
MSE between the decoded seismic and F(decoded velocity) in the normalised seismic space)
is at most physics.max_deviation (epsilon). The mask is stored in the pairs store itself
(`valid`), so a user of the store needs nothing else to pick the accepted pairs, and
the acceptance rate is the paper's "PDE satisfaction" made a number.

What to read epsilon against: the data floor, the same operator applied to the data set's
own true pairs (rule pde_floor, deepwave rows on the 64x64 model-space velocity). A true
OpenFWI pair scores about 1e-3 there (resizing 70 -> 64 -> 70 costs that much), the
paper's diffusion samples 0.0038 and its random latents 0.0082 (Table 5).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..evaluation.figures import plt, save_figure  # plt with the Agg backend chosen
from ..files import write_csv
from .shard import gather
from .store import open_pairs_store

REPORT_COLUMNS = ("variant", "n", "max_deviation", "n_valid", "acceptance_rate", "deviation_mean",
                  "deviation_median", "deviation_p95", "data_floor")


def data_floor(floor_csv: str | Path) -> float:
    """The n-weighted mean deviation of the data set's true pairs, as the check measures them
    (deepwave on the model-space velocity), from pde_floor.csv."""
    with open(floor_csv, newline="") as handle:
        rows = [row for row in csv.DictReader(handle)
                if row["backend"] == "deepwave" and row["velocity_input"] == "model64"]
    if not rows:
        raise ValueError(f"{floor_csv}: no deepwave/model64 rows; is it the pde_floor rule's output?")
    n = np.array([float(row["n"]) for row in rows])
    mean = np.array([float(row["deviation_mean"]) for row in rows])
    return float((n * mean).sum() / n.sum())


def apply_physics_filter(store: str | Path, max_deviation: float) -> np.ndarray:
    """Write `valid` = deviation <= max_deviation into a complete store; returns the mask."""
    if not max_deviation > 0:
        raise ValueError(f"physics.max_deviation must be positive, got {max_deviation!r}")
    gather(store)  # refuses a store with shards not sampled or not checked, naming them
    root = open_pairs_store(store)
    deviation = np.asarray(root["deviation"][:], dtype=np.float64)
    valid = deviation <= max_deviation
    root["valid"][:] = valid  # one writer: this rule runs after every shard is done
    root.attrs["physics_filter"] = {"max_deviation": float(max_deviation), "n_valid": int(valid.sum())}
    return valid


def physics_report(store: str | Path, variant: str, max_deviation: float, floor_csv: str | Path,
                   out_csv: str | Path, figure: str | Path) -> dict:
    """Filter the store, then write the one-row report and the histogram of deviations."""
    valid = apply_physics_filter(store, max_deviation)
    deviation = np.asarray(open_pairs_store(store, mode="r")["deviation"][:], dtype=np.float64)
    floor = data_floor(floor_csv)
    row = {
        "variant": variant, "n": len(deviation), "max_deviation": max_deviation, "n_valid": int(valid.sum()),
        "acceptance_rate": float(valid.mean()), "deviation_mean": float(deviation.mean()),
        "deviation_median": float(np.median(deviation)), "deviation_p95": float(np.quantile(deviation, 0.95)),
        "data_floor": floor,
    }
    write_csv([row], out_csv, REPORT_COLUMNS)
    plot_deviation_histogram(deviation, max_deviation, floor, variant, figure)
    return row


def plot_deviation_histogram(deviation: np.ndarray, max_deviation: float, floor: float, variant: str,
                             path: str | Path) -> Path:
    """Deviations on a log axis, with epsilon and the data floor marked."""
    positive = deviation[deviation > 0]
    low = min(positive.min(), floor, max_deviation) / 1.5
    high = max(positive.max(), max_deviation) * 1.5
    figure, axis = plt.subplots(figsize=(6.5, 3.8))
    axis.hist(positive, bins=np.geomspace(low, high, 60), color="tab:blue", alpha=0.8)
    axis.axvline(max_deviation, color="tab:red", label=f"physics.max_deviation = {max_deviation:g} "
                 f"({(deviation <= max_deviation).mean():.1%} accepted)")
    axis.axvline(floor, color="black", linestyle="--", label=f"data floor (true pairs) = {floor:.2g}")
    axis.set_xscale("log")
    axis.set_xlabel("PDE deviation  ||D_s(z) - F(D_v(z))||^2 (mean, normalised seismic)")
    axis.set_ylabel("pairs")
    axis.set_title(f"{variant}: {len(deviation)} generated pairs against the wave equation")
    axis.legend(fontsize=8)
    return save_figure(figure, path)
