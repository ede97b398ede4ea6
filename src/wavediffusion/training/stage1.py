"""Stage 1: train the shared-latent VQ autoencoder (one encoder, two decoders).

The training step is written out: a generator step (reconstruction of both modalities,
the VQ loss, the optional perceptual loss and, from `disc_start` on, the adversarial loss
with VQGAN's adaptive weight) and then a discriminator step (hinge loss, one PatchGAN per
modality). Everything else -- devices, DDP, bf16, checkpoints, resume, early stopping,
logs -- is the project's one loop (training/loop.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..config import only_known
from ..data import dims
from ..data.dataset import PairDataset
from ..data.store import open_dataset, representation_of
from ..models.autoencoder import AutoencoderConfig, VQAutoencoder
from ..models.discriminator import (
    DiscriminatorConfig,
    PatchDiscriminator,
    adaptive_weight,
    generator_adversarial_loss,
    hinge_d_loss,
)
from ..models.perceptual import PerceptualConfig, PerceptualLoss
from . import checkpoint as ckpt
from .loop import Run, TrainConfig, adam, seeded_init, train
from .runs import dataset_identity


@dataclass(frozen=True)
class Stage1Losses:
    reconstruction: str = "l1"  # "l1" | "l2", on both modalities in the [-1, 1] space
    velocity_weight: float = 1.0  # weight of the velocity reconstruction beside the seismic one
    disc_start: int = 50_001  # optimiser step at which the adversarial terms switch on (paper)
    disc_weight: float = 0.5  # paper
    perceptual_weight: float = 0.5  # paper; used only when perceptual_vgg_weights is set
    perceptual_vgg_weights: str | None = None  # torchvision VGG16 state dict; None = no perceptual loss
    perceptual_lpips_heads: str | None = None  # LPIPS v0.1 vgg.pth (optional)

    def __post_init__(self):
        if self.reconstruction not in ("l1", "l2"):
            raise ValueError(f"stage1.losses.reconstruction must be 'l1' or 'l2', got {self.reconstruction!r}")


@dataclass(frozen=True)
class Stage1Settings:
    """The stage1 slice of config.yaml for one variant, as the rule passes it."""

    model: dict = field(default_factory=dict)  # AutoencoderConfig fields (sizes come from the data)
    discriminator: dict = field(default_factory=dict)  # DiscriminatorConfig fields (base_channels, n_layers)
    losses: dict = field(default_factory=dict)  # Stage1Losses fields
    training: dict = field(default_factory=dict)  # TrainConfig fields


def reconstruction_loss(prediction: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    return F.l1_loss(prediction, target) if kind == "l1" else F.mse_loss(prediction, target)


def perceptual_loss(losses: Stage1Losses) -> PerceptualLoss | None:
    """The frozen perceptual network `losses` asks for, or None (no perceptual_vgg_weights)."""
    if not losses.perceptual_vgg_weights:
        return None
    return PerceptualLoss(PerceptualConfig(losses.perceptual_vgg_weights, losses.perceptual_lpips_heads))


def reconstruction_term(prediction: torch.Tensor, target: torch.Tensor, losses: Stage1Losses,
                        perceptual: PerceptualLoss | None) -> torch.Tensor:
    """One modality's reconstruction loss, plus the perceptual loss when `perceptual` is given.
    That network is frozen, so not one of a task's modules() (no DDP, not checkpointed); it
    follows the data's device and runs in fp32 on the reconstruction."""
    loss = reconstruction_loss(prediction, target, losses.reconstruction)
    if perceptual is not None:
        perceptual.to(target.device)
        with torch.autocast(target.device.type, enabled=False):
            loss = loss + losses.perceptual_weight * perceptual(prediction.float(), target).mean()
    return loss


