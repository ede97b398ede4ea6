"""The embedded source: velocity maps in the package -> OpenFWI's native file layout.

The `simulate` rule forward-models velocity maps (real FlatVel-A / CurveVel-A maps shipped
in the package, synthetic maps for the other families) and writes them exactly as OpenFWI
lays out a family: `{prefix}{n}.npy` files of at most 500 samples, seismic float32
[n, 5, 1000, 70] beside velocity float32 [n, 1, 70, 70] m/s, plus a split.json naming the
train and test pairs. The preprocess rule then reads embedded and real OpenFWI data through
the same door.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data.embedded import EMBEDDED_REAL, load_real_velocity
from ..data.families import FAMILY_NAMES, SAMPLES_PER_FILE, get_family
from ..data.openfwi import write_split_file
from ..data.synthetic import generate_velocity
from ..devices import resolve_device
from ..files import atomic_directory
from .forward import forward_model


def split_seed(synthetic_seed: int, family: str, split: str) -> int:
    """A generator seed derived from (synthetic seed, family, split): splits never share maps."""
    sequence = np.random.SeedSequence([synthetic_seed, FAMILY_NAMES.index(family), ("train", "test").index(split)])
    return int(sequence.generate_state(1)[0])


def embedded_velocity(family: str, split: str, n: int, synthetic_seed: int) -> np.ndarray:
    """n velocity maps (n, 1, 70, 70) m/s of one family and split from the embedded source."""
    kind = get_family(family).embedded
    if family in EMBEDDED_REAL:
        maps = load_real_velocity(family, split)
        if n > len(maps):
            raise ValueError(f"data.embedded: {family} ships {len(maps)} real {split} maps, {n} asked for")
        return maps[:n]
    if kind == "synthetic":
        return generate_velocity(family, n, split_seed(synthetic_seed, family, split))
    raise ValueError(f"data.families: {family} has no embedded data (OpenFWI makes it from natural images); use data.source: openfwi")


def simulate_family(
    family: str,
    out_root: str | Path,
    train: int,
    test: int,
    synthetic_seed: int,
    backend: str = "deepwave",
    batch_size: int = 64,
    device: str | None = None,
    progress: bool = True,
) -> Path:
    """Write `out_root/<family folder>/` in OpenFWI's layout; return that folder."""
    spec = get_family(family)
    device = resolve_device(device)
    final = Path(out_root) / spec.directory
    with atomic_directory(final) as tmp:
        tmp.mkdir(parents=True)
        pairs: dict[str, list[list[str]]] = {"train": [], "test": []}
        file_number = 1
        for split, n in (("train", train), ("test", test)):
            velocity = embedded_velocity(family, split, n, synthetic_seed)
            for start in range(0, n, SAMPLES_PER_FILE):
                part = torch.from_numpy(velocity[start : start + SAMPLES_PER_FILE]).to(device)
                seismic = forward_model(part, backend=backend, batch_size=batch_size, progress=progress)
                seismic_name = f"{spec.seismic_prefix}{file_number}.npy"
                velocity_name = f"{spec.velocity_prefix}{file_number}.npy"
                np.save(tmp / seismic_name, seismic.cpu().numpy().astype(np.float32))
                np.save(tmp / velocity_name, part.cpu().numpy().astype(np.float32))
                pairs[split].append([seismic_name, velocity_name])
                file_number += 1
        write_split_file(tmp / "split.json", family, pairs)
    return final
