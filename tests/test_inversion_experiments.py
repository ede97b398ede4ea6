"""The InversionNet experiment arms (Tables 2-4): names, what each trains on, the identical
real subsets across arms, Table 4's hardest pairs, and the evaluation rows."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict

import numpy as np
import pytest
import torch
import zarr

from wavediffusion.evaluation.arms import Arm, ExperimentSettings, arm_names, parse_arm
from wavediffusion.evaluation.inversion_experiments import (
    evaluate_arm,
    hard_sets,
    inversionnet_tables,
    mean_map_rows,
    network_settings,
    train_arm,
    training_data,
)
from wavediffusion.files import write_json
from wavediffusion.steps.inversion import run_evaluate_inversionnet, run_hardest_generated, run_inversionnet_tables
from wavediffusion.pairs import GeneratedPairs
from wavediffusion.training.inversionnet import RealPairs, evaluate_inversionnet, load_inversionnet

from test_inversionnet import TINY_MODEL, pairs, store  # noqa: F401  (module fixtures)

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
    assert parse_arm("real") == Arm("real", 100.0)
    assert parse_arm("gen-1vq-simulated+real-1pct") == Arm("gen-1vq-simulated+real-1pct", 1.0, "1vq", "simulated")
    assert parse_arm("finetune-2vq-decoded") == Arm("finetune-2vq-decoded", 100.0, "2vq", "decoded", True)
    assert parse_arm("finetune-real").table == "table4" and parse_arm("real-10pct").table == "table3"
    for name in names["table2"] + names["table3"] + names["table4"]:
        assert parse_arm(name).name == name
    for bad in ("gen-1vq-painted", "real+real", "real-xpct", "sim-1vq", "gen-1vq-decoded+gen-2vq-decoded"):
        with pytest.raises(ValueError, match="arm"):
            parse_arm(bad)
    with pytest.raises(ValueError, match=r"inversionnet\.seismic"):
        ExperimentSettings(seismic=("painted",))


def test_the_real_arm_and_the_fine_tuning_arms_take_their_own_overrides():
    settings = ExperimentSettings(training={"max_steps": 5, "lr": 1e-3}, finetune_training={"max_steps": 1},
                                  real_training={"max_seconds": 60.0})
    budgets = {name: network_settings(settings, parse_arm(name)).training
               for name in ("real", "real-10pct", "finetune-real", "gen-1vq-decoded")}
    assert budgets["real"] == {"max_steps": 5, "lr": 1e-3, "max_seconds": 60.0}
    assert budgets["finetune-real"] == {"max_steps": 1, "lr": 1e-3}
    assert budgets["real-10pct"] == budgets["gen-1vq-decoded"] == {"max_steps": 5, "lr": 1e-3}


def test_the_mean_map_predictor_is_the_training_mean_against_the_test_maps(store):  # noqa: F811
    root = zarr.open_group(str(store), mode="r")
    mean_map = torch.from_numpy(root["train"]["velocity"][:]).double().mean(dim=0)
    test = torch.from_numpy(root["test"]["velocity"][:]).double()
    rows = {row["family"]: row for row in mean_map_rows(root)}
    assert rows["all"]["n"] == len(test)
    assert rows["all"]["mae"] == pytest.approx(float((test - mean_map).abs().mean()), rel=1e-5)
    assert sum(rows[f]["n"] for f in rows if f != "all") == len(test)


def test_real_subsets_are_the_same_pairs_in_every_arm(store, pairs):  # noqa: F811
    alone = training_data(parse_arm("real-50pct"), store, SETTINGS)
    mixed = training_data(parse_arm("gen-1vq-decoded+real-50pct"), store, SETTINGS, store=pairs[0])
    generated, real = mixed.datasets
    assert isinstance(real, RealPairs) and isinstance(generated, GeneratedPairs)
    np.testing.assert_array_equal(real.indices, alone.indices)
    quarter = training_data(parse_arm("real-25pct"), store, SETTINGS)
    assert set(quarter.indices) < set(alone.indices)  # the smaller subset lies inside the larger
    # generated arms take as many pairs as the real training set has, at most the store's
    n_real = len(RealPairs(store, "train"))
    assert len(training_data(parse_arm("gen-1vq-simulated"), store, SETTINGS, store=pairs[0])) == min(n_real, 10)


def test_table4_fine_tunes_real_on_its_hardest_pairs_and_measures_them(store, pairs, tmp_path):  # noqa: F811
    summary, record = train_arm("real", store, SETTINGS, tmp_path / "real")
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
        train_arm("finetune-1vq-decoded", store, SETTINGS, tmp_path / "ft", store=pairs[0], hard=tmp_path / "hard.npz")
    summary, record = train_arm("finetune-1vq-decoded", store, SETTINGS, tmp_path / "ft", store=pairs[0],
                                hard=tmp_path / "hard.npz", init_weights=real)
    # the paper's protocol: the real training pairs plus the hardest generated ones
    data = training_data(parse_arm("finetune-1vq-decoded"), store, SETTINGS, pairs[0], tmp_path / "hard.npz")
    generated, real = data.datasets
    assert isinstance(generated, GeneratedPairs) and len(generated) == 2
    assert isinstance(real, RealPairs) and len(real) == len(RealPairs(store, "train"))
    assert record["n_train"] == 2 + len(real) and record["table"] == "table4" and summary["steps"] == 1
    test_rows = evaluate_inversionnet(summary["final"], store, batch_size=SETTINGS.eval_batch_size, device="cpu",
                                      progress=False)
    rows = evaluate_arm(record, test_rows, SETTINGS, load_inversionnet(summary["final"]),
                        {"1vq-decoded": GeneratedPairs(pairs[0], indices=hard_test)}, device="cpu")
    assert [r["family"] for r in rows] == ["FlatVel-A", "CurveFault-A", "all", "hard-test 1vq-decoded"]
    assert rows[-1]["n"] == 2 and rows[-1]["mae"] > 0
    tables = inversionnet_tables(rows, mean_map_rows(zarr.open_group(str(store), mode="r")))
    # the mean-map predictor's reference rows first (per family and all), then the arm's four
    assert [r["arm"] for r in tables["table4"]] == ["mean-map"] * 3 + ["finetune-1vq-decoded"] * 4
    assert [r["arm"] for r in tables["table2"]] == ["mean-map"] * 3  # no Table-2 arm ran here

    # the steps write the same through files: the arm's metrics.csv, then the tables and the figure
    write_json(record, tmp_path / "ft.json")
    run_evaluate_inversionnet(summary["final"], str(tmp_path / "ft.json"), str(store), SETTINGS_JSON,
                              str(tmp_path / "metrics.csv"), seed=SETTINGS.seed,
                              hard_test=[f"1vq-decoded,{pairs[0]},{tmp_path / 'hard.npz'}"])
    outputs = {t: str(tmp_path / f"{t}.csv") for t in ("table2", "table3", "table4")}
    run_inversionnet_tables([str(tmp_path / "metrics.csv")], [summary["final"]], str(store), **outputs,
                            figure=str(tmp_path / "predictions.png"))
    with open(tmp_path / "table4.csv") as handle:
        table4 = list(csv.DictReader(handle))
    assert [r["arm"] for r in table4] == ["mean-map"] * 3 + ["finetune-1vq-decoded"] * 4
    assert [r["family"] for r in table4[3:]] == [r["family"] for r in rows]
    with open(tmp_path / "table2.csv") as handle:
        assert [r["arm"] for r in csv.DictReader(handle)] == ["mean-map"] * 3
    assert (tmp_path / "predictions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # an arm with fewer pairs than one batch would not train at all: refused, naming the key
    too_large = ExperimentSettings(**{**SETTINGS.__dict__, "finetune_training": {"batch_size": 10_000}})
    with pytest.raises(ValueError, match=r"inversionnet\.training\.batch_size"):
        train_arm("finetune-1vq-decoded", store, too_large, tmp_path / "ft2", store=pairs[0], hard=tmp_path / "hard.npz",
                  init_weights=real)