def discriminator_loss(disc: torch.nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """The hinge loss of one discriminator on real and (detached) fake data, through ONE
    forward of both (a DDP module may run once per backward)."""
    logits = disc(torch.cat([real, fake.detach()]))
    return hinge_d_loss(logits[: len(real)], logits[len(real):])


def discriminator_step(run: Run, optimizer: torch.optim.Optimizer, d_loss: torch.Tensor) -> torch.Tensor:
    """The discriminators' optimiser step on their loss; returns the loss, detached, for the log."""
    optimizer.zero_grad(set_to_none=True)
    d_loss.backward()
    run.clip_and_step(optimizer)
    return d_loss.detach()


class Stage1Task:
    """The Task (training/loop.py) of the VQ autoencoder with its two discriminators."""

    val_metric = "val_reconstruction"

    def __init__(self, model_config: AutoencoderConfig, disc: DiscriminatorConfig, losses: Stage1Losses, train_config: TrainConfig):
        self.model_config = model_config
        self.losses = losses
        # Initial weights from (seed, Stream.INIT), not from the global generator's state: a
        # fresh process's generator does not start from a fixed seed, and DDP copies rank 0's
        # weights to the others, so unseeded, N processes started from other weights than one
        # process does (the step-0 loss and perplexity already differed) -- see loop.seeded_init.
        with seeded_init(train_config.seed):
            self.autoencoder = VQAutoencoder(model_config)
            self.seismic_disc = PatchDiscriminator(DiscriminatorConfig(model_config.seismic_channels, disc.base_channels, disc.n_layers))
            self.velocity_disc = PatchDiscriminator(DiscriminatorConfig(model_config.velocity_channels, disc.base_channels, disc.n_layers))
            self.perceptual = perceptual_loss(losses)
        self.generator_optimizer = adam(self.autoencoder.parameters(), train_config)
        self.disc_optimizer = adam(list(self.seismic_disc.parameters()) + list(self.velocity_disc.parameters()), train_config)

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"autoencoder": self.autoencoder, "seismic_disc": self.seismic_disc, "velocity_disc": self.velocity_disc}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"generator": self.generator_optimizer, "discriminator": self.disc_optimizer}

    def config_dict(self) -> dict:
        return {"model": asdict(self.model_config), "losses": asdict(self.losses)}

    def train_step(self, batch: dict, step: int, run: Run) -> dict:
        seismic, velocity = batch["seismic"], batch["velocity"]  # (B, S, T, R), (B, 1, V, V)
        adversarial = step >= self.losses.disc_start

        # --- generator step: autoencoder through DDP, discriminators plain (their grads are zeroed below)
        with run.autocast():
            out = run.wrapped["autoencoder"](seismic)
            rec_s = reconstruction_term(out.seismic, seismic, self.losses, self.perceptual)
            rec_v = reconstruction_term(out.velocity, velocity, self.losses, self.perceptual)
            loss = rec_s + self.losses.velocity_weight * rec_v + out.vq_loss
            metrics = {"rec_seismic": rec_s.detach(), "rec_velocity": rec_v.detach(), "vq": out.vq_loss.detach()}
            if adversarial:
                g_s = generator_adversarial_loss(self.seismic_disc(out.seismic))
                g_v = generator_adversarial_loss(self.velocity_disc(out.velocity))
                w_s = adaptive_weight(rec_s, g_s, self.autoencoder.seismic_decoder.last_layer)
                w_v = adaptive_weight(rec_v, g_v, self.autoencoder.velocity_decoder.last_layer)
                loss = loss + self.losses.disc_weight * (w_s * g_s + w_v * g_v)
                metrics.update(g_seismic=g_s.detach(), g_velocity=g_v.detach())
        self.generator_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.clip_and_step(self.generator_optimizer)
        metrics["loss"] = loss.detach()
        for name, info in out.info.items():
            metrics[f"perplexity_{name}"] = info.perplexity.detach()

        # --- discriminator step: each discriminator once, on real and fake together (one DDP forward)
        if adversarial:
            with run.autocast():
                d_loss = (discriminator_loss(run.wrapped["seismic_disc"], seismic, out.seismic)
                          + discriminator_loss(run.wrapped["velocity_disc"], velocity, out.velocity))
            metrics["d_loss"] = discriminator_step(run, self.disc_optimizer, d_loss)
        return metrics

    @torch.no_grad()
    def validate(self, batch: dict, run: Run) -> dict:
        seismic, velocity = batch["seismic"], batch["velocity"]
        with run.autocast():
            out = self.autoencoder(seismic)
        mse_s = F.mse_loss(out.seismic.float(), seismic)
        mse_v = F.mse_loss(out.velocity.float(), velocity)
        return {"val_reconstruction": mse_s + mse_v, "val_mse_seismic": mse_s, "val_mse_velocity": mse_v,
                "val_mae_velocity": (out.velocity.float() - velocity).abs().mean()}


