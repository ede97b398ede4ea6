"""InversionNet for the paper's augmentation experiments (Tables 2-4): training on generated
pairs, real pairs or both, fine-tuning from earlier weights, and OpenFWI's evaluation.

Arms are ConcatDatasets of `wavediffusion.pairs.GeneratedPairs` and `RealPairs`; every sample is
{"seismic": (S, T, R), "velocity": (1, V, V)} float32 in the [-1, 1] model space. OpenFWI's
recipe (AdamW, L1, constant lr, 120 epochs) on the project's loop, whose batch is global:
lr defaults to 1e-4 x batch_size / 256. Fine-tuning starts from `init_weights` (sha256 in the
configuration). Evaluation: MAE, RMSE and SSIM as OpenFWI's, per family and overall.
Details: docs/training.md, 'InversionNet's training'.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset
from tqdm import tqdm

from ..config import only_known
from ..data.dataset import PairDataset
from ..data.store import open_dataset, representation_of
from ..devices import resolve_device
from ..files import sha256_of
from ..metrics import inversion_metrics, mae
from ..models.inversionnet import InversionNet, InversionNetConfig
from ..pairs import GeneratedPairs
from ..seeds import Stream, derive_seed
from . import checkpoint as ckpt
from .loop import Run, TrainConfig, seeded_init, train

MODULE = "inversionnet"  # the task's module name in weights files
# InversionNetConfig fields that the data fix; settings may not set them
FROM_DATA = ("seismic_shape", "velocity_size")
OPENFWI_LR_PER_256 = 1e-4  # OpenFWI: lr 1e-4 per process of 256 samples
OPENFWI_BATCH = 256
# OpenFWI's recipe where it differs from TrainConfig's (the paper's Stage-1/2) defaults
OPENFWI_TRAINING = {
    "batch_size": OPENFWI_BATCH,
    "max_epochs": 120,  # epoch_block 40 x num_block 3
    "weight_decay": 1e-4,
    "betas": (0.9, 0.999),
    "lr_decay": 1.0,  # no milestones: constant lr
    "warmup_steps": 0,
    "grad_clip": 0.0,  # OpenFWI does not clip
    "early_stop_patience": None,  # it trains all epochs and keeps the best validation loss
}


@dataclass(frozen=True)
class InversionNetSettings:
    """The inversionnet slice of config.yaml, as a rule passes it."""

    model: dict = field(default_factory=dict)  # InversionNetConfig fields except the shapes (from the data)
    training: dict = field(default_factory=dict)  # TrainConfig fields over OpenFWI's recipe (OPENFWI_TRAINING)

    def model_config(self, seismic_shape, velocity_size: int) -> InversionNetConfig:
        model = only_known(self.model, InversionNetConfig, "inversionnet.model")
        fixed = sorted(set(model) & set(FROM_DATA))
        if fixed:
            raise ValueError(f"inversionnet.model: {fixed} come from the data; remove them")
        return InversionNetConfig(**model, seismic_shape=tuple(seismic_shape), velocity_size=int(velocity_size))

    def train_config(self) -> TrainConfig:
        """OpenFWI's recipe, overridden by the settings; lr defaults to 1e-4 per 256 samples of global batch."""
        values = {**OPENFWI_TRAINING, **only_known(self.training, TrainConfig, "inversionnet.training")}
        values.setdefault("lr", OPENFWI_LR_PER_256 * values["batch_size"] / OPENFWI_BATCH)
        return TrainConfig(**values)


# ---------------------------------------------------------------------------------------
# The data: real pairs, generated pairs, subsets.


class RealPairs(PairDataset):
    """PairDataset with "family" off by default, so that real and generated arms, which have
    no family, collate together; with the data's representation (seismic_shape, velocity_size)."""

    def __init__(self, dataset_zarr: str | Path, split: str, indices=None, with_family: bool = False):
        super().__init__(dataset_zarr, split, indices=indices, with_family=with_family)
        rep = representation_of(open_dataset(self.path))
        self.seismic_shape, self.velocity_size = rep.seismic_shape, rep.velocity_size


