"""Stage 2 at equal GPU time: which recipe makes physically consistent pairs within the
science scale's budget?

Trains each chosen recipe (`RECIPES`) on the same Stage-1 latents for the same wall-clock
seconds (TrainConfig.max_seconds), then draws samples from its EMA weights with three
samplers (DDIM-50 deterministic, DDIM-50 stochastic η = 1, DDPM-1000), decodes them and
measures each pair's PDE deviation with deepwave, and each latent's distance to its nearest
training latent. Two controls frame the numbers: held-out (val) latents decoded, what a
perfect generator would reach, and latents drawn from the Gaussian fitted to the training
latents, what the paper's Table 5 calls random latents.

    python benchmarks/stage2_convergence.py --config config/science.yaml \
        --latents results/stage1/1vq/latents.zarr --stage1-model results/stage1/1vq/model.pt \
        --seconds 390 --recipes paper,small --out DIR

Writes DIR/convergence.csv (one row per recipe and sampler, and the controls),
DIR/noise_levels.csv (per recipe and noise level t: the ε-prediction error on held-out
latents and the gain of the predicted ε along the true one), DIR/<recipe>_log.csv (the
training log), DIR/convergence.png (validation loss against seconds; deviation per recipe
and sampler beside the controls).

Why the gain: at the noisiest steps z_0 is read off as (z_t - sqrt(1 - ᾱ_t) ε̂) / sqrt(ᾱ_t),
with sqrt(ᾱ_t) ~ 0.03 at t = T-1, so an error of ε̂ there reaches ẑ_0 thirty-fold while it
costs little in the loss; a gain well below 1 there went with samples far larger than any
latent (docs/results.md, "Stage 2 at a short budget").
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import yaml
import zarr

from wavediffusion.data.store import open_dataset, representation_of
from wavediffusion.diffusion import run_sampler, synchronize, unet_autocast
from wavediffusion.evaluation.memorisation import nearest_distances
from wavediffusion.evaluation.stage1 import decode_and_check, gaussian_latents
from wavediffusion.files import atomic_directory, read_csv, write_csv
from wavediffusion.plotting import plt, save_figure
from wavediffusion.training.stage1 import load_autoencoder
from wavediffusion.training.stage2 import Stage2Settings, load_stage2, open_latents, train_stage2

# A UNet of a quarter of the paper's FLOPs (3.95 against 16.7 GFLOP per forward, 20.1M
# against 131.2M parameters): half the width, four levels, attention at 16 and 8 only.
SMALL_UNET = {"model_channels": 64, "channel_mult": [1, 2, 2, 4], "attention_resolutions": [16, 8], "num_heads": 4}

# name -> (latents: "continuous" = the encoder's output, "codes" = snapped to the codebook;
#          overrides of the config's stage2 section). "paper" is the config's own recipe (the
#          science config: v-prediction since 2026-12-07, lr 3e-4 decaying 0.98 per epoch
#          since 2026-12-07); -eps and -v name the target, -lr1e-4 the science recipe before;
#          -1head attends with one head per block (1.29x the paper's 8 heads compiled, 1.14x
#          eager, in the UNet's forward on an H100), so its quality can be set against them;
#          -minsnr weights the loss with Min-SNR-5 (stage2.diffusion.min_snr_gamma), a published
#          remedy for slow diffusion training.
RECIPES = {
    "paper": ("continuous", {}),
    "paper-eps": ("continuous", {"diffusion": {"prediction": "eps"}}),
    "paper-codes": ("codes", {}),
    "paper-constant-lr": ("continuous", {"training": {"lr_decay": 1.0}}),
    "paper-lr1e-4": ("continuous", {"training": {"lr": 1e-4, "lr_decay": 1.0}}),
    "paper-v": ("continuous", {"diffusion": {"prediction": "v"}}),
    "paper-1head": ("continuous", {"model": {"num_heads": 1}}),
    "paper-minsnr": ("continuous", {"diffusion": {"min_snr_gamma": 5.0}}),
    "small": ("continuous", {"model": SMALL_UNET, "training": {"lr": 2e-4}}),
}
# (sampler, steps, eta, share of --samples)
SAMPLERS = (("ddim", 50, 0.0, 1.0), ("ddim", 50, 1.0, 1.0), ("ddpm", 1000, 1.0, 0.5))
COLUMNS = ("recipe", "latents", "parameters", "train_steps", "train_seconds", "samples_per_s", "val_loss_ema",
           "sampler", "sampler_steps", "eta", "n", "deviation_mean", "deviation_std", "deviation_median",
           "nearest_train_median", "rms_scaled", "seconds_per_sample")
NOISE_COLUMNS = ("recipe", "t", "n", "eps_mse", "eps_gain")
NOISE_LEVELS = (0, 100, 200, 300, 400, 500, 600, 700, 800, 900, 950, 990, 999)


@torch.no_grad()
def snapped_store(latents: Path, stage1_model: Path, out: Path, device: torch.device) -> Path:
    """The latents snapped to the shared codebook (the 1vq recipe before 2026-12-07), with
    the statistics encode_latents writes."""
    model = load_autoencoder(stage1_model, device)
    source = open_latents(latents)
    stats = {}
    with atomic_directory(out) as tmp:
        store = zarr.open_group(str(tmp), mode="w")
        for split in ("train", "val"):
            z = torch.from_numpy(source[split]["latent"][:])
            codes = torch.cat([model.quantizer.lookup(model.quantizer.nearest(part.to(device))).cpu()
                               for part in z.split(512)]).numpy()
            group = store.create_group(split)
            group.create_array("latent", data=codes, chunks=(1, *codes.shape[1:]))
            group.create_array("family", data=np.asarray(source[split]["family"][:]), chunks=(len(codes),))
            channel = codes.astype(np.float64)
            stats[split] = {"n": len(codes), "channel_mean": channel.mean(axis=(0, 2, 3)).tolist(),
                            "channel_std": channel.std(axis=(0, 2, 3)).tolist(), "std": float(channel.std())}
        store.attrs.update({**dict(source.attrs), "stats": stats})
    return out


def settings_for(config: dict, overrides: dict, seconds: float, seed: int | None = None) -> Stage2Settings:
    """The config's Stage-2 settings with a recipe's overrides, trained for `seconds`;
    `seed`: the training seed (initial weights, batch order), else the config's."""
    section = config["stage2"]
    training = {**section.get("training", {}), **overrides.get("training", {}),
                "max_seconds": seconds, "max_steps": None, "checkpoint_every_steps": 10**9, "progress": False,
                **({"seed": seed} if seed is not None else {})}
    return Stage2Settings(model={**section.get("model", {}), **overrides.get("model", {})},
                          diffusion={**section.get("diffusion", {}), **overrides.get("diffusion", {})},
                          training=training)


