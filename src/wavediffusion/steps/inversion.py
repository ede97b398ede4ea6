"""The steps of rules/inversion.smk: InversionNet trained on real, generated and mixed pairs
(Tables 2-4, and the physics filter's table), once per seed, and the diffusion-refined
inversion (Tables 9 and 7)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from . import (Dataset, PairsStore, Seed, Stage1Model, Stage2Model, Threads, Variant, settings_from_json, step,
               use_threads)
from .common import finish_training

InversionJSON = Annotated[str, "JSON of config inversionnet"]
RunSeed = Annotated[int, "this run's seed, one of config inversionnet.seeds: the network's initial weights, its batch"
                         " order and the unfiltered filter arm's draw"]


def experiment_settings(text: str, seed: int):
    from ..evaluation.arms import ExperimentSettings

    return settings_from_json(ExperimentSettings, text, seed)


@step(gpu=True, batch_key="inversionnet.training.batch_size")
def run_train_inversionnet(arm: Annotated[str, "the arm's name (evaluation/arms.py)"], dataset: Dataset,
                           settings: InversionJSON,
                           record: Annotated[str, "JSON of what the arm trained on, to write"],
                           out: Annotated[str, "the weights file to write"], seed: Seed, run_seed: RunSeed,
                           store: Annotated[str | None, "the variant's pairs store (arms with generated pairs)"] = None,
                           hard: Annotated[str | None, "hardest-generated's .npz (fine-tuning on generated pairs)"] = None,
                           init_weights: Annotated[str | None, "weights to fine-tune (arm real's model of the same"
                                                                " seed)"] = None,
                           threads: Threads = None) -> None:
    """train InversionNet for one arm and seed (resumes after a crash)"""
    from ..evaluation.inversion_experiments import arm_identity, train_arm
    from ..files import write_json
    from ..training.distributed import read_launch
    from ..training.inversionnet import write_not_trained
    from ..training.runs import run_directory

    use_threads(threads)
    values = experiment_settings(settings, seed)
    launch = read_launch()
    identity = arm_identity(arm, values, dataset, store, hard, init_weights, launch.world_size, run_seed)
    run = run_directory(Path(out).parent, identity)
    summary, about = train_arm(arm, dataset, values, run, run_seed, store, hard, init_weights)
    if summary is not None:
        finish_training(summary, run, out, record, about)
    elif launch.rank == 0:  # a filter arm with too few pairs: both outputs say why, and evaluation reports it
        write_json(about, record)
        write_not_trained(out, about["reason"])
        print(f"did not train {arm} (seed {run_seed}): {about['reason']}")


@step(gpu=True, batch_key="inversionnet.eval_batch_size")
def run_hardest_generated(model: Annotated[str, "InversionNet weights (arm real, the first seed's)"], store: PairsStore,
                          seismic: Annotated[Literal["decoded", "simulated"],
                                             "the generated pairs' seismic: the decoder's, or simulated from their"
                                             " velocity"],
                          settings: InversionJSON,
                          out: Annotated[str, ".npz (train, test) to write"], seed: Seed,
                          threads: Threads = None) -> None:
    """the generated pairs a model predicts worst, split train/test (Table 4)"""
    from ..evaluation.inversion_experiments import hard_sets
    from ..files import write_npz

    use_threads(threads)
    sets, info = hard_sets(model, store, seismic, experiment_settings(settings, seed))
    write_npz(out, **sets)
    print(f"wrote {out}: {info['n_hard']} hardest of {info['n_store']} generated pairs "
          f"({info['n_train']} to fine-tune on, {info['n_test']} to test on)")


@step(gpu=True, batch_key="inversionnet.eval_batch_size")
def run_evaluate_inversionnet(model: Annotated[str, "train-inversionnet's weights of the arm"],
                              record: Annotated[str, "train-inversionnet's record of the arm"],
                              dataset: Dataset, settings: InversionJSON,
                              out: Annotated[str, "metrics CSV to write"], seed: Seed,
                              hard_test: Annotated[list[str] | None,
                                                   "NAME,STORE,NPZ: also the MAE on a hardest-generated test set"
                                                   " (repeatable)"] = None,
                              threads: Threads = None) -> None:
    """one run's MAE/RMSE/SSIM per family on the real test split"""
    import json

    import numpy as np

    from ..devices import resolve_device
    from ..evaluation.inversion_experiments import METRIC_COLUMNS, evaluate_arm, not_trained_rows
    from ..files import write_csv
    from ..pairs import GeneratedPairs
    from ..training.inversionnet import evaluate_inversionnet, load_inversionnet

    use_threads(threads)
    values = experiment_settings(settings, seed)
    about = json.loads(Path(record).read_text())
    if not about["trained"]:  # nothing to evaluate: a row that says why
        write_csv(not_trained_rows(about), out, METRIC_COLUMNS)
        print(f"wrote {out}: {about['arm']} (seed {about['seed']}) did not train: {about['reason']}")
        return
    # evaluate_inversionnet (training/inversionnet.py) opens the weights and the dataset store itself
    test_rows = evaluate_inversionnet(model, dataset, batch_size=values.eval_batch_size)
    hard_tests = {}
    for item in hard_test or []:
        name, hard_store, npz = item.split(",")
        with np.load(npz) as sets:
            hard_tests[name] = GeneratedPairs(hard_store, indices=sets["test"], seismic=name.rsplit("-", 1)[1])
    network = load_inversionnet(model, resolve_device()) if hard_tests else None
    rows = evaluate_arm(about, test_rows, values, network, hard_tests)
    write_csv(rows, out, METRIC_COLUMNS)
    print(f"wrote {out}: test MAE {next(r['mae'] for r in rows if r['family'] == 'all'):.4f}")


