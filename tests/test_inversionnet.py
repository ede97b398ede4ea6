"""InversionNet (models/inversionnet.py) and its training, fine-tuning and evaluation for the
augmentation experiments (training/inversionnet.py), on tiny stores on CPU."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import zarr
from torch.utils.data import ConcatDataset

from wavediffusion.metrics import mae
from wavediffusion.models.inversionnet import InversionNet, InversionNetConfig
from wavediffusion.data.pairs_store import create_pairs_store, mark_done, num_shards
from wavediffusion.training import checkpoint as ckpt
from wavediffusion.pairs import GeneratedPairs
from wavediffusion.training.inversionnet import (
    InversionNetSettings,
    RealPairs,
    build_task,
    evaluate_inversionnet,
    hardest_generated,
    load_inversionnet,
    predict,
    predicted_batches,
    real_subset,
    split_by_fraction,
    train_inversionnet,
)
from wavediffusion.training.loop import train_batches

from test_preprocess import make_small_store


def predict_dataset(model, dataset, batch_size):
    """(prediction, target, family or None) of the whole dataset, in order: the evaluation's oracle."""
    batches = list(predicted_batches(model, dataset, batch_size, progress=False))
    family = torch.cat([b["family"] for _, b in batches]) if "family" in batches[0][1] else None
    return torch.cat([p for p, _ in batches]), torch.cat([b["velocity"] for _, b in batches]), family

SEISMIC_SHAPE, VELOCITY_SIZE = (3, 64, 16), 16  # the tiny representation (config/tiny.yaml)
TINY_MODEL = {"channels": [4, 8, 8, 16, 16], "decoder_start": 1}