def autoencoder_config(model: dict, variant: str, shots: int, time_samples: int, receivers: int,
                       velocity_size: int) -> AutoencoderConfig:
    """The autoencoder of config stage1.model for data of these sizes (the store's, or the
    preprocess section's when the config is checked before any job)."""
    return AutoencoderConfig(**only_known(model, AutoencoderConfig, "stage1.model"), variant=variant,
                             seismic_channels=shots, time_samples=time_samples, receivers=receivers,
                             velocity_size=velocity_size)


def task_configs(dataset: str | Path, variant: str, settings: Stage1Settings
                 ) -> tuple[AutoencoderConfig, DiscriminatorConfig, Stage1Losses, TrainConfig]:
    """The configs of a Stage-1 task, joint or single-modality, for a dataset store: the
    model's input sizes come from the store, the rest from the stage1 settings."""
    rep = representation_of(open_dataset(dataset))
    model = autoencoder_config(settings.model, variant, len(rep.shots), rep.time_samples, rep.receivers,
                               rep.velocity_size)
    disc = DiscriminatorConfig(**only_known(settings.discriminator, DiscriminatorConfig, "stage1.discriminator"))
    losses = Stage1Losses(**only_known(settings.losses, Stage1Losses, "stage1.losses"))
    train_config = TrainConfig(**only_known(settings.training, TrainConfig, "stage1.training"))
    return model, disc, losses, train_config


def build_task(dataset: str | Path, variant: str, settings: Stage1Settings) -> tuple[Stage1Task, TrainConfig]:
    """The Stage-1 task for a dataset store: model input sizes come from the store."""
    model, disc, losses, train_config = task_configs(dataset, variant, settings)
    return Stage1Task(model, disc, losses, train_config), train_config


def run_identity(dataset: str | Path, variant: str, settings: Stage1Settings, processes: int) -> dict:
    """What a Stage-1 run folder is named after (runs.run_directory): a rerun resumes only
    with the same variant, settings, data and number of processes."""
    return {"variant": variant, "settings": asdict(settings), "dataset": dataset_identity(dataset),
            "processes": processes}


def train_stage1(dataset: str | Path, variant: str, settings: Stage1Settings, out_dir: str | Path) -> dict:
    """Train one variant on the store's train split (validated on val); returns the loop's summary."""
    task, train_config = build_task(dataset, variant, settings)
    return train(task, PairDataset(dataset, "train"), PairDataset(dataset, "val"), train_config, out_dir)


def save_autoencoder(model: VQAutoencoder, path: str | Path) -> None:
    """The part of a Stage-1 weights file that load_autoencoder reads (train_stage1 writes
    whole checkpoints): networks made outside training -- test fixtures, speed benchmarks."""
    ckpt.atomic_save({"config": {"task": {"model": asdict(model.config)}},
                      "modules": {"autoencoder": model.state_dict()}}, path)


def load_autoencoder(path: str | Path, device: str | torch.device = "cpu") -> VQAutoencoder:
    """The trained autoencoder from a Stage-1 weights file (train_stage1's output), in eval mode."""
    return _autoencoder_from(torch.load(path, map_location="cpu", weights_only=False), path, device)


def load_stage1_model(path: str | Path, device: str | torch.device = "cpu"):
    """The autoencoder of any Stage-1 weights file, in eval mode: the joint VQAutoencoder
    (train_stage1's) or a single-modality one (Table 8's baselines, train_single_modality's).
    Both encode with latent_for_diffusion the data of their `input_modality`."""
    from .single_modality import is_single_modality, single_modality_from  # it imports this module

    weights = torch.load(path, map_location="cpu", weights_only=False)
    if is_single_modality(weights):
        return single_modality_from(weights, path, device)
    return _autoencoder_from(weights, path, device)


