"""Stage 2 through the project's training loop: the latents dataset, training the tiny
UNet with its EMA, loading the weights for sampling, and exact resume on CPU."""

from __future__ import annotations

import csv
import pickle

import numpy as np
import pytest
import torch
import zarr

from wavediffusion.diffusion.schedule import EpsFromV
from wavediffusion.models.unet import UNet
from wavediffusion.training import checkpoint as ckpt
from wavediffusion.training import train
from wavediffusion.training.stage2 import (
    DiffusionSettings,
    LatentDataset,
    Stage2Settings,
    Stage2Task,
    build_task,
    latent_scale_factor,
    load_stage2,
    per_sample_draws,
    train_stage2,
)

TINY_MODEL = {"model_channels": 32, "channel_mult": (1, 2), "num_res_blocks": 1, "attention_resolutions": (4,),
              "num_heads": 2, "norm_groups": 8}


def settings(**training) -> Stage2Settings:
    return Stage2Settings(
        model=TINY_MODEL,
        diffusion={"num_steps": 100, "ema_decay": 0.9},
        training={"max_steps": 6, "batch_size": 4, "lr": 1e-3, "precision": "fp32", "device": "cpu",
                  "checkpoint_every_steps": 3, "progress": False, "tensorboard": False, "log_every_steps": 1,
                  "warmup_steps": 2, **training},
    )


def write_latents(path, n_train=24, n_val=6, shape=(4, 8, 8), seed=0):
    """A latents store in encode_latents' format (training/stage1.py), without Stage 1."""
    rng = np.random.default_rng(seed)
    root = zarr.open_group(str(path), mode="w")
    stats = {}
    for split, n in (("train", n_train), ("val", n_val)):
        z = (3.0 * rng.standard_normal((n, *shape)) + 0.5).astype(np.float32)  # std 3: scaling matters
        group = root.create_group(split)
        array = group.create_array("latent", shape=z.shape, chunks=(1, *shape), shards=(min(4, n), *shape),
                                   dtype="float32")
        array[:] = z
        group.create_array("family", data=np.zeros(n, dtype=np.int64), chunks=(n,))
        stats[split] = {"n": n, "channel_mean": z.mean(axis=(0, 2, 3)).tolist(),
                        "channel_std": z.std(axis=(0, 2, 3)).tolist(), "std": float(z.std())}
    root.attrs.update({"variant": "1vq", "latent_shape": list(shape), "model_sha256": "0" * 64,
                       "dataset": "none", "stats": stats})
    return path


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    return write_latents(tmp_path_factory.mktemp("stage2") / "latents.zarr")


def test_latent_dataset_reads_samples_and_pickles(latents):
    dataset = LatentDataset(latents, "train")
    first = dataset[0]["latent"]
    assert len(dataset) == 24 and first.shape == (4, 8, 8) and first.dtype == torch.float32
    np.testing.assert_array_equal(first.numpy(), zarr.open_group(str(latents), mode="r")["train"]["latent"][0])
    clone = pickle.loads(pickle.dumps(dataset))  # what a DataLoader worker receives
    assert clone._array is None and torch.equal(clone[0]["latent"], first)


def test_scale_factor_is_one_over_the_train_std(latents):
    std = zarr.open_group(str(latents), mode="r").attrs["stats"]["train"]["std"]
    assert latent_scale_factor(latents) == pytest.approx(1 / std) and 2.5 < std < 3.5
    assert latent_scale_factor(latents, scale_by_std=False) == 1.0
    task, _ = build_task(latents, settings())
    assert task.scale_factor == pytest.approx(1 / std)
    assert (task.model_config.in_channels, task.model_config.out_channels, task.model_config.image_size) == (4, 4, 8)


