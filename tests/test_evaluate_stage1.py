"""Pieces of the Stage-1 evaluation, and its step on tiny artifacts (the rule itself runs in
tests/test_workflow.py)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import zarr

from wavediffusion.data.store import create_split_arrays
from wavediffusion.data.transforms import Representation
from wavediffusion.evaluation.stage1 import (
    METRICS_COLUMNS,
    TABLE5_COLUMNS,
    Stage1Evaluation,
    codebook_usage,
    indices_per_family,
    interpolation_pairs,
    streamed_moments,
)
from wavediffusion.models.autoencoder import AutoencoderConfig, VQAutoencoder
from wavediffusion.files import combine_csv, read_csv, write_csv
from wavediffusion.steps.stage1 import run_evaluate_stage1

from tiny_models import save_tiny_autoencoder

REP = Representation(time_samples=64, receivers=16, velocity_size=16, seismic_log_min=-4.0, seismic_log_max=4.0)


@pytest.fixture
def latents(tmp_path):
    values = np.random.default_rng(0).normal(size=(37, 4, 3, 3)).astype("float32") * 2 + 1
    array = zarr.create_array(str(tmp_path / "latents.zarr"), shape=values.shape, chunks=(5, 4, 3, 3), dtype="float32")
    array[:] = values
    return array, values


def test_latent_moments_stream_equals_numpy(latents):
    array, values = latents
    mean, std = streamed_moments(array, block=8)  # blocks that do not divide N
    np.testing.assert_allclose(mean.numpy(), values.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(std.numpy(), values.std(axis=0), rtol=1e-4, atol=1e-6)


def test_interpolation_pairs_are_distinct_training_latents(latents):
    array, values = latents
    a, b = interpolation_pairs(array, 200, torch.Generator().manual_seed(0))
    assert a.shape == b.shape == (200, 4, 3, 3)
    assert not any(torch.equal(x, y) for x, y in zip(a, b))
    rows = {tuple(v.ravel()) for v in values}
    assert all(tuple(x.numpy().ravel()) in rows for x in (*a[:5], *b[:5]))


def test_test_indices_per_family_in_order():
    families = np.array([3, 0, 3, 0, 0, 5])
    chosen = indices_per_family(families, per_family=2)
    assert list(chosen) == ["FlatVel-A", "CurveVel-B", "FlatFault-B"]  # FAMILIES order, codes 0, 3, 5
    assert chosen["FlatVel-A"].tolist() == [1, 3]
    assert indices_per_family(families, None)["FlatVel-A"].tolist() == [1, 3, 4]


def test_settings_name_the_config_key():
    with pytest.raises(ValueError, match=r"stage1\.evaluation\.random_latents"):
        Stage1Evaluation(random_latents=0)
    with pytest.raises(ValueError, match=r"stage1\.evaluation\.interpolation_weights"):
        Stage1Evaluation(interpolation_weights=[0.5, 1.5])


def test_combine_csv_concatenates_and_rejects_other_columns(tmp_path):
    write_csv([{"a": 1, "b": 2}], tmp_path / "one.csv", ["a", "b"])
    write_csv([{"a": 3, "b": 4}], tmp_path / "two.csv", ["a", "b"])
    combine_csv([tmp_path / "one.csv", tmp_path / "two.csv"], tmp_path / "all.csv")
    assert (tmp_path / "all.csv").read_text().splitlines() == ["a,b", "1,2", "3,4"]
    write_csv([{"a": 1, "c": 2}], tmp_path / "bad.csv", ["a", "c"])
    with pytest.raises(ValueError, match="bad.csv"):
        combine_csv([tmp_path / "one.csv", tmp_path / "bad.csv"], tmp_path / "x.csv")


@pytest.mark.parametrize("variant", ["1vq", "2vq"])
def test_codebook_usage_counts_equally_used_codes(variant):
    model = VQAutoencoder(AutoencoderConfig.tiny(variant))
    size = model.config.codebook_size
    even = torch.arange(400) % 4  # four codes, used equally
    uneven = torch.cat([torch.zeros(300, dtype=torch.long), torch.ones(100, dtype=torch.long)])
    codes = {"shared": even} if variant == "1vq" else {"seismic": even, "velocity": uneven}
    usage = codebook_usage(model, codes)
    perplexities = [4.0] if variant == "1vq" else [4.0, float(np.exp(-(0.75 * np.log(0.75) + 0.25 * np.log(0.25))))]
    assert usage["codebook_perplexity"] == pytest.approx(np.mean(perplexities))
    assert usage["codebook_unused"] == pytest.approx(size - 4 if variant == "1vq" else ((size - 4) + (size - 2)) / 2)


def test_the_step_writes_metrics_table5_and_figure(tmp_path):
    """run_evaluate_stage1 on an untrained tiny autoencoder, a test split of two families and
    its latents: a metrics row per family and one for all, Stage 1's Table-5 rows, the figure."""
    autoencoder = save_tiny_autoencoder(tmp_path / "stage1.pt")
    families = np.array([2, 0, 0, 2, 0], dtype=np.int16)  # CurveVel-A, FlatVel-A, interleaved
    dataset = zarr.open_group(str(tmp_path / "dataset.zarr"), mode="w")
    dataset.attrs["representation"] = REP.to_attrs()
    test = dataset.create_group("test")
    create_split_arrays(test, len(families), REP, samples_per_shard=4)
    generator = torch.Generator().manual_seed(1)
    test["seismic"][:] = (torch.rand(len(families), *REP.seismic_shape, generator=generator) * 2 - 1).numpy()
    test["velocity"][:] = (torch.rand(len(families), *REP.velocity_shape, generator=generator) * 2 - 1).numpy()
    test["family"][:] = families
    with torch.no_grad():  # the training latents encode_latents would write (here: of the test seismic)
        z = autoencoder.latent_for_diffusion(torch.from_numpy(test["seismic"][:])).numpy()
    latents = zarr.open_group(str(tmp_path / "latents.zarr"), mode="w")
    latents.create_group("train").create_array("latent", data=z)
    latents.attrs["stats"] = {"train": {"n": len(z), "std": float(z.std())}}
    settings = {"train_latents": 3, "random_latents": 4, "interpolation_pairs": 2, "interpolation_weights": [0.5],
                "batch_size": 2}
    out = {name: tmp_path / "out" / name for name in ("metrics.csv", "table5.csv", "examples.png")}
    run_evaluate_stage1(str(tmp_path / "stage1.pt"), str(tmp_path / "dataset.zarr"), str(tmp_path / "latents.zarr"),
                        json.dumps(settings), *map(str, out.values()))

    metrics = read_csv(out["metrics.csv"])
    assert tuple(metrics[0]) == METRICS_COLUMNS
    assert [(r["variant"], r["family"], r["n"]) for r in metrics] == [
        ("1vq", "FlatVel-A", "3"), ("1vq", "CurveVel-A", "2"), ("1vq", "all", "5")]
    assert all(math.isfinite(float(r[name])) for r in metrics for name in METRICS_COLUMNS[3:])
    table5 = read_csv(out["table5.csv"])
    assert tuple(table5[0]) == TABLE5_COLUMNS
    assert [(r["latents"], r["weight"], r["n"]) for r in table5] == [
        ("test_reconstruction", "", "5"), ("train_reconstruction", "", "3"), ("random_gaussian", "", "4"),
        ("interpolation", "0.5", "2")]
    assert table5[0]["deviation_mean"] == metrics[-1]["pde_deviation"]  # one measurement of the test split
    assert out["examples.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out["examples.png"].stat().st_size > 10_000
