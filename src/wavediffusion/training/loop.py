"""The project's one training loop: every model (Stage-1 autoencoder, Stage-2 UNet,
InversionNet) trains through `train()`.

docs/training.md says how it works and why."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import math
import sys
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..gpu_speed import channels_last, compile_module, use_fused_step
from ..seeds import Stream, derive_seed
from . import checkpoint as ckpt
from .device_data import DeviceData, map_tensors, sample_bytes
from .distributed import DistEnv, all_reduce_mean, all_reduce_sum, gather_objects, setup

CHECKPOINT_FORMAT = 1

# TrainConfig fields that do not change the trained weights: a resume may change them.
RESUME_FREE_KEYS = frozenset({
    "train.checkpoint_every_steps",
    "train.keep_checkpoints",
    "train.log_every_steps",
    "train.num_workers",
    "train.device",
    "train.progress",
    "train.tensorboard",
    "train.data_on_device",
    "train.compile",
    "train.channels_last",
})

# "auto" keeps the data on the GPU when it takes at most this share of the free memory
DATA_ON_DEVICE_SHARE = 0.25


@dataclass
class TrainConfig:
    """Everything the loop needs; the paper's values are the defaults where it gives one."""

    max_epochs: int = 500                 # paper: up to 500 epochs
    max_steps: int | None = None          # optional cap on optimiser steps (e.g. a 10-minute run)
    max_seconds: float | None = None      # optional cap on wall-clock seconds of training, over all calls
                                          # (checked at log steps): equal GPU time for models compared
    min_steps: int = 0                    # neither max_epochs nor early stopping ends a run before this many
                                          # steps: equal step budgets for training sets of different sizes
    batch_size: int = 16                  # GLOBAL samples per step, over all processes (paper: 16)
    val_batch_size: int | None = None     # global; default batch_size
    lr: float = 1e-4                      # base lr used by `adam()`; tasks may choose their own
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    lr_decay: float = 0.98                # multiplied in once per completed epoch (paper: 0.98)
    warmup_steps: int = 0                 # linear warm-up over optimiser steps (Stage 2: 10 000)
    grad_clip: float = 1.0                # max global grad norm per optimiser; <= 0 turns clipping off
    early_stop_patience: int | None = 10  # stop after this many validations without improvement
    min_delta: float = 0.0                # an improvement must lower the metric by more than this
    validate_every_epochs: int = 1
    checkpoint_every_steps: int = 1000    # and when the run ends
    keep_checkpoints: int = 3             # newest checkpoints kept; <= 0 keeps all
    log_every_steps: int = 50
    seed: int = 0
    precision: str = "bf16"               # "bf16" (autocast on GPU only) | "fp32"
    num_workers: int = 0                  # DataLoader workers per process
    device: str = "auto"                  # "auto" (CUDA if present) | "cuda" | "cpu"
    progress: bool = True                 # tqdm bar on rank 0
    tensorboard: bool = True              # also write TensorBoard events, if it is installed
    data_on_device: bool | str = "auto"   # whole data set in GPU memory: true | false | "auto" (when it fits)
    compile: bool = False                 # torch.compile the modules on a GPU (gpu_speed.compile_module)
    channels_last: bool = False           # NHWC modules and batches on a GPU

    def __post_init__(self):
        if self.precision not in ("bf16", "fp32"):
            raise ValueError(f"precision must be 'bf16' or 'fp32', got {self.precision!r}")
        if self.batch_size < 1 or self.max_epochs < 1:
            raise ValueError("batch_size and max_epochs must be >= 1")
        if self.checkpoint_every_steps < 1 or self.log_every_steps < 1 or self.validate_every_epochs < 1:
            raise ValueError("checkpoint_every_steps, log_every_steps and validate_every_epochs must be >= 1")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError(f"max_seconds must be positive or null, got {self.max_seconds}")
        if self.min_steps < 0 or (self.max_steps is not None and self.min_steps > self.max_steps):
            raise ValueError(f"min_steps must lie in [0, max_steps], got {self.min_steps} (max_steps {self.max_steps})")
        if self.data_on_device not in (True, False, "auto"):
            raise ValueError(f"data_on_device must be true, false or 'auto', got {self.data_on_device!r}")
        for name in ("compile", "channels_last"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        self.betas = tuple(self.betas)


def adam(params, config: TrainConfig, lr: float | None = None) -> torch.optim.Adam:
    """Adam with the config's lr, betas and (L2) weight decay — the paper's optimiser."""
    return torch.optim.Adam(params, lr=config.lr if lr is None else lr, betas=config.betas,
                            weight_decay=config.weight_decay)


def lr_factor(step: int, epoch: int, warmup_steps: int, lr_decay: float) -> float:
    """Multiplier of base_lr for optimiser step `step` (0-based) in epoch `epoch` (0-based)."""
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    return warm * lr_decay ** epoch


@contextlib.contextmanager
def seeded_init(seed: int) -> Iterator[None]:
    """Build a task's modules inside this block: their initial weights are then a function
    of `seed` alone (derive_seed(seed, Stream.INIT)), the same in every process and every run.

    Needed because a fresh process's global torch generator does not start from a fixed
    seed, and DDP only copies rank 0's weights to the other ranks: without it the N-process
    run starts from other weights than the 1-process run. The CPU generator is forked, so
    the caller's global RNG state is unchanged afterwards (modules are built on the CPU;
    `train()` moves them to the device).
    """
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(derive_seed(seed, Stream.INIT))
        yield


# ---------------------------------------------------------------------------------------
# Which samples each rank sees.


def train_batches(n: int, batch_size: int, world_size: int, rank: int, seed: int, epoch: int,
                  start: int = 0) -> list[list[int]]:
    """This rank's index lists for global batches start, start+1, … of epoch `epoch`.

    Like DistributedSampler (seeded per epoch, sharded over ranks), but sharded within each
    global batch so the union over ranks of step k's batches is exactly the single-process
    batch k, and able to start mid-epoch. The last incomplete global batch is dropped.
    """
    if batch_size % world_size:
        raise ValueError(f"global batch_size {batch_size} does not divide by world size {world_size}")
    steps = n // batch_size
    if steps == 0:
        raise ValueError(f"training set of {n} samples is smaller than one global batch ({batch_size})")
    generator = torch.Generator().manual_seed(derive_seed(seed, Stream.PERMUTATION, epoch))
    order = torch.randperm(n, generator=generator).tolist()
    local = batch_size // world_size
    return [order[k * batch_size + rank * local: k * batch_size + (rank + 1) * local]
            for k in range(start, steps)]


def val_batches(n: int, batch_size: int, world_size: int, rank: int) -> list[list[int]]:
    """This rank's index lists for validation: every sample exactly once over all ranks, no
    padding (DistributedSampler pads with repeats, which would bias the mean); rank r takes
    indices r, r+W, r+2W, …, in batches of batch_size / W (at least 1)."""
    mine = list(range(rank, n, world_size))
    local = max(1, batch_size // world_size)
    return [mine[i:i + local] for i in range(0, len(mine), local)]


# ---------------------------------------------------------------------------------------
# The task protocol and what the loop hands to it.


class Run:
    """What the loop gives a task's `train_step` and `validate`.

    - `wrapped[name]`: the task's module `name`, wrapped in DistributedDataParallel when
      there are several processes (the module itself otherwise). Call these in train_step
      for forward passes whose gradients must be averaged over ranks.
    - `device`, `rank`, `world_size`, `config`, `step` (optimiser steps done), `epoch`.
    - `autocast()`: bf16 autocast on GPU when precision is "bf16", else a no-op.
    - `clip_and_step(optimizer)`: clip the gradient norm of the optimiser's parameters to
      config.grad_clip, take the step, return the pre-clip norm.
    """

    def __init__(self, config: TrainConfig, env: DistEnv, wrapped: dict[str, nn.Module]):
        self.config = config
        self.env = env
        self.device = env.device
        self.rank = env.rank
        self.world_size = env.world_size
        self.wrapped = wrapped
        self.step = 0
        self.epoch = 0

    def autocast(self):
        if self.device.type == "cuda" and self.config.precision == "bf16":
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def clip_and_step(self, optimizer: torch.optim.Optimizer, params=None,
                      max_norm: float | None = None) -> torch.Tensor:
        """Clip then step. `params` defaults to the optimiser's own; the norm is returned
        as a tensor (no GPU sync) for logging."""
        if params is None:
            params = [p for group in optimizer.param_groups for p in group["params"]]
        limit = self.config.grad_clip if max_norm is None else max_norm
        norm = torch.nn.utils.clip_grad_norm_(params, limit if limit > 0 else math.inf)
        optimizer.step()
        return norm.detach()


class Task(Protocol):
    """What a model-specific training task provides to `train()`.

    Required:
    - `val_metric: str` — the key of `validate`'s dict that early stopping watches
      (lower is better; return e.g. -SSIM for a higher-is-better score).
    - `modules() -> dict[str, nn.Module]` — the trained modules, by name; the loop moves
      them to the device, wraps them for DDP (in `run.wrapped`) and checkpoints them.
      Build them inside `seeded_init(config.seed)` (see "Initial weights" above).
    - `optimizers() -> dict[str, Optimizer]` — by name; checkpointed, their lr set each
      step from the schedule (docs/training.md, "Learning rate"). Build them with `adam()` or your own.
    - `train_step(batch, step, run) -> dict[str, float | Tensor]` — ONE optimisation step,
      written out: forward under `run.autocast()`, `optimizer.zero_grad()`, `backward()`,
      `run.clip_and_step(optimizer)`; a GAN does its generator step and its discriminator
      step here, one after the other. `batch` is already on `run.device`; `step` is the
      number of optimiser steps done before this one (0-based), for e.g. "discriminator
      starts at step 50 001". Returns scalar metrics to log (means over this batch).
    - `validate(batch, run) -> dict[str, float | Tensor]` — metrics of one validation
      batch, as means over the batch. The loop runs it under `torch.no_grad()` with the
      modules in eval mode, weights each batch by its size, and averages over batches and
      ranks. Use the plain modules here, NOT `run.wrapped`: ranks may hold different
      numbers of validation batches, and a DDP forward is a collective.

    Optional:
    - `config_dict() -> dict` — the model's configuration, stored in checkpoints; resuming
      with a different one is refused, naming the differing keys.
    - `extra_state() -> dict` and `load_extra_state(state)` — state outside modules and
      optimisers that must survive a resume (an EMA copy of the weights, a latent scale
      factor); tensors and plain Python values only.

    DDP and several modules (the GAN pattern): in the generator step call the DDP-wrapped
    generator but the PLAIN discriminator (gradients reach the generator through it, the
    discriminator's own gradients stay local and are zeroed before its step); in the
    discriminator step call the wrapped discriminator ONCE, on real and fake concatenated
    (two forwards of one DDP module before one backward is an error in DDP).
    """

    val_metric: str

    def modules(self) -> dict[str, nn.Module]: ...

    def optimizers(self) -> dict[str, torch.optim.Optimizer]: ...

    def train_step(self, batch: Any, step: int, run: Run) -> dict[str, float | torch.Tensor]: ...

    def validate(self, batch: Any, run: Run) -> dict[str, float | torch.Tensor]: ...


# ---------------------------------------------------------------------------------------
# Logging.


class CsvLog:
    """out_dir/log.csv: one row per log event, one column per quantity.

    A metric that first appears later (the discriminator loss after it switches on) adds a
    column; the file is then rewritten with the wider header, atomically. On resume the
    file is cut back to the rows that existed when the checkpoint was written, so rows
    from the lost steps are not duplicated.
    """

    def __init__(self, path: Path, keep_rows: int):
        self.path = path
        rows, columns = [], []
        if path.exists():
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                columns = list(reader.fieldnames or [])
                rows = list(reader)
        self.columns = columns
        self.rows = rows[:keep_rows]
        if len(rows) != len(self.rows) or not path.exists():
            self._rewrite()

    def _rewrite(self) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns, restval="")
        if self.columns:
            writer.writeheader()
        writer.writerows(self.rows)
        ckpt.atomic_write_text(buffer.getvalue(), self.path)

    def append(self, row: Mapping[str, Any]) -> None:
        row = {k: v for k, v in row.items()}
        new = [k for k in row if k not in self.columns]
        self.rows.append(row)
        if new:
            self.columns += new
            self._rewrite()
            return
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.columns, restval="").writerow(row)

    def __len__(self) -> int:
        return len(self.rows)