def test_settings_keys_are_checked(latents):
    with pytest.raises(ValueError, match=r"stage2\.diffusion: unknown keys \['ema_decy'\]"):
        build_task(latents, Stage2Settings(model=TINY_MODEL, diffusion={"ema_decy": 0.9}))
    with pytest.raises(ValueError, match=r"stage2\.model: \['in_channels'\] come from the latents"):
        build_task(latents, Stage2Settings(model={**TINY_MODEL, "in_channels": 4}))
    with pytest.raises(ValueError, match="loss"):
        build_task(latents, Stage2Settings(model=TINY_MODEL, diffusion={"loss": "huber"}))


def test_validation_draws_depend_on_each_sample_only():
    z = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t, noise = per_sample_draws(z, 100)
    t_a, noise_a = per_sample_draws(z[:2], 100)
    t_b, noise_b = per_sample_draws(z[2:], 100)
    assert torch.equal(t, torch.cat([t_a, t_b])) and torch.equal(noise, torch.cat([noise_a, noise_b]))
    assert not torch.equal(noise[0], noise[1])


def test_train_stage2_writes_weights_that_load_for_sampling(latents, tmp_path):
    torch.manual_seed(0)
    summary = train_stage2(latents, settings(), tmp_path)
    assert summary["steps"] == 6 and summary["val_metric"] == "val_loss"
    assert set(summary["last_val"]) == {"val_loss", "val_loss_ema"}
    with open(tmp_path / "log.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert all(np.isfinite(float(r["train/loss"])) for r in rows if r["train/loss"])

    unet, schedule, scale = load_stage2(tmp_path / "final.pt")
    assert isinstance(unet, UNet) and not unet.training and schedule.num_steps == 100
    assert scale == pytest.approx(latent_scale_factor(latents))
    final = ckpt.load(tmp_path / "final.pt")
    raw, ema = final["modules"]["unet"], final["extra_state"]["ema"]
    assert final["extra_state"]["ema_updates"] == 6
    assert all(torch.equal(unet.state_dict()[k], ema[k]) for k in ema)  # load_stage2 gives the EMA
    assert any(not torch.equal(raw[k], ema[k]) for k in raw)  # which lags the raw weights
    with torch.no_grad():
        out = unet(torch.randn(2, 4, 8, 8), torch.tensor([0, 99]))
    assert out.shape == (2, 4, 8, 8) and out.abs().sum() > 0  # trained away from the zero start


def test_a_v_prediction_model_loads_as_an_epsilon_model(latents, tmp_path):
    torch.manual_seed(0)
    v_settings = settings()
    v_settings = Stage2Settings(model=v_settings.model, diffusion={**v_settings.diffusion, "prediction": "v"},
                                training=v_settings.training)
    train_stage2(latents, v_settings, tmp_path)
    model, schedule, _ = load_stage2(tmp_path / "final.pt")
    assert isinstance(model, EpsFromV) and isinstance(model.model, UNet) and model.config == model.model.config
    z, t = torch.randn(2, 4, 8, 8), torch.tensor([3, 90])
    with torch.no_grad():
        torch.testing.assert_close(model(z, t), schedule.eps_from_v(z, t, model.model(z, t)))
    with pytest.raises(ValueError, match=r"stage2\.diffusion\.prediction"):
        DiffusionSettings(prediction="x0")


def test_min_snr_gamma_weights_training_but_not_validation(latents, tmp_path):
    """The setting reaches the training loss (for v, every weight is below 1, so the first step's
    loss falls) and leaves the validation loss unweighted (the same model at step 0 scores the same)."""
    logs = {}
    for name, gamma in (("equal", None), ("min_snr", 5.0)):
        torch.manual_seed(0)
        base = settings(max_steps=1, validate_every_epochs=1)
        run_settings = Stage2Settings(model=base.model, training=base.training,
                                      diffusion={**base.diffusion, "prediction": "v", "min_snr_gamma": gamma})
        train_stage2(latents, run_settings, tmp_path / name)
        with open(tmp_path / name / "log.csv") as handle:
            logs[name] = list(csv.DictReader(handle))
    first = {name: next(float(r["train/loss"]) for r in rows if r["train/loss"]) for name, rows in logs.items()}
    assert first["min_snr"] < first["equal"]
    with pytest.raises(ValueError, match=r"stage2\.diffusion\.min_snr_gamma"):
        DiffusionSettings(min_snr_gamma=0)


def test_ema_follows_ldm_warmup_then_the_decay():
    task = Stage2Task.__new__(Stage2Task)  # only the decay rule is exercised
    task.diffusion = DiffusionSettings(ema_decay=0.9999)
    task.ema_updates = 0
    assert task.ema_decay() == pytest.approx(0.1)
    task.ema_updates = 10_000_000
    assert task.ema_decay() == 0.9999
    task.diffusion = DiffusionSettings(ema_decay=0.99, ema_warmup=False)
    task.ema_updates = 0
    assert task.ema_decay() == 0.99


def test_the_ema_update_is_the_lerp_of_every_weight():
    task = Stage2Task.__new__(Stage2Task)  # only the update is exercised
    task.diffusion = DiffusionSettings(ema_decay=0.9, ema_warmup=False)
    task.ema_updates = 0
    task.unet = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.GroupNorm(2, 4))
    task.ema = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.GroupNorm(2, 4)).requires_grad_(False)
    before = {k: v.clone() for k, v in task.ema.state_dict().items()}
    task.update_ema()
    for key, weight in task.unet.state_dict().items():
        expected = before[key] + 0.1 * (weight - before[key])
        assert torch.allclose(task.ema.state_dict()[key], expected, atol=1e-7), key
    assert task.ema_updates == 1


