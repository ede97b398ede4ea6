"""The deviation-along-the-trajectory experiment (evaluation/trajectory.py, run by the step
run_diffusion_trajectory) on tiny, hand-built artifacts: an untrained tiny autoencoder, its
latents, an untrained tiny UNet."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict

import numpy as np
import pytest
import torch
import zarr

from wavediffusion.data.transforms import Representation
from wavediffusion.evaluation.stage1 import TABLE5_COLUMNS, decode_and_check
from wavediffusion.evaluation.trajectory import (
    CLEAN_STEP,
    DDIM_COLUMNS,
    DEVIATION_COLUMNS,
    TrajectorySettings,
    sampler_key,
    split_key,
)
from wavediffusion.files import sha256_of, write_csv
from wavediffusion.steps.fid import run_sampler_fid
from wavediffusion.steps.stage2 import run_diffusion_trajectory

from tiny_models import save_tiny_autoencoder, save_tiny_stage2

T = 50
N_TRAIN = 3
REP = Representation(time_samples=64, receivers=16, velocity_size=16, seismic_log_min=-4.0, seismic_log_max=4.0)
SETTINGS = TrajectorySettings(n_forward=10, n_backward=2, steps=(25, 0, T - 1), ddim_steps=(5, 2),
                              dpm_solver_steps=(4,), n_ddim=2, batch_size=2, precision="fp32", seed=3)
STAGE1_ROWS = [
    {"variant": "1vq", "latents": latents, "weight": weight, "n": 10, "deviation_mean": mean, "deviation_std": 0.01,
     "deviation_median": mean}
    for latents, weight, mean in (("test_reconstruction", "", 0.02), ("train_reconstruction", "", 0.03),
                                  ("random_gaussian", "", 0.05), ("interpolation", 0.5, 0.04))
]


def write_latents(path, latents: np.ndarray, model_sha256: str):
    """A latents store in encode_latents' format (training/stage1.py)."""
    root = zarr.open_group(str(path), mode="w")
    stats = {}
    for split, z in (("train", latents), ("val", latents[:1])):
        group = root.create_group(split)
        shape = z.shape[1:]
        group.create_array("latent", shape=z.shape, chunks=(1, *shape), shards=(len(z), *shape), dtype="float32")[:] = z
        group.create_array("family", data=np.zeros(len(z), dtype=np.int64), chunks=(len(z),))
        stats[split] = {"n": len(z), "channel_mean": z.mean(axis=(0, 2, 3)).tolist(),
                        "channel_std": z.std(axis=(0, 2, 3)).tolist(), "std": float(z.std())}
    root.attrs.update({"variant": "1vq", "latent_shape": list(latents.shape[1:]), "model_sha256": model_sha256,
                       "dataset": "none", "stats": stats})
    return path


