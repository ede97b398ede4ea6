"""The steps of rules/stage1.smk: train the VQ autoencoder, encode Stage 2's latents, and
measure the autoencoder (reconstruction, inversion, PDE deviation, Table 5's Stage-1 rows)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from . import Dataset, Stage1Model, Threads, step, use_threads
from .common import finish_training


@step(gpu=True, batch_key="stage1.training.batch_size")
def run_train_stage1(dataset: Dataset,
                     variant: Annotated[Literal["1vq", "2vq"], "one codebook for both modalities, or one each"],
                     settings: Annotated[str, "JSON of config stage1.{model,discriminator,losses,training}"],
                     out: Annotated[str, "the final weights file"],
                     record: Annotated[str, "train.json to write: steps, seconds, stop reason, validation trend"],
                     threads: Threads = None) -> None:
    """train the VQ autoencoder of one variant (resumes after a crash)"""
    import json

    from ..config import only_known
    from ..training.distributed import read_launch
    from ..training.runs import run_directory
    from ..training.stage1 import Stage1Settings, run_identity, train_stage1

    use_threads(threads)
    values = Stage1Settings(**only_known(json.loads(settings), Stage1Settings, "stage1"))
    run = run_directory(Path(out).parent, run_identity(dataset, variant, values, read_launch().world_size))
    summary = train_stage1(dataset, variant, values, run)
    finish_training(summary, run, out, record)


@step(gpu=True)
def run_encode_latents(model: Annotated[str, "a Stage-1 weights file: train-stage1's (the joint autoencoder) or "
                                          "train-separate-stage1's (one modality's)"], dataset: Dataset,
                       out: Annotated[str, "the latents store to write (latents.zarr)"],
                       batch_size: Annotated[int, "samples encoded at once"] = 64, threads: Threads = None) -> None:
    """encode the train/val splits with a trained autoencoder, joint or single-modality (Stage 2's data)"""
    from ..training.stage1 import encode_latents

    use_threads(threads)
    stats = encode_latents(model, dataset, out, batch_size=batch_size)
    print(f"wrote {out}: {stats['train']['n']} train latents, std {stats['train']['std']:.4f}")


@step(gpu=True)
def run_evaluate_stage1(model: Stage1Model, dataset: Dataset,
                        latents: Annotated[str, "encode-latents' store (the training latents)"],
                        settings: Annotated[str, "JSON of config stage1.evaluation"],
                        metrics: Annotated[str, "per-family metrics CSV to write"],
                        table5: Annotated[str, "deviation per kind of latent, CSV to write"],
                        figure: Annotated[str, "example pairs, PNG to write"],
                        threads: Threads = None) -> None:
    """reconstruction, inversion and PDE deviation of a trained autoencoder"""
    import json

    from ..config import only_known
    from ..data.store import open_dataset
    from ..devices import resolve_device
    from ..evaluation.stage1 import METRICS_COLUMNS, TABLE5_COLUMNS, Stage1Evaluation, evaluate_stage1
    from ..files import write_csv
    from ..plotting import save_figure
    from ..training.stage1 import load_autoencoder
    from ..training.stage2 import open_latents

    use_threads(threads)
    values = Stage1Evaluation(**only_known(json.loads(settings), Stage1Evaluation, "stage1.evaluation"))
    autoencoder = load_autoencoder(model, resolve_device())
    training_latents = open_latents(latents)["train"]["latent"]
    rows, table5_rows, examples = evaluate_stage1(autoencoder, open_dataset(dataset), training_latents, values)
    write_csv(rows, metrics, METRICS_COLUMNS)
    write_csv(table5_rows, table5, TABLE5_COLUMNS)
    save_figure(examples, figure)
    print(f"wrote {metrics}, {table5}, {figure}: test PDE deviation {rows[-1]['pde_deviation']:.4f}, "
          f"inversion MAE {rows[-1]['mae']:.4f}")
