"""Export the accepted pairs in OpenFWI's own file layout, so any OpenFWI tool trains on them.

    <out>/model1.npy   (500, 1, 70, 70)   float32  velocity in m/s on OpenFWI's 70x70 grid
    <out>/data1.npy    (500, 5, 1000, 70) float32  shot gathers (shots, time samples, receivers)
    <out>/model2.npy ... every file holds exactly samples_per_file (500) pairs
    <out>/annotation.txt     OpenFWI's annotation file: "<abs path>/data{n}.npy<TAB><abs path>/model{n}.npy"
                             a line, each ending in a newline, for its train.py's --train-anno
    <out>/dataset_config.json  the entry "wavediffusion" to add to OpenFWI's dataset_config.json
                             (train.py -ds wavediffusion): file_size, the data's and labels'
                             min and max that it normalises with, the acquisition
    <out>/index.csv    file, row_in_file, store_row, deviation: where each exported pair came from
    <out>/export.json  what was exported, from which store, with which settings
    <out>/pairs.h5     optional (export.hdf5): the same arrays in one HDF5 file
                       (`model`, `data`, `store_row`, `deviation`), with units and provenance
                       as attributes

Only pairs the physics filter accepted (`valid`) are exported, in store order, and only
whole files of them: the accepted pairs past the last multiple of samples_per_file are left
out (export.json counts them). OpenFWI's FWIDataset takes every file to hold `file_size`
samples (its length is lines x file_size, item i is row i % file_size of file i // file_size),
so a shorter last file would raise an IndexError; padding it would repeat pairs in training.
The annotation's paths are absolute, as in OpenFWI's own split files: a moved folder needs
them rewritten.

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
from ..data.pairs_store import accepted_rows, open_pairs_store
from ..data.store import open_dataset, representation_of
from ..data.transforms import Representation, velocity_from_model
from ..devices import resolve_device
from ..files import atomic_directory, write_csv, write_json
from ..physics.acquisition import OPENFWI_ACQUISITION
from ..physics.forward import forward_model

KEY = "export"
OPENFWI_SAMPLES_PER_FILE = 500
INDEX_COLUMNS = ("file", "row_in_file", "store_row", "deviation")
ANNOTATION = "annotation.txt"
DATASET_NAME = "wavediffusion"  # the export's key in OpenFWI's dataset_config.json


@dataclass(frozen=True)
class ExportSettings:
    """config.yaml `export`."""

    max_pairs: int | None = None  # accepted pairs to export, in store order (None: all of them)
    samples_per_file: int = OPENFWI_SAMPLES_PER_FILE  # every file holds exactly this many; the rest is left out
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


@torch.no_grad()
def export_openfwi(store: str | Path, dataset: str | Path, out: str | Path, settings: ExportSettings,
                   backend: str = "deepwave", device: str | None = None, progress: bool = True) -> dict:
    """Write the accepted pairs as whole OpenFWI files into the directory `out`, with the
    annotation file and dataset_config entry OpenFWI's training reads (atomically: the
    directory appears complete or not at all). Returns what export.json records."""
    device = resolve_device(device)
    root = open_pairs_store(store, mode="r")
    all_accepted = accepted_rows(root, store)
    accepted = all_accepted[: settings.max_pairs]  # None: all
    rep = representation_of(open_dataset(dataset))
    if tuple(rep.velocity_shape) != tuple(root.attrs["velocity_shape"]):
        raise ValueError(f"{store}: velocity shape {tuple(root.attrs['velocity_shape'])} differs from {dataset}'s "
                         f"representation {tuple(rep.velocity_shape)}")
    per_file = settings.samples_per_file
    rows = accepted[: len(accepted) // per_file * per_file]  # whole files only: see the module's docstring
    files = [rows[start : start + per_file] for start in range(0, len(rows), per_file)]
    final = Path(out).resolve()  # the annotation names the files where they end up, not the temporary folder
    index, data_min, data_max = [], np.inf, -np.inf
    with atomic_directory(out) as tmp:
        tmp.mkdir()
        h5 = h5py.File(tmp / "pairs.h5", "w") if settings.hdf5 else None
        try:
            if h5 is not None:
                _create_hdf5_datasets(h5, len(rows), _hdf5_attributes(store, root, backend))
            written = 0
            for n, file_rows in enumerate(tqdm(files, desc="export", unit="file", disable=not progress), start=1):
                velocity = torch.from_numpy(root["velocity"].get_orthogonal_selection((file_rows,))).to(device)
                model = velocity_from_model(velocity, rep)  # (B, 1, 70, 70) m/s
                data = forward_model(model, backend=backend, batch_size=settings.batch_size)  # (B, 5, 1000, 70)
                model, data = model.cpu().numpy(), data.cpu().numpy()
                np.save(tmp / f"model{n}.npy", model)
                np.save(tmp / f"data{n}.npy", data)
                data_min, data_max = min(data_min, float(data.min())), max(data_max, float(data.max()))
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
        (tmp / ANNOTATION).write_text("".join(f"{final / f'data{n}.npy'}\t{final / f'model{n}.npy'}\n"
                                              for n in range(1, len(files) + 1)))
        write_json({DATASET_NAME: openfwi_dataset_config(per_file, data_min, data_max, rep)}, tmp / "dataset_config.json")
        info = {
            "store": str(store), "num_exported": int(len(rows)), "num_files": len(files),
            "num_accepted": int(len(all_accepted)),
            "num_left_out": int(len(accepted) - len(rows)),  # past the last whole file (of those max_pairs allowed)
            "physics_filter": root.attrs["physics_filter"], "backend": backend,
            "acquisition": {"seismic_shape": list(OPENFWI_ACQUISITION.seismic_shape)},
            "settings": asdict(settings),
            "seismic": "data{n}.npy is F(model{n}.npy), simulated at OpenFWI's acquisition; the decoded "
                       "seismic is in the pairs store",
        }
        (tmp / "export.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def openfwi_dataset_config(file_size: int, data_min: float, data_max: float, rep: Representation) -> dict:
    """The export's entry in OpenFWI's dataset_config.json, with its keys: train.py reads
    file_size and normalises data by log(data_min), log(data_max) and labels by label_min,
    label_max; the rest describes the acquisition, as OpenFWI's entries do. No data (no
    whole file): data_min and data_max are null."""
    acquisition = OPENFWI_ACQUISITION
    data_min, data_max = (data_min, data_max) if data_min <= data_max else (None, None)
    return {"data_min": data_min, "data_max": data_max, "label_min": rep.velocity_min, "label_max": rep.velocity_max,
            "file_size": int(file_size), "nbc": acquisition.absorbing_cells, "dx": acquisition.dx,
            "nt": acquisition.nt, "dt": acquisition.dt, "f": acquisition.peak_frequency, "n_grid": acquisition.nx,
            "ns": acquisition.n_shots, "ng": acquisition.n_receivers, "sz": acquisition.source_depth * acquisition.dx,
            "gz": acquisition.receiver_depth * acquisition.dx}


# pairs.h5's datasets -> the names of their axes (HDF5 dimension labels)
HDF5_DIMS = {"model": ("pair", "velocity_channel", "depth", "lateral"), "data": ("pair", "shot", "time", "receiver"),
             "store_row": ("pair",), "deviation": ("pair",)}


def _hdf5_attributes(store, root, backend: str) -> dict[str, dict]:
    """Units and provenance of pairs.h5: the file's (key "/") and each dataset's attributes."""
    acquisition = OPENFWI_ACQUISITION
    return {
        "/": {"description": "generated velocity maps (WaveDiffusion) that the physics filter accepted, and their "
                             "seismic data simulated at OpenFWI's acquisition, as OpenFWI's model*.npy and data*.npy",
              "store": str(store), "config_sha256": str(root.attrs.get("config_sha256")), "backend": backend,
              "physics_filter": json.dumps(root.attrs["physics_filter"], sort_keys=True)},
        "model": {"long_name": "P-wave velocity", "units": "m/s", "grid_spacing_m": acquisition.dx},
        "data": {"long_name": "pressure recorded at the receivers",
                 "units": "OpenFWI's amplitude scale (a Ricker source of unit amplitude)",
                 "time_step_s": acquisition.dt, "peak_frequency_hz": acquisition.peak_frequency,
                 "source_columns": list(acquisition.source_columns), "receiver_spacing_m": acquisition.dx},
        "store_row": {"long_name": "row of the pair in the pairs store"},
        "deviation": {"long_name": "PDE deviation of the stored pair: MSE between its decoded and simulated seismic "
                                   "in the model space", "units": "1"},
    }


def _create_hdf5_datasets(h5: h5py.File, n: int, attributes: dict[str, dict]) -> None:
    # one sample per chunk: a shuffled reader touches exactly the samples it asks for
    h5.create_dataset("model", shape=(n, *OPENFWI_ACQUISITION.velocity_shape), dtype="float32",
                      chunks=(1, *OPENFWI_ACQUISITION.velocity_shape) if n else None)
    h5.create_dataset("data", shape=(n, *OPENFWI_ACQUISITION.seismic_shape), dtype="float32",
                      chunks=(1, *OPENFWI_ACQUISITION.seismic_shape) if n else None)
    h5.create_dataset("store_row", shape=(n,), dtype="int64")
    h5.create_dataset("deviation", shape=(n,), dtype="float64")
    for name, values in attributes.items():
        h5[name].attrs.update(values)
    for name, labels in HDF5_DIMS.items():
        for axis, label in enumerate(labels):
            h5[name].dims[axis].label = label


def _write_hdf5_rows(h5: h5py.File, start: int, model, data, store_rows, deviation) -> None:
    stop = start + len(store_rows)
    h5["model"][start:stop] = model
    h5["data"][start:stop] = data
    h5["store_row"][start:stop] = store_rows
    h5["deviation"][start:stop] = deviation
