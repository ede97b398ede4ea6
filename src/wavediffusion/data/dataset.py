"""A torch Dataset / DataLoader over one split of the dataset store.

Each worker opens the store itself on first use (Zarr handles are not shared across
processes), and reads one sample per __getitem__: nothing loads the whole store.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from .store import SPLITS, open_dataset


class PairDataset(Dataset):
    """Samples of one split: {"seismic": (S, T, R), "velocity": (1, V, V), "family": int}."""

    def __init__(self, path: str | Path, split: str):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.path = Path(path)
        self.split = split
        root = open_dataset(self.path)  # fail early, in the main process, if the store is bad
        self.length = root[split]["seismic"].shape[0]
        # read once here: the family array is one chunk, which each per-sample read would decompress
        self.family_codes = root[split]["family"][:].astype("int64")
        self._arrays = None  # (seismic, velocity), opened lazily in each worker

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if self._arrays is None:
            # the array handles, not the group: group["name"] rereads the array's metadata on
            # every access, which tripled the time of a one-sample read
            group = open_dataset(self.path)[self.split]
            self._arrays = (group["seismic"], group["velocity"])
        seismic, velocity = self._arrays
        return {
            "seismic": torch.from_numpy(seismic[index]),
            "velocity": torch.from_numpy(velocity[index]),
            "family": torch.tensor(int(self.family_codes[index])),
        }

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_arrays"] = None  # each worker process opens its own handles
        return state


def make_dataloader(
    path: str | Path,
    split: str,
    batch_size: int,
    shuffle: bool = True,
    num_workers: int = 0,
    seed: int = 0,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader whose shuffle order depends only on `seed`."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        PairDataset(path, split),
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        generator=generator,
        drop_last=drop_last,
        persistent_workers=num_workers > 0,
    )
