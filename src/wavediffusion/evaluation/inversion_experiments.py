"""Training, evaluating and tabulating the InversionNet arms of the paper's Tables 2-4 and
of the filter's table (evaluation/arms.py names them).

Every arm runs once per seed of inversionnet.seeds; the seed sets the network's initial
weights and batch order. What must stay fixed across runs comes from the config's global
`seed`: real subsets from training.inversionnet.real_subset, the same for every arm and
seed, so all arms that name p % train on the same real pairs (and the 1 % subset lies
inside the 10 % one); the hardest pairs' train / test split. The generated arms take
inversionnet.generated_size pairs (default: as many as the real training set, or the whole
store if it holds fewer) from the store's first rows. The hardest generated pairs (Table 4)
are those `real`'s model predicts worst: the top inversionnet.hard_fraction of the store,
split train / test by hard_train_fraction. The filter arms take equally many pairs, drawn
with the run's seed from those the physics filter accepted or from every pair it judged.
The tables give each metric's mean and std over the seeds.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import zarr
from torch.utils.data import ConcatDataset, Dataset

from ..data.pairs_store import accepted_rows, checked_rows, done_folder, open_pairs_store
from ..data.store import open_dataset, representation_of
from ..data.transforms import velocity_from_model
from ..files import sha256_of
from ..metrics import inversion_metrics
from ..models.inversionnet import InversionNet
from ..pairs import GeneratedPairs
from ..training.inversionnet import (
    InversionNetSettings,
    RealPairs,
    drawn_pairs,
    family_rows,
    hardest_generated,
    per_sample_mae,
    predict,
    real_subset,
    split_by_fraction,
    train_inversionnet,
)
from ..training.runs import dataset_identity
from .arms import (
    KEY,
    NO_REAL,
    NOT_SEPARATED,
    NOT_TRAINED,
    ONE_SEED,
    REFERENCE,
    SEPARATED,
    TABLES,
    Arm,
    ExperimentSettings,
    mae_interval,
    parse_arm,
)
from .stage1 import streamed_moments

if TYPE_CHECKING:
    from matplotlib.figure import Figure

METRICS = ("mae", "rmse", "ssim")
# a run's rows (each arm's metrics.csv, and the long per_seed.csv): one per family; `note`
# says why a run has no numbers (a filter arm with fewer pairs than one batch)
METRIC_COLUMNS = ("arm", "table", "train_data", "variant", "seismic", "real_percent", "n_train", "seed", "family", "n",
                  *METRICS, "note")
# the tables: one row per arm and family, each metric's mean and std over the seeds whose run trained
TABLE_COLUMNS = ("arm", "table", "train_data", "variant", "seismic", "real_percent", "n_train", "family", "n",
                 "n_seeds", "seeds", *(f"{metric}_{stat}" for metric in METRICS for stat in ("mean", "std")),
                 "mae_vs_real", "note")


def network_settings(settings: ExperimentSettings, arm: Arm, run_seed: int) -> InversionNetSettings:
    """The InversionNet model and training settings of one run of an arm: `training`, with
    Table 4's fine-tuning overrides or the `real` arm's on top, and the run's seed as the
    loop's (the network's initial weights and batch order)."""
    training = {**settings.training, **(settings.finetune_training if arm.finetune else {}),
                **(settings.real_training if arm.name == "real" else {}), "seed": run_seed}
    return InversionNetSettings(model=settings.model, training=training)


# ---------------------------------------------------------------------------------------
# Training an arm.


def hard_sets(model: str | Path, store: str | Path, seismic: str, settings: ExperimentSettings,
              device=None) -> tuple[dict[str, np.ndarray], dict]:
    """The hardest generated pairs for `model` (real's weights file) in the pairs `store`:
    ({"train", "test"} store indices, counts). Paths, as hardest_generated takes them."""
    n = len(GeneratedPairs(store, seismic=seismic))
    count = max(2, round(settings.hard_fraction * n))
    hardest = hardest_generated(model, store, count, seismic=seismic, batch_size=settings.eval_batch_size,
                                device=device)
    train, test = split_by_fraction(hardest, settings.hard_train_fraction, settings.seed)
    return {"train": train, "test": test}, {"n_store": n, "n_hard": count, "n_train": len(train), "n_test": len(test)}


def filter_pairs(arm: Arm, store: str | Path, n_real: int, settings: ExperimentSettings,
                 run_seed: int) -> tuple[np.ndarray, dict]:
    """A filter arm's generated pairs (store rows) and what they were drawn from. Both filter
    arms take n = min(generated_size or the n_real training pairs, the pairs the physics
    filter accepted), drawn with the run's seed (drawn_pairs) from the accepted pairs or from
    every pair the filter judged (checked_rows), so they differ only by the filter."""
    root = open_pairs_store(store, mode="r")
    accepted, checked = accepted_rows(root, store), checked_rows(root, store)
    count = min(settings.generated_size or n_real, len(accepted))
    indices = drawn_pairs(accepted if arm.draw == "accepted" else checked, count, run_seed)
    return indices, {"n_accepted": len(accepted), "n_checked": len(checked), "draw_seed": run_seed}


def training_data(arm: Arm, dataset: str | Path, settings: ExperimentSettings, store: str | Path | None = None,
                  hard: str | Path | None = None, run_seed: int | None = None) -> tuple[Dataset, dict]:
    """(train dataset, what the filter arms drew their pairs from: filter_pairs' counts, {}
    for the other arms) of one run of an arm; run_seed is needed by the filter arms' draw."""
    parts, n_real_all, drawn = [], len(RealPairs(dataset, "train")), {}
    if arm.draw:
        if run_seed is None:
            raise ValueError(f"arm {arm.name!r}: the filter arms draw their pairs with the run's seed (run_seed)")
        indices, drawn = filter_pairs(arm, store, n_real_all, settings, run_seed)
        parts.append(GeneratedPairs(store, indices=indices, seismic=arm.seismic))
    elif arm.finetune and arm.variant:
        with np.load(hard) as sets:
            parts.append(GeneratedPairs(store, indices=sets["train"], seismic=arm.seismic))
    elif arm.variant:
        n_store = len(GeneratedPairs(store, seismic=arm.seismic))
        size = min(settings.generated_size or n_real_all, n_store)
        parts.append(GeneratedPairs(store, indices=np.arange(size), seismic=arm.seismic))
    if arm.real_percent == 100:
        parts.append(RealPairs(dataset, "train"))
    elif arm.real_percent is not None:
        indices = real_subset(n_real_all, arm.real_percent / 100, settings.seed)
        parts.append(RealPairs(dataset, "train", indices=indices))
    return (parts[0] if len(parts) == 1 else ConcatDataset(parts)), drawn


def arm_identity(name: str, settings: ExperimentSettings, dataset: str | Path, store: str | Path | None,
                 hard: str | Path | None, init_weights: str | Path | None, processes: int, run_seed: int) -> dict:
    """What one run of an arm depends on, for its run folder (training/runs.py)."""
    arm = parse_arm(name)
    generated = None
    if store is not None:
        attrs = open_pairs_store(store, mode="r").attrs
        generated = {"config_sha256": attrs.get("config_sha256"), "seismic": arm.seismic,
                     "done": sorted(p.name for p in done_folder(store).glob("*.json")),
                     # the filter arms' pairs follow the filter's thresholds: other thresholds, another run
                     "physics_filter": attrs.get("physics_filter") if arm.draw else None}
    return {"arm": name, "network": asdict(network_settings(settings, arm, run_seed)),
            "dataset": dataset_identity(dataset), "generated": generated, "generated_size": settings.generated_size,
            "seed": settings.seed, "run_seed": run_seed, "hard_sha256": sha256_of(hard) if hard else None,
            "init_sha256": sha256_of(init_weights) if init_weights else None, "processes": processes}


def train_arm(name: str, dataset: str | Path, settings: ExperimentSettings, run_dir: str | Path, run_seed: int,
              store: str | Path | None = None, hard: str | Path | None = None,
              init_weights: str | Path | None = None) -> tuple[dict | None, dict]:
    """Train one run of an arm (its seed: run_seed) in run_dir; returns (the loop's summary,
    whose "final" is the weights to publish: the best validation epoch's when there is a
    validation split, as OpenFWI keeps; the run's record: what it trained on, its seed, and
    `trained`). A filter arm with fewer pairs than one batch does not train: (None, the
    record with trained false and the `reason`), since how many pairs the filter accepts is
    a result of the run, not a setting to fix; any other arm so small is a ValueError."""
    arm = parse_arm(name)
    if (arm.variant is not None) != (store is not None):
        raise ValueError(f"arm {name!r}: a pairs store is needed exactly when the arm uses generated pairs")
    if arm.finetune and init_weights is None:
        raise ValueError(f"arm {name!r}: fine-tuning needs the weights of arm 'real' (init_weights)")
    if arm.finetune and arm.variant and hard is None:
        raise ValueError(f"arm {name!r}: fine-tuning on the hardest generated pairs needs their .npz (hard)")
    train, drawn = training_data(arm, dataset, settings, store, hard, run_seed)
    network = network_settings(settings, arm, run_seed)
    batch = network.train_config().batch_size
    # what a reader of the tables must know: a filter that rejected nothing leaves both filter arms the same pairs
    same = arm.draw and drawn["n_accepted"] == drawn["n_checked"]
    note = f"the physics filter accepted all {drawn['n_checked']} pairs it judged: no pair to filter" if same else ""
    record = {"arm": name, "table": arm.table, "train_data": arm.train_data, "variant": arm.variant,
              "seismic": arm.seismic, "real_percent": arm.real_percent, "n_train": len(train), "seed": run_seed,
              **drawn, "init_weights": str(init_weights) if init_weights else None, "note": note}
    if len(train) < batch:
        problem = f"{len(train)} training pairs, fewer than one batch ({KEY}.training.batch_size = {batch})"
        if not arm.draw:
            raise ValueError(f"arm {name!r}: {problem}; the loop drops incomplete batches")
        return None, {**record, "trained": False,
                      "reason": f"the physics filter accepted {drawn['n_accepted']} of {drawn['n_checked']} pairs: "
                                f"{problem}"}
    val = RealPairs(dataset, "val")
    rep = representation_of(open_dataset(dataset))
    summary = train_inversionnet(train, val if len(val) else None, network, rep.seismic_shape,
                                 rep.velocity_size, run_dir, init_weights=init_weights)
    best = Path(run_dir) / "best.pt"
    if best.exists():
        summary = {**summary, "final": str(best)}
    return summary, {**record, "trained": True, "steps": summary["steps"], "best_val": summary["best_val"],
                     "published": summary["final"]}


# ---------------------------------------------------------------------------------------
# Evaluating an arm, and the tables.


def _run_fields(record: dict) -> dict:
    """The columns of METRIC_COLUMNS that a run's record (train.json) fills."""
    return {key: record[key] for key in ("arm", "table", "train_data", "variant", "seismic", "real_percent", "n_train",
                                         "seed")}


def evaluate_arm(record: dict, test_rows: list[dict], settings: ExperimentSettings,
                 network: InversionNet | None = None, hard_tests: dict[str, GeneratedPairs] | None = None,
                 device=None) -> list[dict]:
    """A run's metric rows (METRIC_COLUMNS): evaluate_inversionnet's rows on the real test
    split (per family + "all") under the run's record, then for each hard test set in
    hard_tests {name: pairs} a row of the network's MAE on it."""
    base = {**_run_fields(record), "note": record["note"]}
    rows = [{**base, **row} for row in test_rows]
    for name, test in (hard_tests or {}).items():
        errors = per_sample_mae(network, test, settings.eval_batch_size, device)
        rows.append({**base, "family": f"hard-test {name}", "n": len(test), "mae": float(errors.double().mean()),
                     "rmse": float("nan"), "ssim": float("nan")})
    return rows


def not_trained_rows(record: dict) -> list[dict]:
    """The metric rows of a run that did not train (train_arm's record with trained false):
    one "all" row without numbers, the reason in `note`."""
    return [{**_run_fields(record), "family": "all", "n": "", **dict.fromkeys(METRICS, ""), "note": record["reason"]}]


MEAN_MAP = "mean-map"  # the reference row of a predictor that outputs the training set's mean velocity


def mean_map_rows(dataset: zarr.Group, split: str = "test") -> list[dict]:
    """The floor any inversion model must beat: OpenFWI's metrics of predicting the training
    split's mean velocity map for every sample of `split` of the opened dataset store,
    whatever its seismic. Rows in METRIC_COLUMNS, every family present and "all" (the table
    left to the caller)."""
    train = dataset["train"]["velocity"]
    mean_map, _ = streamed_moments(train)
    velocity = torch.from_numpy(dataset[split]["velocity"][:])
    family = torch.from_numpy(np.asarray(dataset[split]["family"][:], dtype=np.int64))
    rows = family_rows(inversion_metrics(mean_map.expand_as(velocity), velocity), family,
                       list(dataset.attrs["families"]), sorted(set(family.tolist())))
    base = {"arm": MEAN_MAP, "train_data": "the real training set's mean velocity map, for every input",
            "variant": "", "seismic": "", "real_percent": 100.0, "n_train": train.shape[0], "seed": "", "note": ""}
    return [{**base, **row} for row in rows]


def _number(value) -> float | None:
    """A metric as read from a CSV ("" for none) or computed."""
    return None if value is None or value == "" else float(value)


def seed_statistics(rows: list[dict]) -> list[dict]:
    """Runs' metric rows (METRIC_COLUMNS, one per run and family) as one row per arm and
    family (TABLE_COLUMNS but mae_vs_real), in the order they come: each metric's mean and
    sample standard deviation over the seeds whose run trained (std empty with one seed,
    mean too with none), which seeds, and in `note` the runs' notes and why the others did not train."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["arm"], row["family"]), []).append(row)
    statistics = []
    for group in groups.values():
        trained = [row for row in group if _number(row["mae"]) is not None]
        untrained = [row for row in group if _number(row["mae"]) is None]
        first = (trained or group)[0]
        out = {key: first[key] for key in ("arm", "table", "train_data", "variant", "seismic", "real_percent",
                                           "n_train", "family", "n")}
        out.update(n_seeds=len(trained), seeds=" ".join(str(row["seed"]) for row in trained))
        for metric in METRICS:
            values = np.array([_number(row[metric]) for row in trained], dtype=np.float64)
            out[f"{metric}_mean"] = float(values.mean()) if len(values) else ""
            out[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else ""
        reasons: dict[str, list[str]] = {}
        for row in untrained:
            reasons.setdefault(row["note"], []).append(str(row["seed"]))
        notes = [*dict.fromkeys(row["note"] for row in trained if row["note"]),
                 *(f"seed {', '.join(seeds)} not trained: {reason}" for reason, seeds in reasons.items())]
        out["note"] = "; ".join(notes)
        statistics.append(out)
    return statistics


def separation(row: dict, real: dict | None) -> str:
    """mae_vs_real of an arm's table row against `real`'s row of the same family (seed_statistics'
    rows): "separated" when their MAE intervals mean ± std do not overlap, "not separated" when
    they do, "one seed" when either has fewer than two seeds to give a std."""
    if real is None:
        return NO_REAL
    if not row["n_seeds"]:
        return NOT_TRAINED
    if row["n_seeds"] < 2 or real["n_seeds"] < 2:
        return ONE_SEED
    (low, high), (real_low, real_high) = mae_interval(row), mae_interval(real)
    return NOT_SEPARATED if low <= real_high and real_low <= high else SEPARATED


def reference_row(mean_map: dict) -> dict:
    """A mean_map_rows row in TABLE_COLUMNS: one deterministic predictor, no seeds."""
    fields = {key: mean_map[key] for key in ("arm", "train_data", "variant", "seismic", "real_percent", "n_train",
                                             "family", "n")}
    return {**fields, "n_seeds": "", "seeds": "", **{f"{m}_mean": mean_map[m] for m in METRICS},
            **{f"{m}_std": "" for m in METRICS}, "mae_vs_real": REFERENCE, "note": "no training, so no seeds"}


def inversionnet_tables(rows: list[dict], mean_map: list[dict]) -> dict[str, list[dict]]:
    """Tables 2, 3, 4 and the filter's (TABLES: "table2" ... "table_filter" -> rows in
    TABLE_COLUMNS) from every run's metric rows (long format: one row per arm, seed and
    family; each table in the order the rows come, as arm_names lists its arms): a row per
    arm and family with each metric's mean and std over the seeds (seed_statistics) and
    whether its MAE is separated from `real`'s (separation). Every table opens with two
    reference rows: the mean-map predictor (mean_map_rows: the floor a network must beat)
    and `real`, the InversionNet trained on all the real pairs (Table 2's own arm, Table 4's
    starting point)."""
    statistics = seed_statistics(rows)
    real = {row["family"]: row for row in statistics if row["arm"] == "real"}
    references = [reference_row(row) for row in mean_map]
    references_real = [{**row, "mae_vs_real": REFERENCE} for row in real.values()]
    tables = {}
    for table in TABLES:
        arms = [{**row, "mae_vs_real": separation(row, real.get(row["family"]))}
                for row in statistics if row["table"] == table and row["arm"] != "real"]
        tables[table] = [{**row, "table": table} for row in references] + references_real + arms
    return tables


def plot_predictions(models: dict[str, InversionNet], dataset: zarr.Group, device=None) -> Figure:
    """The paper's Fig. 9: one test sample per family of the opened dataset store, the true
    velocity and each arm's prediction, in m/s on OpenFWI's grid."""
    from ..plotting import plt
    from .figures import show_velocity

    test = dataset["test"]
    rep = representation_of(dataset)
    family_names = list(dataset.attrs["families"])
    first = {}
    for i, code in enumerate(np.asarray(test["family"][:], dtype=np.int64).tolist()):
        first.setdefault(code, i)
    seismic = torch.stack([torch.from_numpy(test["seismic"][i]) for i in first.values()])
    columns = {"true": torch.stack([torch.from_numpy(test["velocity"][i]) for i in first.values()])}
    for name, network in models.items():
        columns[name] = predict(network, [seismic], device)
    figure, axes = plt.subplots(len(first), len(columns), figsize=(1.8 * len(columns) + 1, 1.8 * len(first) + 0.5),
                                squeeze=False, layout="constrained")
    for col, (name, maps) in enumerate(columns.items()):
        velocity = velocity_from_model(maps.float(), rep)[:, 0].numpy()
        for row, code in enumerate(first):
            image = show_velocity(axes[row, col], velocity[row])
            if row == 0:
                axes[row, col].set_title(name, fontsize=7)
            if col == 0:
                axes[row, col].set_ylabel(family_names[code], fontsize=7)
    colourbar = figure.colorbar(image, ax=axes, shrink=0.6, aspect=30)
    colourbar.set_label("velocity (m/s)", fontsize=7)
    colourbar.ax.tick_params(labelsize=6)
    figure.suptitle("InversionNet on one test map per family: the true map and each arm's prediction", fontsize=8)
    return figure
