"""Export the accepted pairs in OpenFWI's own file layout, so any OpenFWI tool trains on them.

    <out>/model1.npy   (500, 1, 70, 70)   float32  velocity in m/s on OpenFWI's 70x70 grid
    <out>/data1.npy    (500, 5, 1000, 70) float32  shot gathers (shots, time samples, receivers)
    <out>/model2.npy ... (the last pair of files may hold fewer than 500)
    <out>/index.csv    file, row_in_file, store_row, deviation: where each exported pair came from
    <out>/export.json  what was exported, from which store, with which settings
    <out>/pairs.h5     optional (export.hdf5): the same arrays in one HDF5 file
                       (`model`, `data`, `store_row`, `deviation`)

Only pairs the physics filter accepted (`valid`) are exported, in store order.

Why the seismic is simulated, not decoded: OpenFWI's data files hold 5 shots x 1000 time
samples x 70 receivers of raw amplitudes, while the decoder produces 3 of the shots,
resized and log-normalised; that cannot be inverted into OpenFWI's layout. So data{n}.npy is
F(velocity), the same deepwave simulation at OpenFWI's acquisition that the physics check
uses -- exactly how OpenFWI made its own data from its velocity maps. The decoded seismic
stays in the pairs store (`seismic`) for users who want the joint pairs themselves.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm import tqdm

from ..config import only_known
from ..data.pairs_store import open_pairs_store
from ..data.store import open_dataset, representation_of
from ..data.transforms import velocity_from_model
from ..devices import resolve_device
from ..files import atomic_directory, write_csv
from ..physics.acquisition import OPENFWI_ACQUISITION
from ..physics.forward import forward_model

KEY = "export"
OPENFWI_SAMPLES_PER_FILE = 500
INDEX_COLUMNS = ("file", "row_in_file", "store_row", "deviation")


@dataclass(frozen=True)
class ExportSettings:
    """config.yaml `export`."""

    max_pairs: int | None = None  # accepted pairs to export, in store order (None: all of them)
    samples_per_file: int = OPENFWI_SAMPLES_PER_FILE
    hdf5: bool = False  # also write pairs.h5
    batch_size: int = 64  # velocity maps simulated at a time

    def __post_init__(self):
        for name in ("samples_per_file", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{KEY}.{name} must be an integer of at least 1, got {value!r}")
        if self.max_pairs is not None and (not isinstance(self.max_pairs, int) or self.max_pairs < 1):
            raise ValueError(f"{KEY}.max_pairs must be null or an integer of at least 1, got {self.max_pairs!r}")

    @classmethod
    def from_dict(cls, values: dict) -> ExportSettings:
        return cls(**only_known(values, cls, KEY))


def accepted_rows(store: str | Path, max_pairs: int | None = None) -> np.ndarray:
    """Store rows of the pairs the physics filter accepted (at most max_pairs, in order)."""
    root = open_pairs_store(store, mode="r")
    if "physics_filter" not in root.attrs:
        raise RuntimeError(f"{store}: the physics filter has not been applied (no 'physics_filter' attribute); "
                           "run the physics_report rule first")
    rows = np.flatnonzero(root["valid"][:])
    return rows if max_pairs is None else rows[:max_pairs]


@torch.no_grad()
def export_openfwi(store: str | Path, dataset: str | Path, out: str | Path, settings: ExportSettings,
                   backend: str = "deepwave", device: str | None = None, progress: bool = True) -> dict:
    """Write the accepted pairs as OpenFWI files into the directory `out` (atomically: the
    directory appears complete or not at all). Returns what export.json records."""
    device = resolve_device(device)
    rows = accepted_rows(store, settings.max_pairs)
    root = open_pairs_store(store, mode="r")
    rep = representation_of(open_dataset(dataset))
    if tuple(rep.velocity_shape) != tuple(root.attrs["velocity_shape"]):
        raise ValueError(f"{store}: velocity shape {tuple(root.attrs['velocity_shape'])} differs from {dataset}'s "
                         f"representation {tuple(rep.velocity_shape)}")
    per_file = settings.samples_per_file
    files = [rows[start : start + per_file] for start in range(0, len(rows), per_file)]
    index = []
    with atomic_directory(out) as tmp:
        tmp.mkdir()
        h5 = h5py.File(tmp / "pairs.h5", "w") if settings.hdf5 else None
        try:
            if h5 is not None:
                _create_hdf5_datasets(h5, len(rows))
            written = 0
            for n, file_rows in enumerate(tqdm(files, desc="export", unit="file", disable=not progress), start=1):
                velocity = torch.from_numpy(root["velocity"].get_orthogonal_selection((file_rows,))).to(device)
                model = velocity_from_model(velocity, rep)  # (B, 1, 70, 70) m/s
                data = forward_model(model, backend=backend, batch_size=settings.batch_size)  # (B, 5, 1000, 70)
                model, data = model.cpu().numpy(), data.cpu().numpy()
                np.save(tmp / f"model{n}.npy", model)
                np.save(tmp / f"data{n}.npy", data)
                deviation = root["deviation"].get_orthogonal_selection((file_rows,))
                if h5 is not None:
                    _write_hdf5_rows(h5, written, model, data, file_rows, deviation)
                written += len(file_rows)
                index += [{"file": n, "row_in_file": i, "store_row": int(row), "deviation": float(d)}
                          for i, (row, d) in enumerate(zip(file_rows, deviation))]
        finally:
            if h5 is not None:
                h5.close()
        write_csv(index, tmp / "index.csv", INDEX_COLUMNS)
        info = {
            "store": str(store), "num_exported": int(len(rows)), "num_files": len(files),
            "num_accepted": int(len(accepted_rows(store))),
            "physics_filter": root.attrs["physics_filter"], "backend": backend,
            "acquisition": {"seismic_shape": list(OPENFWI_ACQUISITION.seismic_shape)},
            "settings": asdict(settings),
            "seismic": "data{n}.npy is F(model{n}.npy), simulated at OpenFWI's acquisition; the decoded "
                       "seismic is in the pairs store",
        }
        (tmp / "export.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def _create_hdf5_datasets(h5: h5py.File, n: int) -> None:
    # one sample per chunk: a shuffled reader touches exactly the samples it asks for
    h5.create_dataset("model", shape=(n, *OPENFWI_ACQUISITION.velocity_shape), dtype="float32",
                      chunks=(1, *OPENFWI_ACQUISITION.velocity_shape) if n else None)
    h5.create_dataset("data", shape=(n, *OPENFWI_ACQUISITION.seismic_shape), dtype="float32",
                      chunks=(1, *OPENFWI_ACQUISITION.seismic_shape) if n else None)
    h5.create_dataset("store_row", shape=(n,), dtype="int64")
    h5.create_dataset("deviation", shape=(n,), dtype="float64")


def _write_hdf5_rows(h5: h5py.File, start: int, model, data, store_rows, deviation) -> None:
    stop = start + len(store_rows)
    h5["model"][start:stop] = model
    h5["data"][start:stop] = data
    h5["store_row"][start:stop] = store_rows
    h5["deviation"][start:stop] = deviation
