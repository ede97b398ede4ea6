"""FID scores of the workflow's sets, the rows of the paper's Table 1: generated seismic and
velocity against real data, per variant, beside the Stage-1 random-latent baseline; and the
t-SNE of Inception features (Fig. 6). The rule fid_table concatenates the variants' rows.

Two steps, two rules:
- `reference_features`: Inception features of the real data (one split of the dataset
  store; a seeded subset when fid.num_reference caps it), both modalities, computed once
  and shared by every variant.
- `variant_fid`: features of the variant's generated pairs (the first fid.num_generated
  rows of its pairs store: rows are i.i.d. draws, so the first n are a random sample) and
  of fid.num_baseline Stage-1 "random latents" -- latents drawn from the diagonal Gaussian
  fitted to the training latents, quantised and decoded, the same random latents as Table 5
  -- then FID against the reference, per modality.

How data becomes Inception images is evaluation.fid.to_inception_images: seismic's 3 shots
are the 3 colour channels, velocity is replicated to grey; both mapped from [-1, 1] to [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import zarr

from ..config import only_known
from ..seeds import Stream, derive_seed
from .fid import fid_from_features, inception_features, to_inception_images, tsne_figure
from .stage1 import gaussian_latents

if TYPE_CHECKING:
    from matplotlib.figure import Figure

KEY = "fid"
MODALITIES = ("seismic", "velocity")
SOURCES = ("diffusion", "stage1-random-latents")
COLUMNS = ("variant", "source", "modality", "fid", "n_generated", "n_reference", "reference_split",
           "weights_source", "weights_sha256")


@dataclass(frozen=True)
class FIDSettings:
    """config.yaml `fid`."""

    reference_split: str = "train"
    num_reference: int | None = None  # real samples (None: the whole split)
    num_generated: int | None = None  # generated pairs per variant (None: the whole store)
    num_baseline: int = 1000  # Stage-1 random latents per variant
    weights: str | None = None  # the official pt_inception-2015-12-05-6726825d.pth, or None (see load_fid_inception)
    batch_size: int = 50
    tsne_points: int = 2000  # per set in the t-SNE figure
    seed: int = 0

    def __post_init__(self):
        if self.reference_split not in ("train", "val", "test"):
            raise ValueError(f"{KEY}.reference_split must be train, val or test, got {self.reference_split!r}")
        for name in ("num_reference", "num_generated"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 2):
                raise ValueError(f"{KEY}.{name} must be null or an integer of at least 2 (FID needs a covariance), "
                                 f"got {value!r}")
        for name in ("num_baseline", "batch_size", "tsne_points"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < (2 if name == "num_baseline" else 1):
                raise ValueError(f"{KEY}.{name} must be a positive integer (num_baseline at least 2), got {value!r}")

    @classmethod
    def from_dict(cls, values: dict) -> FIDSettings:
        return cls(**only_known(values, cls, KEY))


@dataclass(frozen=True)
class FIDReference:
    """The real data's features (fid-reference's .npz) and the Inception network that made them."""

    features: dict[str, np.ndarray]  # per modality, (n, 2048)
    n: int  # real samples
    split: str  # the dataset split they came from
    inception: torch.nn.Module  # evaluation.fid.load_fid_inception's network ...
    weights: dict  # ... and its weights' info (source, path, sha256)


def _features(model, arrays: dict, rows: np.ndarray, settings: FIDSettings, device, desc: str) -> dict[str, np.ndarray]:
    """Inception features per modality of the given rows of {modality: Zarr or numpy array}
    (read batch by batch: a paper-scale store does not fit in memory)."""
    out = {}
    for modality in MODALITIES:
        array = arrays[modality]
        batches = (to_inception_images(array[rows[start : start + settings.batch_size]], modality)
                   for start in range(0, len(rows), settings.batch_size))
        print(f"{desc}: {modality}, {len(rows)} images", flush=True)
        out[modality] = inception_features(model, batches, device=device)
    return out


def reference_features(split: zarr.Group, inception: torch.nn.Module, settings: FIDSettings,
                       device: torch.device) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(the rows used, {modality: features}) of the real data: one split of the dataset store,
    a seeded subset of it when fid.num_reference caps it."""
    n = split["velocity"].shape[0]
    if n < 2:
        raise ValueError(f"split {settings.reference_split!r} has {n} samples; FID needs at least 2")
    rows = np.arange(n)
    if settings.num_reference is not None and settings.num_reference < n:
        rng = np.random.default_rng(derive_seed(settings.seed, Stream.FID_REFERENCE))
        rows = np.sort(rng.choice(n, settings.num_reference, replace=False))  # all families, not the first ones
    return rows, _features(inception, {m: split[m] for m in MODALITIES}, rows, settings, device, "reference")


