"""FID of each sampler on the same trained model (rule `sampler_fid`).

The trajectory rule's DDPM, DDIM and DPM-Solver++ runs keep their final latents
(final_latents.npz); here each setting's latents are decoded and scored against the FID
reference, beside Stage-1 random latents of the same count, and joined with that rule's
deviation and speed (ddim.csv). One table then weighs physical consistency, realism and
speed, which is what choosing `sampling.sampler` and `sampling.steps` needs.

Every setting starts from the same noise and has the same count, so their FIDs carry the
same small-sample bias and rank against each other and against the baseline row; they are
not comparable with fid_table.csv's, which are computed on more samples.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import zarr

from ..seeds import Stream, derive_seed
from .fid import fid_from_features
from .fid_scores import MODALITIES, FIDReference, FIDSettings, _features, decode_pairs, stage1_random_pairs
from .trajectory import row_eta, same_setting, sampler_key, sampler_series, split_key

if TYPE_CHECKING:
    from matplotlib.figure import Figure

COLUMNS = ("variant", "sampler", "steps", "eta", "n", "fid_seismic", "fid_velocity", "deviation_mean", "deviation_std",
           "seconds_per_sample", "n_reference", "weights_sha256")
BASELINE = "stage1-random-latents"


def plot_sampler_fid(rows: list[dict]) -> Figure:
    """FID against sampler steps, one panel per modality, the random-latent baseline dashed."""
    from ..plotting import plt

    figure, axes = plt.subplots(1, len(MODALITIES), figsize=(10, 3.8), layout="constrained")
    samplers = [r for r in rows if r["sampler"] != BASELINE]
    for ax, modality in zip(axes, MODALITIES):
        for sampler, eta, marker, label in sampler_series(samplers):
            points = sorted((r["steps"], r[f"fid_{modality}"]) for r in samplers if same_setting(r, sampler, eta))
            ax.plot(*zip(*points), marker, label=label, markersize=5)
        for r in rows:
            if r["sampler"] == BASELINE:
                ax.axhline(r[f"fid_{modality}"], color="tab:gray", linestyle="--", linewidth=1,
                           label=f"Stage-1 random latents (n={r['n']})")
        ax.set_xscale("log")
        ax.set_xlabel("sampler steps")
        ax.set_ylabel("FID")
        ax.set_title(f"{modality}: FID of each sampler (n={samplers[0]['n'] if samplers else 0} each)", fontsize=10)
        ax.legend(fontsize=8)
    return figure


def sampler_fid(variant: str, finals: dict[str, np.ndarray], ddim_rows: list[dict], autoencoder,
                training_latents: zarr.Array, reference: FIDReference, settings: FIDSettings,
                device: torch.device) -> tuple[list[dict], Figure]:
    """Rows (COLUMNS) of each sampler setting's final latents ({sampler_key: latents}, decoded by
    the Stage-1 autoencoder) joined with its ddim.csv row, and one per distinct count of Stage-1
    random latents (from the training latents); and the figure of them."""
    speed = {sampler_key(r["sampler"], int(r["steps"]), row_eta(r)): r for r in ddim_rows}

    def fid_row(sampler: str, steps: int | str, eta: float | str, pairs: dict[str, np.ndarray], measured: dict) -> dict:
        n = len(pairs["velocity"])
        features = _features(reference.inception, pairs, np.arange(n), settings, device, f"{variant} {sampler}-{steps}")
        return {"variant": variant, "sampler": sampler, "steps": steps, "eta": eta, "n": n,
                **{f"fid_{m}": fid_from_features(features[m], reference.features[m]) for m in MODALITIES},
                "deviation_mean": measured.get("mean", ""), "deviation_std": measured.get("std", ""),
                "seconds_per_sample": measured.get("seconds_per_sample", ""),
                "n_reference": reference.n, "weights_sha256": reference.weights["sha256"]}

    rows = []
    for key, z in finals.items():
        sampler, steps, eta = split_key(key)
        if key not in speed:
            raise ValueError(f"ddim.csv has no row for {key} of the final latents; both must come from one "
                             "trajectory run")
        pairs = decode_pairs(autoencoder, torch.from_numpy(z), device, settings.batch_size)
        rows.append(fid_row(sampler, steps, eta if sampler == "ddim" else "", pairs, speed[key]))
    for n in sorted({row["n"] for row in rows}):
        # Gaussian latents fitted to the training latents, seeded as fid_variant's baseline
        pairs = stage1_random_pairs(autoencoder, training_latents, n, derive_seed(settings.seed, Stream.FID_BASELINE),
                                    device, settings.batch_size)
        rows.append(fid_row(BASELINE, "", "", pairs, {}))
    return rows, plot_sampler_fid(rows)
