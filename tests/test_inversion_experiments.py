"""The InversionNet experiment arms (Tables 2-4 and the physics filter's table): names, what
each trains on, the identical real subsets across arms, one run per seed, Table 4's hardest
pairs, the filter arms' equal draws, the evaluation rows and the tables' mean, std and
separation over seeds."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict

import numpy as np
import pytest
import torch
import zarr

from wavediffusion.data.pairs_store import accepted_rows, checked_rows, clear_done, open_pairs_store
from wavediffusion.evaluation.arms import Arm, ExperimentSettings, arm_names, parse_arm
from wavediffusion.evaluation.inversion_experiments import (
    METRIC_COLUMNS,
    NOT_SEPARATED,
    NOT_TRAINED,
    ONE_SEED,
    REFERENCE,
    SEPARATED,
    TABLE_COLUMNS,
    arm_identity,
    evaluate_arm,
    hard_sets,
    inversionnet_tables,
    mean_map_rows,
    network_settings,
    train_arm,
    training_data,
)
from wavediffusion.files import read_csv, write_csv, write_json
from wavediffusion.sampling.physics_filter import apply_physics_filter
from wavediffusion.steps.inversion import (
    run_evaluate_inversionnet,
    run_hardest_generated,
    run_inversionnet_tables,
    run_train_inversionnet,
)
from wavediffusion.pairs import GeneratedPairs
from wavediffusion.training.inversionnet import (
    RealPairs,
    drawn_pairs,
    evaluate_inversionnet,
    load_inversionnet,
    read_weights,
)

from test_inversionnet import TINY_MODEL, make_pairs, pairs, store  # noqa: F401  (module fixtures)

SETTINGS = ExperimentSettings(
    model=TINY_MODEL,
    training={"max_steps": 2, "batch_size": 4, "precision": "fp32", "device": "cpu", "progress": False,
              "tensorboard": False, "checkpoint_every_steps": 2},
    finetune_training={"max_steps": 1, "batch_size": 2},
    real_percents=(50, 25), hard_fraction=0.4, hard_train_fraction=0.5, eval_batch_size=4)
SETTINGS_JSON = json.dumps(asdict(SETTINGS))  # as a rule passes it to the steps


def test_arm_names_parse_back_to_what_they_train_on():
    names = arm_names(["1vq", "2vq"], SETTINGS)
    assert names["table2"] == ["real", "gen-1vq-decoded", "gen-1vq-simulated", "gen-2vq-decoded", "gen-2vq-simulated"]
    assert names["table3"][:2] == ["real-50pct", "real-25pct"]
    assert "gen-2vq-simulated+real-25pct" in names["table3"] and len(names["table3"]) == 2 + 4 * 2
    assert names["table4"] == ["finetune-real", "finetune-1vq-decoded", "finetune-1vq-simulated",
                               "finetune-2vq-decoded", "finetune-2vq-simulated"]
    assert names["table_filter"][:2] == ["gen-1vq-decoded-accepted", "gen-1vq-decoded-unfiltered"]
    assert len(names["table_filter"]) == 2 * 4
    assert parse_arm("gen-2vq-simulated-unfiltered") == Arm("gen-2vq-simulated-unfiltered", None, "2vq", "simulated",
                                                            draw="unfiltered")
    assert parse_arm("gen-1vq-decoded-accepted").table == "table_filter"
    assert parse_arm("real") == Arm("real", 100.0)
    assert parse_arm("gen-1vq-simulated+real-1pct") == Arm("gen-1vq-simulated+real-1pct", 1.0, "1vq", "simulated")
    assert parse_arm("finetune-2vq-decoded") == Arm("finetune-2vq-decoded", 100.0, "2vq", "decoded", True)
    assert parse_arm("finetune-real").table == "table4" and parse_arm("real-10pct").table == "table3"
    for name in sum(names.values(), []):
        assert parse_arm(name).name == name
    for bad in ("gen-1vq-painted", "real+real", "real-xpct", "sim-1vq", "gen-1vq-decoded+gen-2vq-decoded",
                "gen-1vq-decoded-accepted+real", "gen-1vq-accepted"):
        with pytest.raises(ValueError, match="arm"):
            parse_arm(bad)
    with pytest.raises(ValueError, match=r"inversionnet\.seismic"):
        ExperimentSettings(seismic=("painted",))


@pytest.mark.parametrize("values, words", [
    ({"seeds": ()}, r"inversionnet\.seeds must be a non-empty list"),
    ({"seeds": (0, 0)}, r"inversionnet\.seeds must be a non-empty list of distinct"),
    ({"seeds": (0, -1)}, r"inversionnet\.seeds .* >= 0"),
    ({"training": {"seed": 3}}, r"inversionnet\.training\.seed: InversionNet's seeds are inversionnet\.seeds"),
    ({"finetune_training": {"seed": 3}}, r"inversionnet\.finetune_training\.seed"),
])
def test_bad_seeds_are_refused_naming_the_key(values, words):
    with pytest.raises(ValueError, match=words):
        ExperimentSettings.from_dict(values)


def test_the_real_arm_and_the_fine_tuning_arms_take_their_own_overrides():
    settings = ExperimentSettings(training={"max_steps": 5, "lr": 1e-3}, finetune_training={"max_steps": 1},
                                  real_training={"max_seconds": 60.0})
    budgets = {name: network_settings(settings, parse_arm(name), 7).training
               for name in ("real", "real-10pct", "finetune-real", "gen-1vq-decoded")}
    assert budgets["real"] == {"max_steps": 5, "lr": 1e-3, "max_seconds": 60.0, "seed": 7}
    assert budgets["finetune-real"] == {"max_steps": 1, "lr": 1e-3, "seed": 7}
    assert budgets["real-10pct"] == budgets["gen-1vq-decoded"] == {"max_steps": 5, "lr": 1e-3, "seed": 7}


def test_the_mean_map_predictor_is_the_training_mean_against_the_test_maps(store):  # noqa: F811
    root = zarr.open_group(str(store), mode="r")
    mean_map = torch.from_numpy(root["train"]["velocity"][:]).double().mean(dim=0)
    test = torch.from_numpy(root["test"]["velocity"][:]).double()
    rows = {row["family"]: row for row in mean_map_rows(root)}
    assert rows["all"]["n"] == len(test)
    assert rows["all"]["mae"] == pytest.approx(float((test - mean_map).abs().mean()), rel=1e-5)
    assert sum(rows[f]["n"] for f in rows if f != "all") == len(test)


def test_real_subsets_are_the_same_pairs_in_every_arm(store, pairs):  # noqa: F811
    alone, _ = training_data(parse_arm("real-50pct"), store, SETTINGS)
    mixed, _ = training_data(parse_arm("gen-1vq-decoded+real-50pct"), store, SETTINGS, store=pairs[0])
    generated, real = mixed.datasets
    assert isinstance(real, RealPairs) and isinstance(generated, GeneratedPairs)
    np.testing.assert_array_equal(real.indices, alone.indices)
    quarter, _ = training_data(parse_arm("real-25pct"), store, SETTINGS)
    assert set(quarter.indices) < set(alone.indices)  # the smaller subset lies inside the larger
    # generated arms take as many pairs as the real training set has, at most the store's
    n_real = len(RealPairs(store, "train"))
    assert len(training_data(parse_arm("gen-1vq-simulated"), store, SETTINGS, store=pairs[0])[0]) == min(n_real, 10)
    # the real subsets come from the global seed, never from a run's: the same pairs for every seed
    for run_seed in (0, 5):
        again, _ = training_data(parse_arm("real-50pct"), store, SETTINGS, run_seed=run_seed)
        np.testing.assert_array_equal(again.indices, alone.indices)


def test_each_seed_is_its_own_run_and_is_recorded(store, tmp_path):  # noqa: F811
    """The run's seed sets the network's initial weights and batch order (the loop's seed),
    names its own run folder, and is recorded in train.json and in every metric row."""
    weights, records = {}, {}
    for run_seed in (0, 1):
        summary, records[run_seed] = train_arm("real-50pct", store, SETTINGS, tmp_path / f"seed{run_seed}", run_seed)
        weights[run_seed] = read_weights(summary["final"])[1]
        assert records[run_seed]["seed"] == run_seed and records[run_seed]["trained"]
    differing = [k for k in weights[0] if not torch.equal(weights[0][k], weights[1][k])]
    assert differing  # other initial weights and batches: another network
    # the same seed trains the same network again
    summary, _ = train_arm("real-50pct", store, SETTINGS, tmp_path / "seed0-again", 0)
    assert all(torch.equal(weights[0][k], v) for k, v in read_weights(summary["final"])[1].items())
    identities = [arm_identity("real-50pct", SETTINGS, store, None, None, None, 1, run_seed) for run_seed in (0, 1)]
    assert identities[0] != identities[1] and identities[1]["run_seed"] == 1
    assert identities[1]["seed"] == SETTINGS.seed  # the global seed (real subsets, hard split) stays
    test_rows = [{"family": "all", "n": 6, "mae": 0.1, "rmse": 0.2, "ssim": 0.5}]
    assert [row["seed"] for row in evaluate_arm(records[1], test_rows, SETTINGS)] == [1]


def run_rows(arm: str, table: str, maes: dict[int, float], family: str = "all") -> list[dict]:
    """Hand-made metric rows of one arm, a run per seed: {seed: mae}."""
    return [{"arm": arm, "table": table, "train_data": arm, "variant": "", "seismic": "", "real_percent": 100.0,
             "n_train": 16, "seed": seed, "family": family, "n": 6, "mae": mae, "rmse": 2 * mae, "ssim": 1 - mae,
             "note": ""} for seed, mae in maes.items()]


def test_the_tables_give_mean_and_std_over_seeds_and_say_what_is_separated(tmp_path):
    real = run_rows("real", "table2", {0: 0.10, 1: 0.11, 2: 0.12})  # 0.11 ± 0.01
    worse = run_rows("gen-1vq-decoded", "table2", {0: 0.20, 1: 0.22, 2: 0.24})  # 0.22 ± 0.02: apart
    close = run_rows("gen-1vq-simulated", "table2", {0: 0.125, 1: 0.135, 2: 0.115})  # 0.125 ± 0.01: overlaps
    lone = run_rows("real-50pct", "table3", {2: 0.5})
    touching = run_rows("finetune-real", "table4", {0: 0.12, 1: 0.14})  # 0.13 ± 0.014: below real's 0.12 + 0.01
    untrained = [{**row, "n": "", "mae": "", "rmse": "", "ssim": "", "note": "too few pairs"}
                 for row in run_rows("gen-1vq-decoded-accepted", "table_filter", {0: 0.0, 1: 0.0})]
    mean_map = [{"arm": "mean-map", "train_data": "mean map", "variant": "", "seismic": "", "real_percent": 100.0,
                 "n_train": 16, "seed": "", "family": "all", "n": 6, "mae": 0.4, "rmse": 0.5, "ssim": 0.1, "note": ""}]
    rows = real + worse + close + lone + touching + untrained
    # through the CSV files, as the step reads them: every value a string
    write_csv(rows, tmp_path / "runs.csv", METRIC_COLUMNS)
    tables = inversionnet_tables(read_csv(tmp_path / "runs.csv"), mean_map)
    assert set(tables) == {"table2", "table3", "table4", "table_filter"}
    for table in tables.values():
        assert [row["arm"] for row in table[:2]] == ["mean-map", "real"]
        assert [row["mae_vs_real"] for row in table[:2]] == [REFERENCE, REFERENCE]
        assert all(set(row) == set(TABLE_COLUMNS) for row in table)
    reference, real_row, *arms = tables["table2"]
    assert reference["mae_mean"] == 0.4 and reference["mae_std"] == "" and reference["n_seeds"] == ""
    assert real_row["n_seeds"] == 3 and real_row["seeds"] == "0 1 2"
    assert real_row["mae_mean"] == pytest.approx(0.11) and real_row["mae_std"] == pytest.approx(0.01)
    assert real_row["rmse_mean"] == pytest.approx(0.22) and real_row["ssim_std"] == pytest.approx(0.01)
    by_arm = {row["arm"]: row for table in tables.values() for row in table[2:]}
    assert by_arm["gen-1vq-decoded"]["mae_std"] == pytest.approx(np.std([0.20, 0.22, 0.24], ddof=1))
    assert by_arm["gen-1vq-decoded"]["mae_vs_real"] == SEPARATED
    assert by_arm["gen-1vq-simulated"]["mae_vs_real"] == NOT_SEPARATED
    assert by_arm["finetune-real"]["mae_vs_real"] == NOT_SEPARATED  # two seeds: a std, and the intervals overlap
    lone_row = by_arm["real-50pct"]
    assert lone_row["mae_vs_real"] == ONE_SEED and lone_row["n_seeds"] == 1 and lone_row["seeds"] == "2"
    assert lone_row["mae_mean"] == 0.5 and lone_row["mae_std"] == ""  # no std of one value
    failed = by_arm["gen-1vq-decoded-accepted"]
    assert failed["mae_vs_real"] == NOT_TRAINED and failed["n_seeds"] == 0
    assert failed["mae_mean"] == failed["mae_std"] == "" and failed["note"] == "seed 0, 1 not trained: too few pairs"
    assert [row["arm"] for row in tables["table_filter"]] == ["mean-map", "real", "gen-1vq-decoded-accepted"]
    # `real` with one seed cannot separate anything either
    single = inversionnet_tables(run_rows("real", "table2", {0: 0.1}) + worse, mean_map)
    assert single["table2"][2]["mae_vs_real"] == ONE_SEED


def filtered_pairs(path, threshold_quantile: float | None, unchecked_shard: int | None = None):
    """A pairs store of 24 pairs (shards of 4) through the physics filter: accepting the pairs
    below that quantile of the deviations (None: none at all), after `unchecked_shard`'s check
    was undone (its deviations NaN, its marker gone, as before its check job ran)."""
    make_pairs(path, n=24, shard_size=4, seed=3)
    root = open_pairs_store(path)
    if unchecked_shard is not None:
        deviation = root["deviation"][:]
        deviation[unchecked_shard * 4:(unchecked_shard + 1) * 4] = np.nan
        root["deviation"][:] = deviation
        clear_done(path, "check", unchecked_shard)
    deviation = root["deviation"][:]
    threshold = np.nanquantile(deviation, threshold_quantile) if threshold_quantile else np.nanmin(deviation) / 2
    apply_physics_filter(root, threshold)
    return path


def test_the_filter_arms_draw_as_many_pairs_with_and_without_the_filter(store, tmp_path):  # noqa: F811
    path = filtered_pairs(tmp_path / "pairs.zarr", 0.4, unchecked_shard=2)
    root = open_pairs_store(path, mode="r")
    accepted, checked = set(accepted_rows(root, path)), set(checked_rows(root, path))
    assert len(checked) == 20 and not checked & set(range(8, 12))  # the unchecked shard is no candidate
    unwritten = open_pairs_store(path)
    unwritten["seed"][23] = -1  # a row without a recorded sampling seed was never sampled: no candidate either
    assert set(checked_rows(unwritten, path)) == checked - {23}
    unwritten["seed"][23] = 3
    assert accepted < checked and len(accepted) == 8  # 40 % of the 20 checked pairs
    draws = {}
    for arm in ("gen-1vq-decoded-accepted", "gen-1vq-decoded-unfiltered"):
        for run_seed in (0, 1):
            data, drawn = training_data(parse_arm(arm), store, SETTINGS, store=path, run_seed=run_seed)
            assert isinstance(data, GeneratedPairs) and data.seismic == "decoded"
            assert drawn == {"n_accepted": 8, "n_checked": 20, "draw_seed": run_seed}
            draws[arm, run_seed] = data.indices
    # equal counts: min(the 16 real training pairs, the 8 accepted) for both
    assert {len(indices) for indices in draws.values()} == {8}
    assert set(draws["gen-1vq-decoded-accepted", 0]) == accepted == set(draws["gen-1vq-decoded-accepted", 1])
    unfiltered = draws["gen-1vq-decoded-unfiltered", 0]
    assert set(unfiltered) <= checked and set(unfiltered) - accepted  # rejected pairs too
    assert list(unfiltered) != sorted(checked)[:8]  # drawn from all the checked rows, not the first
    # reproducible from its seed, another seed another draw
    np.testing.assert_array_equal(unfiltered, drawn_pairs(sorted(checked), 8, 0))
    np.testing.assert_array_equal(
        unfiltered, training_data(parse_arm("gen-1vq-decoded-unfiltered"), store, SETTINGS, store=path, run_seed=0)[0]
        .indices)
    assert list(draws["gen-1vq-decoded-unfiltered", 1]) != list(unfiltered)
    # generated_size caps both, and the accepted arm then draws among the accepted pairs
    capped = ExperimentSettings(**{**SETTINGS.__dict__, "generated_size": 3})
    for arm in ("gen-1vq-simulated-accepted", "gen-1vq-simulated-unfiltered"):
        data, _ = training_data(parse_arm(arm), store, capped, store=path, run_seed=0)
        assert len(data) == 3 and data.seismic == "simulated"
    assert set(training_data(parse_arm("gen-1vq-simulated-accepted"), store, capped, store=path,
                             run_seed=0)[0].indices) < accepted
    with pytest.raises(ValueError, match="run's seed"):
        training_data(parse_arm("gen-1vq-decoded-unfiltered"), store, SETTINGS, store=path)
    summary, record = train_arm("gen-1vq-decoded-unfiltered", store, SETTINGS, tmp_path / "run", 0, store=path)
    assert record["trained"] and record["n_train"] == 8 and record["n_accepted"] == 8 and record["draw_seed"] == 0
    assert record["table"] == "table_filter" and summary["steps"] == SETTINGS.training["max_steps"]
    assert record["note"] == ""
    # a filter that rejected nothing (the demo's accepted all 32): both arms the same pairs, and the rows say so
    everything = filtered_pairs(tmp_path / "all.zarr", 1.0)
    _, record = train_arm("gen-1vq-decoded-accepted", store, SETTINGS, tmp_path / "all", 0, store=everything)
    assert record["note"] == "the physics filter accepted all 24 pairs it judged: no pair to filter"
    rows = evaluate_arm(record, [{"family": "all", "n": 6, "mae": 0.1, "rmse": 0.2, "ssim": 0.5}], SETTINGS)
    assert inversionnet_tables(rows, [])["table_filter"][0]["note"] == record["note"]


def test_a_filter_arm_with_fewer_accepted_pairs_than_a_batch_says_so_and_the_dag_goes_on(store, tmp_path):  # noqa: F811
    """Earlier runs accepted 0 of 6 000 pairs: the filter arms' jobs then record why they could
    not train, their evaluation says so in a row without numbers, and so does the table."""
    path = filtered_pairs(tmp_path / "pairs.zarr", None)  # a threshold below every deviation
    assert len(accepted_rows(open_pairs_store(path, mode="r"), path)) == 0
    settings_json = json.dumps(asdict(SETTINGS))
    metrics = []
    for arm in ("gen-1vq-decoded-accepted", "gen-1vq-decoded-unfiltered"):
        run = tmp_path / arm / "seed1"
        summary, record = train_arm(arm, store, SETTINGS, run / "runs", 1, store=path)
        assert summary is None and not record["trained"] and record["n_train"] == 0  # equal counts: none either
        assert record["reason"] == ("the physics filter accepted 0 of 24 pairs: 0 training pairs, fewer than one "
                                    "batch (inversionnet.training.batch_size = 4)")
        # the steps, as the rules run them: both outputs written, no weights in model.pt
        run_train_inversionnet(arm, str(store), settings_json, str(run / "train.json"), str(run / "model.pt"),
                               seed=SETTINGS.seed, run_seed=1, store=str(path))
        written = json.loads((run / "train.json").read_text())
        assert written["trained"] is False and written["seed"] == 1 and written["reason"] == record["reason"]
        with pytest.raises(ValueError, match="its run did not train: the physics filter accepted 0 of 24"):
            load_inversionnet(run / "model.pt")
        run_evaluate_inversionnet(str(run / "model.pt"), str(run / "train.json"), str(store), settings_json,
                                  str(run / "metrics.csv"), seed=SETTINGS.seed)
        (row,) = read_csv(run / "metrics.csv")
        assert row["family"] == "all" and row["seed"] == "1" and row["note"] == record["reason"]
        assert row["mae"] == row["rmse"] == row["ssim"] == row["n"] == ""  # no made-up numbers
        metrics.append(str(run / "metrics.csv"))
    outputs = {name: str(tmp_path / f"{name}.csv") for name in ("table2", "table3", "table4", "table_filter")}
    real, real_record = train_arm("real", store, SETTINGS, tmp_path / "real", 0)
    write_json(real_record, tmp_path / "real.json")
    run_evaluate_inversionnet(real["final"], str(tmp_path / "real.json"), str(store), settings_json,
                              str(tmp_path / "real.csv"), seed=SETTINGS.seed)
    run_inversionnet_tables([str(tmp_path / "real.csv"), *metrics], [real["final"]], str(store), **outputs,
                            per_seed=str(tmp_path / "per_seed.csv"), figure=str(tmp_path / "predictions.png"))
    table = [row for row in read_csv(outputs["table_filter"]) if row["family"] == "all"]
    assert [row["arm"] for row in table] == ["mean-map", "real", "gen-1vq-decoded-accepted",
                                             "gen-1vq-decoded-unfiltered"]
    for row in table[2:]:
        assert row["mae_vs_real"] == NOT_TRAINED and row["n_seeds"] == "0" and row["mae_mean"] == ""
        assert row["note"] == f"seed 1 not trained: {record['reason']}"
    assert len(read_csv(tmp_path / "per_seed.csv")) == len(read_csv(tmp_path / "real.csv")) + 2


def test_table4_fine_tunes_real_on_its_hardest_pairs_and_measures_them(store, pairs, tmp_path):  # noqa: F811
    summary, record = train_arm("real", store, SETTINGS, tmp_path / "real", 0)
    real = tmp_path / "real.pt"
    real.write_bytes(open(summary["final"], "rb").read())
    sets, info = hard_sets(real, pairs[0], "decoded", SETTINGS, device="cpu")
    assert info == {"n_store": 10, "n_hard": 4, "n_train": 2, "n_test": 2}
    assert not set(sets["train"]) & set(sets["test"])
    run_hardest_generated(str(real), str(pairs[0]), "decoded", SETTINGS_JSON, str(tmp_path / "hard.npz"),
                          seed=SETTINGS.seed)
    with np.load(tmp_path / "hard.npz") as written:
        assert sorted(written.files) == ["test", "train"] and len(written["train"]) == len(written["test"]) == 2
        assert not set(written["train"]) & set(written["test"])
        hard_test = written["test"]
    with pytest.raises(ValueError, match="needs the weights of arm 'real'"):
        train_arm("finetune-1vq-decoded", store, SETTINGS, tmp_path / "ft", 0, store=pairs[0],
                  hard=tmp_path / "hard.npz")
    summary, record = train_arm("finetune-1vq-decoded", store, SETTINGS, tmp_path / "ft", 0, store=pairs[0],
                                hard=tmp_path / "hard.npz", init_weights=real)
    # the paper's protocol: the real training pairs plus the hardest generated ones
    data, _ = training_data(parse_arm("finetune-1vq-decoded"), store, SETTINGS, pairs[0], tmp_path / "hard.npz")
    generated, real = data.datasets
    assert isinstance(generated, GeneratedPairs) and len(generated) == 2
    assert isinstance(real, RealPairs) and len(real) == len(RealPairs(store, "train"))
    assert record["n_train"] == 2 + len(real) and record["table"] == "table4" and summary["steps"] == 1
    test_rows = evaluate_inversionnet(summary["final"], store, batch_size=SETTINGS.eval_batch_size, device="cpu",
                                      progress=False)
    rows = evaluate_arm(record, test_rows, SETTINGS, load_inversionnet(summary["final"]),
                        {"1vq-decoded": GeneratedPairs(pairs[0], indices=hard_test)}, device="cpu")
    assert [r["family"] for r in rows] == ["FlatVel-A", "CurveFault-A", "all", "hard-test 1vq-decoded"]
    assert rows[-1]["n"] == 2 and rows[-1]["mae"] > 0 and {r["seed"] for r in rows} == {0}
    tables = inversionnet_tables(rows, mean_map_rows(zarr.open_group(str(store), mode="r")))
    # the mean-map predictor's reference rows first (per family and all), then the arm's four
    assert [r["arm"] for r in tables["table4"]] == ["mean-map"] * 3 + ["finetune-1vq-decoded"] * 4
    assert {r["mae_vs_real"] for r in tables["table4"][3:]} == {"no real run"}  # `real` did not run here
    assert [r["arm"] for r in tables["table2"]] == ["mean-map"] * 3  # no Table-2 arm ran here

    # the steps write the same through files: the arm's metrics.csv, then the tables and the figure
    write_json(record, tmp_path / "ft.json")
    run_evaluate_inversionnet(summary["final"], str(tmp_path / "ft.json"), str(store), SETTINGS_JSON,
                              str(tmp_path / "metrics.csv"), seed=SETTINGS.seed,
                              hard_test=[f"1vq-decoded,{pairs[0]},{tmp_path / 'hard.npz'}"])
    outputs = {t: str(tmp_path / f"{t}.csv") for t in ("table2", "table3", "table4", "table_filter")}
    run_inversionnet_tables([str(tmp_path / "metrics.csv")], [summary["final"]], str(store), **outputs,
                            per_seed=str(tmp_path / "per_seed.csv"), figure=str(tmp_path / "predictions.png"))
    with open(tmp_path / "table4.csv") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == TABLE_COLUMNS
        table4 = list(reader)
    assert [r["arm"] for r in table4] == ["mean-map"] * 3 + ["finetune-1vq-decoded"] * 4
    assert [r["family"] for r in table4[3:]] == [r["family"] for r in rows]
    assert [float(r["mae_mean"]) for r in table4[3:]] == pytest.approx([r["mae"] for r in rows])
    assert {r["n_seeds"] for r in table4[3:]} == {"1"} and {r["seeds"] for r in table4[3:]} == {"0"}
    with open(tmp_path / "per_seed.csv") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == METRIC_COLUMNS and len(list(reader)) == len(rows)
    with open(tmp_path / "table2.csv") as handle:
        assert [r["arm"] for r in csv.DictReader(handle)] == ["mean-map"] * 3
    assert (tmp_path / "predictions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # an arm with fewer pairs than one batch would not train at all: refused, naming the key
    too_large = ExperimentSettings(**{**SETTINGS.__dict__, "finetune_training": {"batch_size": 10_000}})
    with pytest.raises(ValueError, match=r"inversionnet\.training\.batch_size"):
        train_arm("finetune-1vq-decoded", store, too_large, tmp_path / "ft2", 0, store=pairs[0],
                  hard=tmp_path / "hard.npz", init_weights=real)
