"""Stage 2: train the latent diffusion model (the ε-prediction UNet) on Stage-1 latents.

The training step is written out: scale the latents to unit variance, draw t and ε, take
the ε-prediction loss (L2 or L1), one Adam step, then update the EMA copy of the weights
that sampling uses. Everything else -- devices, DDP, bf16, lr warm-up and decay,
checkpoints, exact resume, early stopping, logs -- is the project's one loop
(training/loop.py).

The latents come from `encode_latents` (training/stage1.py): a Zarr store with groups
"train" and "val", each holding `latent` (N, C, h, w) float32, and attributes
`stats[split]` = {"n", "std", "channel_mean", "channel_std"}. As LDM does, the latents
are multiplied by scale_factor = 1 / std(train latents) (no mean is subtracted); the
factor is part of the task's configuration, so it travels with every checkpoint, and a
resume against latents with another std is refused.
"""

from __future__ import annotations

import copy
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import zarr
from torch.utils.data import Dataset

from ..config import only_known
from ..data import integrity
from ..files import open_zarr_store
from ..diffusion.schedule import LOSSES, PREDICTIONS, EpsFromV, NoiseSchedule
from ..models.unet import UNet, UNetConfig
from . import checkpoint as ckpt
from .loop import Run, TrainConfig, adam, seeded_init, train

# UNetConfig fields that the latents fix; settings may not set them
FROM_LATENTS = ("in_channels", "out_channels", "image_size")


