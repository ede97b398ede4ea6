"""results/claims.csv and the memorisation check behind one of its rows: each verdict is
computed from hand-made result tables (yes, no, and not testable where the numbers cannot
decide), and the memorisation check catches a generator that copies its training set."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import zarr

from wavediffusion.data.transforms import Representation
from wavediffusion.evaluation.claims import (COLUMNS, NO, UNDECIDED, YES, augmentation_claims, fid_claims,
                                             joint_vs_separate_claims, ordering_claim)
from wavediffusion.evaluation.inversion_experiments import TABLE_COLUMNS
from wavediffusion.evaluation.table8 import COLUMNS as TABLE8_COLUMNS
from wavediffusion.evaluation.memorisation import memorisation, memorised, nearest_distances
from wavediffusion.evaluation.stage1 import TABLE5_COLUMNS
from wavediffusion.evaluation.trajectory import DEVIATION_COLUMNS
from wavediffusion.files import read_csv, write_csv
from wavediffusion.data.pairs_store import create_pairs_store, open_pairs_store
from wavediffusion.plotting import save_figure
from wavediffusion.steps.claims import run_claims
from wavediffusion.training.stage2 import open_latents

from test_trajectory import write_latents
from tiny_models import save_tiny_autoencoder

REP = Representation(time_samples=64, receivers=16, velocity_size=16)


def stats(**means):
    """Table-5 statistics (mean, std, n) with a small spread: every gap below is many standard errors."""
    return {name: (mean, 0.001, 400) for name, mean in means.items()}


def test_table5_ordering_yes_no_and_undecided():
    paper_order = stats(train_reconstruction=0.002, diffusion_ddpm=0.004, interpolation=0.006, random_gaussian=0.008)
    assert ordering_claim("1vq", paper_order)["held"] == YES
    swapped = {**paper_order, "diffusion_ddpm": (0.007, 0.001, 400)}  # diffusion worse than interpolation
    assert ordering_claim("1vq", swapped)["held"] == NO
    noisy = {**paper_order, "diffusion_ddpm": (0.0055, 0.02, 10)}  # too few, too spread to place
    claim = ordering_claim("1vq", noisy)
    assert claim["held"] == UNDECIDED and "two standard errors" in claim["note"]
    assert ordering_claim("1vq", {})["held"] == UNDECIDED


def write_fid(path, n_diffusion, n_baseline, fid_diffusion, fid_baseline):
    """fid_table.csv of one variant, both modalities; returns its rows as read back."""
    columns = ("variant", "source", "modality", "fid", "n_generated", "n_reference", "reference_split",
               "weights_source", "weights_sha256")
    rows = [{"variant": "1vq", "source": source, "modality": modality, "fid": fid, "n_generated": n,
             "n_reference": 100, "reference_split": "train", "weights_source": "x", "weights_sha256": "y"}
            for modality in ("seismic", "velocity")
            for source, fid, n in (("diffusion", fid_diffusion, n_diffusion),
                                   ("stage1-random-latents", fid_baseline, n_baseline))]
    write_csv(rows, path, columns)
    return read_csv(path)


def test_fid_claims_need_equal_sample_counts(tmp_path):
    assert [c["held"] for c in fid_claims(write_fid(tmp_path / "a.csv", 100, 100, 50.0, 80.0))] == [YES, YES]
    assert [c["held"] for c in fid_claims(write_fid(tmp_path / "b.csv", 100, 100, 90.0, 80.0))] == [NO, NO]
    unequal = fid_claims(write_fid(tmp_path / "c.csv", 100, 50, 50.0, 80.0))
    assert [c["held"] for c in unequal] == [UNDECIDED] * 2 and "fid.num_generated" in unequal[0]["note"]


def arm_row(arm: str, mae_mean, mae_std, n_seeds: int, family: str = "all", vs_real: str = "one seed") -> dict:
    """An InversionNet table's row (TABLE_COLUMNS' fields the claims read)."""
    return {"arm": arm, "family": family, "n_train": 100, "n_seeds": n_seeds, "mae_mean": mae_mean,
            "mae_std": mae_std, "mae_vs_real": vs_real}


def write_inversion_tables(folder, table3_gen: tuple, table4_hard: tuple) -> tuple[list[dict], list[dict]]:
    """Tables 3 and 4 (as read back) with their reference rows, `real-10pct` at 0.2 ± 0.01 and
    `finetune-real` at 0.1 ± 0.01 over three seeds against the generated arms' (mean, std, seeds)."""
    references = [arm_row("mean-map", 0.4, "", 0, vs_real="reference"),
                  arm_row("real", 0.1, 0.01, 3, vs_real="reference")]
    table3 = [*references, arm_row("real-10pct", 0.2, 0.01, 3), arm_row("real-10pct", 0.15, 0.01, 3, "FlatVel-A"),
              arm_row("gen-1vq-decoded+real-10pct", *table3_gen)]
    table4 = [*references, arm_row("finetune-real", 0.1, 0.01, 3), arm_row("finetune-1vq-decoded", *table4_hard)]
    for name, rows in (("table3", table3), ("table4", table4)):
        write_csv([{column: r.get(column, "") for column in TABLE_COLUMNS} for r in rows], folder / f"{name}.csv",
                  TABLE_COLUMNS)
    return read_csv(folder / "table3.csv"), read_csv(folder / "table4.csv")


