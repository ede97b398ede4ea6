"""Stage 1 through the project's training loop: the VQ autoencoder and its discriminators."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from wavediffusion.training.stage1 import Stage1Settings, build_task, train_stage1

from test_preprocess import make_small_store

TINY_MODEL = dict(
    latent_channels=8, codebook_dim=8, latent_height=8, latent_width=8, base_channels=16, channel_mult=(1, 2, 2, 2),
    velocity_channel_mult=(1, 2), num_res_blocks=1, norm_groups=8, codebook_size=64, dead_code_steps=20,
)


def settings(**training) -> Stage1Settings:
    return Stage1Settings(
        model=TINY_MODEL,
        discriminator={"base_channels": 16, "n_layers": 2},
        losses={"disc_start": 3},  # the adversarial step runs from the 4th step on
        training={"max_steps": 8, "batch_size": 4, "lr": 1e-3, "precision": "fp32", "checkpoint_every_steps": 4,
                  "progress": False, "tensorboard": False, "log_every_steps": 1, **training},
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A small dataset store at a small representation (64 time samples, 16 receivers, 16x16 velocity)."""
    root = tmp_path_factory.mktemp("openfwi")
    return make_small_store(root, root.parent / "stage1.zarr", test_per_family=2)


@pytest.mark.parametrize("variant", ["1vq", "2vq"])
def test_both_variants_train_with_the_adversarial_step(store, tmp_path, variant):
    torch.manual_seed(0)
    summary = train_stage1(store, variant, settings(), tmp_path)
    assert summary["steps"] == 8 and (tmp_path / "final.pt").exists()
    with open(tmp_path / "log.csv") as handle:
        rows = list(csv.DictReader(handle))
    train_rows = [r for r in rows if r["train/loss"]]
    assert not train_rows[2]["train/d_loss"] and train_rows[3]["train/d_loss"]  # discriminator from step 4 on
    last = train_rows[-1]
    assert math.isfinite(float(last["train/loss"])) and math.isfinite(float(last["train/d_loss"]))
    assert float(last["train/rec_seismic"]) < float(train_rows[0]["train/rec_seismic"])
    codebooks = ["shared"] if variant == "1vq" else ["seismic", "velocity"]
    for name in codebooks:
        assert float(last[f"train/perplexity_{name}"]) >= 1.0
    assert float(rows[-1]["val/val_reconstruction"]) > 0
    weights = torch.load(tmp_path / "final.pt", weights_only=False)
    assert set(weights["modules"]) == {"autoencoder", "seismic_disc", "velocity_disc"}
    assert weights["config"]["task"]["model"]["variant"] == variant


def test_model_sizes_come_from_the_store(store):
    task, _ = build_task(store, "1vq", settings())
    config = task.model_config
    assert (config.seismic_channels, config.time_samples, config.receivers, config.velocity_size) == (3, 64, 16, 16)


def test_unknown_settings_keys_name_the_config_key(store):
    with pytest.raises(ValueError, match=r"stage1\.losses: unknown keys \['disc_strat'\]"):
        build_task(store, "1vq", Stage1Settings(model=TINY_MODEL, losses={"disc_strat": 3}))


@pytest.mark.parametrize("variant", ["1vq", "2vq"])
def test_encoded_latents_are_the_diffusion_latents_with_their_statistics(store, tmp_path, variant):
    import numpy as np
    import zarr

    from wavediffusion.training.stage1 import encode_latents, load_autoencoder

    train_stage1(store, variant, settings(max_steps=4), tmp_path / "run")
    out = tmp_path / "latents.zarr"
    stats = encode_latents(tmp_path / "run" / "final.pt", store, out, batch_size=3, samples_per_shard=4, progress=False)
    latents = zarr.open_group(str(out), mode="r")
    train = latents["train"]["latent"][:]
    assert train.shape == (stats["train"]["n"], 8, 8, 8) and latents["val"]["latent"].shape[0] == stats["val"]["n"]
    assert latents["train"]["latent"].metadata.dimension_names == ("sample", "latent_channel", "latent_row",
                                                                   "latent_column")
    assert latents["val"]["family"].metadata.dimension_names == ("sample",)
    np.testing.assert_allclose(stats["train"]["channel_mean"], train.mean(axis=(0, 2, 3)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(stats["train"]["std"], train.std(), rtol=1e-4)
    model = load_autoencoder(tmp_path / "run" / "final.pt")
    first = torch.from_numpy(zarr.open_group(str(store), mode="r")["train"]["seismic"][:2])
    with torch.no_grad():
        np.testing.assert_allclose(train[:2], model.latent_for_diffusion(first).numpy(), atol=1e-5)
