"""The steps of rules/fid.smk: the real data's Inception features, and the FID of the
diffusion samples, of the Stage-1 random latents (Table 1) and of every sampler."""

from __future__ import annotations

from typing import Annotated

from . import Seed, Threads, settings_from_json, step, use_threads

FidJSON = Annotated[str, "JSON of config fid"]
StageOneLatents = Annotated[str, "encode-latents' store (for the random-latent baseline)"]
Reference = Annotated[str, "fid-reference's .npz"]


def fid_settings(text: str, seed: int):
    from ..evaluation.fid_scores import FIDSettings

    return settings_from_json(FIDSettings, text, seed)


@step(gpu=True, batch_key="fid.batch_size")
def run_fid_reference(dataset: str, settings: FidJSON, out: Annotated[str, ".npz to write"], seed: Seed,
                      threads: Threads = None) -> None:
    """Inception features of the real data, both modalities"""
    from ..evaluation.fid_scores import reference_features

    use_threads(threads)
    info = reference_features(dataset, fid_settings(settings, seed), out)
    print(f"wrote {out}: {info['n']} real samples, Inception weights from {info['source']}")


@step(gpu=True, batch_key="fid.batch_size")
def run_fid_variant(variant: str, stage1_model: str, latents: StageOneLatents, reference: Reference,
                    settings: FidJSON,
                    store: Annotated[str, "the variant's pairs store"],
                    out: Annotated[str, "fid.csv to write"],
                    tsne_seismic: Annotated[str, "t-SNE figure of the seismic features, PNG to write"],
                    tsne_velocity: Annotated[str, "t-SNE figure of the velocity features, PNG to write"],
                    seed: Seed, threads: Threads = None) -> None:
    """FID of one variant's samples and its Stage-1 random latents (Table 1)"""
    from ..evaluation.fid_scores import variant_fid

    use_threads(threads)
    rows = variant_fid(variant, store, stage1_model, latents, reference, fid_settings(settings, seed), out,
                       {"seismic": tsne_seismic, "velocity": tsne_velocity})
    for row in rows:
        print(f"{row['variant']} {row['source']} {row['modality']}: FID {row['fid']:.2f}")


@step(gpu=True, batch_key="fid.batch_size")
def run_sampler_fid(variant: str, stage1_model: str, latents: StageOneLatents, reference: Reference,
                    settings: FidJSON,
                    final_latents: Annotated[str, "diffusion-trajectory's final_latents.npz"],
                    ddim: Annotated[str, "diffusion-trajectory's ddim.csv (deviation and speed)"],
                    out: Annotated[str, "samplers.csv to write"],
                    figure: Annotated[str, "samplers.png to write"],
                    seed: Seed, threads: Threads = None) -> None:
    """FID of each sampler setting of the trajectory run, beside its deviation"""
    from ..evaluation.sampler_fid import sampler_fid

    use_threads(threads)
    rows = sampler_fid(variant, final_latents, ddim, stage1_model, latents, reference, fid_settings(settings, seed),
                       out, figure)
    for row in rows:
        print(f"{row['variant']} {row['sampler']}-{row['steps']}: FID seismic {row['fid_seismic']:.2f}, "
              f"velocity {row['fid_velocity']:.2f} (n={row['n']})")
