"""The whole tiny DAG through real Snakemake, and re-runs after config edits."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
import zarr

from wavediffusion.data.families import FAMILY_NAMES
from wavediffusion.data.store import open_dataset
from wavediffusion.evaluation.arms import FILTER_DRAWS, SEISMIC_KINDS, ExperimentSettings, arm_names, parse_arm
from wavediffusion.files import readable

from conftest import REPO, SNAKEMAKE, snakemake, write_config

TARGETS = ("all",)


def scheduled(workdir: Path, *args: str) -> dict[str, int]:
    """Rule -> job count of a dry run (empty when nothing would run)."""
    output = snakemake(workdir, "--dry-run", *args, *TARGETS).stdout
    if "Nothing to be done" in output:
        return {}
    table = output.split("Job stats:")[1].split("total")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.MULTILINE)}


def num_shards_of(config) -> int:
    return -(-config["sampling"]["num_pairs"] // config["sampling"]["shard_size"])


def test_tiny_dag_produces_every_output(tiny_run):
    workdir, config = tiny_run
    root = open_dataset(workdir / "results/data/dataset.zarr")
    assert root.attrs["families_used"] == config["data"]["families"]
    n = config["data"]["embedded"]["train_per_family"] * 2
    assert root.attrs["counts"]["train"] + root.attrs["counts"]["val"] == n
    assert root["test"]["seismic"].shape == (4, 3, 64, 16)  # tiny's representation
    with open(workdir / "results/physics/pde_floor.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["family"], r["backend"], r["velocity_input"]) for r in rows} == {
        (f, b, v) for f in config["data"]["families"] for b in ("deepwave", "openfwi")
        for v in ("native70", "model64", "model64_other_pair")
    }
    deviation = {(r["family"], r["backend"], r["velocity_input"]): float(r["deviation_mean"]) for r in rows}
    # the embedded data were made by deepwave from the native maps: deepwave reproduces them
    # to float rounding; the other backend and the 64x64 round trip cost more
    for family in config["data"]["families"]:
        assert deviation[(family, "deepwave", "native70")] < 1e-8
        assert deviation[(family, "openfwi", "native70")] > deviation[(family, "deepwave", "native70")]
        assert deviation[(family, "deepwave", "model64")] > deviation[(family, "deepwave", "native70")]
        # the chance level: another pair's velocity fits far worse than the pair's own
        assert deviation[(family, "deepwave", "model64_other_pair")] > 3 * deviation[(family, "deepwave", "model64")]
    assert (workdir / "results/figures/velocity_families.png").stat().st_size > 10_000
    for log in ("preprocess.log", "pde_floor.log", "velocity_figure.log", "train_stage1/1vq.log", "encode_latents/1vq.log"):
        assert (workdir / "logs" / log).exists()
    weights = torch.load(workdir / "results/stage1/1vq/model.pt", weights_only=False)
    assert weights["step"] == config["stage1"]["training"]["max_steps"]
    assert weights["config"]["task"]["model"]["time_samples"] == 64  # sizes taken from the dataset

    with open(workdir / "results/stage1/metrics.csv") as handle:
        metrics = list(csv.DictReader(handle))
    assert [row["family"] for row in metrics] == [*config["data"]["families"], "all"]
    for row in metrics:
        assert row["variant"] == "1vq" and int(row["n"]) >= 1
        assert 0 < float(row["mse_seismic"]) and 0 < float(row["pde_deviation"])
        assert -1 <= float(row["ssim"]) <= 1
    with open(workdir / "results/stage1/1vq/table5.csv") as handle:
        table5 = list(csv.DictReader(handle))
    evaluation = config["stage1"]["evaluation"]
    assert [(row["latents"], row["weight"]) for row in table5] == [
        ("test_reconstruction", ""), ("train_reconstruction", ""), ("random_gaussian", ""),
        *[("interpolation", str(w)) for w in evaluation["interpolation_weights"]]]
    assert int(table5[2]["n"]) == evaluation["random_latents"]
    assert (workdir / "results/stage1/1vq/examples.png").stat().st_size > 10_000
    for training in ("stage1/1vq", "stage2/1vq", "inversionnet/real/seed0"):  # each run draws its curves
        assert [p.stat().st_size > 10_000 for p in (workdir / "results" / training).glob("runs/*/curves.png")] == [True]
    stage2 = torch.load(workdir / "results/stage2/1vq/model.pt", weights_only=False)
    assert stage2["step"] == config["stage2"]["training"]["max_steps"]
    assert stage2["config"]["task"]["model"]["in_channels"] == config["stage1"]["model"]["latent_channels"]

    trajectory = config["stage2"]["trajectory"]
    with open(workdir / "results/trajectory/1vq/deviation.csv") as handle:
        deviation = list(csv.DictReader(handle))
    steps = {int(row["step"]) for row in deviation if row["direction"] == "backward"}
    assert steps == {*trajectory["steps"], -1}  # -1: the noise-free end (the final sample)
    with open(workdir / "results/trajectory/1vq/table5.csv") as handle:
        names = [row["latents"] for row in csv.DictReader(handle)]
    assert names[:3] == ["test_reconstruction", "train_reconstruction", "random_gaussian"]
    etas = trajectory.get("ddim_etas", [0.0, 1.0])
    samplers = [*[f"diffusion_ddim_{k}" + (f"_eta{eta:g}" if eta else "")
                  for eta in etas for k in trajectory["ddim_steps"]],
                *[f"diffusion_dpmpp2m_{k}" for k in trajectory["dpm_solver_steps"]]]
    assert names[-1 - len(samplers):] == ["diffusion_ddpm", *samplers]
    for figure in ("deviation.png", "trajectory_examples.png"):
        assert (workdir / "results/trajectory/1vq" / figure).stat().st_size > 10_000

    manifest = json.loads((workdir / "results/samples/1vq/manifest.json").read_text())
    n = config["sampling"]["num_pairs"]
    assert manifest["n_checked"] == n and manifest["num_pairs"] == n and len(manifest["config_sha256"]) == 64
    pairs = zarr.open_group(str(workdir / "results/samples/1vq/pairs.zarr"), mode="r")
    assert pairs["seismic"].shape == pairs["seismic_simulated"].shape == (n, 3, 64, 16)
    assert pairs["velocity"].shape == (n, 1, 16, 16)
    assert np.isfinite(pairs["deviation"][:]).all()

    # the physics filter and the export of the accepted pairs in OpenFWI's layout
    # (tiny: the default filter, per family: as consistent as 99 % of the family's true pairs)
    with open(workdir / "results/samples/1vq/physics_report.csv") as handle:
        report = list(csv.DictReader(handle))
    valid, family = pairs["valid"][:], pairs["family"][:]
    assert [r["family"] for r in report][-1] == "all" and int(report[-1]["n_valid"]) == valid.sum()
    assert {r["filter"] for r in report} == {"per_family"}
    with open(workdir / "results/physics/true_pair_deviation.csv") as handle:
        true_pairs = list(csv.DictReader(handle))
    threshold = {name: np.quantile([float(r["deviation"]) for r in true_pairs if r["family"] == name], 0.99)
                 for name in config["data"]["families"]}
    assert {FAMILY_NAMES[code] for code in family} <= set(threshold)
    np.testing.assert_array_equal(valid, pairs["deviation"][:] <= [threshold[FAMILY_NAMES[c]] for c in family])
    with open(workdir / "results/samples/1vq/acceptance.csv") as handle:
        curve = list(csv.DictReader(handle))
    assert float(curve[-1]["acceptance_generated"]) == float(curve[-1]["acceptance_real"]) == 1.0
    with open(workdir / "results/physics/true_pair_deviation.csv") as handle:  # the floor's pairs, one by one
        assert len(list(csv.DictReader(handle))) == 2 * config["physics"]["floor_samples_per_family"]
    export = json.loads((workdir / "results/export/1vq/openfwi/export.json").read_text())
    per_file = config["export"]["samples_per_file"]  # whole files only
    assert export["num_exported"] == valid.sum() // per_file * per_file

    # FID: both modalities, the diffusion samples and the Stage-1 baseline, with the weights' hash
    with open(workdir / "results/fid_table.csv") as handle:
        fid = list(csv.DictReader(handle))
    assert [(r["source"], r["modality"]) for r in fid] == [
        (source, modality) for source in ("diffusion", "stage1-random-latents") for modality in ("seismic", "velocity")]
    assert all(float(r["fid"]) > 0 and r["weights_sha256"].startswith("7ff4a85c") for r in fid)
    assert [int(r["n_generated"]) for r in fid] == [n, n, config["fid"]["num_baseline"], config["fid"]["num_baseline"]]
    for modality in ("seismic", "velocity"):
        assert (workdir / f"results/fid/1vq/tsne_{modality}.png").stat().st_size > 10_000
    # FID per sampler setting of the trajectory run, beside the random latents at the same count
    with open(workdir / "results/fid/1vq/samplers.csv") as handle:
        samplers = [(r["sampler"], r["steps"], r["eta"], int(r["n"])) for r in csv.DictReader(handle)]
    assert samplers == [("ddpm", str(config["stage2"]["diffusion"].get("num_steps", 1000)), "", trajectory["n_backward"]),
                        *[("ddim", str(k), readable(float(eta)), trajectory["n_ddim"]) for eta in etas
                          for k in trajectory["ddim_steps"]],
                        *[("dpmpp2m", str(k), "", trajectory["n_ddim"]) for k in trajectory["dpm_solver_steps"]],
                        *[("stage1-random-latents", "", "", n) for n in sorted({trajectory["n_backward"],
                                                                                trajectory["n_ddim"]})]]

    # the InversionNet tables: every arm, each family of the real test split and "all", the
    # metrics' mean and std over tiny's two seeds
    families = [*config["data"]["families"], "all"]
    seeds = config["inversionnet"]["seeds"]
    tables = {}
    for table in ("table2", "table3", "table4", "table_filter"):
        with open(workdir / f"results/inversionnet/{table}.csv") as handle:
            tables[table] = list(csv.DictReader(handle))
    # every table opens with the two references: the mean-map predictor and `real`
    references = ["mean-map", "real"]
    assert [r["arm"] for r in tables["table2"] if r["family"] == "all"] == [*references, "gen-1vq-simulated"]
    assert [r["arm"] for r in tables["table3"] if r["family"] == "all"] == [
        *references, "real-50pct", "gen-1vq-simulated+real-50pct"]
    assert [r["arm"] for r in tables["table4"] if r["family"] == "all"] == [
        *references, "finetune-real", "finetune-1vq-simulated"]
    assert [r["arm"] for r in tables["table_filter"] if r["family"] == "all"] == [
        *references, "gen-1vq-simulated-accepted", "gen-1vq-simulated-unfiltered"]
    trained = [r for t in ("table2", "table3", "table4") for r in tables[t] if r["arm"] != "mean-map"]
    assert {r["n_seeds"] for r in trained} == {str(len(seeds))} and {r["seeds"] for r in trained} == {"0 1"}
    assert {r["mae_vs_real"] for r in trained if r["arm"] != "real"} <= {"separated", "not separated"}
    # the filter arms: equally many pairs; trained on both seeds, or (too few accepted pairs) a note and no numbers
    filtered = [r for r in tables["table_filter"] if r["arm"].startswith("gen-") and r["family"] == "all"]
    assert len({r["n_train"] for r in filtered}) == 1
    for row in filtered:
        assert (row["n_seeds"] == "2" and float(row["mae_mean"]) > 0) or (
            row["mae_vs_real"] == "not trained" and row["mae_mean"] == "" and "fewer than one batch" in row["note"])
    with open(workdir / "results/inversionnet/per_seed.csv") as handle:
        per_seed = list(csv.DictReader(handle))
    assert {(r["arm"], r["seed"]) for r in per_seed} == {
        (arm, str(seed)) for table in ("table2", "table3", "table4", "table_filter")
        for arm in {r["arm"] for r in tables[table]} - {"mean-map"} for seed in seeds}
    assert [r["family"] for r in tables["table2"] if r["arm"] == "real"] == [*families, "hard-test 1vq-simulated"]
    assert [r["family"] for r in tables["table2"] if r["arm"] == "mean-map"] == families
    mean_map, real = (next(float(r["mae_mean"]) for r in tables["table2"] if r["arm"] == arm and r["family"] == "all")
                      for arm in references)
    assert mean_map > 0 and real > 0
    n_train = {r["arm"]: int(r["n_train"]) for r in tables["table2"] + tables["table3"]}
    assert n_train["gen-1vq-simulated+real-50pct"] == n_train["gen-1vq-simulated"] + n_train["real-50pct"]
    assert (workdir / "results/inversionnet/predictions.png").stat().st_size > 5_000
    # diffusion-refined inversion beside Stage 1 alone and InversionNet; the ablation
    for table, methods in (("table9", ["inversionnet", "stage1", "refined"]), ("table7", ["stage1", "perturbed", "refined"])):
        with open(workdir / f"results/refine/{table}.csv") as handle:
            rows = list(csv.DictReader(handle))
        assert [r["method"] for r in rows if r["family"] == "all"] == methods

    # the claims, each with a verdict computed from the tables above; the memorisation check behind one
    with open(workdir / "results/claims.csv") as handle:
        claims = list(csv.DictReader(handle))
    experiments = ExperimentSettings.from_dict(config["inversionnet"])
    kinds, percents = len(experiments.seismic), len(experiments.real_percents)
    assert [r["claim"] for r in claims] == [
        "table5_ordering", "table5_ratio", "fig5_end_vs_start", "stage1_inversion", "no_memorisation",
        "fid_diffusion_vs_random", "fid_diffusion_vs_random", *["table3_generated_plus_real"] * (kinds * percents),
        *["table4_finetune_hardest"] * kinds, "table8_joint_vs_separate"]
    assert {r["held"] for r in claims} <= {"yes", "no", "not testable at this scale"}
    with open(workdir / "results/samples/1vq/memorisation.csv") as handle:
        assert [r["set"] for r in csv.DictReader(handle)] == ["held_out", "generated"]


def reported_outputs(config) -> set[str]:
    """Every path the rules mark report(), for the config's variants."""
    sources = "\n".join(path.read_text() for path in (REPO / "workflow" / "rules").glob("*.smk"))
    return {path.format(variant=variant) for path in re.findall(r'report\(\s*"([^"]+)"', sources)
            for variant in config["stage1"]["variants"]}