def settings(**training) -> InversionNetSettings:
    return InversionNetSettings(
        model=TINY_MODEL,
        training={"max_steps": 6, "batch_size": 4, "lr": 1e-3, "precision": "fp32", "device": "cpu",
                  "checkpoint_every_steps": 3, "progress": False, "tensorboard": False, "log_every_steps": 1,
                  **training},
    )


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A dataset store at the tiny representation: train 16, val 4, test 6 (3 per family)."""
    root = tmp_path_factory.mktemp("openfwi")
    return make_small_store(root, root.parent / "dataset.zarr", test_per_family=3)


def make_pairs(path, n: int, shard_size: int, seed: int, done=("sample", "check")) -> dict[str, np.ndarray]:
    """A pairs store filled with random values in [-1, 1] (decoded and simulated seismic
    different), its shards marked done for `done`; returns the arrays written."""
    rng = np.random.default_rng(seed)
    root = create_pairs_store(path, n, shard_size, (8, 8, 8), SEISMIC_SHAPE, (1, VELOCITY_SIZE, VELOCITY_SIZE))
    arrays = {name: rng.uniform(-1, 1, (n, *root[name].shape[1:])).astype(np.float32)
              for name in ("seismic", "seismic_simulated", "velocity")}
    for name, values in arrays.items():
        root[name][:] = values
    # what the sampling and checking jobs write besides: a store reader checks every array
    root["latent"][:] = rng.standard_normal((n, 8, 8, 8)).astype(np.float32)
    root["seed"][:] = seed
    root["index_in_shard"][:] = np.arange(n) % shard_size
    root["deviation"][:] = np.mean((arrays["seismic"] - arrays["seismic_simulated"]) ** 2, axis=(1, 2, 3))
    for kind in done:
        for k in range(num_shards(n, shard_size)):
            mark_done(path, kind, k, {})
    return arrays


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    path = tmp_path_factory.mktemp("pairs") / "pairs.zarr"
    return path, make_pairs(path, n=10, shard_size=4, seed=1)


@pytest.fixture(scope="module")
def trained(store, pairs, tmp_path_factory):
    """6 steps on half the real train split + the generated pairs; returns (out_dir, summary)."""
    out = tmp_path_factory.mktemp("trained")
    torch.manual_seed(0)
    train_set = ConcatDataset([RealPairs(store, "train", real_subset(16, 0.5, seed=0)), GeneratedPairs(pairs[0])])
    summary = train_inversionnet(train_set, RealPairs(store, "val"), settings(), SEISMIC_SHAPE, VELOCITY_SIZE, out)
    return out, summary


# --- the network ---------------------------------------------------------------------------


def test_native_network_is_openfwis_24_4m_parameter_inversionnet():
    config = InversionNetConfig.openfwi()
    model = InversionNet(config).eval()
    assert count_parameters(model) == pytest.approx(24.4e6, rel=0.01)
    assert config.code_kernel == (8, 9) and config.decoder_size == 80
    with torch.no_grad():
        out = model(torch.randn(1, 5, 1000, 70))
    assert out.shape == (1, 1, 70, 70)


def test_model_space_and_tiny_shapes():
    config = InversionNetConfig.model_space()
    assert config.seismic_shape == (3, 1024, 64) and config.code_kernel == (8, 8) and config.decoder_size == 80
    model = InversionNet(config).eval()
    assert count_parameters(model) == pytest.approx(23.36e6, rel=0.01)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 1024, 64))
        assert out.shape == (2, 1, 64, 64) and out.abs().max() <= 1
        tiny = InversionNet(InversionNetConfig.tiny()).eval()
        assert tiny(torch.randn(2, *SEISMIC_SHAPE)).shape == (2, 1, VELOCITY_SIZE, VELOCITY_SIZE)
        with pytest.raises(ValueError, match=r"expects seismic \(B, 3, 64, 16\)"):
            tiny(torch.randn(2, 3, 64, 17))
    assert InversionNetConfig.tiny().decoder_size == 16  # no crop needed at 16 x 16
    with pytest.raises(ValueError, match="decoder_start to at least 5"):
        InversionNetConfig(velocity_size=70, decoder_start=4)


def test_overfits_one_batch():
    torch.manual_seed(0)
    model = InversionNet(InversionNetConfig.tiny())
    seismic = torch.randn(4, *SEISMIC_SHAPE)
    target = torch.rand(4, 1, VELOCITY_SIZE, VELOCITY_SIZE) * 1.6 - 0.8
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    losses = []
    for _ in range(150):
        loss = F.l1_loss(model(seismic), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


# --- settings --------------------------------------------------------------------------------


def test_settings_follow_openfwis_recipe_and_name_the_config_key():
    default = InversionNetSettings().train_config()
    assert (default.batch_size, default.lr, default.weight_decay) == (256, 1e-4, 1e-4)
    assert default.lr_decay == 1.0 and default.grad_clip == 0.0 and default.early_stop_patience is None
    assert InversionNetSettings(training={"batch_size": 512}).train_config().lr == pytest.approx(2e-4)
    assert InversionNetSettings(training={"batch_size": 512, "lr": 3e-4}).train_config().lr == 3e-4
    task, _ = build_task(InversionNetSettings(model=TINY_MODEL), SEISMIC_SHAPE, VELOCITY_SIZE)
    assert isinstance(task.optimizer, torch.optim.AdamW) and task.optimizer.defaults["weight_decay"] == 1e-4
    with pytest.raises(ValueError, match=r"inversionnet\.training: unknown keys \['batchsize'\]"):
        InversionNetSettings(training={"batchsize": 4}).train_config()
    with pytest.raises(ValueError, match=r"inversionnet\.model: unknown keys \['widths'\]"):
        build_task(InversionNetSettings(model={"widths": [1]}), SEISMIC_SHAPE, VELOCITY_SIZE)
    with pytest.raises(ValueError, match=r"inversionnet\.model: \['velocity_size'\] come from the data"):
        build_task(InversionNetSettings(model={"velocity_size": 16}), SEISMIC_SHAPE, VELOCITY_SIZE)


# --- data ----------------------------------------------------------------------------------


def test_real_subset_is_seeded_sorted_and_nested():
    ten = real_subset(1000, 0.10, seed=3)
    one = real_subset(1000, 0.01, seed=3)
    assert len(ten) == 100 and len(one) == 10
    assert np.array_equal(ten, real_subset(1000, 0.10, seed=3))  # every arm gets the same samples
    assert np.all(np.diff(ten) > 0) and np.all(np.diff(one) > 0)  # sorted, distinct
    assert set(one) <= set(ten)  # 1 % real lies inside 10 % real
    assert not np.array_equal(ten, real_subset(1000, 0.10, seed=4))
    assert not np.array_equal(ten, np.arange(100))  # a random subset, not a prefix
    assert len(real_subset(30, 0.01, seed=0)) == 1  # at least one sample
    assert np.array_equal(real_subset(7, 1.0, seed=0), np.arange(7))
    with pytest.raises(ValueError, match="fraction"):
        real_subset(10, 0.0, seed=0)


def test_split_by_fraction_is_a_seeded_partition():
    indices = np.arange(100, 165)
    train, test = split_by_fraction(indices, 55 / 65, seed=0)
    assert len(train) == 55 and len(test) == 10
    assert set(train) | set(test) == set(indices) and not set(train) & set(test)
    again = split_by_fraction(indices, 55 / 65, seed=0)
    assert np.array_equal(train, again[0]) and np.array_equal(test, again[1])
    assert not np.array_equal(test, split_by_fraction(indices, 55 / 65, seed=1)[1])


def test_real_pairs_read_the_requested_rows(store):
    group = zarr.open_group(str(store), mode="r")["test"]
    dataset = RealPairs(store, "test", indices=[4, 1], with_family=True)
    assert len(dataset) == 2 and (dataset.seismic_shape, dataset.velocity_size) == (SEISMIC_SHAPE, VELOCITY_SIZE)
    sample = dataset[0]
    np.testing.assert_array_equal(sample["seismic"].numpy(), group["seismic"][4])
    np.testing.assert_array_equal(sample["velocity"].numpy(), group["velocity"][4])
    assert sample["seismic"].dtype == torch.float32 and int(sample["family"]) == int(group["family"][4])
    assert set(RealPairs(store, "test")[0]) == {"seismic", "velocity"}  # collates with generated pairs
    clone = pickle.loads(pickle.dumps(dataset))  # what a DataLoader worker receives
    assert clone._arrays is None and torch.equal(clone[1]["velocity"], dataset[1]["velocity"])
    with pytest.raises(IndexError):
        RealPairs(store, "test", indices=[6])


def test_generated_pairs_take_decoded_or_simulated_seismic(pairs, tmp_path):
    path, arrays = pairs
    decoded = GeneratedPairs(path, indices=[7, 2])
    simulated = GeneratedPairs(path, indices=[7, 2], seismic="simulated")
    for i, index in enumerate([7, 2]):
        np.testing.assert_array_equal(decoded[i]["seismic"].numpy(), arrays["seismic"][index])
        np.testing.assert_array_equal(simulated[i]["seismic"].numpy(), arrays["seismic_simulated"][index])
        np.testing.assert_array_equal(simulated[i]["velocity"].numpy(), arrays["velocity"][index])
    assert len(GeneratedPairs(path)) == 10
    with pytest.raises(ValueError, match="seismic must be one of"):
        GeneratedPairs(path, seismic="observed")
    unchecked = tmp_path / "unchecked.zarr"
    make_pairs(unchecked, n=6, shard_size=2, seed=0, done=("sample",))
    assert len(GeneratedPairs(unchecked)) == 6
    with pytest.raises(ValueError, match=r"shards \[1\] have no 'check' marker"):
        GeneratedPairs(unchecked, indices=[2, 3], seismic="simulated")


# --- training, evaluation, fine-tuning ---------------------------------------------------------


def test_training_writes_weights_and_evaluation_reports_each_family(trained, store):
    out, summary = trained
    assert summary["steps"] == 6 and summary["val_metric"] == "val_mae"
    assert set(summary["last_val"]) == {"val_mae", "val_rmse", "val_ssim"}
    assert (out / "final.pt").exists() and (out / "best.pt").exists()
    model = load_inversionnet(out / "final.pt")
    assert isinstance(model, InversionNet) and not model.training
    assert model.config == InversionNetConfig(seismic_shape=SEISMIC_SHAPE, velocity_size=VELOCITY_SIZE, **TINY_MODEL)
    final = ckpt.load(out / "final.pt")["modules"]["inversionnet"]
    fresh = build_task(settings(), SEISMIC_SHAPE, VELOCITY_SIZE)[0].model.state_dict()  # the seeded initial weights
    assert any(not torch.equal(final[k], fresh[k]) for k in fresh if fresh[k].is_floating_point())  # it trained

    rows = evaluate_inversionnet(out / "final.pt", store, "test", batch_size=4, progress=False)
    assert [r["family"] for r in rows] == ["FlatVel-A", "CurveFault-A", "all"]
    assert [r["n"] for r in rows] == [3, 3, 6]
    prediction, target, family = predict_dataset(model, RealPairs(store, "test", with_family=True), batch_size=4)
    errors = mae(prediction, target)
    assert rows[-1]["mae"] == pytest.approx(float(errors.mean()), rel=1e-6)
    assert rows[0]["mae"] == pytest.approx(float(errors[family == 0].mean()), rel=1e-6)
    assert rows[-1]["mae"] == pytest.approx((rows[0]["mae"] + rows[1]["mae"]) / 2, rel=1e-6)
    assert all(0 < r["rmse"] and r["mae"] <= r["rmse"] and -1 <= r["ssim"] <= 1 for r in rows)
    only = evaluate_inversionnet(out / "final.pt", store, "test", batch_size=4, families=["CurveFault-A"],
                                 progress=False)
    assert [(r["family"], r["n"]) for r in only] == [("CurveFault-A", 3), ("all", 3)]
    assert only[0]["mae"] == pytest.approx(rows[1]["mae"], rel=1e-6)
    seismic = torch.stack([RealPairs(store, "test")[i]["seismic"] for i in range(6)])
    assert torch.allclose(predict(model, seismic.split(4), device="cpu"), prediction, atol=1e-6)


def test_fine_tuning_starts_from_the_initial_weights(trained, store, tmp_path):
    init = trained[0] / "final.pt"
    train_set, val_set = RealPairs(store, "train"), RealPairs(store, "val")
    frozen = settings(lr=0.0, max_steps=1)  # lr 0: the weights stay; only BatchNorm's running stats move
    summary = train_inversionnet(train_set, val_set, frozen, SEISMIC_SHAPE, VELOCITY_SIZE, tmp_path / "tuned",
                                 init_weights=init)

    # the init model after the same one training-mode forward (which updates BatchNorm's statistics)
    expected = load_inversionnet(init)
    first = train_batches(len(train_set), 4, world_size=1, rank=0, seed=0, epoch=0)[0]
    with torch.no_grad():
        expected.train()(torch.stack([train_set[i]["seismic"] for i in first]))
    prediction, target, _ = predict_dataset(expected.eval(), val_set, batch_size=4)
    assert summary["last_val"]["val_mae"] == pytest.approx(float(mae(prediction, target).mean()), rel=1e-5)
    tuned = ckpt.load(tmp_path / "tuned" / "final.pt")["modules"]["inversionnet"]
    initial = ckpt.load(init)["modules"]["inversionnet"]
    assert all(torch.equal(tuned[k], initial[k]) for k in initial if "running" not in k and "num_batches" not in k)

    scratch = train_inversionnet(train_set, val_set, frozen, SEISMIC_SHAPE, VELOCITY_SIZE, tmp_path / "scratch")
    assert scratch["last_val"]["val_mae"] != pytest.approx(summary["last_val"]["val_mae"], rel=1e-3)
    # another initial model is another run: resuming the fine-tuning from it is refused
    with pytest.raises(ckpt.ConfigMismatchError, match="init_weights_sha256"):
        train_inversionnet(train_set, val_set, settings(lr=0.0, max_steps=2), SEISMIC_SHAPE, VELOCITY_SIZE,
                           tmp_path / "tuned", init_weights=tmp_path / "scratch" / "final.pt")


def test_hardest_generated_ranks_by_per_sample_mae(trained, tmp_path):
    model_path = trained[0] / "final.pt"
    path = tmp_path / "hard.zarr"
    arrays = make_pairs(path, n=6, shard_size=3, seed=2)
    seismic = arrays["seismic"]
    seismic[3] = seismic[1]  # samples 1 and 3 are identical: an exact tie
    with torch.no_grad():
        prediction = load_inversionnet(model_path)(torch.from_numpy(seismic)).numpy()
    offsets = np.array([0.05, 0.4, 0.0, 0.4, 0.2, -0.3], dtype=np.float32)  # = each sample's MAE
    velocity = prediction + offsets[:, None, None, None]
    velocity[3] = velocity[1]
    store = zarr.open_group(str(path), mode="r+")
    store["seismic"][:] = seismic
    store["velocity"][:] = velocity
    hardest = hardest_generated(model_path, path, 4, batch_size=1, progress=False)
    assert hardest.tolist() == [1, 3, 5, 4]  # MAE 0.4, 0.4 (tie: lower index first), 0.3, 0.2
    assert hardest_generated(model_path, path, 6, batch_size=4, progress=False).tolist() == [1, 3, 5, 4, 0, 2]
    with pytest.raises(ValueError, match="count"):
        hardest_generated(model_path, path, 7, progress=False)

