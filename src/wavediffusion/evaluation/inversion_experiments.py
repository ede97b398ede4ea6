"""Training, evaluating and tabulating the InversionNet arms of the paper's Tables 2-4
(evaluation/arms.py names them).

Real subsets come from training.inversionnet.real_subset with one seed for every arm, so
all arms that name p % train on the same real pairs, and the 1 % subset lies inside the
10 % one. The generated arms take inversionnet.generated_size pairs (default: as many as
the real training set, or the whole store if it holds fewer) from the store's first rows.
The hardest generated pairs (Table 4) are those `real`'s model predicts worst: the top
inversionnet.hard_fraction of the store, split train / test by hard_train_fraction.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import zarr
from torch.utils.data import ConcatDataset

from ..data.pairs_store import done_folder, open_pairs_store
from ..data.store import open_dataset, representation_of
from ..data.transforms import velocity_from_model
from ..files import sha256_of
from ..metrics import inversion_metrics
from ..models.inversionnet import InversionNet
from ..pairs import GeneratedPairs
from ..training.inversionnet import (
    InversionNetSettings,
    RealPairs,
    family_rows,
    hardest_generated,
    per_sample_mae,
    predict,
    real_subset,
    split_by_fraction,
    train_inversionnet,
)
from ..training.runs import dataset_identity
from .arms import Arm, ExperimentSettings, parse_arm
from .stage1 import streamed_moments

if TYPE_CHECKING:
    from matplotlib.figure import Figure

METRIC_COLUMNS = ("arm", "table", "train_data", "variant", "seismic", "real_percent", "n_train", "family", "n",
                  "mae", "rmse", "ssim")


def network_settings(settings: ExperimentSettings, arm: Arm) -> InversionNetSettings:
    """The InversionNet model and training settings of an arm: `training`, with Table 4's
    fine-tuning overrides or the `real` arm's on top."""
    training = {**settings.training, **(settings.finetune_training if arm.finetune else {}),
                **(settings.real_training if arm.name == "real" else {})}
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


def training_data(arm: Arm, dataset: str | Path, settings: ExperimentSettings, store: str | Path | None = None,
                  hard: str | Path | None = None):
    """(train dataset, description) of an arm."""
    parts, n_real_all = [], len(RealPairs(dataset, "train"))
    if arm.finetune and arm.variant:
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
    return parts[0] if len(parts) == 1 else ConcatDataset(parts)


def arm_identity(name: str, settings: ExperimentSettings, dataset: str | Path, store: str | Path | None,
                 hard: str | Path | None, init_weights: str | Path | None, processes: int) -> dict:
    """What an arm's training depends on, for its run folder (training/runs.py)."""
    arm = parse_arm(name)
    generated = None
    if store is not None:
        attrs = open_pairs_store(store, mode="r").attrs
        generated = {"config_sha256": attrs.get("config_sha256"), "seismic": arm.seismic,
                     "done": sorted(p.name for p in done_folder(store).glob("*.json"))}
    return {"arm": name, "network": asdict(network_settings(settings, arm)), "dataset": dataset_identity(dataset),
            "generated": generated, "generated_size": settings.generated_size, "seed": settings.seed,
            "hard_sha256": sha256_of(hard) if hard else None,
            "init_sha256": sha256_of(init_weights) if init_weights else None, "processes": processes}


def train_arm(name: str, dataset: str | Path, settings: ExperimentSettings, run_dir: str | Path,
              store: str | Path | None = None, hard: str | Path | None = None,
              init_weights: str | Path | None = None) -> tuple[dict, dict]:
    """Train one arm in run_dir; returns (the loop's summary, whose "final" is the weights to
    publish: the best validation epoch's when there is a validation split, as OpenFWI keeps;
    the arm's record: what it trained on)."""
    arm = parse_arm(name)
    if (arm.variant is not None) != (store is not None):
        raise ValueError(f"arm {name!r}: a pairs store is needed exactly when the arm uses generated pairs")
    if arm.finetune and init_weights is None:
        raise ValueError(f"arm {name!r}: fine-tuning needs the weights of arm 'real' (init_weights)")
    if arm.finetune and arm.variant and hard is None:
        raise ValueError(f"arm {name!r}: fine-tuning on the hardest generated pairs needs their .npz (hard)")
    train = training_data(arm, dataset, settings, store, hard)
    network = network_settings(settings, arm)
    batch = network.train_config().batch_size
    if len(train) < batch:
        raise ValueError(f"arm {name!r}: {len(train)} training pairs, fewer than one batch "
                         f"(inversionnet.training.batch_size = {batch}); the loop drops incomplete batches")
    val = RealPairs(dataset, "val")
    rep = representation_of(open_dataset(dataset))
    summary = train_inversionnet(train, val if len(val) else None, network, rep.seismic_shape,
                                 rep.velocity_size, run_dir, init_weights=init_weights)
    best = Path(run_dir) / "best.pt"
    if best.exists():
        summary = {**summary, "final": str(best)}
    record = {"arm": name, "table": arm.table, "train_data": arm.train_data, "variant": arm.variant,
              "seismic": arm.seismic, "real_percent": arm.real_percent, "n_train": len(train),
              "init_weights": str(init_weights) if init_weights else None, "steps": summary["steps"],
              "best_val": summary["best_val"], "published": summary["final"]}
    return summary, record


# ---------------------------------------------------------------------------------------
# Evaluating an arm, and the tables.


def evaluate_arm(record: dict, test_rows: list[dict], settings: ExperimentSettings,
                 network: InversionNet | None = None, hard_tests: dict[str, GeneratedPairs] | None = None,
                 device=None) -> list[dict]:
    """An arm's metric rows (METRIC_COLUMNS): evaluate_inversionnet's rows on the real test
    split (per family + "all") under the arm's record, then for each hard test set in
    hard_tests {name: pairs} a row of the network's MAE on it."""
    base = {key: record[key] for key in ("arm", "table", "train_data", "variant", "seismic", "real_percent", "n_train")}
    rows = [{**base, **row} for row in test_rows]
    for name, test in (hard_tests or {}).items():
        errors = per_sample_mae(network, test, settings.eval_batch_size, device)
        rows.append({**base, "family": f"hard-test {name}", "n": len(test), "mae": float(errors.double().mean()),
                     "rmse": float("nan"), "ssim": float("nan")})
    return rows


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
            "variant": "", "seismic": "", "real_percent": 100.0, "n_train": train.shape[0]}
    return [{**base, **row} for row in rows]


def inversionnet_tables(rows: list[dict], mean_map: list[dict]) -> dict[str, list[dict]]:
    """Tables 2, 3 and 4 ("table2" | "table3" | "table4" -> rows in METRIC_COLUMNS) from every
    arm's metric rows (long format: one row per arm and family; each table sorted as
    arm_names lists its arms). Every table opens with two reference rows: the mean-map
    predictor (mean_map_rows: the floor a network must beat) and `real`, the InversionNet
    trained on all the real pairs (Table 2's own arm, Table 4's starting point)."""
    real = [row for row in rows if row["arm"] == "real"]
    tables = {}
    for table in ("table2", "table3", "table4"):
        arms = [row for row in rows if row["table"] == table and row["arm"] != "real"]
        tables[table] = [{**row, "table": table} for row in mean_map] + real + arms
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
