"""The physics filter: which generated pairs satisfy the wave equation well enough to keep.

A pair is *valid* when its PDE deviation (the paper's metric, check_shard's `deviation`:
MSE between the decoded seismic and F(decoded velocity) in the normalised seismic space)
is at most physics.max_deviation (epsilon). The mask is stored in the pairs store itself
(`valid`), so a user of the store needs nothing else to pick the accepted pairs, and
the acceptance rate is the paper's "PDE satisfaction" made a number.

What to read epsilon against: the data floor, the same operator applied to the data set's
own true pairs (rule pde_floor, deepwave rows on the 64x64 model-space velocity). A true
OpenFWI pair scores about 1e-3 there (resizing 70 -> 64 -> 70 costs that much), the
paper's diffusion samples 0.0038 and its random latents 0.0082 (Table 5). The acceptance
curve lays both side by side: the accepted fraction of generated pairs and of the true
pairs (each one's own deviation, from pde_floor) at every threshold.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..evaluation.figures import plt, save_figure  # plt with the Agg backend chosen
from ..files import read_csv, write_csv
from .shard import gather
from .store import open_pairs_store

ACCEPTANCE_COLUMNS = ("threshold", "acceptance_generated", "acceptance_real")
REPORT_COLUMNS = ("variant", "n", "max_deviation", "n_valid", "acceptance_rate", "deviation_mean",
                  "deviation_median", "deviation_p95", "data_floor")


def data_floor(floor_csv: str | Path) -> float:
    """The n-weighted mean deviation of the data set's true pairs, as the check measures them
    (deepwave on the model-space velocity), from pde_floor.csv."""
    rows = [row for row in read_csv(floor_csv) if row["backend"] == "deepwave" and row["velocity_input"] == "model64"]
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


def true_pair_deviation(true_pairs_csv: str | Path) -> np.ndarray:
    """The true pairs' own deviations (pde-floor's per-pair CSV)."""
    deviation = np.array([float(row["deviation"]) for row in read_csv(true_pairs_csv)])
    if len(deviation) == 0:
        raise ValueError(f"{true_pairs_csv}: no true pairs; physics.floor_backends must include deepwave")
    return deviation


def acceptance_curve(generated: np.ndarray, real: np.ndarray, max_deviation: float, points: int = 60) -> list[dict]:
    """Acceptance rate (deviation <= threshold) of generated and of true pairs at `points`
    thresholds spaced evenly on a log scale over both sets' range, max_deviation among them."""
    values = np.concatenate([generated, real])
    positive = values[values > 0]
    low, high = (positive.min(), positive.max()) if len(positive) else (max_deviation, max_deviation)
    thresholds = np.unique(np.append(np.geomspace(min(low, max_deviation), max(high, max_deviation), points),
                                     max_deviation))
    return [{"threshold": float(t), "acceptance_generated": float((generated <= t).mean()),
             "acceptance_real": float((real <= t).mean())} for t in thresholds]


def physics_report(store: str | Path, variant: str, max_deviation: float, floor_csv: str | Path,
                   true_pairs_csv: str | Path, out_csv: str | Path, figure: str | Path, acceptance_csv: str | Path,
                   acceptance_figure: str | Path) -> dict:
    """Filter the store, then write the one-row report, the histogram of deviations and the
    acceptance curve of generated and true pairs."""
    valid = apply_physics_filter(store, max_deviation)
    deviation = np.asarray(open_pairs_store(store, mode="r")["deviation"][:], dtype=np.float64)
    floor = data_floor(floor_csv)
    real = true_pair_deviation(true_pairs_csv)
    curve = acceptance_curve(deviation, real, max_deviation)
    write_csv(curve, acceptance_csv, ACCEPTANCE_COLUMNS)
    plot_acceptance(curve, max_deviation, variant, len(deviation), len(real), acceptance_figure)
    row = {
        "variant": variant, "n": len(deviation), "max_deviation": max_deviation, "n_valid": int(valid.sum()),
        "acceptance_rate": float(valid.mean()), "deviation_mean": float(deviation.mean()),
        "deviation_median": float(np.median(deviation)), "deviation_p95": float(np.quantile(deviation, 0.95)),
        "data_floor": floor,
    }
    write_csv([row], out_csv, REPORT_COLUMNS)
    plot_deviation_histogram(deviation, max_deviation, floor, variant, figure)
    return row


def plot_acceptance(curve: list[dict], max_deviation: float, variant: str, n_generated: int, n_real: int,
                    path: str | Path) -> Path:
    """Acceptance rate against the threshold, generated and true pairs, log threshold axis."""
    figure, axis = plt.subplots(figsize=(6.5, 3.8))
    thresholds = [row["threshold"] for row in curve]
    axis.plot(thresholds, [row["acceptance_generated"] for row in curve], color="tab:blue",
              label=f"generated pairs (n={n_generated})")
    axis.plot(thresholds, [row["acceptance_real"] for row in curve], color="black", linestyle="--",
              label=f"true pairs of the test split (n={n_real})")
    axis.axvline(max_deviation, color="tab:red", label=f"physics.max_deviation = {max_deviation:g}")
    axis.set_xscale("log")
    axis.set_ylim(0, 1.02)
    axis.set_xlabel("threshold on the PDE deviation")
    axis.set_ylabel("accepted fraction")
    axis.set_title(f"{variant}: acceptance against the threshold", fontsize=10)
    axis.legend(fontsize=8)
    return save_figure(figure, path)


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