def deviation_row(recipe: str, kind: str, sampler: str, steps, eta, latents: torch.Tensor, train, autoencoder, rep,
                  device, seconds_per_sample, scale: float, **extra) -> dict:
    checked = decode_and_check(autoencoder, latents, rep, "deepwave", 250, desc=f"{recipe} {sampler}", progress=False)
    deviation = checked["deviation"]
    nearest = nearest_distances(latents, train, device)
    return {"recipe": recipe, "latents": kind, "sampler": sampler, "sampler_steps": steps, "eta": eta,
            "n": len(deviation), "deviation_mean": float(deviation.mean()), "deviation_std": float(deviation.std()),
            "deviation_median": float(deviation.median()), "nearest_train_median": float(nearest.median()),
            "rms_scaled": float((latents * scale).pow(2).mean().sqrt()), "seconds_per_sample": seconds_per_sample,
            **extra}


@torch.no_grad()
def noise_level_rows(recipe: str, unet, schedule, scale: float, held_out: torch.Tensor, device) -> list[dict]:
    """The ε-prediction error and gain <ε̂, ε> / <ε, ε> of held-out latents at each t of NOISE_LEVELS."""
    z0 = held_out.to(device) * scale
    generator = torch.Generator(device).manual_seed(0)
    autocast = unet_autocast(device, "bf16")
    rows = []
    for t in NOISE_LEVELS:
        noise = torch.randn(z0.shape, generator=generator, device=device)
        timesteps = torch.full((len(z0),), t, dtype=torch.long, device=device)
        z_t = schedule.q_sample(z0, timesteps, noise)
        with autocast() if autocast else contextlib.nullcontext():
            eps = torch.cat([unet(part, timesteps[: len(part)]) for part in z_t.split(250)]).float()
        rows.append({"recipe": recipe, "t": t, "n": len(z0), "eps_mse": float((eps - noise).pow(2).mean()),
                     "eps_gain": float((eps * noise).sum() / noise.pow(2).sum())})
    return rows