@pytest.fixture(scope="module", autouse=True)
def on_the_cpu():
    """The steps take the GPU when there is one; these tests compare with CPU numbers."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.cuda, "is_available", lambda: False)
        yield


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """Stage-1 weights, latents, a dataset store (only its representation), Stage-2 weights
    and Stage 1's table5.csv, as the rule gets them."""
    root = tmp_path_factory.mktemp("trajectory")
    stage1 = root / "stage1.pt"
    autoencoder = save_tiny_autoencoder(stage1)
    with torch.no_grad():  # the latents encode_latents would write: encoded (quantised) seismic
        seismic = torch.rand(N_TRAIN, *REP.seismic_shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
        latents = autoencoder.latent_for_diffusion(seismic).numpy()
    store = write_latents(root / "latents.zarr", latents, sha256_of(stage1))
    dataset = root / "dataset.zarr"
    zarr.open_group(str(dataset), mode="w").attrs["representation"] = REP.to_attrs()

    stage2 = root / "stage2.pt"
    save_tiny_stage2(stage2, num_steps=T, scale_factor=1.0 / float(latents.std()))
    table5 = root / "stage1_table5.csv"
    write_csv(STAGE1_ROWS, table5, TABLE5_COLUMNS)
    return {"stage1": stage1, "stage2": stage2, "latents": store, "dataset": dataset, "table5": table5}


def run(artifacts, out, settings=SETTINGS):
    paths = {name: out / name for name in ("deviation.csv", "table5.csv", "ddim.csv", "figure.png", "strip.png",
                                           "final_latents.npz")}
    run_diffusion_trajectory(str(artifacts["stage1"]), str(artifacts["stage2"]), str(artifacts["latents"]),
                             str(artifacts["dataset"]), str(artifacts["table5"]), json.dumps(asdict(settings)),
                             *map(str, paths.values()))
    return paths


def read(path):
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        return reader.fieldnames, list(reader)


@pytest.fixture(scope="module")
def outputs(artifacts, tmp_path_factory):
    return run(artifacts, tmp_path_factory.mktemp("run_a"))


def test_deviation_csv_has_every_grid_step_in_both_directions(outputs):
    columns, rows = read(outputs["deviation.csv"])
    assert tuple(columns) == DEVIATION_COLUMNS
    expected_steps = [T - 1, 25, 0, CLEAN_STEP]  # from the noisiest step to the noise-free end
    assert [(int(r["step"]), r["direction"]) for r in rows] == (
        [(t, "forward") for t in expected_steps] + [(t, "backward") for t in expected_steps])
    for row in rows:
        assert int(row["n"]) == (N_TRAIN if row["direction"] == "forward" else 2)  # n_forward > the split: all of it
        assert math.isfinite(float(row["mean"])) and float(row["mean"]) > 0 and float(row["std"]) >= 0


def test_forward_clean_row_is_the_decoded_training_latents(artifacts, outputs):
    from wavediffusion.training.stage1 import load_autoencoder

    model = load_autoencoder(artifacts["stage1"])
    latents = torch.from_numpy(zarr.open_group(str(artifacts["latents"]), mode="r")["train"]["latent"][:])
    clean = decode_and_check(model, latents, REP, "deepwave", 2, desc="", progress=False)["deviation"]
    _, rows = read(outputs["deviation.csv"])
    forward = {int(r["step"]): float(r["mean"]) for r in rows if r["direction"] == "forward"}
    assert forward[CLEAN_STEP] == pytest.approx(float(clean.mean()), rel=1e-6)  # CSVs hold 7 digits
    assert forward[0] == pytest.approx(forward[CLEAN_STEP], rel=0.25)  # barely noised at t = 0


def test_table5_and_ddim_rows(outputs):
    columns, table5 = read(outputs["table5.csv"])
    assert tuple(columns) == TABLE5_COLUMNS
    assert [r["latents"] for r in table5] == [r["latents"] for r in STAGE1_ROWS] + [
        "diffusion_ddpm", "diffusion_ddim_2", "diffusion_ddim_5", "diffusion_ddim_2_eta1", "diffusion_ddim_5_eta1",
        "diffusion_dpmpp2m_4"]
    assert float(table5[0]["deviation_mean"]) == 0.02  # Stage 1's rows pass through unchanged
    diffusion = {r["latents"]: r for r in table5[len(STAGE1_ROWS):]}
    assert all(r["variant"] == "1vq" and r["n"] == "2" and not r["weight"] for r in diffusion.values())

    columns, ddim = read(outputs["ddim.csv"])
    assert tuple(columns) == DDIM_COLUMNS
    assert [(r["sampler"], int(r["steps"]), r["eta"]) for r in ddim] == [
        ("ddim", 2, "0"), ("ddim", 5, "0"), ("ddim", 2, "1"), ("ddim", 5, "1"), ("dpmpp2m", 4, ""), ("ddpm", T, "")]
    assert all(int(r["n"]) == 2 and float(r["seconds_per_sample"]) > 0 for r in ddim)
    # one set of final DDPM samples behind three outputs
    _, deviation = read(outputs["deviation.csv"])
    final = next(float(r["mean"]) for r in deviation if r["direction"] == "backward" and int(r["step"]) == CLEAN_STEP)
    assert float(diffusion["diffusion_ddpm"]["deviation_mean"]) == pytest.approx(final)
    assert float(ddim[-1]["mean"]) == pytest.approx(final)
    assert float(diffusion["diffusion_ddim_5"]["deviation_mean"]) == pytest.approx(float(ddim[1]["mean"]))


def test_final_latents_are_each_samplers_samples(artifacts, outputs):
    """final_latents.npz holds what ddim.csv measured: decoding a setting's latents again
    gives its deviation."""
    from wavediffusion.training.stage1 import load_autoencoder

    with np.load(outputs["final_latents.npz"]) as npz:
        assert str(npz["stage1_sha256"]) == sha256_of(artifacts["stage1"])
        finals = {key: npz[key] for key in npz.files if key != "stage1_sha256"}
    assert sorted(finals) == ["ddim-2", "ddim-2-eta1", "ddim-5", "ddim-5-eta1", "ddpm-50", "dpmpp2m-4"]
    assert all(z.shape == (2, 8, 8, 8) and z.dtype == np.float32 for z in finals.values())
    model = load_autoencoder(artifacts["stage1"])
    _, ddim = read(outputs["ddim.csv"])
    for row in ddim:
        z = torch.from_numpy(finals[sampler_key(row["sampler"], int(row["steps"]), float(row["eta"] or 0))])
        deviation = decode_and_check(model, z, REP, "deepwave", 2, desc="", progress=False)["deviation"]
        assert float(deviation.mean()) == pytest.approx(float(row["mean"]), rel=1e-6)
    assert not np.allclose(finals["ddim-2"], finals["ddim-5"])
    assert not np.allclose(finals["ddim-5"], finals["ddim-5-eta1"])  # η = 1 draws noise at every step


def test_sampler_fid_scores_each_setting_against_the_reference(artifacts, outputs, tmp_path):
    """One FID row per sampler setting, joined with its deviation and speed, plus the
    random-latent baseline at the same count; each FID is the reference's distance to that
    setting's decoded samples."""
    from wavediffusion.evaluation.fid import (
        fid_from_features,
        fid_helper_torchscript_path,
        inception_features,
        load_fid_inception,
        to_inception_images,
    )
    from wavediffusion.evaluation.sampler_fid import BASELINE, COLUMNS
    from wavediffusion.training.stage1 import load_autoencoder

    settings = json.dumps({"weights": str(fid_helper_torchscript_path()), "batch_size": 4})
    inception, weights = load_fid_inception(str(fid_helper_torchscript_path()))
    real = torch.rand(4, *REP.seismic_shape, generator=torch.Generator().manual_seed(5)) * 2 - 1
    real_velocity = torch.rand(4, 1, REP.velocity_size, REP.velocity_size,
                               generator=torch.Generator().manual_seed(6)) * 2 - 1
    reference = {"seismic": inception_features(inception, [to_inception_images(real, "seismic")]),
                 "velocity": inception_features(inception, [to_inception_images(real_velocity, "velocity")])}
    reference_npz = tmp_path / "reference.npz"
    np.savez(reference_npz, rows=np.arange(4), split="train", weights_source=weights["source"],
             weights_sha256=weights["sha256"], **reference)

    def sampler_fid(stage1, out_csv, figure):
        run_sampler_fid("1vq", str(stage1), str(artifacts["latents"]), str(reference_npz), settings,
                        str(outputs["final_latents.npz"]), str(outputs["ddim.csv"]), str(out_csv), str(figure), seed=0)

    sampler_fid(artifacts["stage1"], tmp_path / "samplers.csv", tmp_path / "samplers.png")
    columns, rows = read(tmp_path / "samplers.csv")
    assert tuple(columns) == COLUMNS
    assert [(r["sampler"], r["steps"], r["eta"]) for r in rows] == [
        ("ddpm", str(T), ""), ("ddim", "2", "0"), ("ddim", "5", "0"), ("ddim", "2", "1"), ("ddim", "5", "1"),
        ("dpmpp2m", "4", ""), (BASELINE, "", "")]
    assert all(int(r["n"]) == 2 and float(r["fid_seismic"]) > 0 and float(r["fid_velocity"]) > 0 for r in rows)
    _, ddim = read(outputs["ddim.csv"])
    deviation = {sampler_key(r["sampler"], int(r["steps"]), float(r["eta"] or 0)): float(r["mean"]) for r in ddim}
    assert all(float(r["deviation_mean"]) == deviation[sampler_key(r["sampler"], int(r["steps"]), float(r["eta"] or 0))]
               for r in rows[:-1])

    with np.load(outputs["final_latents.npz"]) as npz:
        seismic, velocity = load_autoencoder(artifacts["stage1"]).decode_latent(torch.from_numpy(npz["ddim-5"]))
    expected = fid_from_features(inception_features(inception, [to_inception_images(velocity.detach(), "velocity")]),
                                 reference["velocity"])
    assert float(rows[2]["fid_velocity"]) == pytest.approx(expected, rel=1e-5)
    assert (tmp_path / "samplers.png").stat().st_size > 10_000

    other = tmp_path / "other_stage1.pt"
    save_tiny_autoencoder(other, seed=1)
    with pytest.raises(ValueError, match="another Stage-1 model"):
        sampler_fid(other, tmp_path / "x.csv", tmp_path / "x.png")


def test_figures_are_written(outputs):
    for name in ("figure.png", "strip.png"):
        assert outputs[name].stat().st_size > 10_000


def test_same_seed_same_numbers(artifacts, outputs, tmp_path):
    again = run(artifacts, tmp_path)
    for name in ("deviation.csv", "table5.csv"):
        assert again[name].read_text() == outputs[name].read_text()
    strip_time = lambda rows: [{k: v for k, v in r.items() if k != "seconds_per_sample"} for r in rows]  # noqa: E731
    assert strip_time(read(again["ddim.csv"])[1]) == strip_time(read(outputs["ddim.csv"])[1])


@pytest.mark.parametrize("change, key", [
    ({"precision": "fp16"}, "precision"),
    ({"steps": (-1, 10)}, "steps"),
    ({"steps": (10, 10)}, "steps"),
    ({"steps": ()}, "steps"),
    ({"ddim_steps": (0,)}, "ddim_steps"),
    ({"dpm_solver_steps": (1,)}, "dpm_solver_steps"),
    ({"ddim_etas": (1.5,)}, "ddim_etas"),
    ({"ddim_etas": ()}, "ddim_etas"),
    ({"ddim_etas": (0, 0.0)}, "ddim_etas"),
    ({"n_forward": 0}, "n_forward"),
    ({"batch_size": 0}, "batch_size"),
    ({"backend": "devito"}, "backend"),
])
def test_bad_settings_name_their_key(change, key):
    section = "physics" if key == "backend" else r"stage2\.trajectory"  # the rule gives physics.backend
    with pytest.raises(ValueError, match=rf"{section}\.{key}"):
        TrajectorySettings(**{**asdict(SETTINGS), **change})


def test_settings_from_config_dict():
    settings = TrajectorySettings.from_dict({"steps": [999, 0, 500], "n_forward": 7})
    assert settings.steps == (0, 500, 999) and settings.n_forward == 7
    with pytest.raises(ValueError, match=r"stage2\.trajectory: unknown keys \['n_foward'\]"):
        TrajectorySettings.from_dict({"n_foward": 7})


def test_grid_and_inputs_are_checked_against_the_models(artifacts, tmp_path):
    with pytest.raises(ValueError, match=rf"stage2\.trajectory\.steps \[{T}\] lie outside \[0, {T - 1}\]"):
        run(artifacts, tmp_path, TrajectorySettings(**{**asdict(SETTINGS), "steps": (0, T)}))
    with pytest.raises(ValueError, match=r"stage2\.trajectory\.ddim_steps"):
        run(artifacts, tmp_path, TrajectorySettings(**{**asdict(SETTINGS), "ddim_steps": (T + 1,)}))
    other = tmp_path / "other_table5.csv"
    write_csv([{**STAGE1_ROWS[0], "variant": "2vq"}], other, TABLE5_COLUMNS)
    with pytest.raises(ValueError, match="variant"):
        run({**artifacts, "table5": other}, tmp_path)
    assert not (tmp_path / "deviation.csv").exists()


@pytest.mark.parametrize("setting", [("ddpm", 1000, 0.0), ("ddim", 50, 0.0), ("ddim", 50, 1.0), ("ddim", 10, 0.5),
                                     ("dpmpp2m", 20, 0.0)])
def test_sampler_keys_name_each_setting_and_read_back(setting):
    assert split_key(sampler_key(*setting)) == setting
    assert sampler_key("ddim", 50) == "ddim-50" and sampler_key("ddim", 50, 1.0) == "ddim-50-eta1"
