"""The physics filter: which generated pairs satisfy the wave equation well enough to keep.

A pair's PDE deviation (check_shard's) is read against the data set's own true pairs
(pde_floor's), whose deviation differs a hundredfold between families. "per_family"
(default): a pair gets the family of its nearest true velocity map and is valid when its
deviation is at most physics.family_multiple x the physics.family_quantile-quantile of that
family's true pairs. "absolute": at most physics.max_deviation. The mask (`valid`) and the
family (`family`) go into the pairs store; the report gives the acceptance per family. Why
this design: docs/physics.md, "The physics filter".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..data.families import FAMILY_NAMES, indices_per_family
from ..plotting import plt

if TYPE_CHECKING:
    import zarr
    from matplotlib.figure import Figure

KEY = "physics"
FILTERS = ("per_family", "absolute")
ACCEPTANCE_COLUMNS = ("threshold", "acceptance_generated", "acceptance_real")
REPORT_COLUMNS = ("variant", "family", "filter", "n", "threshold", "n_valid", "acceptance_rate", "deviation_mean",
                  "deviation_median", "deviation_p95", "data_floor")
MATCH_SIZE = 16  # velocity maps are compared at 16 x 16 when assigning a family


@dataclass(frozen=True)
class FilterSettings:
    """config.yaml `physics`: the filter's keys."""

    filter: str = "per_family"
    max_deviation: float = 0.005  # "absolute": the one epsilon
    family_quantile: float = 0.99  # "per_family": this quantile of the family's true pairs' deviations ...
    family_multiple: float = 1.0  # ... times this

    def __post_init__(self):
        if self.filter not in FILTERS:
            raise ValueError(f"{KEY}.filter must be one of {FILTERS}, got {self.filter!r}")
        if not self.max_deviation > 0:
            raise ValueError(f"{KEY}.max_deviation must be positive, got {self.max_deviation!r}")
        if not 0 < self.family_quantile <= 1:
            raise ValueError(f"{KEY}.family_quantile must lie in (0, 1], got {self.family_quantile!r}")
        if not self.family_multiple > 0:
            raise ValueError(f"{KEY}.family_multiple must be positive, got {self.family_multiple!r}")

    @classmethod
    def from_dict(cls, values: dict) -> FilterSettings:
        """From the config's `physics` dict; its other keys (the floor's) are not the filter's."""
        return cls(**{key: value for key, value in values.items() if key in cls.__dataclass_fields__})

    def family_thresholds(self, true_family: np.ndarray, true_deviation: np.ndarray) -> dict[str, float]:
        """{family: threshold} for every family among the true pairs."""
        if self.filter == "absolute":
            return {family: self.max_deviation for family in np.unique(true_family)}
        return {family: self.family_multiple * float(np.quantile(true_deviation[true_family == family],
                                                                 self.family_quantile))
                for family in np.unique(true_family)}


def data_floor(floor_rows: list[dict]) -> float:
    """The n-weighted mean deviation of the data set's true pairs, as the check measures them
    (deepwave on the model-space velocity), from pde_floor.csv's rows."""
    rows = [row for row in floor_rows if row["backend"] == "deepwave" and row["velocity_input"] == "model64"]
    if not rows:
        raise ValueError("the floor table has no deepwave/model64 rows; is it the pde_floor rule's output?")
    n = np.array([float(row["n"]) for row in rows])
    mean = np.array([float(row["deviation_mean"]) for row in rows])
    return float((n * mean).sum() / n.sum())


def apply_physics_filter(root: zarr.Group, threshold: float | np.ndarray, family: np.ndarray | None = None,
                         info: dict | None = None) -> np.ndarray:
    """Write `valid` = deviation <= threshold (one for all pairs, or one per pair) and the
    pairs' family codes, if given, into a complete pairs store opened for writing (the
    caller checks completeness: shard.gather); returns the mask."""
    threshold = np.asarray(threshold, dtype=np.float64)
    if not (threshold > 0).all():
        raise ValueError(f"the physics filter's thresholds must be positive (physics.max_deviation, or a family's "
                         f"true-pair quantile), got {threshold.min()!r}")
    deviation = np.asarray(root["deviation"][:], dtype=np.float64)
    valid = deviation <= threshold
    root["valid"][:] = valid  # one writer: this rule runs after every shard is done
    if family is not None:
        root["family"][:] = family
    root.attrs["physics_filter"] = {**(info or {"max_deviation": float(threshold.max())}), "n_valid": int(valid.sum()),
                                    "family_assigned": family is not None}
    return valid


