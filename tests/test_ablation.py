"""Table 8, joint vs separate diffusion: the single-modality autoencoders, their samples paired
by index, and the rules on the tiny config."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
import torch
import yaml
import zarr

from wavediffusion.data.store import open_dataset, representation_of
from wavediffusion.evaluation.table8 import COLUMNS, Table8Settings
from wavediffusion.models.autoencoder import AutoencoderConfig, VQAutoencoder
from wavediffusion.models.single_modality import SingleModalityAutoencoder
from wavediffusion.sampling.shard import SamplingSettings
from wavediffusion.seeds import Stream, derive_seed
from wavediffusion.training.single_modality import load_single_modality, train_single_modality
from wavediffusion.training.stage1 import load_autoencoder, load_stage1_model

from conftest import REPO, snakemake, write_config
from test_preprocess import make_small_store
from test_stage1 import settings
from tiny_models import save_tiny_stage2

MODALITIES = ("seismic", "velocity")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("openfwi")
    return make_small_store(root, root.parent / "ablation.zarr", test_per_family=2)


@pytest.fixture(scope="module")
def trained(store, tmp_path_factory):
    """{modality: (final weights file, the loop's summary)} after 8 steps, the adversarial step from the 4th."""
    runs = {}
    for modality in MODALITIES:
        folder = tmp_path_factory.mktemp(f"{modality}-only")
        torch.manual_seed(0)
        runs[modality] = (folder / "final.pt", train_single_modality(store, modality, settings(), folder))
    return runs


@pytest.mark.parametrize("modality", MODALITIES)
def test_each_single_modality_model_trains_and_decodes_its_modality_at_the_joint_latent_shape(store, trained,
                                                                                              modality):
    path, summary = trained[modality]
    assert summary["steps"] == 8
    with open(path.parent / "log.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row["train/loss"]]
    assert not rows[2]["train/d_loss"] and rows[3]["train/d_loss"]  # the discriminator from step 4 on, as Stage 1's
    assert float(rows[-1]["train/rec"]) < float(rows[0]["train/rec"])
    model = load_single_modality(path)
    joint = VQAutoencoder(model.config)
    assert model.modality == modality and model.variant == f"{modality}-only"
    # the joint model's networks of that modality, and only those: same shapes, same parameter counts
    own = {"seismic": (joint.encoder, joint.seismic_decoder), "velocity": (None, joint.velocity_decoder)}[modality]
    if own[0] is not None:
        assert [p.shape for p in model.encoder.parameters()] == [p.shape for p in own[0].parameters()]
    assert [p.shape for p in model.decoder.parameters()] == [p.shape for p in own[1].parameters()]
    data = torch.from_numpy(open_dataset(store)["test"][modality][:3])
    with torch.no_grad():
        z = model.latent_for_diffusion(data)
        decoded = model.decode_latent(z)
    assert z.shape == (3, *joint.config.latent_shape)  # the same Stage-2 UNet models it
    assert decoded.shape == data.shape and decoded.abs().max() <= 1.0
    assert load_stage1_model(path).modality == modality


def test_the_velocity_encoder_mirrors_the_velocity_decoder():
    config = AutoencoderConfig.tiny()
    model = SingleModalityAutoencoder(config, "velocity")
    widths = [level[0].conv1.out_channels for level in model.encoder.levels]
    assert widths == [config.base_channels * m for m in config.velocity_channel_mult]
    assert model.encoder(torch.zeros(2, *config.velocity_shape)).shape == (2, *config.latent_shape)


def test_a_single_modality_weights_file_is_no_joint_autoencoder(trained):
    with pytest.raises(ValueError, match="a single-modality autoencoder .* not the joint Stage-1 model"):
        load_autoencoder(trained["velocity"][0])


def test_encode_latents_reads_the_models_own_modality(store, trained, tmp_path):
    from wavediffusion.training.stage1 import encode_latents

    path = trained["velocity"][0]
    out = tmp_path / "latents.zarr"
    encode_latents(path, store, out, batch_size=3, samples_per_shard=4, progress=False)
    latents = zarr.open_group(str(out), mode="r")
    assert latents.attrs["variant"] == "velocity-only"
    model = load_single_modality(path)
    with torch.no_grad():
        expected = model.latent_for_diffusion(torch.from_numpy(open_dataset(store)["train"]["velocity"][:]))
    np.testing.assert_allclose(latents["train"]["latent"][:], expected.numpy(), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def stage2_models(tmp_path_factory):
    """Two tiny diffusion models over the tiny latents, of different weights."""
    folder = tmp_path_factory.mktemp("stage2")
    paths = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        save_tiny_stage2(folder / f"unet{seed}.pt", num_steps=20, scale_factor=1.0)
        paths.append(folder / f"unet{seed}.pt")
    return paths


SAMPLER = SamplingSettings(sampler="ddim", steps=4, eta=1.0, batch_size=2, precision="fp32", seed=3)


def test_the_two_modalities_start_from_independent_noise(trained, stage2_models, tmp_path):
    """With one diffusion model for both, the samples' latents differ only through their seeds:
    the pairing shares no draw. Such pairs (one diffusion model) are refused."""
    from wavediffusion.evaluation.joint_vs_separate import independent_pair_deviation, open_samples, sample_separate

    stores = {}
    for modality in MODALITIES:
        stores[modality] = tmp_path / f"{modality}.zarr"
        sample_separate(trained[modality][0], stage2_models[0], stores[modality], 5, SAMPLER, torch.device("cpu"),
                        progress=False)
    seismic, velocity = (open_samples(stores[m], m) for m in MODALITIES)
    assert seismic.attrs["seed"] != velocity.attrs["seed"]
    joint_shard_seeds = {derive_seed(SAMPLER.seed, Stream.SAMPLING_SHARD, k) for k in range(100)}  # sample_shard's
    assert {seismic.attrs["seed"], velocity.attrs["seed"]}.isdisjoint(joint_shard_seeds)
    latents = seismic["latent"][:], velocity["latent"][:]
    assert np.isfinite(latents[0]).all() and np.abs(latents[0] - latents[1]).min() > 0  # no equal draw anywhere
    assert seismic["samples"].shape == (5, 3, 64, 16) and velocity["samples"].shape == (5, 1, 16, 16)
    with pytest.raises(ValueError, match="would not be independent"):
        independent_pair_deviation(seismic, velocity, 5, None, "deepwave", 2, torch.device("cpu"))
    with pytest.raises(ValueError, match="holds velocity samples where seismic ones"):
        open_samples(stores["velocity"], "seismic")


def test_verify_reads_a_samples_store_and_names_its_rule(trained, stage2_models, tmp_path, capsys):
    from wavediffusion import cli
    from wavediffusion.evaluation.joint_vs_separate import sample_separate

    store = tmp_path / "samples.zarr"
    sample_separate(trained["seismic"][0], stage2_models[0], store, 5, SAMPLER, torch.device("cpu"), progress=False)
    assert cli.main(["verify", str(store)]) == 0
    assert "a separate samples store, intact" in capsys.readouterr().out
    (store / "samples" / "c" / "1" / "0" / "0" / "0").unlink()  # rows 2-3 (shards of batch_size 2)
    assert cli.main(["verify", str(store)]) == 2
    assert "rerun the sample_separate rule" in capsys.readouterr().err


def test_independent_pairs_pair_sample_i_with_sample_i(store, trained, stage2_models, tmp_path):
    from wavediffusion.data.transforms import velocity_from_model
    from wavediffusion.evaluation.joint_vs_separate import independent_pair_deviation, open_samples, sample_separate
    from wavediffusion.physics.deviation import per_sample_mse, simulate_in_model_space

    for modality, unet in zip(MODALITIES, stage2_models):  # each modality its own diffusion model
        sample_separate(trained[modality][0], unet, tmp_path / f"{modality}.zarr", 5, SAMPLER, torch.device("cpu"),
                        progress=False)
    seismic, velocity = (open_samples(tmp_path / f"{m}.zarr", m) for m in MODALITIES)
    rep = representation_of(open_dataset(store))
    deviation, examples = independent_pair_deviation(seismic, velocity, 5, rep, "deepwave", 2, torch.device("cpu"),
                                                     progress=False)
    assert deviation.shape == (5,) and len(examples) == 3
    s, v = torch.from_numpy(seismic["samples"][3:4]), torch.from_numpy(velocity["samples"][3:4])
    expected = per_sample_mse(s, simulate_in_model_space(velocity_from_model(v, rep), rep, "deepwave", 1))
    assert deviation[3] == pytest.approx(float(expected[0]), rel=1e-5)
    with pytest.raises(ValueError, match="number 5, expected 4"):
        independent_pair_deviation(seismic, velocity, 4, rep, "deepwave", 2, torch.device("cpu"))


@pytest.mark.parametrize("values, words", [
    ({"num_samples": 1}, "ablation.table8.num_samples must be null or an integer of at least 2"),
    ({"enabled": "yes"}, "ablation.table8.enabled must be true or false"),
    ({"samples": 10}, r"ablation.table8: unknown keys \['samples'\]"),
])
def test_bad_settings_name_the_key(values, words):
    with pytest.raises(ValueError, match=words):
        Table8Settings.from_dict(values)


def test_the_sample_count_defaults_to_the_fid_tables():
    assert Table8Settings().sample_count(None, 32) == 32  # fid.num_generated null: every pair of the store
    assert Table8Settings().sample_count(2000, 375_000) == 2000
    assert Table8Settings().sample_count(50, 32) == 32  # FID scores at most the store
    assert Table8Settings(num_samples=10).sample_count(2000, 32) == 10
    with pytest.raises(ValueError, match=r"ablation.table8.num_samples \(40\) exceeds sampling.num_pairs \(32\)"):
        Table8Settings(num_samples=40).sample_count(None, 32)
    assert Table8Settings(enabled=False, num_samples=40).sample_count(None, 32) == 40  # off: not checked


def test_a_sample_count_beyond_the_store_stops_the_run_naming_the_key(tmp_path):
    config = yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())
    config["ablation"] = {"table8": {"num_samples": 6}}  # the tiny store holds 5 pairs
    write_config(tmp_path, config)
    with pytest.raises(AssertionError, match=r"ablation\.table8\.num_samples \(6\) exceeds sampling\.num_pairs \(5\)"):
        snakemake(tmp_path, "--dry-run", "all")


TABLE8 = "results/ablation/table8.csv"
FIGURE = "results/ablation/pairs.png"
CHAIN = {"train_separate_stage1": 2, "encode_separate_latents": 2, "train_separate_stage2": 2, "sample_separate": 2,
         "check_independent_pairs": 1, "table8": 1}


def jobs(workdir, *args) -> dict[str, int]:
    """Rule -> job count of a dry run of `args` (empty when nothing would run)."""
    output = snakemake(workdir, "--dry-run", *args).stdout
    if "Nothing to be done" in output:
        return {}
    table = output.split("Job stats:")[1].split("total")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.MULTILINE)}


def read(path) -> list[dict]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_the_tiny_run_writes_table8_beside_the_joint_models_numbers(tiny_run):
    workdir, config = tiny_run
    n = config["sampling"]["num_pairs"]  # the FID table's count: fid.num_generated is null in tiny
    with open(workdir / TABLE8) as handle:
        assert tuple(csv.DictReader(handle).fieldnames) == COLUMNS
    rows = read(workdir / TABLE8)
    assert [(r["variant"], r["quantity"], r["modality"]) for r in rows] == [
        ("1vq", "fid", "seismic"), ("1vq", "fid", "velocity"), ("1vq", "pde_deviation", "pair")]
    assert all(int(r["n"]) == n for r in rows)
    # the joint FID is the FID table's: same code, weights, reference and count
    fid = {(r["source"], r["modality"]): r for r in read(workdir / "results/fid/1vq/fid.csv")}
    for row in rows[:2]:
        table1 = fid[("diffusion", row["modality"])]
        assert float(row["joint"]) == pytest.approx(float(table1["fid"]), rel=1e-6)
        assert row["weights_sha256"] == table1["weights_sha256"] and row["n_reference"] == table1["n_reference"]
        assert float(row["separate"]) > 0 and float(row["separate"]) != float(row["joint"])
    pde = rows[2]
    pairs = zarr.open_group(str(workdir / "results/samples/1vq/pairs.zarr"), mode="r")
    # (rel=1e-6: the CSVs hold 7 significant digits)
    assert float(pde["joint"]) == pytest.approx(float(pairs["deviation"][:n].mean()), rel=1e-6)
    independent = read(workdir / "results/ablation/independent_pairs.csv")
    assert [int(r["pair"]) for r in independent] == list(range(n))
    assert float(pde["separate"]) == pytest.approx(np.mean([float(r["deviation"]) for r in independent]), rel=1e-6)
    floor = read(workdir / "results/physics/pde_floor.csv")
    for column, velocity_input in (("data_floor", "model64"), ("chance", "model64_other_pair")):
        chosen = [r for r in floor if r["backend"] == "deepwave" and r["velocity_input"] == velocity_input]
        mean = sum(int(r["n"]) * float(r["deviation_mean"]) for r in chosen) / sum(int(r["n"]) for r in chosen)
        assert float(pde[column]) == pytest.approx(mean, rel=1e-6)
    assert float(pde["chance"]) > float(pde["data_floor"]) > 0
    # each separate model trained with the joint model's budget, on its own modality
    for modality in MODALITIES:
        record = json.loads((workdir / f"results/ablation/{modality}/stage1/train.json").read_text())
        assert record["modality"] == modality and record["steps"] == config["stage1"]["training"]["max_steps"]
        stage2 = torch.load(workdir / f"results/ablation/{modality}/stage2/model.pt", weights_only=False)
        assert stage2["step"] == config["stage2"]["training"]["max_steps"]
        samples = zarr.open_group(str(workdir / f"results/ablation/{modality}/samples.zarr"), mode="r")
        assert samples.attrs["modality"] == modality and samples["samples"].shape[0] == n
    assert (workdir / FIGURE).stat().st_size > 10_000
    for rule in CHAIN:
        assert list((workdir / "benchmarks/out").glob(f"{rule}*")), rule


def test_table8_reruns_what_its_settings_touch_and_turns_off(tiny_run):
    workdir, config = tiny_run
    assert jobs(workdir, TABLE8, FIGURE) == {}
    edited = yaml.safe_load(yaml.safe_dump(config))
    try:  # dry runs only: the shared tiny run's results stay as they are
        edited["ablation"] = {"table8": {"num_samples": 4}}
        write_config(workdir, edited)
        assert jobs(workdir, TABLE8, FIGURE) == {"sample_separate": 2, "check_independent_pairs": 1, "table8": 1}
        edited["ablation"] = {"table8": {"enabled": False}}
        write_config(workdir, edited)
        assert not set(CHAIN) & set(jobs(workdir, "--forceall", "all"))
        assert set(CHAIN) <= set(jobs(workdir, "--forceall", TABLE8))  # a named target still builds
    finally:
        write_config(workdir, config)