def test_the_report_holds_every_table_and_figure(tiny_run, tmp_path):
    """`snakemake --report report.zip` after the run: each output marked report() is in it with
    its caption, and each table is also shown as a table, read from the run's CSV."""
    workdir, config = tiny_run
    reported = reported_outputs(config)
    assert {"results/claims.csv", "results/fid_table.csv", "results/trajectory/1vq/table5.csv",
            "results/trajectory/1vq/deviation.png", "results/samples/1vq/physics_report.csv",
            "results/inversionnet/table2.csv", "results/refine/table9.csv"} <= reported
    snakemake(workdir, "--report", str(tmp_path / "report.zip"))
    with zipfile.ZipFile(tmp_path / "report.zip") as archive:
        files = {archive.read(name) for name in archive.namelist() if "/data/raw/" in name}
        html = archive.read("report/report.html").decode()
    assert {(workdir / path).read_bytes() for path in reported} <= files
    # the report's index of its results, by the path the rules give
    results = json.loads(re.search(r"var results = (\{.*?\});\n", html).group(1))
    assert set(results) == reported
    for path, entry in results.items():
        assert entry["caption"] and "system-message" not in entry["caption"], path  # reST errors render so
        if "/1vq/" in path:  # the caption's jinja names the variant
            assert "variant 1vq" in entry["caption"], path
        if path.endswith(".csv"):  # the CSV itself is only a download: its caption shows the rows
            header = (workdir / path).read_text().splitlines()[0].split(",")
            assert all(f'<th class="head">{column}</th>' in entry["caption"] for column in header), path