def _tensorboard(out_dir: Path, purge_step: int | None):
    """A TensorBoard writer if the package is installed (it is optional), else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out_dir / "tensorboard"), purge_step=purge_step)


# ---------------------------------------------------------------------------------------
# The loop.


@dataclass
class _State:
    """Where the run is; saved in every checkpoint."""

    step: int = 0                # optimiser steps done
    epoch: int = 0               # current epoch (0-based)
    batch_in_epoch: int = 0      # batches of the current epoch already trained on
    best: float | None = None    # best validation metric so far
    best_epoch: int | None = None
    bad_validations: int = 0     # validations since the last improvement
    last_val: dict = dataclasses.field(default_factory=dict)
    last_val_step: int | None = None
    log_rows: int = 0
    seconds: float = 0.0         # wall-clock seconds of training up to the last checkpoint, over all calls
    finished: bool = False
    stop_reason: str | None = None


def _to_device(batch, device: torch.device):
    return map_tensors(lambda t: t.to(device, non_blocking=True), batch)


def _run_config(config: TrainConfig, task: Task) -> dict:
    config_dict = getattr(task, "config_dict", None)
    return {"train": dataclasses.asdict(config), "task": config_dict() if config_dict else {}}


@contextlib.contextmanager
def _forked_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Run a block with all generators seeded from `seed`, then put the training streams
    back exactly: validation is then reproducible and never shifts training's draws."""
    saved = ckpt.capture_rng(device)
    ckpt.seed_all(seed)
    try:
        yield
    finally:
        ckpt.restore_rng(saved, device)


