"""The steps of rules/stage2.smk: train the latent diffusion UNet, and follow the PDE
deviation along its forward and reverse chains (Fig. 5, Table 5, every sampler)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from . import Stage1Model, Stage2Model, Threads, step, use_threads
from .common import finish_training


@step(gpu=True, batch_key="stage2.training.batch_size")
def run_train_stage2(latents: Annotated[str, "encode-latents' store"],
                     settings: Annotated[str, "JSON of config stage2.{model,diffusion,training}"],
                     out: Annotated[str, "the final weights file"],
                     record: Annotated[str, "train.json to write: steps, seconds, stop reason, validation trend"],
                     threads: Threads = None) -> None:
    """train the latent diffusion UNet on one variant's latents (resumes after a crash)"""
    import json

    from ..config import only_known
    from ..training.distributed import read_launch
    from ..training.runs import run_directory
    from ..training.stage2 import Stage2Settings, run_identity, train_stage2

    use_threads(threads)
    values = Stage2Settings(**only_known(json.loads(settings), Stage2Settings, "stage2"))
    run = run_directory(Path(out).parent, run_identity(latents, values, read_launch().world_size))
    summary = train_stage2(latents, values, run)
    finish_training(summary, run, out, record)


@step(gpu=True)
def run_diffusion_trajectory(stage1_model: Stage1Model, stage2_model: Stage2Model,
                             latents: Annotated[str, "encode-latents' store (the training latents)"],
                             dataset: Annotated[str, "the dataset store (its representation)"],
                             stage1_table5: Annotated[str, "evaluate-stage1's table5.csv"],
                             settings: Annotated[str, "JSON of config stage2.trajectory"],
                             deviation: Annotated[str, "the deviation along both chains (Fig. 5), CSV to write"],
                             table5: Annotated[str, "Table 5 completed with the samplers' rows, CSV to write"],
                             ddim: Annotated[str, "every sampler setting's deviation and speed, CSV to write"],
                             figure: Annotated[str, "Fig. 5, PNG to write"],
                             examples: Annotated[str, "a decoded reverse trajectory (Fig. 4), PNG to write"],
                             final_latents: Annotated[str, "every sampler's final latents, .npz to write"],
                             threads: Threads = None) -> None:
    """PDE deviation along the forward and reverse diffusion (Fig. 5, Table 5)"""
    import json

    from ..data.store import open_dataset, representation_of
    from ..devices import resolve_device
    from ..evaluation.stage1 import TABLE5_COLUMNS
    from ..evaluation.trajectory import DDIM_COLUMNS, DEVIATION_COLUMNS, TrajectorySettings, diffusion_trajectory
    from ..files import read_csv, sha256_of, write_csv, write_npz
    from ..plotting import save_figure
    from ..training.stage1 import load_autoencoder
    from ..training.stage2 import load_stage2, open_latents

    use_threads(threads)
    values = TrajectorySettings.from_dict(json.loads(settings))
    device = resolve_device()
    autoencoder = load_autoencoder(stage1_model, device)
    unet, schedule, scale = load_stage2(stage2_model, device)
    stage1_sha256 = sha256_of(stage1_model)
    result = diffusion_trajectory(autoencoder, unet, schedule, scale, open_latents(latents), stage1_sha256,
                                  read_csv(stage1_table5), representation_of(open_dataset(dataset)), values, device)
    write_csv(result.deviation, deviation, DEVIATION_COLUMNS)
    write_csv(result.table5, table5, TABLE5_COLUMNS)
    write_csv(result.ddim, ddim, DDIM_COLUMNS)
    save_figure(result.figure, figure)
    save_figure(result.strip_figure, examples)
    # beside the Stage-1 model's hash: sampler-fid decodes these latents with that model only
    write_npz(final_latents, stage1_sha256=stage1_sha256, **result.final_latents)
    final = next(row for row in result.table5 if row["latents"] == "diffusion_ddpm")
    print(f"wrote {table5}: DDPM samples' PDE deviation {final['deviation_mean']:.4f}")