def test_every_job_left_its_benchmark(tiny_run):
    """Every rule names a benchmark file (benchmarks/out/<rule>.tsv, or one per job under
    benchmarks/out/<rule>/): the run's timings, job by job."""
    workdir, _ = tiny_run
    jobs = {rule: n for rule, n in scheduled(workdir, "--forceall").items() if rule != "all"}
    found = {}
    for path in (workdir / "benchmarks" / "out").rglob("*.tsv"):
        rule = path.relative_to(workdir / "benchmarks" / "out").parts[0].removesuffix(".tsv")
        found[rule] = found.get(rule, 0) + 1
    assert found == jobs


def after_sampling(config) -> dict[str, int]:
    """The jobs downstream of a variant's pairs store (tiny: one variant)."""
    inversion = config["inversionnet"]
    seismic = inversion.get("seismic", list(SEISMIC_KINDS))
    arms = sum(arm_names(config["stage1"]["variants"], ExperimentSettings.from_dict(
        {"seismic": seismic, "real_percents": inversion["real_percents"]})).values(), [])
    generated, seeds = sum(1 for arm in arms if parse_arm(arm).variant), len(inversion["seeds"])
    return {"physics_report": 1, "export_openfwi": 1, "fid_variant": 1, "fid_table": 1,
            "hardest_generated": len(seismic), "train_inversionnet": generated * seeds,
            # + `real` and `finetune-real`, which are also measured on the hardest generated pairs
            "evaluate_inversionnet": (generated + 2) * seeds, "inversionnet_tables": 1, "memorisation": 1,
            "claims": 1,
            # Table 8 compares the store's pairs with the separate models' (on in tiny: the schema's default)
            "check_independent_pairs": 1, "table8": 1}


