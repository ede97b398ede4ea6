"""Train one modality's own VQ autoencoder (models/single_modality.py): Table 8's baselines.

The same objective as the joint Stage 1 (training/stage1.py) with the other modality's terms
left out: the modality's reconstruction (weighted as in the joint loss: seismic 1,
velocity `stage1.losses.velocity_weight`), the VQ loss, the optional perceptual loss and,
from `disc_start` on, the adversarial loss with VQGAN's adaptive weight against one PatchGAN;
then the discriminator's hinge step. The settings are the joint model's `stage1` sections,
so both baselines train with its architecture, losses and budget, through the same loop.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from ..data.dataset import PairDataset
from ..models.autoencoder import AutoencoderConfig
from ..models.discriminator import (
    DiscriminatorConfig,
    PatchDiscriminator,
    adaptive_weight,
    generator_adversarial_loss,
)
from ..models.single_modality import MODALITIES, SingleModalityAutoencoder
from .loop import Run, TrainConfig, adam, seeded_init, train
from .runs import dataset_identity
from .stage1 import (
    Stage1Losses,
    Stage1Settings,
    discriminator_loss,
    discriminator_step,
    perceptual_loss,
    reconstruction_term,
    task_configs,
)

# the autoencoder's name among a weights file's modules: load_autoencoder (the joint model's
# "autoencoder") refuses such a file by name rather than loading the wrong network
MODULE = "single_modality_autoencoder"


class SingleModalityTask:
    """The Task (training/loop.py) of a single-modality autoencoder with its discriminator."""

    val_metric = "val_reconstruction"

    def __init__(self, model_config: AutoencoderConfig, modality: str, disc: DiscriminatorConfig,
                 losses: Stage1Losses, train_config: TrainConfig):
        self.model_config = model_config
        self.modality = modality
        self.losses = losses
        # the joint loss's weight of this modality's reconstruction (and of its adversarial term)
        self.weight = losses.velocity_weight if modality == "velocity" else 1.0
        with seeded_init(train_config.seed):  # the same initial weights in every process (loop.seeded_init)
            self.autoencoder = SingleModalityAutoencoder(model_config, modality)
            channels = self.autoencoder.data_shape[0]
            self.disc = PatchDiscriminator(DiscriminatorConfig(channels, disc.base_channels, disc.n_layers))
            self.perceptual = perceptual_loss(losses)
        self.generator_optimizer = adam(self.autoencoder.parameters(), train_config)
        self.disc_optimizer = adam(self.disc.parameters(), train_config)

    def modules(self) -> dict[str, torch.nn.Module]:
        return {MODULE: self.autoencoder, "disc": self.disc}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"generator": self.generator_optimizer, "discriminator": self.disc_optimizer}

    def config_dict(self) -> dict:
        return {"model": asdict(self.model_config), "modality": self.modality, "losses": asdict(self.losses)}

    def train_step(self, batch: dict, step: int, run: Run) -> dict:
        x = batch[self.modality]  # (B, C, H, W)
        adversarial = step >= self.losses.disc_start
        with run.autocast():
            out = run.wrapped[MODULE](x)
            rec = reconstruction_term(out.reconstruction, x, self.losses, self.perceptual)
            loss = self.weight * rec + out.vq_loss
            metrics = {"rec": rec.detach(), "vq": out.vq_loss.detach()}
            if adversarial:
                g = generator_adversarial_loss(self.disc(out.reconstruction))
                w = adaptive_weight(rec, g, self.autoencoder.decoder.last_layer)
                loss = loss + self.losses.disc_weight * self.weight * w * g
                metrics["g"] = g.detach()
        self.generator_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.clip_and_step(self.generator_optimizer)
        metrics["loss"] = loss.detach()
        metrics["perplexity"] = out.info.perplexity.detach()

        if adversarial:  # real and fake through one DDP forward, as Stage1Task's
            with run.autocast():
                d_loss = discriminator_loss(run.wrapped["disc"], x, out.reconstruction)
            metrics["d_loss"] = discriminator_step(run, self.disc_optimizer, d_loss)
        return metrics

    @torch.no_grad()
    def validate(self, batch: dict, run: Run) -> dict:
        x = batch[self.modality]
        with run.autocast():
            out = self.autoencoder(x)
        error = out.reconstruction.float() - x
        return {"val_reconstruction": (error**2).mean(), "val_mae": error.abs().mean()}


def build_task(dataset: str | Path, modality: str, settings: Stage1Settings) -> tuple[SingleModalityTask, TrainConfig]:
    """The task for a dataset store: the joint model's stage1 settings, sizes from the store."""
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    model, disc, losses, train_config = task_configs(dataset, "1vq", settings)
    return SingleModalityTask(model, modality, disc, losses, train_config), train_config


def run_identity(dataset: str | Path, modality: str, settings: Stage1Settings, processes: int) -> dict:
    """What a run folder is named after (runs.run_directory), as the joint Stage 1's."""
    return {"modality": modality, "settings": asdict(settings), "dataset": dataset_identity(dataset),
            "processes": processes}


def train_single_modality(dataset: str | Path, modality: str, settings: Stage1Settings, out_dir: str | Path) -> dict:
    """Train one modality's autoencoder on the store's train split (validated on val); the loop's summary."""
    task, train_config = build_task(dataset, modality, settings)
    return train(task, PairDataset(dataset, "train"), PairDataset(dataset, "val"), train_config, out_dir)


def is_single_modality(weights: dict) -> bool:
    """Whether a loaded weights file is train_single_modality's (rather than the joint Stage 1's)."""
    return isinstance(weights.get("modules"), dict) and MODULE in weights["modules"]


def single_modality_from(weights: dict, path: str | Path,
                         device: str | torch.device = "cpu") -> SingleModalityAutoencoder:
    """The trained model of a loaded weights file of train_single_modality, in eval mode."""
    try:
        task = weights["config"]["task"]
        model = SingleModalityAutoencoder(AutoencoderConfig(**task["model"]), task["modality"])
        state = weights["modules"][MODULE]
    except (KeyError, TypeError) as error:
        raise ValueError(f"{path}: not a single-modality weights file ({error})") from None
    model.load_state_dict(state)
    return model.to(device).eval()


def load_single_modality(path: str | Path, device: str | torch.device = "cpu") -> SingleModalityAutoencoder:
    """The trained model of train_single_modality's weights file, in eval mode."""
    return single_modality_from(torch.load(path, map_location="cpu", weights_only=False), path, device)