@torch.no_grad()
def decode_pairs(model, z: torch.Tensor, device, batch_size: int = 64) -> dict[str, np.ndarray]:
    """{modality: float32 array} of latents z decoded by the Stage-1 autoencoder, batch by batch."""
    pairs = {m: [] for m in MODALITIES}
    for start in range(0, len(z), batch_size):
        seismic, velocity = model.decode_latent(z[start : start + batch_size].to(device))
        pairs["seismic"].append(seismic.float().cpu().numpy())
        pairs["velocity"].append(velocity.float().cpu().numpy())
    return {m: np.concatenate(parts) for m, parts in pairs.items()}


def stage1_random_pairs(model, training_latents: zarr.Array, n: int, seed: int, device,
                        batch_size: int = 64) -> dict[str, np.ndarray]:
    """n pairs decoded by the Stage-1 autoencoder `model` from Gaussian latents fitted to the
    training latents: the baseline."""
    z = gaussian_latents(training_latents, n, torch.Generator().manual_seed(seed))
    return decode_pairs(model, z, device, batch_size)


def variant_fid(variant: str, pairs: zarr.Group, autoencoder, training_latents: zarr.Array, reference: FIDReference,
                settings: FIDSettings, device: torch.device) -> tuple[list[dict], dict[str, Figure]]:
    """FID rows (COLUMNS) of one variant's pairs store and of its Stage-1 baseline (from the
    autoencoder and its training latents), both modalities; and per modality the t-SNE figure
    of the three feature sets."""
    n_store = pairs["velocity"].shape[0]
    n_generated = n_store if settings.num_generated is None else min(settings.num_generated, n_store)
    generated = _features(reference.inception, {m: pairs[m] for m in MODALITIES}, np.arange(n_generated), settings,
                          device, f"{variant} diffusion samples")
    baseline_pairs = stage1_random_pairs(autoencoder, training_latents, settings.num_baseline,
                                         derive_seed(settings.seed, Stream.FID_BASELINE), device)
    baseline = _features(reference.inception, baseline_pairs,
                         np.arange(settings.num_baseline), settings, device, f"{variant} Stage-1 random latents")
    rows = []
    for source, features in zip(SOURCES, (generated, baseline)):
        for modality in MODALITIES:
            rows.append({
                "variant": variant, "source": source, "modality": modality,
                "fid": fid_from_features(features[modality], reference.features[modality]),
                "n_generated": len(features[modality]), "n_reference": reference.n,
                "reference_split": reference.split, "weights_source": reference.weights["source"],
                "weights_sha256": reference.weights["sha256"],
            })
    figures = {modality: tsne_figure(reference.features[modality],
                                     {"WaveDiffusion": generated[modality], "Stage-1 random latents": baseline[modality]},
                                     seed=settings.seed, max_points=settings.tsne_points,
                                     title=f"{variant}: t-SNE of Inception features, {modality} "
                                           f"(real: {reference.split} split)")
               for modality in MODALITIES}
    return rows, figures