def after_filter(config) -> dict[str, int]:
    """The jobs downstream of the physics filter's mask: the filter arms (tiny: one variant)."""
    inversion = config["inversionnet"]
    runs = len(FILTER_DRAWS) * len(inversion.get("seismic", SEISMIC_KINDS)) * len(inversion["seeds"])
    return {"train_inversionnet": runs, "evaluate_inversionnet": runs, "inversionnet_tables": 1, "claims": 1}


def test_config_edits_rerun_exactly_what_they_touch(tiny_run):
    workdir, config = tiny_run
    assert scheduled(workdir) == {}
    whole_dag = scheduled(workdir, "--forceall")

    edited = yaml.safe_load(yaml.safe_dump(config))
    edited["data"]["embedded"]["synthetic_seed"] = 1  # FlatFault-B is synthetic, FlatVel-A real
    write_config(workdir, edited)
    assert scheduled(workdir) == {**whole_dag, "simulate": 1}  # one of the two families

    edited = yaml.safe_load(yaml.safe_dump(config))
    edited["preprocess"]["shots"] = [0, 1, 2]
    write_config(workdir, edited)
    assert scheduled(workdir) == {rule: n for rule, n in whole_dag.items() if rule != "simulate"}

    sampling_on = {"sample_shard": num_shards_of(config), "check_shard": num_shards_of(config), "gather_samples": 1,
                   **after_sampling(config)}
    refine_on = {"refine_inversion": 1, "refine_table9": 1, "refine_table7": 1}
    # Table 8's separate models train with the joint model's stage1 and stage2 settings, and sample with its sampler
    separate_stage2_on = {"train_separate_stage2": 2, "sample_separate": 2}
    separate_on = {"train_separate_stage1": 2, "encode_separate_latents": 2, **separate_stage2_on}
    stage1_on = {"train_stage1": 1, "encode_latents": 1, "evaluate_stage1": 1, "stage1_metrics": 1, "train_stage2": 1,
                 "diffusion_trajectory": 1, "sampler_fid": 1, "create_pairs_store": 1, **sampling_on, **refine_on,
                 **separate_on}

    edited = yaml.safe_load(yaml.safe_dump(config))
    edited["physics"]["floor_samples_per_family"] = 1
    write_config(workdir, edited)
    assert scheduled(workdir) == {"pde_floor": 1, "physics_report": 1, "export_openfwi": 1, **after_filter(config),
                                  "table8": 1, "all": 1}

    edited = yaml.safe_load(yaml.safe_dump(config))
    edited["stage1"]["training"]["max_steps"] = 7
    write_config(workdir, edited)
    assert scheduled(workdir) == {**stage1_on, "all": 1}

    edited = yaml.safe_load(yaml.safe_dump(config))
    edited["stage1"]["evaluation"]["random_latents"] = 3
    write_config(workdir, edited)
    assert scheduled(workdir) == {"evaluate_stage1": 1, "stage1_metrics": 1, "diffusion_trajectory": 1, "sampler_fid": 1,
                                  "claims": 1, "all": 1}

    edited = yaml.safe_load(yaml.safe_dump(config))
    edited["stage2"]["training"]["max_steps"] = 5
    write_config(workdir, edited)
    assert scheduled(workdir) == {"train_stage2": 1, "diffusion_trajectory": 1, "sampler_fid": 1, **sampling_on,
                                  **refine_on, **separate_stage2_on, "all": 1}

    edited = yaml.safe_load(yaml.safe_dump(config))
    edited["sampling"]["steps"] = 4
    write_config(workdir, edited)
    assert scheduled(workdir) == {"create_pairs_store": 1, **sampling_on, "sample_separate": 2, "all": 1}

    edited = yaml.safe_load(yaml.safe_dump(config))
    edited["stage2"]["trajectory"]["n_forward"] = 3
    write_config(workdir, edited)
    assert scheduled(workdir) == {"diffusion_trajectory": 1, "sampler_fid": 1, "claims": 1, "all": 1}

    edited = yaml.safe_load(yaml.safe_dump(config))
    edited["physics"]["max_deviation"] = 0.5
    write_config(workdir, edited)
    assert scheduled(workdir) == {"physics_report": 1, "export_openfwi": 1, **after_filter(config), "all": 1}

    edited = yaml.safe_load(yaml.safe_dump(config))
    edited["fid"]["num_baseline"] = 3  # the real data's features stay
    write_config(workdir, edited)
    assert scheduled(workdir) == {"fid_variant": 1, "fid_table": 1, "claims": 1, "all": 1}

    edited = yaml.safe_load(yaml.safe_dump(config))
    edited["inversionnet"]["hard_train_fraction"] = 0.75  # only Table 4 and its hard sets
    write_config(workdir, edited)
    hard, seeds = len(config["inversionnet"].get("seismic", SEISMIC_KINDS)), len(config["inversionnet"]["seeds"])
    assert scheduled(workdir) == {"hardest_generated": hard, "train_inversionnet": hard * seeds,
                                  "evaluate_inversionnet": (hard + 2) * seeds, "inversionnet_tables": 1, "claims": 1,
                                  "all": 1}

    edited = yaml.safe_load(yaml.safe_dump(config))
    edited["refine"]["candidates"] = 2
    write_config(workdir, edited)
    assert scheduled(workdir) == {**refine_on, "all": 1}

    edited = yaml.safe_load(yaml.safe_dump(config))
    edited["scale"] = "tiny-renamed"  # a label no rule reads
    write_config(workdir, edited)
    assert scheduled(workdir) == {}
    write_config(workdir, config)