class Interrupted(RuntimeError):
    pass


def run(latents, out, interrupt_at=None):
    """train() as train_stage2 does, optionally dying at the start of optimiser step `interrupt_at`."""
    torch.manual_seed(123)  # a different global state per call must not matter: the loop seeds
    task, config = build_task(latents, settings(max_steps=11))
    if interrupt_at is not None:
        step_fn = task.train_step

        def train_step(batch, step, run):
            if step == interrupt_at:
                raise Interrupted(step)
            return step_fn(batch, step, run)

        task.train_step = train_step
    return train(task, LatentDataset(latents, "train"), LatentDataset(latents, "val"), config, out)


def test_resume_after_interrupt_equals_uninterrupted_run(latents, tmp_path):
    """11 steps over 6-step epochs, checkpoints every 3: dying at step 10 resumes from the
    mid-epoch checkpoint of step 9 and must end with the same weights, EMA and log."""
    reference = run(latents, tmp_path / "reference")
    with pytest.raises(Interrupted):
        run(latents, tmp_path / "resumed", interrupt_at=10)
    resumed = run(latents, tmp_path / "resumed")
    assert resumed["resumed_from"].endswith("step_000000009.pt") and resumed["steps_this_call"] == 2
    assert resumed["steps"] == reference["steps"] == 11 and resumed["last_val"] == reference["last_val"]
    a, b = ckpt.load(tmp_path / "resumed" / "final.pt"), ckpt.load(tmp_path / "reference" / "final.pt")
    for key, value in b["modules"]["unet"].items():
        assert torch.equal(a["modules"]["unet"][key], value), key
    for key, value in b["extra_state"]["ema"].items():
        assert torch.equal(a["extra_state"]["ema"][key], value), key
    assert a["extra_state"]["ema_updates"] == b["extra_state"]["ema_updates"] == 11

    def timeless(path):
        with open(path) as handle:
            return [{k: v for k, v in row.items() if k not in ("seconds", "samples_per_s", "gpu_peak_gib")} for row in csv.DictReader(handle)]

    assert timeless(tmp_path / "resumed" / "log.csv") == timeless(tmp_path / "reference" / "log.csv")


@pytest.mark.gpu
def test_stage2_trains_in_bf16_on_cuda_and_loads_there(latents, tmp_path):
    summary = train_stage2(latents, settings(precision="bf16", device="cuda"), tmp_path)
    assert np.isfinite(summary["last_val"]["val_loss"])
    unet, _, _ = load_stage2(tmp_path / "final.pt", "cuda")
    assert next(unet.parameters()).device.type == "cuda"
