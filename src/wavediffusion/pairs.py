"""A generated set as a torch Dataset: the way to train on a pairs store from Python.

    from torch.utils.data import DataLoader
    from wavediffusion.pairs import GeneratedPairs

    pairs = GeneratedPairs("results/samples/1vq/pairs.zarr", accepted_only=True)
    loader = DataLoader(pairs, batch_size=64, shuffle=True)

Each item is {"seismic": (S, T, R), "velocity": (1, V, V)}, float32 in the model space
[-1, 1]; the store's attributes map them back to OpenFWI's amplitudes and m/s
(docs/data.md, 'The pairs store'). The README's section 'Generated pairs in Python' runs this.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import zarr
from torch.utils.data import Dataset

from .data.dataset import checked_indices
from .data.pairs_store import accepted_rows, is_done, open_pairs_store

# seismic= -> (the array it reads, the job whose marker says that array's rows are written)
SEISMIC_SOURCES = {"decoded": ("seismic", "sample"), "simulated": ("seismic_simulated", "check")}


class GeneratedPairs(Dataset):
    """Pairs of a pairs store (data/pairs_store.py): {"seismic": (S, T, R), "velocity":
    (1, V, V)} float32 in [-1, 1].

    Which pairs: `indices` (default: all), or with `accepted_only` those the physics filter
    accepted (array `valid`; the store's physics_report must have run).
    `seismic="decoded"` takes the Stage-1 decoder's seismic (array `seismic`);
    `"simulated"` takes F(velocity) from the physics check (array `seismic_simulated`), i.e.
    the generated velocity with physically exact data. Unwritten rows hold NaN, so every
    shard that holds a requested pair must carry its completion marker ("sample" for the
    decoded seismic, "check" for the simulated one); otherwise construction fails, naming them.
    """

    def __init__(self, pairs_zarr: str | Path, indices=None, seismic: str = "decoded", accepted_only: bool = False):
        if seismic not in SEISMIC_SOURCES:
            raise ValueError(f"seismic must be one of {sorted(SEISMIC_SOURCES)}, got {seismic!r}")
        if accepted_only and indices is not None:
            raise ValueError("give indices or accepted_only, not both (accepted_only picks the indices)")
        self.path = Path(pairs_zarr)
        self.seismic = seismic
        self.seismic_array, done_kind = SEISMIC_SOURCES[seismic]
        root = open_pairs_store(self.path, mode="r")
        self.seismic_shape = tuple(root.attrs["seismic_shape"])
        self.velocity_size = int(root.attrs["velocity_shape"][-1])
        n, shard_size = int(root.attrs["num_pairs"]), int(root.attrs["shard_size"])
        self.indices = accepted_rows(root, self.path) if accepted_only else checked_indices(indices, n, str(self.path))
        missing = [int(k) for k in np.unique(self.indices // shard_size) if not is_done(self.path, done_kind, k)]
        if missing:
            raise ValueError(f"{self.path}: shards {missing} have no {done_kind!r} marker, so their "
                             f"{self.seismic_array!r} rows are not (all) written; finish those jobs first")
        self._arrays = None  # (seismic, velocity), opened lazily in each worker (see data.dataset.PairDataset)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if self._arrays is None:
            root = zarr.open_group(str(self.path), mode="r")
            self._arrays = (root[self.seismic_array], root["velocity"])
        seismic, velocity = self._arrays
        index = int(self.indices[i])
        return {"seismic": torch.from_numpy(seismic[index]), "velocity": torch.from_numpy(velocity[index])}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_arrays"] = None  # each worker process opens its own handles
        return state