def test_a_training_rule_with_two_gpus_runs_two_processes(tiny_run):
    """stage1.gpus: 2 starts the training through torchrun (two gloo processes on this CPU
    machine) and ends where the 1-process run ends: the batch size is global."""
    workdir, config = tiny_run
    weights = {}
    for gpus in (2, 1):
        edited = yaml.safe_load(yaml.safe_dump(config))
        edited["stage1"]["gpus"] = gpus
        edited["stage1"]["losses"]["disc_start"] = 100  # no discriminator: CPU BatchNorm is per process
        write_config(workdir, edited)
        snakemake(workdir, "results/stage1/1vq/model.pt")
        log = (workdir / "logs/train_stage1/1vq.log").read_text()
        assert f"{gpus} process(es)" in log
        weights[gpus] = torch.load(workdir / "results/stage1/1vq/model.pt", weights_only=False)["modules"]["autoencoder"]
    write_config(workdir, config)
    largest = max(float((weights[2][k].float() - weights[1][k].float()).abs().max()) for k in weights[1])
    assert largest < 1e-4, largest


def test_a_killed_training_job_resumes_on_rerun(tiny_run, tmp_path):
    """SIGKILL the whole snakemake process group mid-training (a preempted or failed SLURM job),
    then rerun as a user would (--unlock, then the same target): the training resumes from
    its last checkpoint and ends with the weights of an uninterrupted run."""
    import signal
    import time

    workdir, config = tiny_run
    edited = yaml.safe_load(yaml.safe_dump(config))
    edited["stage1"]["training"].update(max_steps=60, checkpoint_every_steps=4, early_stop_patience=None)
    edited["stage1"]["losses"]["disc_start"] = 30
    write_config(workdir, edited)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    command = [*SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), "--cores", "2",
               "results/stage1/1vq/model.pt"]
    before = set((workdir / "results/stage1/1vq/runs").iterdir())
    job = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not any(p.name.startswith("step_") for run in
                                             set((workdir / "results/stage1/1vq/runs").iterdir()) - before
                                             for p in (run / "checkpoints").glob("*.pt")):
        time.sleep(0.2)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    (run,) = set((workdir / "results/stage1/1vq/runs").iterdir()) - before
    assert not (run / "final.pt").exists(), "the training finished before it could be killed"

    snakemake(workdir, "--unlock")
    snakemake(workdir, "--rerun-incomplete", "results/stage1/1vq/model.pt")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed_from"] and summary["steps"] == 60
    record = json.loads((workdir / "results/stage1/1vq/train.json").read_text())  # the rule's record of the resume
    assert record["resumed_from"] and record["steps"] == 60 and record["seconds"] > 0
    resumed = torch.load(workdir / "results/stage1/1vq/model.pt", weights_only=False)["modules"]["autoencoder"]

    settings = {key: edited["stage1"][key] for key in ("model", "discriminator", "losses", "training")}
    subprocess.run([Path(sys.executable).parent / "wavediffusion", "train-stage1", "--dataset",
                    str(workdir / "results/data/dataset.zarr"), "--variant", "1vq", "--settings", json.dumps(settings),
                    "--threads", "2", "--out", str(tmp_path / "model.pt"), "--record", str(tmp_path / "train.json")],
                   check=True, capture_output=True, env=env)
    uninterrupted = torch.load(tmp_path / "model.pt", weights_only=False)["modules"]["autoencoder"]
    write_config(workdir, config)
    for name in uninterrupted:
        assert torch.equal(resumed[name], uninterrupted[name]), name