class _Trainer:
    """One call of `train()`; split into methods only to keep each part readable."""

    def __init__(self, task: Task, train_dataset: Dataset, val_dataset: Dataset | None,
                 config: TrainConfig, out_dir: Path, collate_fn, env: DistEnv):
        self.task, self.config, self.env = task, config, env
        self.train_dataset, self.val_dataset = train_dataset, val_dataset
        self.out_dir = Path(out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.collate_fn = collate_fn
        self.main = env.rank == 0
        self.steps_per_epoch = len(train_dataset) // config.batch_size
        if self.steps_per_epoch == 0:  # else every "epoch" would end at once, forever
            raise ValueError(f"the training set has {len(train_dataset)} samples, fewer than one global batch "
                             f"({config.batch_size}); lower the training batch_size")
        self.run_config = _run_config(config, task)

        self.modules = dict(task.modules())
        self.optimizers = dict(task.optimizers())
        self.on_gpu = env.device.type == "cuda"
        for module in self.modules.values():
            module.to(env.device)  # keeps Parameter identity, so optimisers stay valid
            if self.on_gpu and config.channels_last:
                module.to(memory_format=torch.channels_last)
        for optimizer in self.optimizers.values():
            for group in optimizer.param_groups:
                group.setdefault("base_lr", group["lr"])
            if self.on_gpu:
                use_fused_step(optimizer)  # before a resume, which brings back the checkpoint's own setting

        self.state = _State()
        self.resumed_from = self._resume_or_seed()
        self._checkpointed_step = self.state.step  # the newest checkpoint's step (0: none yet)
        self._unsaved_best: io.BytesIO | None = None  # best.pt's content until it is written
        if env.world_size > 1 and self.resumed_from is None:
            self._check_same_initial_weights()

        if self.on_gpu and config.compile:
            for module in self.modules.values():
                compile_module(module)
        self.wrapped = {name: self._wrap(m) for name, m in self.modules.items()}
        on_device = self._data_fits_on_device()
        self.train_on_device = self._device_data(train_dataset) if on_device else None
        self.val_on_device = self._device_data(val_dataset) if on_device and val_dataset is not None else None
        self.run = Run(config, env, self.wrapped)
        self.log = CsvLog(self.out_dir / "log.csv", self.state.log_rows) if self.main else None
        self.tb = (_tensorboard(self.out_dir, self.state.step if self.resumed_from else None)
                   if self.main and config.tensorboard else None)

    # -- set-up -------------------------------------------------------------------------

    def _data_fits_on_device(self) -> bool:
        """Whether to hold the data in GPU memory (data_on_device; docs/training.md)."""
        cfg = self.config
        if not self.on_gpu or cfg.data_on_device is False:
            return False
        if cfg.data_on_device == "auto":
            free, _ = torch.cuda.mem_get_info(self.env.device)
            splits = [d for d in (self.train_dataset, self.val_dataset) if d is not None and len(d)]
            return sum(sample_bytes(d, self.collate_fn) * len(d) for d in splits) <= DATA_ON_DEVICE_SHARE * free
        return True

    def _device_data(self, dataset: Dataset) -> DeviceData:
        cfg = self.config
        memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        started = time.perf_counter()
        data = DeviceData(dataset, self.env.device, self.collate_fn, cfg.num_workers, memory_format)
        if self.main and cfg.progress:
            print(f"{len(data)} samples held on {self.env.device} ({time.perf_counter() - started:.1f} s to load)",
                  file=sys.stderr)
        return data

    def _wrap(self, module: nn.Module) -> nn.Module:
        """DDP (with synchronised BatchNorm on GPUs) when there are several processes and the
        module has something to train."""
        if self.env.world_size == 1 or not any(p.requires_grad for p in module.parameters()):
            return module
        if self.env.device.type == "cuda":
            # BatchNorm statistics over the GLOBAL batch, as one process computes them (the
            # BatchNorm children are replaced in place, keeping their parameters; CUDA only)
            module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        device_ids = [self.env.device.index] if self.env.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids)

    def _check_same_initial_weights(self) -> None:
        """Warn if the ranks built different initial weights: DDP would hide it (it copies
        rank 0's weights to the others) but it means the task's initialisation is not
        seeded, so this run does not start where a 1-process run with this seed starts."""
        def fingerprint(module: nn.Module) -> str:
            digest = hashlib.sha256()
            for key, value in module.state_dict().items():
                digest.update(key.encode())
                digest.update(value.detach().reshape(-1).cpu().contiguous().view(torch.uint8).numpy().tobytes())
            return digest.hexdigest()

        ranks = gather_objects({name: fingerprint(m) for name, m in self.modules.items()})
        differing = sorted(name for name in self.modules if len({r[name] for r in ranks}) > 1)
        if differing and self.main:
            warnings.warn(
                f"the ranks built different initial weights for {differing}: DDP starts every rank "
                "from rank 0's, which differ from what a 1-process run with this seed starts from. "
                "Build the task's modules inside loop.seeded_init(config.seed).", stacklevel=4)

    def _resume_or_seed(self) -> Path | None:
        """Continue from the newest checkpoint if there is one; else seed this rank's streams."""
        latest = ckpt.latest_checkpoint(self.ckpt_dir)
        if latest is None:
            ckpt.seed_all(derive_seed(self.config.seed, Stream.TRAIN, self.env.rank))
            return None
        saved = ckpt.load(latest)
        ckpt.check_config(saved["config"], self.run_config, latest, ignore=RESUME_FREE_KEYS)
        if saved["world_size"] != self.env.world_size:
            raise ckpt.ConfigMismatchError(
                f"cannot resume from {latest}: it was made by {saved['world_size']} processes and "
                f"this run has {self.env.world_size}; per-rank random streams cannot be mapped "
                "exactly. Relaunch with the original number of processes.")
        if set(saved["modules"]) != set(self.modules) or set(saved["optimizers"]) != set(self.optimizers):
            raise ckpt.ConfigMismatchError(
                f"cannot resume from {latest}: it holds modules {sorted(saved['modules'])} and "
                f"optimisers {sorted(saved['optimizers'])}, the task has {sorted(self.modules)} "
                f"and {sorted(self.optimizers)}")
        for name, module in self.modules.items():
            module.load_state_dict(saved["modules"][name])
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(saved["optimizers"][name])
        if saved["extra_state"] is not None:
            self.task.load_extra_state(saved["extra_state"])
        self.state = _State(**saved["state"])
        ckpt.restore_rng(saved["rng"][self.env.rank], self.env.device)
        return latest

    # -- checkpoints and weight files ------------------------------------------------------

    def _extra_state(self):
        extra = getattr(self.task, "extra_state", None)
        return extra() if extra else None

    def _save_checkpoint(self) -> None:
        """Every rank calls this (the RNG states are gathered); rank 0 writes, best.pt first,
        so that the file holds the best of the validations the checkpoint has seen."""
        self._checkpointed_step = self.state.step
        rng = gather_objects(ckpt.capture_rng(self.env.device))
        if not self.main:
            return
        self._write_best()
        self.state.log_rows = len(self.log)
        self.state.seconds = self._seconds()
        state = {
            "format": CHECKPOINT_FORMAT,
            "state": dataclasses.asdict(self.state),
            "modules": {name: ckpt.unwrap(m).state_dict() for name, m in self.modules.items()},
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
            "extra_state": self._extra_state(),
            "rng": rng,
            "world_size": self.env.world_size,
            "steps_per_epoch": self.steps_per_epoch,
            "config": self.run_config,
            "torch_version": str(torch.__version__),
        }
        ckpt.atomic_save(state, ckpt.checkpoint_path(self.ckpt_dir, self.state.step))
        ckpt.prune_checkpoints(self.ckpt_dir, self.config.keep_checkpoints)

    def _seconds(self) -> float:
        """Wall-clock seconds of training so far, earlier calls included."""
        return self._seconds_before + time.perf_counter() - self._call_start

    def _time_is_up(self) -> bool:
        """max_seconds passed on any rank (one all-reduce, so every rank stops at the same step)."""
        if self.config.max_seconds is None:
            return False
        late = torch.tensor([float(self._seconds() >= self.config.max_seconds)], device=self.env.device)
        return all_reduce_sum(late).item() > 0

    def _checkpoint_due(self) -> bool:
        """A multiple of checkpoint_every_steps passed since the newest checkpoint."""
        every = self.config.checkpoint_every_steps
        return self.state.step // every > self._checkpointed_step // every

    def _weights(self) -> dict:
        """What final.pt and best.pt hold, and downstream rules load: weights, not training state."""
        return {
            "modules": {name: ckpt.unwrap(m).state_dict() for name, m in self.modules.items()},
            "extra_state": self._extra_state(),
            "config": self.run_config,
            "step": self.state.step,
            "epoch": self.state.epoch,
            "val": dict(self.state.last_val),
        }

    def _save_weights(self, path: Path) -> None:
        if self.main:
            ckpt.atomic_save(self._weights(), path)

    def _remember_best(self) -> None:
        """Serialise the weights of a new best validation now (the next step changes them) and
        write them as best.pt at the next checkpoint or at the end: with the paper UNet's 1 GB
        written and synced at every improving validation, each validation took ~1.75 s of
        which its four forward passes take ~0.3, ~10 % of Stage 2's time at the science scale
        (the 2026-12-07 study's log)."""
        if self.main:
            self._unsaved_best = io.BytesIO()
            torch.save(self._weights(), self._unsaved_best)

    def _write_best(self) -> None:
        if self.main and self._unsaved_best is not None:
            ckpt.atomic_write_bytes(self._unsaved_best.getbuffer(), self.out_dir / "best.pt")
            self._unsaved_best = None

    # -- logging ----------------------------------------------------------------------------

    def _lr(self) -> float:
        first = next(iter(self.optimizers.values()))
        return first.param_groups[0]["lr"]

    def _write_row(self, row: dict) -> None:
        if not self.main:
            return
        self.log.append(row)
        if self.tb is not None:
            for key, value in row.items():
                if key not in ("step", "epoch") and isinstance(value, float):
                    self.tb.add_scalar(key, value, row["step"])

    # -- training ---------------------------------------------------------------------------

    def _loader(self, batches: list[list[int]], dataset: Dataset, seed: int) -> DataLoader:
        return DataLoader(
            dataset,
            batch_sampler=batches,
            num_workers=self.config.num_workers,
            collate_fn=self.collate_fn,
            pin_memory=self.env.device.type == "cuda",
            # the loader draws its workers' base seed from this generator, not the global RNG
            generator=torch.Generator().manual_seed(seed),
        )

    def _prepare(self, batch):
        """A batch on the device, in the modules' memory format."""
        batch = _to_device(batch, self.env.device)
        return map_tensors(channels_last, batch) if self.on_gpu and self.config.channels_last else batch

    def _set_lr(self) -> None:
        factor = lr_factor(self.state.step, self.state.epoch, self.config.warmup_steps, self.config.lr_decay)
        for optimizer in self.optimizers.values():
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * factor

    def _train_rest_of_epoch(self) -> None:
        """Train from the current position to the epoch's end or max_steps."""
        cfg, st, env = self.config, self.state, self.env
        batches = train_batches(len(self.train_dataset), cfg.batch_size, env.world_size, env.rank,
                                cfg.seed, st.epoch, start=st.batch_in_epoch)
        if self.train_on_device is not None:
            loader = self.train_on_device.batches(batches)
        else:
            loader = self._loader(batches, self.train_dataset,
                                  derive_seed(cfg.seed, Stream.LOADER, env.rank, st.epoch, st.batch_in_epoch))
        for module in self.modules.values():
            module.train()
        bar = tqdm(total=self.steps_per_epoch, initial=st.batch_in_epoch, desc=f"epoch {st.epoch}",
                   disable=not (self.main and cfg.progress), dynamic_ncols=True,
                   mininterval=1.0 if sys.stderr.isatty() else 30.0)
        sums: dict[str, Any] = {}
        counts: dict[str, int] = {}
        window_start, window_steps = time.perf_counter(), 0
        for batch in loader:
            batch = self._prepare(batch)
            self._set_lr()
            self.run.step, self.run.epoch = st.step, st.epoch
            metrics = self.task.train_step(batch, st.step, self.run)
            st.step += 1
            st.batch_in_epoch += 1
            window_steps += 1
            bar.update(1)
            for key, value in metrics.items():
                value = value.detach() if isinstance(value, torch.Tensor) else value
                sums[key] = sums.get(key, 0.0) + value
                counts[key] = counts.get(key, 0) + 1

            stopping = cfg.max_steps is not None and st.step >= cfg.max_steps
            epoch_done = st.batch_in_epoch == self.steps_per_epoch
            if st.step % cfg.log_every_steps == 0 and not stopping and self._time_is_up():
                stopping, st.stop_reason = True, "max_seconds"
            if st.step % cfg.log_every_steps == 0 or stopping or epoch_done:
                means = all_reduce_mean({k: sums[k] / counts[k] for k in sums}, env.device)
                elapsed = time.perf_counter() - window_start
                row = {"step": st.step, "epoch": st.epoch, "lr": self._lr(), "seconds": self._seconds(),
                       "samples_per_s": window_steps * cfg.batch_size / max(elapsed, 1e-9)}
                if env.device.type == "cuda":  # this rank's peak since the run started
                    row["gpu_peak_gib"] = torch.cuda.max_memory_allocated(env.device) / 2**30
                row.update({f"train/{k}": v for k, v in means.items()})
                self._write_row(row)
                if "loss" in means:
                    bar.set_postfix(loss=f"{means['loss']:.4g}", refresh=False)
                sums, counts = {}, {}
                window_start, window_steps = time.perf_counter(), 0
            if stopping:
                st.finished, st.stop_reason = True, st.stop_reason or "max_steps"
                break
            if self._checkpoint_due() and not epoch_done:
                self._save_checkpoint()  # (one due at an epoch's end is saved after its validation)
        bar.close()

    # -- validation -------------------------------------------------------------------------

    def _validate(self) -> dict[str, float]:
        """Sample-weighted means of the task's validation metrics over all ranks' shards."""
        cfg, env = self.config, self.env
        batches = val_batches(len(self.val_dataset), cfg.val_batch_size or cfg.batch_size,
                              env.world_size, env.rank)
        sizes = [len(b) for b in batches]
        sums: dict[str, float] = {}
        for module in self.modules.values():
            module.eval()
        seed = derive_seed(cfg.seed, Stream.VALIDATION, env.rank, self.state.epoch, self.state.step)
        with _forked_rng(seed, env.device), torch.no_grad():
            if self.val_on_device is not None:
                loader = self.val_on_device.batches(batches)
            else:
                loader = self._loader(batches, self.val_dataset, seed)
            for size, batch in zip(sizes, loader):
                metrics = self.task.validate(self._prepare(batch), self.run)
                for key, value in metrics.items():
                    sums[key] = sums.get(key, 0.0) + float(value) * size
        for module in self.modules.values():
            module.train()
        keys = sorted(set().union(*gather_objects(sorted(sums))))  # a rank may have had no batch
        totals = all_reduce_sum(torch.tensor([sums.get(k, 0.0) for k in keys] + [float(sum(sizes))],
                                             dtype=torch.float64, device=env.device))
        count = totals[-1].item()
        return {k: v / count for k, v in zip(keys, totals[:-1].tolist())}

    def _end_of_epoch(self) -> None:
        """Validate when due, update early stopping, move to the next epoch, checkpoint when one
        fell due within the epoch or the run ends (not at every epoch end: a paper-size model's
        checkpoint is gigabytes, and a short epoch would spend more time writing than training)."""
        cfg, st = self.config, self.state
        if self.val_dataset is not None and (st.epoch + 1) % cfg.validate_every_epochs == 0:
            self._validate_and_track()
        st.epoch += 1
        st.batch_in_epoch = 0
        if st.epoch >= cfg.max_epochs and st.step >= cfg.min_steps and not st.finished:
            st.finished, st.stop_reason = True, "max_epochs" if st.epoch == cfg.max_epochs else "min_steps"
        if cfg.max_steps is not None and st.step >= cfg.max_steps and not st.finished:
            st.finished, st.stop_reason = True, "max_steps"
        if st.finished or self._checkpoint_due():
            self._save_checkpoint()

    def _validate_and_track(self) -> None:
        cfg, st = self.config, self.state
        metrics = self._validate()
        if self.task.val_metric not in metrics:
            raise KeyError(f"validate() returned {sorted(metrics)}, without the early-stopping "
                           f"metric {self.task.val_metric!r}")
        st.last_val, st.last_val_step = metrics, st.step
        value = metrics[self.task.val_metric]
        if st.best is None or value < st.best - cfg.min_delta:
            st.best, st.best_epoch, st.bad_validations = value, st.epoch, 0
            self._remember_best()
        else:
            st.bad_validations += 1  # NaN never improves, so it counts here too
        row = {"step": st.step, "epoch": st.epoch, "lr": self._lr(), "seconds": self._seconds()}
        row.update({f"val/{k}": v for k, v in metrics.items()})
        self._write_row(row)
        if (cfg.early_stop_patience is not None and st.bad_validations >= cfg.early_stop_patience
                and st.step >= cfg.min_steps):
            st.finished, st.stop_reason = True, "early_stop"

    # -- the whole run ------------------------------------------------------------------------

    def fit(self) -> dict:
        st = self.state
        start_step, start_time = st.step, time.perf_counter()
        self._call_start, self._seconds_before = start_time, st.seconds
        while not st.finished:
            if st.batch_in_epoch < self.steps_per_epoch:
                self._train_rest_of_epoch()
            if st.batch_in_epoch == self.steps_per_epoch:
                self._end_of_epoch()
            elif st.finished:  # max_steps or max_seconds reached mid-epoch
                stop_reason = st.stop_reason
                if self.val_dataset is not None and st.last_val_step != st.step:
                    self._validate_and_track()
                    st.finished, st.stop_reason = True, stop_reason
                self._save_checkpoint()
        self._write_best()  # best.pt before final.pt, whichever way the run ended
        self._save_weights(self.out_dir / "final.pt")
        summary = {
            "stop_reason": st.stop_reason,
            "steps": st.step,
            "epoch": st.epoch,
            "steps_per_epoch": self.steps_per_epoch,
            "best_val": st.best,
            "best_epoch": st.best_epoch,
            "last_val": st.last_val,
            "val_metric": self.task.val_metric,
            "world_size": self.env.world_size,
            "resumed_from": str(self.resumed_from) if self.resumed_from else None,
            "steps_this_call": st.step - start_step,
            "seconds_this_call": time.perf_counter() - start_time,
            "seconds": self._seconds(),
            "gpu_peak_gib": (torch.cuda.max_memory_allocated(self.env.device) / 2**30
                             if self.env.device.type == "cuda" else None),
            "final": str(self.out_dir / "final.pt"),
        }
        if self.main:
            ckpt.atomic_write_text(json.dumps(summary, indent=2) + "\n", self.out_dir / "summary.json")
            if self.tb is not None:
                self.tb.close()
        return summary


def train(task: Task, train_dataset: Dataset, val_dataset: Dataset | None, config: TrainConfig,
          out_dir: str | Path, *, collate_fn=None, env: DistEnv | None = None) -> dict:
    """Train `task` to the end (max_epochs, max_steps or early stopping) and return a summary.

    Resumes from the newest checkpoint in out_dir/checkpoints if there is one, so rerunning
    the same command after a crash or a requeue continues where the last checkpoint left
    off and ends with the same weights as an uninterrupted run. Writes (rank 0 only):
    out_dir/log.csv, out_dir/checkpoints/step_*.pt, out_dir/best.pt (best validation),
    out_dir/final.pt (last weights), out_dir/summary.json, out_dir/tensorboard/ if enabled.
    Several processes: `env` defaults to `setup(config.device)`, which reads the launcher's
    environment (torchrun or srun); all processes must share out_dir's filesystem.
    """
    env = env if env is not None else setup(config.device)
    return _Trainer(task, train_dataset, val_dataset, config, Path(out_dir), collate_fn, env).fit()
