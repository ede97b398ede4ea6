"""The steps of rules/ablation.smk: the paper's Table 8, joint vs separate diffusion -- a
seismic-only and a velocity-only autoencoder, each with its own latent diffusion model (whose
latents the rules encode and model with encode-latents and train-stage2), their samples, the
PDE deviation of pairs made of them by index, and the table beside the joint model's."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from . import Backend, Dataset, Seed, Stage2Model, Threads, settings_from_json, step, use_threads
from .common import finish_training
from .fid import fid_settings, read_reference

Modality = Annotated[Literal["seismic", "velocity"], "the one modality of the separate model"]
SeparateModel = Annotated[str, "train-separate-stage1's weights: one modality's VQ autoencoder"]
NumSamples = Annotated[int, "samples per modality (config ablation.table8.num_samples, resolved)"]
SeismicSamples = Annotated[str, "sample-separate's store of the seismic-only samples"]
VelocitySamples = Annotated[str, "sample-separate's store of the velocity-only samples"]


@step(gpu=True, batch_key="stage1.training.batch_size")
def run_train_separate_stage1(dataset: Dataset, modality: Modality,
                              settings: Annotated[str, "JSON of config stage1.{model,discriminator,losses,training}"],
                              out: Annotated[str, "the final weights file"],
                              record: Annotated[str, "train.json to write: steps, seconds, stop reason, validation "
                                                "trend"],
                              threads: Threads = None) -> None:
    """train one modality's own VQ autoencoder with the joint model's settings (resumes after a crash)"""
    import json

    from ..config import only_known
    from ..training.distributed import read_launch
    from ..training.runs import run_directory
    from ..training.single_modality import run_identity, train_single_modality
    from ..training.stage1 import Stage1Settings

    use_threads(threads)
    values = Stage1Settings(**only_known(json.loads(settings), Stage1Settings, "stage1"))
    run = run_directory(Path(out).parent, run_identity(dataset, modality, values, read_launch().world_size))
    summary = train_single_modality(dataset, modality, values, run)
    finish_training(summary, run, out, record, about={"modality": modality})


@step(gpu=True, batch_key="sampling.batch_size")
def run_sample_separate(stage1_model: SeparateModel, stage2_model: Stage2Model,
                        settings: Annotated[str, "JSON of config sampling's sampler keys (sampler, steps, eta, "
                                            "batch_size, precision, compile)"],
                        num_samples: NumSamples, seed: Seed,
                        out: Annotated[str, "the samples store to write (samples.zarr)"],
                        threads: Threads = None) -> None:
    """samples of one modality from its own latent diffusion model (seeded apart from the other's)"""
    from ..devices import resolve_device
    from ..evaluation.joint_vs_separate import sample_separate
    from ..sampling.shard import SamplingSettings

    use_threads(threads)
    info = sample_separate(stage1_model, stage2_model, out, num_samples, settings_from_json(SamplingSettings, settings,
                                                                                            seed), resolve_device())
    print(f"wrote {out}: {info['n']} {info['modality']}-only samples ({info['sampler']}-{info['steps']}, "
          f"seed {info['seed']})")


@step(gpu=True, batch_key="physics.batch_size")
def run_check_independent_pairs(seismic_samples: SeismicSamples, velocity_samples: VelocitySamples,
                                num_samples: NumSamples, dataset: Dataset,
                                variants: Annotated[list[str], "the joint variants whose pairs the figure shows"],
                                stores: Annotated[list[str], "their pairs stores, in the order of --variants"],
                                backend: Backend,
                                batch_size: Annotated[int, "pairs forward-modelled at once"],
                                out: Annotated[str, "CSV to write: each independent pair's PDE deviation"],
                                figure: Annotated[str, "PNG to write: joint pairs beside independent pairs"],
                                threads: Threads = None) -> None:
    """the wave-equation check of pairs made by index of the separate samples"""
    from ..data.pairs_store import open_pairs_store
    from ..data.store import open_dataset, representation_of
    from ..devices import resolve_device
    from ..evaluation.joint_vs_separate import independent_pair_deviation, joint_examples, open_samples, pairs_figure
    from ..files import write_csv
    from ..plotting import save_figure

    use_threads(threads)
    if len(variants) != len(stores):
        raise ValueError(f"{len(variants)} variants but {len(stores)} pairs stores")
    rep = representation_of(open_dataset(dataset))
    deviation, independent = independent_pair_deviation(
        open_samples(seismic_samples, "seismic"), open_samples(velocity_samples, "velocity"), num_samples, rep,
        backend, batch_size, resolve_device())
    write_csv([{"pair": i, "deviation": float(d)} for i, d in enumerate(deviation)], out, ("pair", "deviation"))
    joint = [example for variant, store in zip(variants, stores)
             for example in joint_examples(variant, open_pairs_store(store, "r"))]
    save_figure(pairs_figure([*joint, *independent], rep), figure)
    print(f"wrote {out}: {len(deviation)} independent pairs, PDE deviation mean {deviation.mean():.4f}")


@step(gpu=True, batch_key="fid.batch_size")
def run_table8(variants: Annotated[list[str], "the joint variants compared"],
               stores: Annotated[list[str], "their pairs stores, in the order of --variants"],
               seismic_samples: SeismicSamples, velocity_samples: VelocitySamples, num_samples: NumSamples,
               independent_pairs: Annotated[str, "check-independent-pairs' CSV"],
               floor: Annotated[str, "pde_floor.csv (the data's floor and the chance level)"],
               reference: Annotated[str, "fid-reference's .npz"],
               settings: Annotated[str, "JSON of config fid"], seed: Seed,
               out: Annotated[str, "table8.csv to write"], threads: Threads = None) -> None:
    """Table 8: FID and PDE deviation of joint against separate diffusion"""
    import numpy as np

    from ..data.pairs_store import open_pairs_store
    from ..devices import resolve_device
    from ..evaluation.joint_vs_separate import open_samples, table8_rows
    from ..evaluation.table8 import COLUMNS
    from ..files import read_csv, write_csv

    use_threads(threads)
    if len(variants) != len(stores):
        raise ValueError(f"{len(variants)} variants but {len(stores)} pairs stores")
    values = fid_settings(settings, seed)
    device = resolve_device()
    independent = np.array([float(row["deviation"]) for row in read_csv(independent_pairs)])
    rows = table8_rows({variant: open_pairs_store(store, "r") for variant, store in zip(variants, stores)},
                       open_samples(seismic_samples, "seismic"), open_samples(velocity_samples, "velocity"),
                       num_samples, independent, read_csv(floor), read_reference(reference, values, device), values,
                       device)
    write_csv(rows, out, COLUMNS)
    for row in rows:
        print(f"{row['variant']} {row['quantity']} {row['modality']}: joint {row['joint']:.4g}, "
              f"separate {row['separate']:.4g} (n={row['n']})")