def test_configfile_on_the_command_line_replaces_config_yaml(tmp_path):
    """--configfile X uses X alone (schema defaults fill the rest): no key of config.yaml leaks in."""
    config = yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())
    write_config(tmp_path, config)  # config.yaml: tiny, whose stage1.model sets dead_code_steps
    other = yaml.safe_load(yaml.safe_dump(config))
    del other["stage1"]["model"]["dead_code_steps"]
    other["stage1"]["model"]["codebook_size"] = 32
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other))
    printed = snakemake(tmp_path, "--dry-run", "--printshellcmds", "--configfile", str(tmp_path / "other.yaml"),
                        "--", "results/stage1/1vq/model.pt").stdout
    command = next(line for line in printed.splitlines() if "wavediffusion train-stage1" in line)
    assert '"codebook_size": 32' in command
    assert "dead_code_steps" not in command


def test_nested_config_overrides_merge_into_the_file_with_their_types(tmp_path):
    """--config section={...}: merged into config.yaml's section, each value read as in a YAML
    file (Snakemake hands them over as text: "5", "null")."""
    write_config(tmp_path, yaml.safe_load((REPO / "config" / "tiny.yaml").read_text()))
    printed = snakemake(tmp_path, "--dry-run", "--printshellcmds", "--config",
                        "stage1={'training': {'max_steps': 5}, 'model': {'codebook_size': 32}}",
                        "sampling={num_pairs: 12, shard_size: 4}", 'data={"openfwi_root": null}', "--", "all").stdout
    command = next(line for line in printed.splitlines() if "wavediffusion train-stage1" in line)
    assert '"max_steps": 5,' in command and '"codebook_size": 32,' in command  # numbers, not "5"
    assert '"dead_code_steps": 20' in command and '"lr": 0.001' in command  # tiny's other keys stay
    table = printed.split("Job stats:")[1].split("total")[0]
    assert re.search(r"^sample_shard\s+3\s*$", table, re.MULTILINE)  # 12 pairs in shards of 4


@pytest.mark.parametrize(
    "entry, words",
    [
        ("sampling={num_pairs: ten}", r"  sampling\.num_pairs: 'ten' is not of type 'integer'\n  \(--config set sampling"),
        ("sampling_num_pairs=5", r"\('sampling_num_pairs' was unexpected\)\n  \(--config set sampling_num_pairs"),
        ("sampling.num_pairs=5", r"Config entry must start with a valid identifier"),  # Snakemake's own refusal
    ],
)
def test_config_overrides_that_cannot_work_stop_the_run(tmp_path, entry, words):
    write_config(tmp_path, yaml.safe_load((REPO / "config" / "tiny.yaml").read_text()))
    with pytest.raises(AssertionError, match=words):
        snakemake(tmp_path, "--dry-run", "--config", entry, "--", "all")


def test_a_second_config_file_after_the_same_flag_is_merged_over_the_first(tmp_path):
    """What to use where --config cannot do: --configfile config.yaml more.yaml (one flag; a second
    --configfile flag would replace the first's files)."""
    write_config(tmp_path, yaml.safe_load((REPO / "config" / "tiny.yaml").read_text()))
    (tmp_path / "more.yaml").write_text("stage1:\n  model: {codebook_size: 32}\n")
    printed = snakemake(tmp_path, "--dry-run", "--printshellcmds", "--configfile", str(tmp_path / "config.yaml"),
                        str(tmp_path / "more.yaml"), "--", "results/stage1/1vq/model.pt").stdout
    command = next(line for line in printed.splitlines() if "wavediffusion train-stage1" in line)
    assert '"codebook_size": 32,' in command and '"dead_code_steps": 20' in command