def test_augmentation_claims_follow_the_seed_intervals(tmp_path):
    """Tables 3 and 4: yes when the generated arm's interval lies below the real one's, no when
    above, not testable when they overlap or with one seed; reference rows are no arms."""
    def verdicts(table3_gen, table4_hard):
        claims = augmentation_claims(*write_inversion_tables(tmp_path, table3_gen, table4_hard))
        assert [(c["claim"], c["variant"]) for c in claims] == [("table3_generated_plus_real", "1vq"),
                                                                  ("table4_finetune_hardest", "1vq")]
        return [c["held"] for c in claims]

    assert verdicts((0.17, 0.01, 3), (0.08, 0.005, 3)) == [YES, YES]
    assert verdicts((0.23, 0.01, 3), (0.12, 0.005, 3)) == [NO, NO]
    assert verdicts((0.19, 0.01, 3), (0.095, 0.01, 3)) == [UNDECIDED, UNDECIDED]  # intervals overlap
    claims = augmentation_claims(*write_inversion_tables(tmp_path, (0.1, "", 1), (0.05, "", 1)))
    assert {c["held"] for c in claims} == {UNDECIDED} and "1 seed(s)" in claims[0]["note"]


def table8_rows(joint: float, separate: float, std: float, n: int) -> list[dict]:
    return [{"variant": "1vq", "quantity": "fid", "modality": "seismic", "n": n, "joint": 10.0, "separate": 20.0},
            {"variant": "1vq", "quantity": "pde_deviation", "modality": "pair", "n": n, "joint": joint,
             "separate": separate, "joint_std": std, "separate_std": std, "data_floor": 1e-4, "chance": 0.017}]


def test_joint_vs_separate_claim_needs_two_standard_errors():
    # difference 0.008; standard error of it sqrt(2 x 0.002^2 / n)
    assert [c["held"] for c in joint_vs_separate_claims(table8_rows(0.002, 0.010, 0.002, 100))] == [YES]
    assert [c["held"] for c in joint_vs_separate_claims(table8_rows(0.010, 0.002, 0.002, 100))] == [NO]
    claim, = joint_vs_separate_claims(table8_rows(0.002, 0.010, 0.02, 10))  # error 0.009: not apart
    assert claim["held"] == UNDECIDED and "two standard errors" in claim["note"]


def trend(improvement: float) -> dict:
    """train.json's `validation` of a run whose last third improved its best loss by `improvement`."""
    return {"metric": "val_loss", "n_validations": 12, "best_first_two_thirds": 0.1,
            "best_last_third": 0.1 * (1 - improvement), "improvement_last_third": improvement}


converged = trend(0.005)