def real_subset(n: int, fraction: float, seed: int) -> np.ndarray:
    """A fixed subset of round(fraction * n) (at least 1) of the indices 0..n-1, sorted.

    One seeded permutation of 0..n-1 and its first k entries: every arm that asks with the
    same (n, fraction, seed) gets the same samples, and with the same seed the smaller
    fraction's subset lies inside the larger one's (1 % real is part of 10 % real), so the
    arms of Tables 2-3 differ only by what is added.
    """
    if n < 1:
        raise ValueError(f"real_subset needs n >= 1, got {n}")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    count = max(1, round(fraction * n))
    order = np.random.default_rng(derive_seed(seed, Stream.INVERSIONNET_REAL_SUBSET)).permutation(n)
    return np.sort(order[:count])


def split_by_fraction(indices, train_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test): a seeded random round(train_fraction * n) of `indices` and the rest,
    each sorted -- e.g. Table 4's 65k hardest generated pairs into 55k to fine-tune on and
    10k to test on (train_fraction 55/65)."""
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if not 0.0 <= train_fraction <= 1.0:
        raise ValueError(f"train_fraction must be in [0, 1], got {train_fraction}")
    count = round(train_fraction * len(indices))
    order = np.random.default_rng(derive_seed(seed, Stream.INVERSIONNET_FINETUNE_SPLIT)).permutation(len(indices))
    return np.sort(indices[order[:count]]), np.sort(indices[order[count:]])


def drawn_pairs(candidates, count: int, seed: int) -> np.ndarray:
    """A seeded random `count` of `candidates` (store rows), sorted: the filter arms' generated
    pairs, drawn from anywhere in the candidates rather than their first rows, so that the
    store's order cannot bias them. The same (candidates, count, seed) draw the same rows."""
    candidates = np.asarray(candidates, dtype=np.int64).reshape(-1)
    if not 0 <= count <= len(candidates):
        raise ValueError(f"cannot draw {count} of {len(candidates)} pairs")
    order = np.random.default_rng(derive_seed(seed, Stream.INVERSIONNET_GENERATED_DRAW)).permutation(len(candidates))
    return np.sort(candidates[order[:count]])


def _leaves(dataset: Dataset) -> Iterator[Dataset]:
    """The datasets a ConcatDataset (or Subset) is made of, recursively."""
    if isinstance(dataset, ConcatDataset):
        for part in dataset.datasets:
            yield from _leaves(part)
    elif isinstance(dataset, Subset):
        yield from _leaves(dataset.dataset)
    else:
        yield dataset


def check_shapes(dataset: Dataset, seismic_shape, velocity_size: int, name: str) -> None:
    """Fail early, naming the arm, when a dataset's samples do not have the network's shapes
    (e.g. a pairs store made with another representation than the real data)."""
    expected = (tuple(seismic_shape), (1, velocity_size, velocity_size))
    for part in _leaves(dataset):
        if len(part) == 0:
            continue
        sample = part[0]
        found = (tuple(sample["seismic"].shape), tuple(sample["velocity"].shape))
        if found != expected:
            where = getattr(part, "path", type(part).__name__)
            raise ValueError(f"{name} dataset {where}: samples are seismic {found[0]}, velocity {found[1]}; "
                             f"the network expects {expected[0]}, {expected[1]}")


# ---------------------------------------------------------------------------------------
# Weights files.


# The key of a weights file written by a run that did not train (write_not_trained): its reason
NOT_TRAINED = "not_trained"


def write_not_trained(path: str | Path, reason: str) -> None:
    """The weights file of a run that did not train (a filter arm with fewer pairs than one
    batch): no weights, only why, so that loading it says so instead of evaluating a network
    that never learnt."""
    ckpt.atomic_save({NOT_TRAINED: reason}, path)


def read_weights(path: str | Path) -> tuple[InversionNetConfig, dict]:
    """(config, state dict) of an InversionNet weights file (train_inversionnet's final.pt / best.pt)."""
    weights = ckpt.load(path)
    if isinstance(weights, dict) and NOT_TRAINED in weights:
        raise ValueError(f"{path}: no weights, its run did not train: {weights[NOT_TRAINED]}")
    try:
        config = InversionNetConfig(**weights["config"]["task"]["model"])
        state = weights["modules"][MODULE]
    except (KeyError, TypeError) as error:
        raise ValueError(f"{path}: not an InversionNet weights file ({error})") from None
    return config, state


def load_inversionnet(path: str | Path, device: str | torch.device = "cpu") -> InversionNet:
    """The trained InversionNet of a weights file, in eval mode."""
    config, state = read_weights(path)
    model = InversionNet(config)
    model.load_state_dict(state)
    return model.to(device).eval()


