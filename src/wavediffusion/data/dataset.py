"""A torch Dataset over one split of the dataset store.

Each worker opens the store's arrays itself on first use (Zarr handles are not shared
across processes), and reads one sample per __getitem__: nothing loads the whole store.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .store import SPLITS, open_dataset


def checked_indices(indices, n: int, where: str) -> np.ndarray:
    """indices as int64, each in [0, n); all of [0, n) when None."""
    if indices is None:
        return np.arange(n, dtype=np.int64)
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if indices.size and (indices.min() < 0 or indices.max() >= n):
        raise IndexError(f"{where}: indices must lie in [0, {n}), got [{indices.min()}, {indices.max()}]")
    return indices


class PairDataset(Dataset):
    """Samples `indices` (default: all) of one split: {"seismic": (S, T, R), "velocity":
    (1, V, V)} float32 in [-1, 1], and "family" (the index into the store's
    attrs["families"]) when `with_family`."""

    def __init__(self, path: str | Path, split: str, indices=None, with_family: bool = True):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.path = Path(path)
        self.split = split
        root = open_dataset(self.path)  # fail early, in the main process, if the store is bad
        self.family_names = list(root.attrs["families"])
        self.indices = checked_indices(indices, root[split]["seismic"].shape[0], f"{self.path}[{split}]")
        # read once here: the family array is one chunk, which each per-sample read would decompress
        self.family_codes = np.asarray(root[split]["family"][:], dtype=np.int64)[self.indices]
        self.with_family = with_family
        self._arrays = None  # (seismic, velocity), opened lazily in each worker

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if self._arrays is None:
            # the array handles, not the group: group["name"] rereads the array's metadata on
            # every access, which tripled the time of a one-sample read
            group = open_dataset(self.path)[self.split]
            self._arrays = (group["seismic"], group["velocity"])
        seismic, velocity = self._arrays
        index = int(self.indices[i])
        sample = {"seismic": torch.from_numpy(seismic[index]), "velocity": torch.from_numpy(velocity[index])}
        if self.with_family:
            sample["family"] = torch.tensor(int(self.family_codes[i]))
        return sample

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_arrays"] = None  # each worker process opens its own handles
        return state