def _autoencoder_from(weights: dict, path: str | Path, device: str | torch.device) -> VQAutoencoder:
    """The joint autoencoder of a loaded Stage-1 weights file (`path`: for the messages)."""
    from .single_modality import is_single_modality

    if is_single_modality(weights):
        raise ValueError(f"{path}: a single-modality autoencoder (Table 8's baseline), not the joint Stage-1 model")
    try:
        config = AutoencoderConfig(**weights["config"]["task"]["model"])
        state = weights["modules"]["autoencoder"]
    except (KeyError, TypeError) as error:
        raise ValueError(f"{path}: not a Stage-1 weights file ({error})") from None
    model = VQAutoencoder(config)
    model.load_state_dict(state)
    return model.to(device).eval()


@torch.no_grad()
def encode_latents(model_path: str | Path, dataset: str | Path, out: str | Path, batch_size: int = 64,
                   samples_per_shard: int = 256, progress: bool = True) -> dict:
    """Encode the train and val splits into the latents Stage 2 learns (one Zarr store).

    The model is any Stage-1 weights file's (load_stage1_model): the joint autoencoder encodes
    the seismic, a single-modality one its own modality. Each split holds `latent` (N, C, h, w)
    -- the model's diffusion latent, see VQAutoencoder.latent_for_diffusion -- and `family`.
    The attributes hold the train latents' per-channel mean and std and their overall std, from
    which Stage 2 takes its scale factor (latents scaled to unit variance before diffusion).
    """
    import numpy as np
    import zarr
    from tqdm import tqdm

    from ..data import integrity
    from ..files import atomic_directory, sha256_of

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_stage1_model(model_path, device)
    root = open_dataset(dataset)
    latent_shape = model.config.latent_shape
    stats = {}
    with atomic_directory(out) as tmp:
        store = zarr.open_group(str(tmp), mode="w")
        for split in ("train", "val"):
            source = root[split]
            n = source["seismic"].shape[0]
            group = store.create_group(split)
            shard = max(1, min(samples_per_shard, n))
            latents = group.create_array("latent", shape=(n, *latent_shape), chunks=(1, *latent_shape),
                                         shards=(shard, *latent_shape), dtype="float32", fill_value=float("nan"),
                                         compressors=integrity.COMPRESSORS,
                                         dimension_names=(dims.SAMPLE, *dims.LATENT))
            group.create_array("family", data=np.asarray(source["family"][:]), chunks=(max(1, n),), fill_value=-1,
                               compressors=integrity.COMPRESSORS, dimension_names=(dims.SAMPLE,))
            total, total_sq = torch.zeros(latent_shape[0], dtype=torch.float64), torch.zeros(latent_shape[0], dtype=torch.float64)
            # blocks of whole shards: each write touches only its own Zarr shards
            block = max(shard, (batch_size // shard) * shard)
            for start in tqdm(range(0, n, block), desc=f"encode {split}", disable=not progress):
                data = torch.from_numpy(source[model.input_modality][start : start + block]).to(device)
                z = torch.cat([model.latent_for_diffusion(part) for part in data.split(batch_size)]).float().cpu()
                latents[start : start + len(z)] = z.numpy()
                total += z.double().sum(dim=(0, 2, 3))
                total_sq += (z.double() ** 2).sum(dim=(0, 2, 3))
            count = n * latent_shape[1] * latent_shape[2]  # values per channel
            mean, mean_sq = total / count, total_sq / count
            std = (mean_sq - mean**2).clamp_min(0).sqrt()
            overall_std = float((mean_sq.mean() - mean.mean() ** 2).clamp_min(0).sqrt())  # channels hold equal counts
            stats[split] = {"n": n, "channel_mean": mean.tolist(), "channel_std": std.tolist(), "std": overall_std}
        store.attrs.update({
            "variant": model.variant,
            "latent_shape": list(latent_shape),
            "model_sha256": sha256_of(model_path),
            "dataset": str(dataset),
            "stats": stats,
            integrity.ATTRIBUTE: integrity.VERSION,
        })
    return stats