@step()
def run_inversionnet_tables(metrics: Annotated[list[str], "evaluate-inversionnet's metrics CSV of every arm and seed"],
                            models: Annotated[list[str], "weights of the arms shown in the figure, each"
                                                         " .../<arm>/seed<seed>/model.pt"],
                            dataset: Dataset,
                            table2: Annotated[str, "table2.csv to write: real vs generated training data"],
                            table3: Annotated[str, "table3.csv to write: generated pairs added to part of the real"],
                            table4: Annotated[str, "table4.csv to write: fine-tuning on the hardest generated pairs"],
                            table_filter: Annotated[str, "table_filter.csv to write: the physics filter's accepted"
                                                         " pairs vs as many unfiltered"],
                            per_seed: Annotated[str, "CSV to write: every run's metric rows, one per arm, seed and"
                                                     " family"],
                            figure: Annotated[str, "predictions PNG to write (Fig. 9)"],
                            threads: Threads = None) -> None:
    """the InversionNet tables (mean and std over seeds) from every run's metrics, and the predictions figure"""
    from ..data.store import open_dataset
    from ..devices import resolve_device
    from ..evaluation.inversion_experiments import (
        METRIC_COLUMNS,
        TABLE_COLUMNS,
        inversionnet_tables,
        mean_map_rows,
        plot_predictions,
    )
    from ..files import read_csv, write_csv
    from ..plotting import save_figure
    from ..training.inversionnet import load_inversionnet

    use_threads(threads)
    root = open_dataset(dataset)
    rows = [row for path in metrics for row in read_csv(path)]
    write_csv(rows, per_seed, METRIC_COLUMNS)
    tables = inversionnet_tables(rows, mean_map_rows(root))
    for name, path in {"table2": table2, "table3": table3, "table4": table4, "table_filter": table_filter}.items():
        write_csv(tables[name], path, TABLE_COLUMNS)
    device = resolve_device()
    # .../<arm>/seed<seed>/model.pt: each column named by its arm
    networks = {Path(path).parent.parent.name: load_inversionnet(path, device) for path in models}
    save_figure(plot_predictions(networks, root, device), figure)
    print(f"wrote {per_seed} ({len(rows)} rows), {({name: len(rows) for name, rows in tables.items()})} rows "
          f"and {figure}")


@step(gpu=True, batch_key="refine.batch_size or refine.candidate_batch")
def run_refine_inversion(variant: Variant, stage1_model: Stage1Model, stage2_model: Stage2Model,
                         inversionnet: Annotated[str, "InversionNet trained on all real pairs (arm real, the first"
                                                      " seed's)"],
                         dataset: Dataset, settings: Annotated[str, "JSON of config refine"],
                         table9: Annotated[str, "table9.csv to write: InversionNet, Stage 1 alone, refined"],
                         table7: Annotated[str, "table7.csv to write: the perturbation ablation"],
                         info: Annotated[str, "JSON with throughput and settings"],
                         figure: Annotated[str, "examples PNG to write"], seed: Seed, threads: Threads = None) -> None:
    """diffusion-refined inversion and its ablation (Tables 9 and 7)"""
    import json

    from ..data.store import open_dataset
    from ..devices import resolve_device
    from ..evaluation.refine import (
        TABLE_COLUMNS,
        RefineSettings,
        evaluate_refinement,
        plot_refinement,
        refined_indices,
        refinement_tables,
    )
    from ..files import sha256_of, write_csv, write_json
    from ..plotting import save_figure
    from ..training.inversionnet import evaluate_inversionnet
    from ..training.stage1 import load_autoencoder
    from ..training.stage2 import load_stage2

    use_threads(threads)
    values = json.loads(settings)
    per_family = values.pop("per_family", None)  # which samples, not how: not a RefineSettings field
    refine = RefineSettings.from_dict({**values, "seed": seed})
    device = resolve_device()
    autoencoder = load_autoencoder(stage1_model, device)
    unet, schedule, scale = load_stage2(stage2_model, device)
    root = open_dataset(dataset)
    rows, about, examples = evaluate_refinement(autoencoder, unet, schedule, scale, root, refine,
                                                per_family=per_family, device=device)
    # InversionNet on exactly the samples refined (evaluate_inversionnet opens the weights and the store itself)
    inversion = evaluate_inversionnet(inversionnet, dataset, indices=refined_indices(root, per_family))
    rows9, rows7 = refinement_tables(rows, inversion, variant)
    write_csv(rows9, table9, TABLE_COLUMNS)
    write_csv(rows7, table7, TABLE_COLUMNS)
    write_json({**about, "stage1_sha256": sha256_of(stage1_model), "stage2_sha256": sha256_of(stage2_model)}, info)
    save_figure(plot_refinement(examples), figure)
    all_rows = {row["method"]: row["mae"] for row in rows9 + rows7 if row["family"] == "all"}
    print(f"wrote {table9}, {table7}: MAE (all) {all_rows}")
