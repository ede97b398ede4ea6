"""The sampling jobs: one shard of generated pairs, its physics check, and the gather.

- `sample_shard`: Stage-2 latents seeded by derive_seed(seed, Stream.SAMPLING_SHARD, k) on a
  generator of their own, decoded by Stage 1, written into the shard's rows, then marked done.
- `check_shard`: the stored velocity -> forward operator -> `seismic_simulated`, and the
  paper's PDE deviation per sample (`deviation`).
- `gather`: refuses incomplete stores (naming the shards), returns the manifest.
Details: docs/data.md, 'The sampling jobs'.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..config import only_known
from ..data import integrity
from ..data.pairs_store import (
    DONE_KINDS,
    SAMPLE_ARRAYS,
    BackgroundWriter,
    BlockWriter,
    check_block,
    clear_done,
    create_pairs_store,
    damage_remedy,
    done_shards,
    is_done,
    mark_done,
    num_shards,
    open_pairs_store,
    read_done,
    shard_range,
)
from ..data.store import open_dataset, representation_of
from ..data.transforms import Representation
from ..devices import resolve_device
from ..diffusion.samplers import SAMPLERS, run_sampler, synchronize, unet_autocast
from ..files import sha256_of, write_json
from ..gpu_speed import compile_module
from ..physics.deviation import per_sample_mse, simulate_model_velocity
from ..physics.forward import BACKENDS
from ..seeds import Stream, derive_seed
from ..training.stage1 import load_autoencoder
from ..training.stage2 import load_stage2

KEY = "sampling"
PRECISIONS = ("bf16", "fp32")
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


@dataclass(frozen=True)
class SamplingSettings:
    """config.yaml `sampling`."""

    num_pairs: int = 375_000  # paper
    shard_size: int = 5000  # samples per job
    store_block: int | None = None  # samples per Zarr shard (a divisor of shard_size); None: store.default_block
    sampler: str = "ddim"  # "ddpm" (the paper's, all T steps) | "ddim" | "dpmpp2m" (DPM-Solver++(2M))
    steps: int = 25  # DDIM / DPM-Solver++ steps; ignored for ddpm
    eta: float = 1.0  # DDIM η
    batch_size: int = 256  # sampler and decoder batch
    precision: str = "bf16"  # the UNet under autocast on a GPU; CPU always fp32
    compile: bool = False  # torch.compile the UNet and the decoders on a GPU (CPU: never; slow to compile, gains little)
    seed: int = 0

    def __post_init__(self):
        for name in ("num_pairs", "shard_size", "steps", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{KEY}.{name} must be an integer of at least 1, got {value!r}")
        if self.store_block is not None:
            check_block(self.store_block, self.shard_size)
        if self.sampler not in SAMPLERS:
            raise ValueError(f"{KEY}.sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"{KEY}.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not isinstance(self.compile, bool):
            raise ValueError(f"{KEY}.compile must be true or false, got {self.compile!r}")
        if not 0.0 <= float(self.eta) <= 1.0:
            raise ValueError(f"{KEY}.eta must lie in [0, 1], got {self.eta!r}")
        if not isinstance(self.seed, (int, np.integer)) or isinstance(self.seed, bool) or self.seed < 0:
            raise ValueError(f"{KEY}.seed must be a non-negative integer, got {self.seed!r}")

    @classmethod
    def from_dict(cls, values: dict) -> SamplingSettings:
        """From the config's dict, rejecting unknown keys (naming `sampling`)."""
        return cls(**only_known(values, cls, KEY))

    @property
    def num_shards(self) -> int:
        return num_shards(self.num_pairs, self.shard_size)

    def sha256(self) -> str:
        """Identifies these settings (the manifest's config hash; the models have their own)."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()

    def check_schedule(self, num_steps: int) -> None:
        """Raise if the sampler's step count does not fit a schedule of num_steps (T)."""
        if self.sampler != "ddpm" and self.steps > num_steps:
            raise ValueError(f"{KEY}.steps ({self.steps}) exceeds stage2.diffusion.num_steps ({num_steps}), "
                             "the Stage-2 model's T")

    def sampler_name(self, num_steps: int) -> str:
        return f"ddpm-{num_steps}" if self.sampler == "ddpm" else f"{self.sampler}-{self.steps}"


def _device(device) -> torch.device:
    return resolve_device(device)