def true_pair_deviations(rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(family names, deviations) of the true pairs, from the rows of pde-floor's per-pair CSV."""
    if not rows:
        raise ValueError("no true pairs in pde-floor's per-pair table; physics.floor_backends must include deepwave")
    return np.array([row["family"] for row in rows]), np.array([float(row["deviation"]) for row in rows])


def true_pair_maps(dataset: zarr.Group, per_family: int) -> tuple[np.ndarray, np.ndarray]:
    """(velocity maps, family names) of pde_floor's true pairs: the dataset store's test
    split's first `per_family` maps of each family."""
    test = dataset["test"]
    codes = np.asarray(test["family"][:])
    index = np.sort(np.concatenate(list(indices_per_family(codes, per_family).values())))
    return test["velocity"].get_orthogonal_selection((index,)), np.array([FAMILY_NAMES[c] for c in codes[index]])


def _match_features(velocity: np.ndarray) -> torch.Tensor:
    maps = torch.from_numpy(np.asarray(velocity, dtype=np.float32)).reshape(len(velocity), 1, *velocity.shape[-2:])
    return torch.nn.functional.adaptive_avg_pool2d(maps, MATCH_SIZE).flatten(1)


def nearest_family(velocity, maps: np.ndarray, families: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """The family of each velocity map's nearest map in `maps` (Euclidean at 16 x 16);
    `velocity` is read batch by batch (a Zarr array of a paper-scale store does not fit)."""
    library = _match_features(maps)
    nearest = [torch.cdist(_match_features(velocity[start : start + batch_size]), library).argmin(1).numpy()
               for start in range(0, velocity.shape[0], batch_size)]
    return families[np.concatenate(nearest)]


def acceptance_curve(generated: np.ndarray, real: np.ndarray, marked: list[float], points: int = 60) -> list[dict]:
    """Acceptance rate (deviation <= threshold) of generated and of true pairs at `points`
    thresholds spaced evenly on a log scale over both sets' range, the `marked` ones among them."""
    values = np.concatenate([generated, real])
    positive = values[values > 0]
    low, high = (positive.min(), positive.max()) if len(positive) else (min(marked), max(marked))
    thresholds = np.unique(np.append(np.geomspace(min(low, *marked), max(high, *marked), points), marked))
    return [{"threshold": float(t), "acceptance_generated": float((generated <= t).mean()),
             "acceptance_real": float((real <= t).mean())} for t in thresholds]


def physics_report(root: zarr.Group, variant: str, settings: FilterSettings, dataset: zarr.Group,
                   floor_samples_per_family: int, floor_rows: list[dict],
                   true_pair_rows: list[dict]) -> tuple[list[dict], list[dict], Figure, Figure]:
    """Filter the complete pairs store `root` (opened for writing), then report: the rows of
    REPORT_COLUMNS (a row per family the generated pairs were given, and "all"), the acceptance
    curve's rows of ACCEPTANCE_COLUMNS, the histogram of deviations and the acceptance curve's
    figure. `dataset` and floor_samples_per_family name pde_floor's true pairs, `floor_rows`
    and `true_pair_rows` are its two tables."""
    true_family, true_deviation = true_pair_deviations(true_pair_rows)
    thresholds = settings.family_thresholds(true_family, true_deviation)
    maps, map_family = true_pair_maps(dataset, floor_samples_per_family)
    family = nearest_family(root["velocity"], maps, map_family)
    threshold = np.array([thresholds[f] for f in family])
    info = {"filter": settings.filter, "thresholds": thresholds}
    valid = apply_physics_filter(root, threshold, np.array([FAMILY_NAMES.index(f) for f in family]), info)
    deviation = np.asarray(root["deviation"][:], dtype=np.float64)
    curve = acceptance_curve(deviation, true_deviation, sorted(set(thresholds.values())))
    acceptance = plot_acceptance(curve, thresholds, variant, len(deviation), len(true_deviation))

    def report_row(name: str, mask: np.ndarray, floor: float, limit) -> dict:
        part = deviation[mask]
        return {"variant": variant, "family": name, "filter": settings.filter, "n": int(mask.sum()),
                "threshold": limit, "n_valid": int(valid[mask].sum()), "acceptance_rate": float(valid[mask].mean()),
                "deviation_mean": float(part.mean()), "deviation_median": float(np.median(part)),
                "deviation_p95": float(np.quantile(part, 0.95)), "data_floor": floor}

    rows = [report_row(name, family == name, float(true_deviation[true_family == name].mean()), thresholds[name])
            for name in FAMILY_NAMES if (family == name).any()]
    floor = data_floor(floor_rows)
    rows.append(report_row("all", np.ones(len(deviation), dtype=bool), floor,
                           settings.max_deviation if settings.filter == "absolute" else ""))
    return rows, curve, plot_deviation_histogram(deviation, thresholds, floor, variant), acceptance


def _mark_thresholds(axis, thresholds: dict[str, float]) -> None:
    """The filter's thresholds as vertical lines: one per family, or one for all."""
    values = sorted(set(thresholds.values()))
    if len(values) == 1:
        axis.axvline(values[0], color="tab:red", label=f"threshold {values[0]:.2g} (every family)")
        return
    colours = plt.get_cmap("tab10")
    for i, (family, value) in enumerate(sorted(thresholds.items(), key=lambda item: item[1])):
        axis.axvline(value, color=colours(i % 10), linestyle=":", label=f"{family}: {value:.2g}")


def plot_acceptance(curve: list[dict], thresholds: dict[str, float], variant: str, n_generated: int,
                    n_real: int) -> Figure:
    """Acceptance rate against the threshold, generated and true pairs, log threshold axis."""
    figure, axis = plt.subplots(figsize=(6.5, 3.8), layout="constrained")
    x = [row["threshold"] for row in curve]
    axis.plot(x, [row["acceptance_generated"] for row in curve], color="tab:blue",
              label=f"generated pairs (n={n_generated})")
    axis.plot(x, [row["acceptance_real"] for row in curve], color="black", linestyle="--",
              label=f"true pairs of the test split (n={n_real})")
    _mark_thresholds(axis, thresholds)
    axis.set_xscale("log")
    axis.set_ylim(0, 1.02)
    axis.set_xlabel("threshold on the PDE deviation")
    axis.set_ylabel("accepted fraction")
    axis.set_title(f"{variant}: acceptance against the threshold", fontsize=10)
    axis.legend(fontsize=8)
    return figure


def plot_deviation_histogram(deviation: np.ndarray, thresholds: dict[str, float], floor: float,
                             variant: str) -> Figure:
    """Deviations on a log axis, with the filter's thresholds and the data floor marked."""
    positive = deviation[deviation > 0]
    low = min(positive.min(), floor, *thresholds.values()) / 1.5
    high = max(positive.max(), *thresholds.values()) * 1.5
    figure, axis = plt.subplots(figsize=(6.5, 3.8), layout="constrained")
    axis.hist(positive, bins=np.geomspace(low, high, 60), color="tab:blue", alpha=0.8)
    _mark_thresholds(axis, thresholds)
    axis.axvline(floor, color="black", linestyle="--", label=f"data floor (true pairs) = {floor:.2g}")
    axis.set_xscale("log")
    axis.set_xlabel("PDE deviation: mean of (D_s(z) - F(D_v(z)))², normalised seismic")
    axis.set_ylabel("pairs")
    axis.set_title(f"{variant}: {len(deviation)} generated pairs against the wave equation", fontsize=10)
    axis.legend(fontsize=8)
    return figure
