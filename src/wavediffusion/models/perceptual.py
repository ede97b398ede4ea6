"""Optional perceptual loss for Stage 1: LPIPS on VGG16 features, from local weight files.

The paper's perceptual term (weight 0.5, as VQGAN): LPIPS with a VGG16 trunk. Compute nodes
are offline, so the weights are local paths: ``vgg_weights`` (torchvision's
``vgg16-397923af.pth``) and optional ``lpips_heads`` (LPIPS v0.1 ``vgg.pth``, see
:func:`installed_lpips_heads`; without it, LPIPS's unit-weight "baseline"). Inputs (B, C, H, W)
in [-1, 1], one value per sample (B,); 3 channels are R, G, B, 1 is grey. Off by default.
Details: docs/architecture.md, 'The perceptual loss'.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
# torchvision's VGG16 "features" layout up to relu5_3: conv widths, "M" = 2x2 max-pool
_VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
_TAP_CHANNELS = (64, 128, 256, 512, 512)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
# LPIPS v0.1's ScalingLayer: maps [-1, 1] inputs to ImageNet-normalised ones
_LPIPS_SHIFT = (-0.030, -0.088, -0.188)
_LPIPS_SCALE = (0.458, 0.448, 0.450)


def installed_lpips_heads() -> Path | None:
    """Path of the LPIPS v0.1 VGG heads inside an installed ``lpips`` package, else None."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "weights" / "v0.1" / "vgg.pth"
    return path if path.is_file() else None


@dataclass(frozen=True)
class PerceptualConfig:
    vgg_weights: str  # torchvision VGG16 state dict (see module docstring)
    lpips_heads: str | None = None  # LPIPS v0.1 vgg.pth; None = unit channel weights (LPIPS baseline)


class VGG16Features(nn.Module):
    """torchvision's ``vgg16().features[:30]`` (same indices, so its state dict loads as is)."""

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for item in _VGG16_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, item, 3, padding=1), nn.ReLU()]
                channels = item
        self.features = nn.Sequential(*layers)
        relu_indices = [i for i, layer in enumerate(layers) if isinstance(layer, nn.ReLU)]
        # the ReLU just before each max-pool, and the last one: relu1_2 .. relu5_3
        self.taps = tuple(i for i in relu_indices if i + 1 == len(layers) or isinstance(layers[i + 1], nn.MaxPool2d))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # (B, 3, H, W) -> 5 x (B, C_k, H_k, W_k)
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                out.append(x)
        return out


def _load_state_dict(path: Path, what: str, hint: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"perceptual loss: {what} not found at {path}. {hint}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt file, not a torch file, pickled objects
        raise ValueError(f"perceptual loss: cannot read {what} from {path}: {error}. {hint}") from error
    if not isinstance(state, dict):
        raise TypeError(f"perceptual loss: {path} holds a {type(state).__name__}, not a state dict. {hint}")
    return state


class PerceptualLoss(nn.Module):
    """LPIPS(x, y) per sample with a frozen VGG16; inputs (B, C, H, W) in [-1, 1] -> (B,)."""

    def __init__(self, config: PerceptualConfig):
        super().__init__()
        self.vgg = VGG16Features()
        self._load_vgg(Path(config.vgg_weights))
        self.vgg.requires_grad_(False)
        self.vgg.eval()
        heads = self._load_heads(Path(config.lpips_heads)) if config.lpips_heads is not None else None
        for k, channels in enumerate(_TAP_CHANNELS):
            weight = heads[k] if heads is not None else torch.ones(channels)
            self.register_buffer(f"head{k}", weight.view(1, channels, 1, 1))
        self.register_buffer("shift", torch.tensor(_LPIPS_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_LPIPS_SCALE).view(1, 3, 1, 1))

    def _load_vgg(self, path: Path) -> None:
        hint = (
            f"Put torchvision's ImageNet VGG16 state dict ({VGG16_URL}) there, "
            "or switch the perceptual loss off (perceptual weight 0)."
        )
        state = _load_state_dict(path, "VGG16 weights", hint)
        wanted = set(self.vgg.features.state_dict())
        features = {}
        for key, value in state.items():
            name = key.removeprefix("features.")
            if name in wanted:
                features[name] = value
        missing = sorted(wanted - set(features))
        if missing:
            raise ValueError(f"perceptual loss: {path} is not a VGG16 state dict: missing {missing[:4]}... {hint}")
        try:
            self.vgg.features.load_state_dict(features)
        except RuntimeError as error:  # shape mismatch
            raise ValueError(f"perceptual loss: {path} does not fit VGG16: {error}. {hint}") from error

    @staticmethod
    def _load_heads(path: Path) -> list[torch.Tensor]:
        hint = "It ships in the `lpips` wheel as lpips/weights/v0.1/vgg.pth (pip install lpips; see installed_lpips_heads())."
        state = _load_state_dict(path, "LPIPS VGG heads", hint)
        heads = []
        for k, channels in enumerate(_TAP_CHANNELS):
            key = f"lin{k}.model.1.weight"
            if key not in state or state[key].numel() != channels:
                raise ValueError(f"perceptual loss: {path} lacks {key} of {channels} values: not LPIPS v0.1 VGG heads. {hint}")
            heads.append(state[key].reshape(channels).float())
        return heads

    def train(self, mode: bool = True) -> PerceptualLoss:
        """The VGG trunk always stays in eval mode (it is frozen)."""
        super().train(mode)
        self.vgg.eval()
        return self

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # 2 x (B, C, H, W) -> (B,)
        if x.shape != y.shape:
            raise ValueError(f"shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
        channels = x.shape[1]
        if channels == 3:
            return self._lpips(x, y)
        if channels == 1:
            return self._lpips(x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1))
        per_channel = [
            self._lpips(x[:, c : c + 1].expand(-1, 3, -1, -1), y[:, c : c + 1].expand(-1, 3, -1, -1)) for c in range(channels)
        ]
        return torch.stack(per_channel).mean(dim=0)

    def _lpips(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # 2 x (B, 3, H, W) -> (B,)
        features_x = self.vgg((x - self.shift) / self.scale)
        features_y = self.vgg((y - self.shift) / self.scale)
        total = torch.zeros(x.shape[0], device=x.device, dtype=torch.float32)
        for k, (fx, fy) in enumerate(zip(features_x, features_y)):
            diff = (_unit_normalise(fx) - _unit_normalise(fy)) ** 2  # (B, C_k, H_k, W_k)
            head = getattr(self, f"head{k}")  # (1, C_k, 1, 1)
            total = total + (diff * head).sum(dim=1).mean(dim=(1, 2)).float()
        return total


def _unit_normalise(features: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Divide each position's feature vector by its L2 norm over channels (LPIPS)."""
    return features / (features.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)
