"""Image metrics with OpenFWI's conventions: MAE and RMSE on the normalised [-1, 1] maps,
SSIM (Gaussian window 11, sigma 1.5) on x/2 + 0.5 in [0, 1].

OpenFWI evaluates with `pytorch_ssim`: the SSIM map is computed with a zero-padded
'same' convolution and averaged over every pixel, borders included. That is reproduced
here, so our numbers can be set beside OpenFWI's and the paper's tables.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1 = 0.01**2  # (K1 * L)^2 with L = 1, the data range of x/2 + 0.5
SSIM_C2 = 0.03**2


def mae(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample mean absolute error over (C, H, W): (B,)."""
    return (prediction - target).abs().flatten(1).mean(dim=1)


def rmse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample root mean squared error over (C, H, W): (B,)."""
    return ((prediction - target) ** 2).flatten(1).mean(dim=1).sqrt()


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA, channels: int = 1) -> torch.Tensor:
    """(channels, 1, size, size) normalised Gaussian kernel for a depthwise conv."""
    coords = torch.arange(size, dtype=torch.float64) - size // 2
    profile = torch.exp(-(coords**2) / (2 * sigma**2))
    profile = profile / profile.sum()
    window = torch.outer(profile, profile)
    return window.expand(channels, 1, size, size).contiguous()


def ssim_map(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SSIM map (B, C, H, W) of images in [0, 1], zero-padded 'same' convolution."""
    channels = x.shape[1]
    window = gaussian_window(channels=channels).to(device=x.device, dtype=x.dtype)
    pad = SSIM_WINDOW // 2

    def blur(image):
        return F.conv2d(image, window, padding=pad, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    return ((2 * mu_x * mu_y + SSIM_C1) * (2 * cov + SSIM_C2)) / ((mu_x**2 + mu_y**2 + SSIM_C1) * (var_x + var_y + SSIM_C2))


def ssim(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample SSIM of [-1, 1] maps (B, C, H, W), computed on x/2 + 0.5 as OpenFWI does: (B,)."""
    x = prediction.double() / 2 + 0.5
    y = target.double() / 2 + 0.5
    return ssim_map(x, y).flatten(1).mean(dim=1).to(prediction.dtype)


def inversion_metrics(prediction: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """MAE, RMSE and SSIM per sample of velocity maps in [-1, 1]."""
    return {"mae": mae(prediction, target), "rmse": rmse(prediction, target), "ssim": ssim(prediction, target)}
