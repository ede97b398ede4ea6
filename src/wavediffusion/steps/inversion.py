"""The steps of rules/inversion.smk: InversionNet trained on real, generated and mixed pairs
(Tables 2-4), and the diffusion-refined inversion (Tables 9 and 7)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from . import Seed, Threads, settings_from_json, step, use_threads
from .common import finish_training

InversionJSON = Annotated[str, "JSON of config inversionnet"]


def experiment_settings(text: str, seed: int):
    from ..evaluation.arms import ExperimentSettings

    return settings_from_json(ExperimentSettings, text, seed)


@step(gpu=True, batch_key="inversionnet.training.batch_size")
def run_train_inversionnet(arm: Annotated[str, "the arm's name (evaluation/arms.py)"], dataset: str,
                           settings: InversionJSON,
                           record: Annotated[str, "JSON of what the arm trained on, to write"],
                           out: Annotated[str, "the weights file to write"], seed: Seed,
                           store: Annotated[str | None, "the variant's pairs store (arms with generated pairs)"] = None,
                           hard: Annotated[str | None, "hardest-generated's .npz (fine-tuning on generated pairs)"] = None,
                           init_weights: Annotated[str | None, "weights to fine-tune (arm real's model)"] = None,
                           threads: Threads = None) -> None:
    """train InversionNet for one arm of Tables 2-4 (resumes after a crash)"""
    from ..evaluation.inversion_experiments import arm_identity, train_arm
    from ..training.distributed import read_launch
    from ..training.runs import run_directory

    use_threads(threads)
    values = experiment_settings(settings, seed)
    identity = arm_identity(arm, values, dataset, store, hard, init_weights, read_launch().world_size)
    run = run_directory(Path(out).parent, identity)
    summary, about = train_arm(arm, dataset, values, run, store, hard, init_weights)
    finish_training(summary, run, out, record, about)


@step(gpu=True, batch_key="inversionnet.eval_batch_size")
def run_hardest_generated(model: Annotated[str, "InversionNet weights (arm real)"], store: str,
                          seismic: Literal["decoded", "simulated"], settings: InversionJSON,
                          out: Annotated[str, ".npz (train, test) to write"], seed: Seed,
                          threads: Threads = None) -> None:
    """the generated pairs a model predicts worst, split train/test (Table 4)"""
    from ..evaluation.inversion_experiments import hard_sets

    use_threads(threads)
    info = hard_sets(model, store, seismic, experiment_settings(settings, seed), out)
    print(f"wrote {out}: {info['n_hard']} hardest of {info['n_store']} generated pairs "
          f"({info['n_train']} to fine-tune on, {info['n_test']} to test on)")


@step(gpu=True, batch_key="inversionnet.eval_batch_size")
def run_evaluate_inversionnet(model: str, record: Annotated[str, "train-inversionnet's record of the arm"],
                              dataset: str, settings: InversionJSON,
                              out: Annotated[str, "metrics CSV to write"], seed: Seed,
                              hard_test: Annotated[list[str] | None,
                                                   "NAME,STORE,NPZ: also the MAE on a hardest-generated test set"
                                                   " (repeatable)"] = None,
                              threads: Threads = None) -> None:
    """one arm's MAE/RMSE/SSIM per family on the real test split"""
    from ..evaluation.inversion_experiments import evaluate_arm

    use_threads(threads)
    hard_tests = {}
    for item in hard_test or []:
        name, hard_store, npz = item.split(",")
        hard_tests[name] = (hard_store, npz)
    rows = evaluate_arm(model, record, dataset, experiment_settings(settings, seed), out, hard_tests)
    print(f"wrote {out}: test MAE {[r['mae'] for r in rows if r['family'] == 'all'][0]:.4f}")


@step()
def run_inversionnet_tables(metrics: list[str],
                            models: Annotated[list[str], "weights of the arms shown in the figure"],
                            dataset: str,
                            table2: str, table3: str, table4: str, figure: str, threads: Threads = None) -> None:
    """Tables 2-4 from every arm's metrics, and the predictions figure"""
    from ..evaluation.inversion_experiments import plot_predictions, write_tables

    use_threads(threads)
    counts = write_tables(metrics, {"table2": table2, "table3": table3, "table4": table4}, dataset)
    plot_predictions({Path(path).parent.name: path for path in models}, dataset, figure)
    print(f"wrote {counts} rows and {figure}")


@step(gpu=True, batch_key="refine.batch_size or refine.candidate_batch")
def run_refine_inversion(variant: str, stage1_model: str, stage2_model: str,
                         inversionnet: Annotated[str, "InversionNet trained on all real pairs (arm real)"],
                         dataset: str, settings: Annotated[str, "JSON of config refine"],
                         table9: str, table7: str,
                         info: Annotated[str, "JSON with throughput and settings"],
                         figure: str, seed: Seed, threads: Threads = None) -> None:
    """diffusion-refined inversion and its ablation (Tables 9 and 7)"""
    import json

    from ..evaluation.refine import TABLE_COLUMNS, RefineSettings, plot_refinement, refinement_tables
    from ..files import write_csv, write_json

    use_threads(threads)
    values = json.loads(settings)
    per_family = values.pop("per_family", None)  # which samples, not how: not a RefineSettings field
    refine = RefineSettings.from_dict({**values, "seed": seed})
    rows9, rows7, about, examples = refinement_tables(stage1_model, stage2_model, inversionnet, dataset, refine,
                                                      variant, per_family)
    write_csv(rows9, table9, TABLE_COLUMNS)
    write_csv(rows7, table7, TABLE_COLUMNS)
    write_json(about, info)
    plot_refinement(examples, figure)
    all_rows = {row["method"]: row["mae"] for row in rows9 + rows7 if row["family"] == "all"}
    print(f"wrote {table9}, {table7}: MAE (all) {all_rows}")