def sample(unet, schedule, scale: float, sampler: str, steps: int, eta: float, n: int, shape, device,
           batch: int = 250) -> tuple[torch.Tensor, float]:
    """n generated latents (unscaled, CPU) and the seconds per sample it took."""
    generator = torch.Generator(device).manual_seed(0)
    parts = []
    synchronize(device)
    start = time.perf_counter()
    for first in range(0, n, batch):
        result = run_sampler(sampler, unet, schedule, (min(batch, n - first), *shape), num_steps=steps, eta=eta,
                             generator=generator, device=device, autocast=unet_autocast(device, "bf16"))
        parts.append(result.z0.float().cpu() / scale)
    synchronize(device)
    return torch.cat(parts), (time.perf_counter() - start) / n


def plot(rows: list[dict], logs: dict[str, list[dict]], path: Path) -> None:
    figure, (curves, bars) = plt.subplots(1, 2, figsize=(13, 4.5))
    for recipe, log in logs.items():
        points = [(float(r["seconds"]), float(r["val/val_loss_ema"])) for r in log if r.get("val/val_loss_ema")]
        if points:
            curves.plot(*zip(*points), marker="o", label=recipe)
    # each recipe's loss is on its own target (ε or v): the curves show flattening, not which is better
    curves.set(xlabel="training seconds (validation included)", ylabel="validation loss on its own target, EMA weights",
               yscale="log", title="Stage 2 validation loss")
    curves.legend()
    generated = [r for r in rows if r["recipe"] != "control"]
    labels = [f"{r['recipe']} {r['sampler']}-{r['sampler_steps']} η={float(r['eta']):g}" for r in generated]
    bars.bar(range(len(generated)), [float(r["deviation_mean"]) for r in generated],
             yerr=[float(r["deviation_std"]) for r in generated], color="tab:blue")
    for r, style in zip((r for r in rows if r["recipe"] == "control"), ("--", ":")):
        bars.axhline(float(r["deviation_mean"]), color="k", linestyle=style, label=r["sampler"])
    bars.set_xticks(range(len(generated)), labels, rotation=30, ha="right", fontsize=8)
    bars.set(ylabel="PDE deviation of decoded pairs", title="samples at the end of training")
    bars.legend()
    figure.tight_layout()
    save_figure(figure, path)