def test_paper_plan_through_the_slurm_profile(tmp_path):
    """`snakemake -n --profile slurm all` on config/paper.yaml: the jobs a paper run submits,
    and a GPU requested by exactly the rules that train, encode, decode or sample."""
    write_config(tmp_path, yaml.safe_load((REPO / "config" / "paper.yaml").read_text()))
    command = [*SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
               "--profile", "slurm", "--dry-run", "all"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)  # the profile is ./slurm
    assert result.returncode == 0, result.stderr[-3000:]
    variants = 2  # paper: 1vq and 2vq
    per_variant = ("train_stage1", "encode_latents", "evaluate_stage1", "train_stage2", "diffusion_trajectory")
    table = result.stdout.split("Job stats:")[1].split("total")[0]
    counts = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.MULTILINE)}
    shards = 375_000 // 25_000  # paper: sampling.num_pairs / sampling.shard_size
    # Table 2: real + 2 variants x 2 seismic; Table 3: x 2 percents; Table 4; the filter's table: x 2; x 3 seeds
    arms = (1 + 4 + 2 + 4 * 2 + 1 + 4 + 4 * 2) * 3
    after_samples = ("physics_report", "memorisation", "export_openfwi", "fid_variant", "sampler_fid",
                     "refine_inversion")
    separate = ("train_separate_stage1", "encode_separate_latents", "train_separate_stage2", "sample_separate")
    assert counts == {"download_openfwi": 10, "preprocess": 1, "pde_floor": 1, "velocity_figure": 1,
                      **{rule: variants for rule in per_variant}, "stage1_metrics": 1, "create_pairs_store": variants,
                      "sample_shard": variants * shards, "check_shard": variants * shards, "gather_samples": variants,
                      **{rule: variants for rule in after_samples}, "fid_reference": 1, "fid_table": 1,
                      "train_inversionnet": arms, "evaluate_inversionnet": arms, "hardest_generated": 4,
                      "inversionnet_tables": 1, "refine_table9": 1, "refine_table7": 1, "claims": 1,
                      **{rule: 2 for rule in separate}, "check_independent_pairs": 1, "table8": 1, "all": 1}
    jobs = re.findall(r"^(?:local)?rule (\w+):\n(.*?)(?=^\S|\Z)", result.stdout, re.MULTILINE | re.DOTALL)
    gpus = {}
    for rule, body in jobs:
        resources = re.search(r"resources: (.*)", body).group(1) if "resources:" in body else ""
        gpus.setdefault(rule, set()).add(re.search(r"\bgpu=(\d+)", resources).group(1) if "gpu=" in resources else "0")
    gpu_rules = {*per_variant, "sample_shard", "check_shard", "memorisation", "export_openfwi", "fid_reference", "fid_variant",
                 "sampler_fid", "train_inversionnet", "hardest_generated", "evaluate_inversionnet", "refine_inversion",
                 *separate, "check_independent_pairs", "table8"}
    assert {rule for rule, counts_ in gpus.items() if counts_ != {"0"}} == gpu_rules
    assert all(gpus[rule] == {"1"} for rule in gpu_rules)


def test_science_plan_reaches_the_claims(tmp_path):
    """config/science.yaml plans the one-GPU chain of benchmarks/h100_science_plan.sh: the two
    real families, one variant, two sampling shards, the eight decoded-seismic InversionNet
    arms (Tables 2-4 and the filter's) with three seeds each, and the claims."""
    write_config(tmp_path, yaml.safe_load((REPO / "config" / "science.yaml").read_text()))
    plan = (REPO / "benchmarks" / "h100_science_plan.sh").read_text()
    targets = re.search(r'SCIENCE_TARGETS:-"([^"]+)"', plan).group(1).split()
    command = [*SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path), "--dry-run", *targets]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    table = result.stdout.split("Job stats:")[1].split("total")[0]
    counts = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.MULTILINE)}
    assert counts["simulate"] == 2 and counts["train_stage1"] == counts["train_stage2"] == 1
    assert counts["sample_shard"] == counts["check_shard"] == 2
    assert counts["train_inversionnet"] == counts["evaluate_inversionnet"] == 8 * 3
    # 27 jobs besides the InversionNet runs, each of which trains and evaluates
    assert counts["memorisation"] == counts["claims"] == counts["sampler_fid"] == 1
    assert sum(counts.values()) == 27 + 2 * 8 * 3