# ---------------------------------------------------------------------------------------
# The task.


class InversionNetTask:
    """The Task (training/loop.py) of InversionNet: one AdamW step on the L1 loss."""

    val_metric = "val_mae"  # = the L1 loss on the validation set

    def __init__(self, model_config: InversionNetConfig, train_config: TrainConfig,
                 init_weights: str | Path | None = None):
        self.model_config = model_config
        with seeded_init(train_config.seed):  # the same initial weights in every process (loop.seeded_init)
            self.model = InversionNet(model_config)
        self.init_weights_sha256 = None
        if init_weights is not None:
            self.load_initial_weights(init_weights)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=train_config.lr, betas=train_config.betas,
                                           weight_decay=train_config.weight_decay)

    def load_initial_weights(self, path: str | Path) -> None:
        """Start from an earlier run's weights (fine-tuning); the architecture must match."""
        config, state = read_weights(path)
        if config != self.model_config:
            differing = sorted(k for k, v in asdict(config).items() if asdict(self.model_config)[k] != v)
            raise ValueError(f"init_weights {path}: its network differs from this run's in {differing}")
        self.model.load_state_dict(state)
        self.init_weights_sha256 = sha256_of(path)

    def modules(self) -> dict[str, torch.nn.Module]:
        return {MODULE: self.model}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {MODULE: self.optimizer}

    def config_dict(self) -> dict:
        # the initial weights' hash makes a fine-tuning from other weights another run
        return {"model": asdict(self.model_config), "loss": "l1", "init_weights_sha256": self.init_weights_sha256}

    def train_step(self, batch: dict, step: int, run: Run) -> dict:
        seismic, velocity = batch["seismic"], batch["velocity"]  # (B, S, T, R), (B, 1, V, V)
        with run.autocast():
            prediction = run.wrapped[MODULE](seismic)  # (B, 1, V, V)
        loss = F.l1_loss(prediction.float(), velocity)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = run.clip_and_step(self.optimizer)
        return {"loss": loss.detach(), "grad_norm": grad_norm}

    @torch.no_grad()
    def validate(self, batch: dict, run: Run) -> dict:
        with run.autocast():
            prediction = self.model(batch["seismic"])
        metrics = inversion_metrics(prediction.float(), batch["velocity"])
        return {f"val_{name}": values.mean() for name, values in metrics.items()}


def build_task(settings: InversionNetSettings, seismic_shape, velocity_size: int,
               init_weights: str | Path | None = None) -> tuple[InversionNetTask, TrainConfig]:
    """The task for data of the given shapes, and its TrainConfig (OpenFWI's recipe + settings)."""
    train_config = settings.train_config()
    model_config = settings.model_config(seismic_shape, velocity_size)
    return InversionNetTask(model_config, train_config, init_weights), train_config


def train_inversionnet(train_dataset: Dataset, val_dataset: Dataset | None, settings: InversionNetSettings,
                       seismic_shape, velocity_size: int, out_dir: str | Path,
                       init_weights: str | Path | None = None) -> dict:
    """Train InversionNet on `train_dataset` (validated on `val_dataset`), from `init_weights`
    when given; returns the loop's summary. Writes out_dir/final.pt and best.pt (weights +
    config), log.csv, checkpoints, summary.json; rerunning resumes."""
    check_shapes(train_dataset, seismic_shape, velocity_size, "training")
    if val_dataset is not None:
        check_shapes(val_dataset, seismic_shape, velocity_size, "validation")
    task, train_config = build_task(settings, seismic_shape, velocity_size, init_weights)
    return train(task, train_dataset, val_dataset, train_config, out_dir)


# ---------------------------------------------------------------------------------------
# Prediction and evaluation.


def _device(device) -> torch.device:
    return resolve_device(device)


@torch.no_grad()
def predict(model: InversionNet, seismic_batches: Iterable[torch.Tensor], device=None) -> torch.Tensor:
    """Velocity maps (N, 1, V, V) on the CPU for seismic batches (B, S, T, R), in the model's mode."""
    device = _device(device)
    model = model.to(device)
    return torch.cat([model(seismic.to(device)).float().cpu() for seismic in seismic_batches])


