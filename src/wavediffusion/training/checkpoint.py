"""Checkpoints: atomic files holding everything needed to continue a run bit-exactly.

A checkpoint is one `torch.save`d dict (see `_Trainer._save_checkpoint` in loop.py for the keys)
written to a temporary file in the destination folder, fsynced, then renamed over the
final name with `os.replace`. A reader therefore sees either the previous complete file or
the new complete file, never a half-written one, even if the writer is killed with
SIGKILL mid-write; the temporary names start with "." and never match the checkpoint
pattern, so "find latest" ignores leftovers.

Everything saved is a tensor or a plain Python container/number/string (numpy's RNG state
is converted to a tensor), so loading uses `torch.load(weights_only=True)`: a checkpoint
cannot run code when loaded.
"""

from __future__ import annotations

import os
import pickle
import random
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

CHECKPOINT_PATTERN = re.compile(r"^step_(\d{9})\.pt$")


class ConfigMismatchError(ValueError):
    """Resuming with a configuration that differs from the one the checkpoint was made with."""


def _fsync_dir(directory: Path) -> None:
    """Persist a rename: on POSIX the directory entry lives in the directory's own inode."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. platforms that cannot open directories
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: str | Path, write) -> Path:
    """Call `write(file)` on a temporary file beside `path`, fsync, then rename onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_save(obj, path: str | Path) -> Path:
    """`torch.save(obj, path)`, atomically (temp file in the same folder, fsync, rename)."""
    return _atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: str | Path) -> Path:
    return _atomic_write(path, lambda f: f.write(text.encode()))


def atomic_write_bytes(data, path: str | Path) -> Path:
    """`data` (bytes or a buffer, e.g. a torch.save into io.BytesIO) to `path`, atomically."""
    return _atomic_write(path, lambda f: f.write(data))


def load(path: str | Path) -> dict:
    """Load a checkpoint (or final weights file) onto the CPU, without executing code. A
    damaged file is a ValueError naming it (torch's own message would suggest loading it
    with code execution on)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as error:
        raise ValueError(f"{path}: not a readable weights file ({type(error).__name__}: "
                         f"{str(error).splitlines()[0][:120]}); it is damaged or truncated: delete it and rerun "
                         "the rule that writes it") from error


def checkpoint_path(directory: str | Path, step: int) -> Path:
    return Path(directory) / f"step_{step:09d}.pt"


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Complete checkpoints in `directory`, oldest (lowest step) first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if CHECKPOINT_PATTERN.match(p.name)]
    return sorted(found, key=lambda p: int(CHECKPOINT_PATTERN.match(p.name).group(1)))


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The checkpoint with the highest step, or None; temporary files are never returned."""
    found = list_checkpoints(directory)
    return found[-1] if found else None


def prune_checkpoints(directory: str | Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints (keep <= 0 keeps everything)."""
    if keep <= 0:
        return
    for old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (so state-dict keys have no
    "module." prefix and a checkpoint loads the same with 1 or N processes)."""
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


# ---------------------------------------------------------------------------------------
# RNG state: every generator a training step might draw from, for this process.


def capture_rng(device: torch.device) -> dict:
    """Python, numpy (legacy global), torch CPU and, on GPU, this rank's CUDA generator."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }
    return state


def restore_rng(state: Mapping, device: torch.device) -> None:
    random.setstate(_as_python_state(state["python"]))
    numpy_state = state["numpy"]
    np.random.set_state((
        numpy_state["kind"],
        numpy_state["keys"].numpy().astype(np.uint32),
        numpy_state["pos"],
        numpy_state["has_gauss"],
        numpy_state["cached_gaussian"],
    ))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda":
        if state["cuda"] is None:
            raise ValueError("the checkpoint was made on CPU and holds no CUDA RNG state")
        torch.cuda.set_rng_state(state["cuda"], device)


def _as_python_state(state):
    """random.setstate wants tuples; a round trip through some loaders yields lists."""
    version, internal, gauss = state
    return version, tuple(internal), gauss


def seed_all(seed: int) -> None:
    """Seed Python, numpy's global generator, torch CPU and every CUDA device."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------
# Configuration comparison on resume.


def _flatten(config: Mapping, prefix: str = "") -> dict:
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = list(value) if isinstance(value, tuple) else value
    return flat


def config_differences(saved: Mapping, current: Mapping, ignore: Iterable[str] = ()) -> list[str]:
    """Keys (dotted for nested dicts) whose values differ, as 'key: saved → current' lines."""
    a, b = _flatten(saved), _flatten(current)
    ignored = set(ignore)
    lines = []
    for key in sorted(set(a) | set(b)):
        if key in ignored:
            continue
        missing = "<absent>"
        if a.get(key, missing) != b.get(key, missing):
            lines.append(f"{key}: {a.get(key, missing)!r} → {b.get(key, missing)!r}")
    return lines


def check_config(saved: Mapping, current: Mapping, path: str | Path, ignore: Iterable[str] = ()) -> None:
    """Raise ConfigMismatchError naming each differing key, unless the configs agree."""
    diffs = config_differences(saved, current, ignore)
    if diffs:
        raise ConfigMismatchError(
            f"cannot resume from {path}: it was made with a different configuration.\n  "
            + "\n  ".join(diffs)
            + "\nUse the original configuration to continue this run, or a new output folder "
            "(or delete the checkpoints) to start a new one."
        )