def test_claims_table_from_the_result_files(tmp_path):
    table5 = [{"variant": "1vq", "latents": name, "weight": weight, "n": 400, "deviation_mean": mean,
               "deviation_std": 0.001, "deviation_median": mean}
              for name, weight, mean in (("test_reconstruction", "", 0.0021), ("train_reconstruction", "", 0.002),
                                         ("random_gaussian", "", 0.009), ("interpolation", 0.25, 0.003),
                                         ("interpolation", 0.5, 0.006), ("diffusion_ddpm", "", 0.004),
                                         ("diffusion_ddim_50", "", 0.005))]
    write_csv(table5, tmp_path / "table5.csv", TABLE5_COLUMNS)
    deviation = [{"step": -1, "direction": "forward", "mean": 0.002, "std": 0.001, "n": 400},
                 {"step": -1, "direction": "backward", "mean": 0.005, "std": 0.001, "n": 400}]
    write_csv(deviation, tmp_path / "deviation.csv", DEVIATION_COLUMNS)
    write_csv([{"variant": "1vq", "set": "held_out", "n": 50, "distance_median": 0.5, "distance_p01": 0.3,
                "distance_min": 0.3, "fraction_below_held_out_p01": 0.02},
               {"variant": "1vq", "set": "generated", "n": 50, "distance_median": 0.5, "distance_p01": 0.3,
                "distance_min": 0.2, "fraction_below_held_out_p01": 0.04}],
              tmp_path / "memorisation.csv", ("variant", "set", "n", "distance_median", "distance_p01",
                                             "distance_min", "fraction_below_held_out_p01"))
    write_csv([{"variant": "1vq", "family": "all", "n": 20, "mae": 0.12}], tmp_path / "stage1.csv",
              ("variant", "family", "n", "mae"))
    table2_columns = ("arm", "family", "n", "n_seeds", "mae_mean", "mae_std")

    def write_table2(mae_std: float) -> None:
        """Table 2's `real` rows: MAE mean over three seeds and their std."""
        write_csv([{"arm": "real", "family": "FlatVel-A", "n": 10, "n_seeds": 3, "mae_mean": 0.05, "mae_std": mae_std},
                   {"arm": "real", "family": "all", "n": 20, "n_seeds": 3, "mae_mean": 0.1, "mae_std": mae_std}],
                  tmp_path / "table2.csv", table2_columns)

    write_table2(0.001)
    write_fid(tmp_path / "fid.csv", 100, 100, 50.0, 80.0)
    write_inversion_tables(tmp_path, (0.17, 0.01, 3), (0.12, 0.005, 3))  # Table 3 holds, Table 4 does not
    write_csv([{column: r.get(column, "") for column in TABLE8_COLUMNS} for r in table8_rows(0.002, 0.01, 0.002, 100)],
              tmp_path / "table8.csv", TABLE8_COLUMNS)
    stage1_record = tmp_path / "stage1.json"
    stage1_record.write_text(json.dumps({"seconds": 300.0}))
    inversion_records = [tmp_path / f"real-seed{seed}.json" for seed in range(3)]  # `real`'s run per seed
    for record in inversion_records:
        record.write_text(json.dumps({"seconds": 400.0}))
    stage2_record = tmp_path / "stage2.json"
    stage2_record.write_text(json.dumps({"validation": converged}))

    def table():
        """The step's claims.csv, read back."""
        run_claims(["1vq"], [str(tmp_path / "table5.csv")], [str(tmp_path / "deviation.csv")],
                   [str(tmp_path / "memorisation.csv")], str(tmp_path / "fid.csv"), str(tmp_path / "stage1.csv"),
                   [str(stage1_record)], [str(stage2_record)], str(tmp_path / "table2.csv"),
                   [str(path) for path in inversion_records], str(tmp_path / "table3.csv"),
                   str(tmp_path / "table4.csv"), str(tmp_path / "claims.csv"), table8=str(tmp_path / "table8.csv"))
        return read_csv(tmp_path / "claims.csv")

    rows = table()
    with open(tmp_path / "claims.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == COLUMNS
        written = {row["claim"] + "/" + row["criterion"].split()[0]: row for row in reader}
    assert len(written) == len(rows) == 10
    held = {row["claim"]: row["held"] for row in rows if row["claim"] != "fid_diffusion_vs_random"}
    assert held == {"table5_ordering": YES, "table5_ratio": YES,  # 0.009 / 0.004 = 2.25
                    "fig5_end_vs_start": NO,  # 0.005 / 0.002 = 2.5 > 2
                    "stage1_inversion": YES,  # 0.12 / 0.1 = 1.2
                    "no_memorisation": YES,
                    "table3_generated_plus_real": YES, "table4_finetune_hardest": NO, "table8_joint_vs_separate": YES}
    assert next(r for r in rows if r["claim"] == "table5_ratio")["measured"].startswith("2.25 ± ")

    # with 9 samples each, 2.5 +- 0.45 cannot tell the limit 2 apart
    write_csv([{**r, "n": 9} for r in deviation], tmp_path / "deviation.csv", DEVIATION_COLUMNS)
    assert next(r for r in table() if r["claim"] == "fig5_end_vs_start")["held"] == UNDECIDED

    claim = next(r for r in rows if r["claim"] == "stage1_inversion")
    assert claim["measured"].startswith("1.2 ± ") and "mean of 3 seed(s)" in claim["note"]
    # InversionNet's spread over its seeds: 1.2 +- 2 x 0.35 (std 0.05 of 3 seeds) reaches the limit 1.25
    write_table2(0.05)
    claim = next(r for r in table() if r["claim"] == "stage1_inversion")
    assert claim["held"] == UNDECIDED and "two standard errors" in claim["note"]
    write_table2(0.001)

    # the Stage-1 inversion gate holds only against an InversionNet given at least Stage 1's time, every run ...
    inversion_records[1].write_text(json.dumps({"seconds": 200.0}))
    claim = next(r for r in table() if r["claim"] == "stage1_inversion")
    assert claim["held"] == UNDECIDED and "less time than Stage 1" in claim["note"] and "200-400 s" in claim["note"]
    # ... or stopped at its plateau (early stopping), which more time would not have moved
    inversion_records[1].write_text(json.dumps({"seconds": 200.0, "stop_reason": "early_stop"}))
    claim = next(r for r in table() if r["claim"] == "stage1_inversion")
    assert claim["held"] == YES and "1 of 3 InversionNet run(s) stopped at their plateau" in claim["note"]
    inversion_records[1].write_text(json.dumps({"seconds": 200.0, "stop_reason": "max_seconds"}))
    assert next(r for r in table() if r["claim"] == "stage1_inversion")["held"] == UNDECIDED
    for record in inversion_records:
        record.write_text(json.dumps({"seconds": 200.0}))
    # ... and fails only against one given at most Stage 1's time
    write_csv([{"variant": "1vq", "family": "all", "n": 20, "mae": 0.2}], tmp_path / "stage1.csv",
              ("variant", "family", "n", "mae"))
    assert next(r for r in table() if r["claim"] == "stage1_inversion")["held"] == NO  # 2.0, 200 s < 300 s
    inversion_records[2].write_text(json.dumps({"seconds": 400.0}))
    claim = next(r for r in table() if r["claim"] == "stage1_inversion")
    assert claim["held"] == UNDECIDED and "more time than Stage 1" in claim["note"]

    # while Stage 2's validation loss still falls, no claim about its samples is judged: the
    # note keeps the verdict as measured; the Stage-1 gate and the memorisation check stand
    stage2_record.write_text(json.dumps({"validation": trend(0.2)}))
    rows = table()
    waiting = [r for r in rows if r["claim"] in ("table5_ordering", "table5_ratio", "fig5_end_vs_start",
                                                 "fid_diffusion_vs_random", "table3_generated_plus_real",
                                                 "table4_finetune_hardest", "table8_joint_vs_separate")]
    assert len(waiting) == 8 and {r["held"] for r in waiting} == {UNDECIDED}
    assert all("improved 20.0% over the last third" in r["note"] for r in waiting)
    assert "as measured: yes" in next(r for r in waiting if r["claim"] == "table5_ratio")["note"]
    assert next(r for r in rows if r["claim"] == "no_memorisation")["held"] == YES
    stage2_record.write_text(json.dumps({"validation": None}))  # validated fewer than three times
    assert next(r for r in table() if r["claim"] == "table5_ratio")["held"] == UNDECIDED


def test_nearest_distances_are_the_brute_force_ones():
    generator = torch.Generator().manual_seed(0)
    queries, references = torch.randn(7, 2, 3, 3, generator=generator), torch.randn(30, 2, 3, 3, generator=generator)
    expected = torch.cdist(queries.flatten(1).double(), references.flatten(1).double()).min(dim=1).values / 18**0.5
    got = nearest_distances(queries, references.numpy(), torch.device("cpu"), block=8)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    """A tiny autoencoder and the diffusion latents of three disjoint sets of random sections."""
    root = tmp_path_factory.mktemp("memorisation")
    model = save_tiny_autoencoder(root / "stage1.pt")
    seismic = torch.rand(600, *REP.seismic_shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        latents = model.latent_for_diffusion(seismic).numpy()
    return root, latents[:200], latents[200:400], latents[400:]


def pairs_store_of(path, latents: np.ndarray):
    root = create_pairs_store(path, len(latents), len(latents), latents.shape[1:], REP.seismic_shape,
                              REP.velocity_shape)
    root["latent"][:] = latents
    return path


@pytest.mark.parametrize("copies", [False, True])
def test_memorisation_catches_a_generator_that_copies(encoded, tmp_path, copies):
    root, train, held_out, fresh = encoded
    store = write_latents(tmp_path / "latents.zarr", train, "sha")
    group = zarr.open_group(str(store), mode="a")  # write_latents' val split is one latent: 200 instead
    del group["val"]
    val = group.create_group("val")
    val.create_array("latent", data=held_out, chunks=(1, *held_out.shape[1:]))
    # a copying generator: training latents slightly off
    generated = train + 1e-3 * np.random.default_rng(2).standard_normal(train.shape).astype(np.float32) if copies \
        else fresh
    pairs = pairs_store_of(tmp_path / "pairs.zarr", generated)
    latents = open_latents(store)
    rows, figure = memorisation(latents["train"]["latent"], latents["val"]["latent"],
                                open_pairs_store(pairs, mode="r")["latent"], "1vq", device="cpu", progress=False)
    save_figure(figure, tmp_path / "m.png")
    by_set = {row["set"]: row for row in rows}
    assert by_set["held_out"]["n"] == by_set["generated"]["n"] == 200
    assert memorised(rows) == copies
    if copies:
        # the RMS of the 1e-3 perturbation, far below any held-out latent's distance
        assert 0.9e-3 < by_set["generated"]["distance_median"] < 1.1e-3 < 10 * 1.1e-3 < by_set["held_out"]["distance_min"]
    assert (tmp_path / "m.png").stat().st_size > 10_000