def replot(folder: Path) -> None:
    """Redraw folder/convergence.png from the CSVs a run left there."""
    rows = read_csv(folder / "convergence.csv")
    recipes = dict.fromkeys(r["recipe"] for r in rows if r["recipe"] != "control")
    plot(rows, {recipe: read_csv(folder / f"{recipe}_log.csv") for recipe in recipes}, folder / "convergence.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path)
    parser.add_argument("--latents", type=Path, help="encode_latents' store")
    parser.add_argument("--stage1-model", type=Path)
    parser.add_argument("--seconds", type=float, help="training seconds per recipe")
    parser.add_argument("--recipes", default="paper,small", help=f"comma-separated, of {sorted(RECIPES)}")
    parser.add_argument("--samples", type=int, default=250, help="samples per DDIM setting (DDPM: half)")
    parser.add_argument("--seed", type=int, help="training seed of every recipe (default: the config's); "
                                                 "the samplers start from the same noise whatever the seed")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--replot", action="store_true", help="only redraw OUT/convergence.png from OUT's CSVs")
    args = parser.parse_args()
    if args.replot:
        return replot(args.out)
    missing = [name for name in ("config", "latents", "stage1_model", "seconds") if getattr(args, name) is None]
    if missing:
        parser.error(f"training needs --{', --'.join(m.replace('_', '-') for m in missing)}")
    recipes = args.recipes.split(",")
    unknown = sorted(set(recipes) - set(RECIPES))
    if unknown:
        parser.error(f"unknown recipes {unknown}; choose from {sorted(RECIPES)}")
    config = yaml.safe_load(args.config.read_text())
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.out / "work"  # models and derived latents: not results
    autoencoder = load_autoencoder(args.stage1_model, device)
    latents_root = open_latents(args.latents)
    rep = representation_of(open_dataset(latents_root.attrs["dataset"]))
    n = args.samples

    rows = []
    with torch.no_grad():
        train = latents_root["train"]["latent"]
        held_out = torch.from_numpy(latents_root["val"]["latent"][: min(n, latents_root["val"]["latent"].shape[0])])
        gaussian = gaussian_latents(train, n, torch.Generator().manual_seed(0))
        for name, z in (("held-out latents", held_out), ("Gaussian latents", gaussian)):
            rows.append(deviation_row("control", "continuous", name, "", "", z, train, autoencoder, rep, device, "",
                                      1.0 / float(latents_root.attrs["stats"]["train"]["std"])))
            print(rows[-1], flush=True)

    logs, noise_rows = {}, []
    for recipe in recipes:
        kind, overrides = RECIPES[recipe]
        latents = args.latents if kind == "continuous" else snapped_store(args.latents, args.stage1_model,
                                                                            work / "latents-codes.zarr", device)
        run = work / recipe
        shutil.rmtree(run, ignore_errors=True)
        summary = train_stage2(latents, settings_for(config, overrides, args.seconds, args.seed), run)
        with open(run / "log.csv", newline="") as handle:
            logs[recipe] = list(csv.DictReader(handle))
        shutil.copy(run / "log.csv", args.out / f"{recipe}_log.csv")
        train_rows = [r for r in logs[recipe] if r.get("samples_per_s")]
        info = {"parameters": None, "train_steps": summary["steps"], "train_seconds": round(summary["seconds"], 1),
                "samples_per_s": round(float(np.median([float(r["samples_per_s"]) for r in train_rows])), 1),
                "val_loss_ema": summary["last_val"].get("val_loss_ema")}
        print(recipe, summary, flush=True)
        unet, schedule, scale = load_stage2(run / "final.pt", device)
        info["parameters"] = sum(p.numel() for p in unet.parameters())
        recipe_latents = open_latents(latents)  # the continuous store, or the snapped one
        reference = recipe_latents["train"]["latent"]
        shape = tuple(reference.shape[1:])
        with torch.no_grad():
            for sampler, steps, eta, share in SAMPLERS:
                z, seconds = sample(unet, schedule, scale, sampler, steps, eta, int(n * share), shape, device)
                rows.append(deviation_row(recipe, kind, sampler, steps, eta, z, reference, autoencoder, rep, device,
                                          round(seconds, 5), scale, **info))
                print(rows[-1], flush=True)
        held = torch.from_numpy(recipe_latents["val"]["latent"][: args.samples])
        noise_rows += noise_level_rows(recipe, unet, schedule, scale, held, device)
        write_csv(noise_rows, args.out / "noise_levels.csv", NOISE_COLUMNS)
        print(noise_rows[-len(NOISE_LEVELS):], flush=True)
        del unet
        torch.cuda.empty_cache() if device.type == "cuda" else None
        write_csv(rows, args.out / "convergence.csv", COLUMNS)  # after every recipe: a cut run keeps its rows
    plot(rows, logs, args.out / "convergence.png")


if __name__ == "__main__":
    main()