@dataclass(frozen=True)
class DiffusionSettings:
    """The diffusion process and how the UNet learns it; defaults are the paper's."""

    num_steps: int = 1000
    beta_start: float = 0.0015
    beta_end: float = 0.0155
    schedule: str = "linear"  # "linear" (LDM: linear in sqrt(beta)) | "linear_beta" (DDPM)
    loss: str = "l2"  # prediction loss: "l2" | "l1"
    # what the UNet predicts: "eps" (the paper's) | "v", whose z_0 estimate stays bounded at the
    # noisiest steps however inaccurate the network still is (docs/results.md, 2026-12-07)
    prediction: str = "eps"
    # Min-SNR-γ loss weighting (NoiseSchedule.min_snr_weight), e.g. 5; None: every timestep's
    # loss counts equally (the paper's). Validation stays unweighted, so curves compare.
    min_snr_gamma: float | None = None
    ema_decay: float = 0.9999
    ema_warmup: bool = True  # LDM's EMA: decay_n = min(ema_decay, (1 + n) / (10 + n)) at update n
    scale_by_std: bool = True  # multiply latents by 1 / std(train latents) before diffusion

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"stage2.diffusion.loss must be one of {LOSSES}, got {self.loss!r}")
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"stage2.diffusion.prediction must be one of {PREDICTIONS}, got {self.prediction!r}")
        if self.min_snr_gamma is not None and not self.min_snr_gamma > 0:
            raise ValueError(f"stage2.diffusion.min_snr_gamma must be positive (or null: off), got {self.min_snr_gamma}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"stage2.diffusion.ema_decay must be in [0, 1), got {self.ema_decay}")
        self.make_schedule()  # fail at construction on a bad schedule

    def make_schedule(self) -> NoiseSchedule:
        return NoiseSchedule(self.num_steps, self.beta_start, self.beta_end, self.schedule)


@dataclass(frozen=True)
class Stage2Settings:
    """The stage2 slice of config.yaml, as the rule passes it."""

    model: dict = field(default_factory=dict)  # UNetConfig fields except in/out channels and image_size
    diffusion: dict = field(default_factory=dict)  # DiffusionSettings fields
    training: dict = field(default_factory=dict)  # TrainConfig fields (warmup_steps: paper 10 000)


# ---------------------------------------------------------------------------------------
# The latents.


LATENTS_REMEDY = "Delete the store and rerun the encode_latents rule (Snakemake then rewrites it)."


def open_latents(path: str | Path) -> zarr.Group:
    """Open a latents store (encode_latents' output) read-only, with a clear error if not one."""
    root = open_zarr_store(path, "latents store", "encode_latents")
    if "stats" not in root.attrs or "train" not in root:
        raise ValueError(f"{path}: no 'stats' attribute or 'train' group; not a latents store from encode_latents")
    integrity.check_complete(path, root, integrity.all_rows(root), LATENTS_REMEDY)
    return root


def latent_scale_factor(path: str | Path, scale_by_std: bool = True) -> float:
    """1 / std of the train latents (LDM's scale_by_std), or 1 when scaling is off."""
    if not scale_by_std:
        return 1.0
    std = float(open_latents(path).attrs["stats"]["train"]["std"])
    if not std > 0:
        raise ValueError(f"{path}: train latents have std {std}; cannot scale them to unit variance")
    return 1.0 / std


class LatentDataset(Dataset):
    """Latents of one split, unscaled: {"latent": (C, h, w) float32}.

    Each DataLoader worker opens the store itself on first use (Zarr handles are not
    shared across processes) and reads one sample per __getitem__.
    """

    def __init__(self, path: str | Path, split: str):
        self.path = Path(path)
        self.split = split
        root = open_latents(self.path)  # fail early, in the main process
        if split not in root:
            raise ValueError(f"{self.path}: no split {split!r}")
        self.length = root[split]["latent"].shape[0]
        self._array = None  # opened lazily in each worker

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if self._array is None:
            self._array = open_latents(self.path)[self.split]["latent"]
        return {"latent": torch.from_numpy(self._array[index])}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_array"] = None  # each worker process opens its own handle
        return state


# ---------------------------------------------------------------------------------------
# The task.


def per_sample_draws(latents: torch.Tensor, num_steps: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, ε) for validation, each sample's drawn from a generator seeded by (seed, a CRC
    of its values): the validation loss then depends on the validation set only, not on
    the batch size, the number of ranks, the epoch or the device."""
    ts, noises = [], []
    for sample in latents.detach().float().cpu():
        generator = torch.Generator().manual_seed(seed * 2**32 + zlib.crc32(sample.numpy().tobytes()))
        ts.append(torch.randint(0, num_steps, (1,), generator=generator))
        noises.append(torch.randn(sample.shape, generator=generator))
    return torch.cat(ts).to(latents.device), torch.stack(noises).to(latents.device)


class Stage2Task:
    """The Task (training/loop.py) of the latent diffusion UNet, with an EMA of its weights."""

    val_metric = "val_loss"

    def __init__(self, model_config: UNetConfig, diffusion: DiffusionSettings, scale_factor: float,
                 train_config: TrainConfig):
        self.model_config = model_config
        self.diffusion = diffusion
        self.scale_factor = float(scale_factor)
        self.schedule = diffusion.make_schedule()
        with seeded_init(train_config.seed):  # the same initial weights in every process (loop.seeded_init)
            self.unet = UNet(model_config)
        self.ema = copy.deepcopy(self.unet).requires_grad_(False).eval()  # not a module of the loop: extra_state
        self.ema_updates = 0
        self.optimizer = adam(self.unet.parameters(), train_config)

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"unet": self.unet}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"unet": self.optimizer}

    def config_dict(self) -> dict:
        return {"model": asdict(self.model_config), "diffusion": asdict(self.diffusion),
                "scale_factor": self.scale_factor}

    def extra_state(self) -> dict:
        return {"ema": self.ema.state_dict(), "ema_updates": self.ema_updates}

    def load_extra_state(self, state: dict) -> None:
        self.ema.load_state_dict(state["ema"])
        self.ema_updates = int(state["ema_updates"])

    def ema_decay(self) -> float:
        """The decay of the next EMA update (LDM's warm-up: short memory at first)."""
        n = self.ema_updates
        if self.diffusion.ema_warmup:
            return min(self.diffusion.ema_decay, (1 + n) / (10 + n))
        return self.diffusion.ema_decay

    def _ema_on(self, device: torch.device) -> None:
        """Move the EMA to the training device the first time (the loop moves only the UNet;
        Module.to walks every tensor, too slow to repeat on each step)."""
        if next(self.ema.parameters()).device != device:
            self.ema.to(device)

    @torch.no_grad()
    def update_ema(self) -> None:
        """ema <- decay · ema + (1 - decay) · weights, after each optimiser step."""
        decay = self.ema_decay()
        weights = [p.detach() for p in self.unet.parameters()]
        self._ema_on(weights[0].device)
        # one fused update for all ~400 tensors of the paper's UNet rather than a kernel launch
        # for each (the same lerp, element by element)
        torch._foreach_lerp_(list(self.ema.parameters()), weights, 1.0 - decay)
        for ema_b, b in zip(self.ema.buffers(), self.unet.buffers()):
            ema_b.copy_(b)
        self.ema_updates += 1

    def train_step(self, batch: dict, step: int, run: Run) -> dict:
        z0 = batch["latent"] * self.scale_factor  # (B, C, h, w), unit variance
        with run.autocast():
            loss = self.schedule.training_loss(run.wrapped["unet"], z0, loss=self.diffusion.loss,
                                               prediction=self.diffusion.prediction,
                                               min_snr_gamma=self.diffusion.min_snr_gamma)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = run.clip_and_step(self.optimizer)
        self.update_ema()
        return {"loss": loss.detach(), "grad_norm": grad_norm}

    @torch.no_grad()
    def validate(self, batch: dict, run: Run) -> dict:
        z0 = batch["latent"] * self.scale_factor
        t, noise = per_sample_draws(batch["latent"], self.schedule.num_steps)
        self._ema_on(z0.device)
        metrics = {}
        for name, model in (("val_loss", self.unet), ("val_loss_ema", self.ema)):
            with run.autocast():
                metrics[name] = self.schedule.training_loss(model, z0, t=t, noise=noise, loss=self.diffusion.loss,
                                                            prediction=self.diffusion.prediction)
        return metrics


# ---------------------------------------------------------------------------------------
# Entry points.


def unet_config(model: dict, channels: int, size: int) -> UNetConfig:
    """The UNet of config stage2.model for latents of `channels` x `size` x `size` (the
    store's, or the autoencoder's when the config is checked before any job)."""
    values = only_known(model, UNetConfig, "stage2.model")
    fixed = sorted(set(values) & set(FROM_LATENTS))
    if fixed:
        raise ValueError(f"stage2.model: {fixed} come from the latents store; remove them")
    return UNetConfig(**values, in_channels=channels, out_channels=channels, image_size=size)


def build_task(latents: str | Path, settings: Stage2Settings) -> tuple[Stage2Task, TrainConfig]:
    """The Stage-2 task for a latents store: the UNet's channels and size come from it."""
    channels, height, width = open_latents(latents)["train"]["latent"].shape[1:]
    if height != width:
        raise ValueError(f"{latents}: latents are {height}x{width}; the UNet expects square latents")
    model_config = unet_config(settings.model, channels, height)
    diffusion = DiffusionSettings(**only_known(settings.diffusion, DiffusionSettings, "stage2.diffusion"))
    train_config = TrainConfig(**only_known(settings.training, TrainConfig, "stage2.training"))
    scale = latent_scale_factor(latents, diffusion.scale_by_std)
    return Stage2Task(model_config, diffusion, scale, train_config), train_config


def run_identity(latents: str | Path, settings: Stage2Settings, processes: int) -> dict:
    """What a Stage-2 run folder is named after (runs.run_directory): the settings, the
    latents' identity (the autoencoder that made them and their statistics) and the number
    of processes a checkpoint can resume with."""
    attrs = dict(open_latents(latents).attrs)
    return {"settings": asdict(settings), "latents": {"model_sha256": attrs["model_sha256"], "stats": attrs["stats"]},
            "processes": processes}


def train_stage2(latents: str | Path, settings: Stage2Settings, out_dir: str | Path) -> dict:
    """Train the diffusion UNet on the store's train latents (validated on val); returns the
    loop's summary. Writes out_dir/final.pt and best.pt (weights + EMA + config)."""
    task, train_config = build_task(latents, settings)
    val = LatentDataset(latents, "val")
    return train(task, LatentDataset(latents, "train"), val if len(val) else None, train_config, out_dir)


def save_stage2(unet: UNet, diffusion: DiffusionSettings, scale_factor: float, path: str | Path) -> None:
    """The part of a Stage-2 weights file that load_stage2 reads, with `unet` as the EMA
    weights (train_stage2 writes whole checkpoints): networks made outside training."""
    ckpt.atomic_save({"config": {"task": {"model": asdict(unet.config), "diffusion": asdict(diffusion),
                                          "scale_factor": float(scale_factor)}},
                      "extra_state": {"ema": unet.state_dict()}}, path)


def load_stage2(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, NoiseSchedule, float]:
    """(EMA UNet in eval mode as an ε-prediction network, its NoiseSchedule, latent scale
    factor) from a Stage-2 weights file (train_stage2's final.pt or best.pt); a v-prediction
    UNet comes wrapped in EpsFromV. Generated latents are z / scale_factor."""
    weights = ckpt.load(path)
    try:
        task = weights["config"]["task"]
        model_config = UNetConfig(**task["model"])
        diffusion = DiffusionSettings(**task["diffusion"])
        ema_state = weights["extra_state"]["ema"]
        scale_factor = float(task["scale_factor"])
    except (KeyError, TypeError) as error:
        raise ValueError(f"{path}: not a Stage-2 weights file ({error})") from None
    unet = UNet(model_config)
    unet.load_state_dict(ema_state)
    unet = unet.to(device).eval().requires_grad_(False)
    schedule = diffusion.make_schedule()
    return (EpsFromV(unet, schedule) if diffusion.prediction == "v" else unet), schedule, scale_factor
