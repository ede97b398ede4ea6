"""Does Stage 2 copy its training set? Rule `memorisation`.

Each generated latent's distance to its nearest training latent, beside the same distance
for held-out latents (the latents store's val split, which Stage 2 never trained on), as
many of each. A generator that samples the data's distribution leaves its latents about as
far from the training set as held-out data lie; one that copies training latents leaves
many of them far closer. Distances are RMS over the latent's elements, in the space Stage 2
learns (the encoder's continuous latents, unscaled).

The verdict: memorisation shows when more than MAX_FRACTION_BELOW of the generated
latents lie closer to the training set than the nearest 1 % of held-out latents do (by
construction about 1 % of held-out latents do).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm import tqdm

from ..devices import resolve_device

if TYPE_CHECKING:
    from matplotlib.figure import Figure

COLUMNS = ("variant", "set", "n", "distance_median", "distance_p01", "distance_min", "fraction_below_held_out_p01")
HELD_OUT_QUANTILE = 0.01
MAX_FRACTION_BELOW = 0.05  # 5x the rate held-out data themselves show


def nearest_distances(queries: torch.Tensor, references, device: torch.device, block: int = 2048,
                      progress: bool = False) -> torch.Tensor:
    """RMS distance of each query (N, ...) to its nearest row of `references` (an array of
    (M, ...) rows, read `block` rows at a time), (N,) float64 on the CPU."""
    q = queries.flatten(1).to(device, torch.float32)
    best = torch.full((len(q),), float("inf"), device=device)
    for start in tqdm(range(0, references.shape[0], block), desc="nearest training latents", unit="block",
                      disable=not progress):
        r = torch.as_tensor(np.asarray(references[start:start + block]), device=device).flatten(1).float()
        best = torch.minimum(best, torch.cdist(q, r).min(dim=1).values)
    return (best / q.shape[1] ** 0.5).double().cpu()


def distance_row(variant: str, name: str, distances: torch.Tensor, threshold: float) -> dict:
    return {"variant": variant, "set": name, "n": len(distances), "distance_median": float(distances.median()),
            "distance_p01": float(torch.quantile(distances, HELD_OUT_QUANTILE)),
            "distance_min": float(distances.min()),
            "fraction_below_held_out_p01": float((distances < threshold).double().mean())}


def memorisation(train, held_out, generated, variant: str, device: str | None = None,
                 progress: bool = True) -> tuple[list[dict], Figure]:
    """Distances to the nearest `train` latent of the `generated` latents and of as many
    `held_out` ones (a Zarr array: the latents store's val split): two rows of COLUMNS
    (held_out, generated) and the figure of their histograms."""
    device = resolve_device(device)
    n = min(held_out.shape[0], generated.shape[0])  # as many of each: equally noisy quantiles
    if n < 2:
        raise ValueError(f"{held_out.shape[0]} held-out (val) latents and {generated.shape[0]} generated ones; "
                         "the comparison needs two of each at least")
    # evenly spaced through the held-out split (stored family by family), all of it when it is the smaller
    index = np.linspace(0, held_out.shape[0] - 1, n).round().astype(np.int64)
    held = nearest_distances(torch.from_numpy(held_out.get_orthogonal_selection((index,))), train, device,
                             progress=progress)
    made = nearest_distances(torch.from_numpy(np.asarray(generated[:n])), train, device, progress=progress)
    threshold = float(torch.quantile(held, HELD_OUT_QUANTILE))
    rows = [distance_row(variant, "held_out", held, threshold), distance_row(variant, "generated", made, threshold)]
    return rows, plot_distances(held, made, threshold, variant)


def memorised(rows: list[dict]) -> bool:
    """The verdict of memorisation()'s rows: too many generated latents near training ones."""
    generated = next(row for row in rows if row["set"] == "generated")
    return float(generated["fraction_below_held_out_p01"]) > MAX_FRACTION_BELOW


def plot_distances(held: torch.Tensor, made: torch.Tensor, threshold: float, variant: str) -> Figure:
    """Histograms of the held-out and generated latents' distances, the held-out 1 % quantile marked."""
    from ..plotting import plt

    figure, ax = plt.subplots(figsize=(6, 3.5), layout="constrained")
    bins = np.histogram_bin_edges(torch.cat([held, made]).numpy(), bins=40)
    ax.hist(held.numpy(), bins=bins, alpha=0.6, label=f"held-out latents (n={len(held)})")
    ax.hist(made.numpy(), bins=bins, alpha=0.6, label=f"generated latents (n={len(made)})")
    ax.axvline(threshold, color="k", linestyle="--", linewidth=1, label="held-out 1 % quantile")
    ax.set_xlabel("RMS distance to the nearest training latent")
    ax.set_ylabel("latents")
    ax.set_title(f"{variant}: does Stage 2 copy its training set?", fontsize=10)
    ax.legend(fontsize=8)
    return figure