def load_benchmark(name: str):
    """A module of benchmarks/ (not a package), imported from its file."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_science_plan_on_eight_gpus(tmp_path):
    """benchmarks/science_config.py's recipe for one machine of 8 GPUs (the run of every table
    with three seeds), planned with 8 GPUs as the resource: each training job takes all 8 at
    the one-GPU run's batch per GPU, with the one-GPU run's steps, learning rate and schedule
    per step; both variants, Table 8's baselines, one sampling shard per GPU and variant,
    every InversionNet arm with three seeds on one GPU each."""
    science_config = load_benchmark("science_config")
    one, eight = science_config.science_config(), science_config.science_config(gpus=8)
    for stage in ("stage1", "stage2"):
        one_gpu, eight_gpus = one[stage]["training"], eight[stage]["training"]
        assert eight[stage]["gpus"] == 8 and eight_gpus["batch_size"] == 8 * one_gpu["batch_size"]
        assert (eight_gpus["max_steps"], eight_gpus["lr"]) == (one_gpu["max_steps"], one_gpu["lr"])
        assert eight_gpus["lr_decay"] ** 8 == pytest.approx(one_gpu.get("lr_decay", 1.0))  # per epoch of 8x the steps
    assert eight["stage2"]["training"]["validate_every_epochs"] == 8 * one["stage2"]["training"]["validate_every_epochs"]
    write_config(tmp_path, eight)
    command = [*SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path), "--dry-run",
               "--cores", "64", "--resources", "gpu=8", "--", "all"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    table = result.stdout.split("Job stats:")[1].split("total")[0]
    counts = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.MULTILINE)}
    assert counts["train_stage1"] == counts["train_stage2"] == 2  # 1vq and 2vq
    assert counts["sample_shard"] == counts["check_shard"] == 2 * 8
    assert counts["train_separate_stage1"] == counts["train_separate_stage2"] == 2 and counts["table8"] == 1
    assert counts["train_inversionnet"] % 3 == 0 and counts["train_inversionnet"] >= 3 * 8
    stage1_job = result.stdout.split("rule train_stage1:")[1].split("\n\n")[0]
    arm_job = result.stdout.split("rule train_inversionnet:")[1].split("\n\n")[0]
    assert "gpu=8" in stage1_job and "gpu=1" in arm_job, (stage1_job, arm_job)


def test_multi_node_training_plan(tmp_path):
    """stage1.gpus 4 x stage1.nodes 2: one SLURM job with 8 GPUs on 2 nodes, whose command
    is an srun of one task per GPU."""
    config = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    config["stage1"].update(gpus=4, nodes=2)
    write_config(tmp_path, config)
    command = [*SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path), "--profile", "slurm",
               "--dry-run", "--printshellcmds", "results/stage1/1vq/model.pt"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    job = result.stdout.split("rule train_stage1:")[1]
    assert "gpu=8, nodes=2, tasks=8, tasks_per_gpu=1, mpi=srun" in job
    assert "srun --nodes 2 --ntasks-per-node 4 --gpus-per-task 1 wavediffusion train-stage1" in job


@pytest.mark.parametrize("gpus, nodes, threads", [(1, 1, 9), (2, 1, 18), (4, 2, 9)])
def test_training_threads_follow_the_dataloader_workers(tmp_path, gpus, nodes, threads):
    """paper.yaml asks for 8 DataLoader workers per training process: a CPU each, and one for
    the loop. torchrun's processes on one node share the job's task; over several nodes each
    process is a task of its own, which SLURM gives the job's threads."""
    config = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    for stage in ("stage1", "inversionnet"):
        config[stage].update(gpus=gpus, nodes=nodes)
    write_config(tmp_path, config)
    # --cores above every count: a dry run caps a job's threads at the cores it is given
    printed = snakemake(tmp_path, "--dry-run", "--cores", "64", "--printshellcmds", "--",
                        "results/stage1/1vq/model.pt", "results/inversionnet/real/seed0/model.pt").stdout
    for rule in ("train_stage1", "train_inversionnet"):
        job = printed.split(f"rule {rule}:")[1].split("Shell command:")[0]
        assert re.search(r"^\s*threads: (\d+)$", job, re.MULTILINE).group(1) == str(threads), job


def test_invalid_config_stops_the_run_naming_the_key(tmp_path):
    config = yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())
    config["data"]["families"] = ["FlatVel-A", "FlatVel-Z"]
    write_config(tmp_path, config)
    with pytest.raises(AssertionError, match=r"data\.families\[1\]: 'FlatVel-Z' is not one of"):
        snakemake(tmp_path, "--dry-run", "all")


def test_a_key_only_a_job_would_refuse_stops_the_run_before_any_job(tmp_path):
    config = yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())
    config["stage2"]["model"]["num_head"] = 2  # a typo of num_heads, in a free-form section
    write_config(tmp_path, config)
    with pytest.raises(AssertionError, match=r"the run config is invalid:\n  stage2\.model: unknown keys \['num_head'\]"):
        snakemake(tmp_path, "all")
    assert not (tmp_path / "results").exists()  # no job ran, nothing was written or removed


def test_the_snakefile_imports_no_torch():
    """Every Snakemake process parses the Snakefile, a SLURM job's included: the modules it
    imports must not pull in torch (about 5 s a process on the dev box)."""
    sources = [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]
    imports = [line.strip() for path in sources for line in path.read_text().splitlines()
               if re.match(r"\s*(from|import) wavediffusion", line)]
    assert imports, "no wavediffusion import found in the Snakefile"
    code = "\n".join([*(line.split("#")[0] for line in imports), "import sys", "print(sorted(m for m in sys.modules "
                      "if m.split('.')[0] in ('torch', 'deepwave')))"])
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", f"the Snakefile's imports {imports} load {result.stdout.strip()[:200]}"


def test_lint_is_clean():
    result = subprocess.run([*SNAKEMAKE, "--lint", "--snakefile", str(REPO / "Snakefile"), "--directory", str(REPO)],
                            capture_output=True, text=True, timeout=300)
    assert "Congratulations" in result.stdout + result.stderr, result.stdout + result.stderr