@torch.no_grad()
def predicted_batches(model: InversionNet, dataset: Dataset, batch_size: int, device=None, num_workers: int = 0,
                      progress: bool = True, desc: str = "predict") -> Iterator[tuple[torch.Tensor, dict]]:
    """(prediction (B, 1, V, V), batch) on the CPU for the dataset in order, batch by batch:
    callers reduce each batch (metrics, per-sample errors) instead of holding every map."""
    device = _device(device)
    model = model.to(device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    for batch in tqdm(loader, desc=desc, disable=not progress, dynamic_ncols=True):
        yield model(batch["seismic"].to(device)).float().cpu(), batch


def family_rows(metrics: dict[str, torch.Tensor], family: torch.Tensor, names: list[str], codes) -> list[dict]:
    """Per-sample metrics (name -> (N,)) as a row per family code in `codes` ({"family", "n",
    and each metric's mean}), then an "all" row."""
    def row(name: str, selected: torch.Tensor) -> dict:
        return {"family": name, "n": int(selected.sum()),
                **{key: float(values[selected].double().mean()) for key, values in metrics.items()}}

    return [*(row(names[code], family == code) for code in codes), row("all", torch.ones_like(family, dtype=torch.bool))]


def evaluate_inversionnet(model_path: str | Path, dataset_zarr: str | Path, split: str = "test", batch_size: int = 64,
                          device=None, families: Iterable[str] | None = None, num_workers: int = 0,
                          progress: bool = True, indices=None) -> list[dict]:
    """OpenFWI's metrics of a trained InversionNet on one split: a row per family
    ({"family", "n", "mae", "rmse", "ssim"}, means over the family's samples), then an "all"
    row over every evaluated sample. `indices` restricts it to those samples of the split
    (e.g. the ones another method was evaluated on); `families` (names from the store's
    attrs["families"]) to those families, in that order; default: every family present."""
    model = load_inversionnet(model_path, _device(device))
    dataset = RealPairs(dataset_zarr, split, indices=indices, with_family=True)
    names = dataset.family_names
    if families is None:
        codes = sorted(set(dataset.family_codes.tolist()))
    else:
        unknown = [f for f in families if f not in names]
        if unknown:
            raise ValueError(f"{dataset_zarr}: unknown families {unknown}; the store has {names}")
        codes = [names.index(f) for f in families]
        keep = np.flatnonzero(np.isin(dataset.family_codes, codes))
        dataset = RealPairs(dataset_zarr, split, indices=dataset.indices[keep], with_family=True)
    if len(dataset) == 0:
        raise ValueError(f"{dataset_zarr}[{split}]: no samples to evaluate")

    parts: dict[str, list[torch.Tensor]] = {}
    family_parts = []
    for prediction, batch in predicted_batches(model, dataset, batch_size, device, num_workers, progress,
                                               desc=f"evaluate {split}"):
        for key, values in inversion_metrics(prediction, batch["velocity"]).items():
            parts.setdefault(key, []).append(values)
        family_parts.append(batch["family"])
    metrics = {key: torch.cat(values) for key, values in parts.items()}
    family = torch.cat(family_parts)
    return family_rows(metrics, family, names, codes)


def per_sample_mae(model: InversionNet, dataset: Dataset, batch_size: int = 64, device=None, num_workers: int = 0,
                   progress: bool = True) -> torch.Tensor:
    """MAE (N,) of each of the dataset's samples, in dataset order."""
    return torch.cat([mae(prediction, batch["velocity"])
                      for prediction, batch in predicted_batches(model, dataset, batch_size, device, num_workers,
                                                                 progress, desc="per-sample MAE")])


def hardest_generated(model_path: str | Path, pairs_zarr: str | Path, count: int, seismic: str = "decoded",
                      batch_size: int = 64, device=None, num_workers: int = 0, progress: bool = True) -> np.ndarray:
    """The pairs-store indices of the `count` generated pairs the model predicts worst: by
    per-sample MAE, largest first, equal MAEs in index order (Table 4's fine-tuning set)."""
    dataset = GeneratedPairs(pairs_zarr, seismic=seismic)
    if not 1 <= count <= len(dataset):
        raise ValueError(f"count must be in [1, {len(dataset)}] (the store's pairs), got {count}")
    model = load_inversionnet(model_path, _device(device))
    errors = per_sample_mae(model, dataset, batch_size, device, num_workers, progress).double().numpy()
    order = np.lexsort((dataset.indices, -errors))  # last key first: MAE descending, then index
    return dataset.indices[order[:count]]