class PartTimer:
    """Wall-clock seconds of a job, in all (`elapsed`, from the timer's creation) and in each
    of its parts (denoising, decoding, writing, ...), waiting for the GPU at each edge so
    that its work is counted where it is launched. Recorded in the shard's marker: where a
    shard's time goes."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = {}
        synchronize(device)
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        synchronize(self.device)
        return time.perf_counter() - self.started

    @contextlib.contextmanager
    def part(self, name: str):
        synchronize(self.device)
        started = time.perf_counter()
        yield
        synchronize(self.device)
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started


def create_store_for_models(stage1_model: str | Path, store: str | Path, settings: SamplingSettings,
                            attrs: dict | None = None, overwrite: bool = False,
                            representation: Representation | None = None):
    """The rule that runs before any shard: the empty store, shaped by the autoencoder;
    `representation`: that of the autoencoder's data (recorded in the store's attributes)."""
    config = load_autoencoder(stage1_model, "cpu").config
    return create_pairs_store(store, settings.num_pairs, settings.shard_size, config.latent_shape,
                              config.seismic_shape, config.velocity_shape, block=settings.store_block,
                              attrs={"settings": asdict(settings), "config_sha256": settings.sha256(), **(attrs or {})},
                              overwrite=overwrite, representation=representation)


def _check_store(root, store, settings: SamplingSettings) -> None:
    n, size = root.attrs["num_pairs"], root.attrs["shard_size"]
    if (n, size) != (settings.num_pairs, settings.shard_size):
        raise ValueError(f"{store}: made for {KEY}.num_pairs={n}, {KEY}.shard_size={size}, but the settings say "
                         f"{settings.num_pairs} and {settings.shard_size}; recreate the store")


@torch.no_grad()
def sample_shard(stage1_model: str | Path, stage2_model: str | Path, store: str | Path, k: int,
                 settings: SamplingSettings, device: str | None = None, progress: bool = True) -> dict:
    """Generate, decode and write shard k; returns (and records in its marker) its info."""
    root = open_pairs_store(store)
    _check_store(root, store, settings)
    rows = shard_range(k, settings.shard_size, settings.num_pairs)
    device = _device(device)
    autoencoder = load_autoencoder(stage1_model, device)
    unet, schedule, scale = load_stage2(stage2_model, device)
    latent_shape = tuple(root.attrs["latent_shape"])
    if tuple(autoencoder.config.latent_shape) != latent_shape:
        raise ValueError(f"{store}: latent shape {latent_shape} differs from the autoencoder's "
                         f"{tuple(autoencoder.config.latent_shape)}")
    settings.check_schedule(schedule.num_steps)

    # the data is about to change: neither the old sample nor its check counts any more
    for kind in DONE_KINDS:
        clear_done(store, kind, k)
    seed = derive_seed(settings.seed, Stream.SAMPLING_SHARD, k)
    # a generator of the shard's own on the sampling device: DDPM draws a batch of noise every
    # step (16M normals at batch 500, ~0.1 s on one CPU core -- as long as a compiled UNet step)
    generator = torch.Generator(device=device).manual_seed(seed)
    autocast = unet_autocast(device, settings.precision)
    compiled = settings.compile and device.type == "cuda"
    if compiled:
        # fuses the normalisation, attention and elementwise work that bounds the eager
        # networks; the first batch pays for the compilation (counted in pairs_per_second)
        compile_module(unet)
        compile_module(autoencoder)
    timer = PartTimer(device)
    # the Zarr writes (compression) run in a thread of their own, beside the next batch
    writer = BackgroundWriter(BlockWriter(root, rows))
    batches = range(rows.start, rows.stop, settings.batch_size)
    for start in tqdm(batches, desc=f"shard {k}", unit="batch", disable=not progress):
        count = min(settings.batch_size, rows.stop - start)
        shape = (count, *latent_shape)
        with timer.part("denoise"):
            z = run_sampler(settings.sampler, unet, schedule, shape, num_steps=settings.steps, eta=settings.eta,
                            generator=generator, device=device, autocast=autocast).z0
            z = z.float() / scale
        with timer.part("decode"):
            seismic, velocity = autoencoder.decode_latent(z)
        with timer.part("write"):  # the copies to host memory; waiting for the writer thread
            writer.append({
                "latent": z.cpu().numpy(),
                "seismic": seismic.float().cpu().numpy(),
                "velocity": velocity.float().cpu().numpy(),
                "seed": np.full(count, seed, dtype=np.int64),
                "index_in_shard": np.arange(start - rows.start, start - rows.start + count, dtype=np.int64),
            })
    with timer.part("write"):
        writer.close()
    seconds = timer.elapsed()
    info = {
        "n": len(rows), "rows": [rows.start, rows.stop], "seed": seed, "seconds": seconds,
        "pairs_per_second": len(rows) / seconds if seconds > 0 else None, "seconds_by_part": timer.seconds,
        "writer_thread_seconds": writer.busy_seconds,
        "sampler": settings.sampler, "steps": schedule.num_steps if settings.sampler == "ddpm" else settings.steps,
        "eta": settings.eta if settings.sampler == "ddim" else None, "batch_size": settings.batch_size,
        "precision": settings.precision if autocast is not None else "fp32", "compiled": compiled,
        "device": str(device),
        "stage1_sha256": sha256_of(stage1_model), "stage2_sha256": sha256_of(stage2_model),
        "scale_factor": scale,
    }
    mark_done(store, "sample", k, info)
    return info


def _representation(dataset) -> Representation:
    if isinstance(dataset, Representation):
        return dataset
    return representation_of(open_dataset(dataset))


@torch.no_grad()
def check_shard(store: str | Path, k: int, dataset: str | Path | Representation, backend: str = "deepwave",
                batch_size: int = 64, device: str | None = None, progress: bool = True, processes: int = 1) -> dict:
    """Simulate shard k's velocities and store seismic_simulated and the deviation.

    `dataset`: the dataset store the autoencoder was trained on (for its Representation),
    or a Representation. `processes` > 1 checks the shard's Zarr shards in that many processes
    at once, each its own run of them, all on `device`: one process's store reading and
    writing, not the forward kernel, bounds the check (docs/results.md, "The check's store I/O").
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    if batch_size < 1 or processes < 1:
        raise ValueError(f"batch_size and processes must be at least 1, got {batch_size} and {processes}")
    root = open_pairs_store(store)
    rows = shard_range(k, root.attrs["shard_size"], root.attrs["num_pairs"])
    if not is_done(store, "sample", k):
        raise RuntimeError(f"{store}: shard {k} has not been sampled completely (no done marker); "
                           "run sample_shard for it first")
    integrity.check_complete(store, root, {name: [rows] for name in SAMPLE_ARRAYS},
                             lambda damage: damage_remedy(root, damage))
    rep = _representation(dataset)
    if tuple(rep.seismic_shape) != tuple(root.attrs["seismic_shape"]):
        raise ValueError(f"{store}: seismic shape {tuple(root.attrs['seismic_shape'])} differs from the "
                         f"dataset representation's {tuple(rep.seismic_shape)}")
    device = _device(device)
    clear_done(store, "check", k)
    timer = PartTimer(device)
    parts = block_runs(rows, int(root.attrs["block"]), processes)
    if len(parts) == 1:
        results = [check_rows(store, rows, rep, backend, batch_size, str(device), progress, f"check {k}")]
    else:
        context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
        threads = max(1, torch.get_num_threads() // len(parts))
        with ProcessPoolExecutor(len(parts), mp_context=context, initializer=torch.set_num_threads,
                                 initargs=(threads,)) as pool:
            futures = [pool.submit(check_rows, str(store), part, rep, backend, batch_size, str(device), False, "")
                       for part in parts]
            results = [future.result() for future in futures]
    seconds = timer.elapsed()
    deviation = np.concatenate([result["deviation"] for result in results])
    info = {"n": len(rows), "rows": [rows.start, rows.stop], "backend": backend, "seconds": seconds,
            "pairs_per_second": len(rows) / seconds if seconds > 0 else None,
            "seconds_by_part": _sum_parts(results),  # over the processes: each one's own time in each part
            "writer_thread_seconds": sum(result["writer_thread_seconds"] for result in results),
            "processes": len(parts), "device": str(device), "sample_seed": read_done(store, "sample", k)["seed"],
            **_stats(deviation)}
    if not np.isfinite(deviation).all():
        raise FloatingPointError(f"{store}: shard {k} has non-finite deviations")
    mark_done(store, "check", k, info)
    return info


def block_runs(rows: range, block: int, count: int) -> list[range]:
    """`rows` cut into at most `count` consecutive runs of whole blocks (Zarr shards), as even
    as the blocks allow: no two runs write one shard file."""
    edges = list(range(rows.start, rows.stop, block)) + [rows.stop]
    blocks = len(edges) - 1
    count = max(1, min(count, blocks))
    cuts = [edges[round(i * blocks / count)] for i in range(count)] + [rows.stop]
    return [range(a, b) for a, b in zip(cuts[:-1], cuts[1:])]


@torch.no_grad()
def check_rows(store: str | Path, rows: range, rep: Representation, backend: str, batch_size: int, device: str,
               progress: bool, desc: str) -> dict:
    """check_shard's work on `rows` (whole blocks): forward-model their velocities, write
    seismic_simulated and the deviation; the deviations and the seconds by part."""
    root = open_pairs_store(store)
    device = torch.device(device)
    timer = PartTimer(device)
    deviations = []
    # reading the next batch and writing the last one run in threads, beside the simulation
    writer = BackgroundWriter(BlockWriter(root, rows))
    starts = range(rows.start, rows.stop, batch_size)
    arrays = (root["seismic"], root["velocity"])

    def read(start: int) -> tuple[np.ndarray, np.ndarray]:
        stop = min(start + batch_size, rows.stop)
        return arrays[0][start:stop], arrays[1][start:stop]

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-reader") as reader:
        next_read = reader.submit(read, starts[0])
        for i in tqdm(range(len(starts)), desc=desc, unit="batch", disable=not progress):
            with timer.part("read"):  # waiting for the reader thread, and the copy to the device
                seismic, velocity = next_read.result()
                if i + 1 < len(starts):
                    next_read = reader.submit(read, starts[i + 1])
                seismic, velocity = torch.from_numpy(seismic).to(device), torch.from_numpy(velocity).to(device)
            with timer.part("simulate"):
                simulated = simulate_model_velocity(velocity, rep, backend, batch_size).float()
                deviation = per_sample_mse(seismic, simulated).double().cpu().numpy()
            with timer.part("write"):
                writer.append({"seismic_simulated": simulated.cpu().numpy(), "deviation": deviation})
            deviations.append(deviation)
    with timer.part("write"):
        writer.close()
    return {"deviation": np.concatenate(deviations), "seconds_by_part": timer.seconds,
            "writer_thread_seconds": writer.busy_seconds}


def _stats(deviation: np.ndarray) -> dict:
    return {
        "deviation_mean": float(deviation.mean()),
        "deviation_std": float(deviation.std(ddof=1)) if len(deviation) > 1 else 0.0,
        "deviation_min": float(deviation.min()),
        "deviation_max": float(deviation.max()),
        "deviation_quantiles": {str(q): float(v) for q, v in zip(QUANTILES, np.quantile(deviation, QUANTILES))},
    }


def _sum_parts(records: list[dict]) -> dict[str, float]:
    """Every record's seconds_by_part added up (shards recorded before it existed add none)."""
    total: dict[str, float] = {}
    for record in records:
        for name, seconds in record.get("seconds_by_part", {}).items():
            total[name] = total.get(name, 0.0) + seconds
    return total


class IncompleteStore(RuntimeError):
    """A pairs store with shards not sampled, or not checked since they were last sampled;
    `redo[kind]` lists the shards whose `kind` job must run again."""

    def __init__(self, message: str, redo: dict[str, list[int]]):
        super().__init__(message)
        self.redo = redo


def gather(store: str | Path) -> dict:
    """The manifest of a complete store; raises IncompleteStore naming the shards not
    sampled or not checked."""
    root = open_pairs_store(store, mode="r")
    n, size = root.attrs["num_pairs"], root.attrs["shard_size"]
    count = num_shards(n, size)
    done = {kind: done_shards(store, kind, count) for kind in DONE_KINDS}
    missing = {kind: sorted(set(range(count)) - set(shards)) for kind, shards in done.items()}
    if any(missing.values()):
        parts = [f"{kind}: shards {shards}" for kind, shards in missing.items() if shards]
        raise IncompleteStore(f"{store}: incomplete, {count} shards expected; not done -- " + "; ".join(parts),
                              missing)
    samples = [read_done(store, "sample", k) for k in range(count)]
    checks = [read_done(store, "check", k) for k in range(count)]
    stale = [k for k, (s, c) in enumerate(zip(samples, checks)) if c.get("sample_seed") != s["seed"]]
    if stale:
        raise IncompleteStore(f"{store}: the check of shards {stale} does not belong to their current samples",
                              {"sample": [], "check": stale})
    common = {}
    for key in ("stage1_sha256", "stage2_sha256", "sampler", "steps", "eta", "batch_size", "precision", "scale_factor"):
        values = {json.dumps(s[key]) for s in samples}
        if len(values) > 1:
            raise RuntimeError(f"{store}: shards disagree on {key} ({sorted(values)}); resample the odd ones")
        common[key] = samples[0][key]
    deviation = np.asarray(root["deviation"][:], dtype=np.float64)
    return {
        "store": str(store),
        "config_sha256": root.attrs.get("config_sha256"),
        "num_pairs": n,
        "shard_size": size,
        "num_shards": count,
        "shards_done": {kind: len(shards) for kind, shards in done.items()},
        "n_checked": int(np.isfinite(deviation).sum()),
        "seeds": [s["seed"] for s in samples],
        **common,
        "backend": checks[0]["backend"],
        "sample_seconds": float(sum(s["seconds"] for s in samples)),
        "check_seconds": float(sum(c["seconds"] for c in checks)),
        "sample_seconds_by_part": _sum_parts(samples),
        "check_seconds_by_part": _sum_parts(checks),
        **_stats(deviation),
        "attrs": {key: value for key, value in root.attrs.items()},
    }


def write_manifest(store: str | Path, out: str | Path) -> dict:
    """gather(store), written as JSON to `out` atomically."""
    manifest = gather(store)
    write_json(manifest, out)
    return manifest
