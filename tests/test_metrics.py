"""Image metrics against reference implementations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from wavediffusion.metrics import mae, rmse, ssim, ssim_map


def smooth_images(n: int, seed: int) -> torch.Tensor:
    """Random images with structure (blurred noise), in [-1, 1]: (n, 1, 64, 64)."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand(n, 1, 64, 64, generator=generator, dtype=torch.float64)
    blurred = torch.nn.functional.avg_pool2d(noise, 5, stride=1, padding=2, count_include_pad=False)
    return 2 * (blurred - blurred.amin(dim=(2, 3), keepdim=True)) / (blurred.amax(dim=(2, 3), keepdim=True) - blurred.amin(dim=(2, 3), keepdim=True)) - 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ssim_map_equals_scikit_image_away_from_the_border(seed):
    a = smooth_images(2, seed) / 2 + 0.5
    b = (a + 0.1 * torch.randn(a.shape, generator=torch.Generator().manual_seed(seed + 10), dtype=torch.float64)).clamp(0, 1)
    ours = ssim_map(a, b).numpy()
    for i in range(2):
        _, reference = structural_similarity(
            a[i, 0].numpy(), b[i, 0].numpy(), gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
            data_range=1.0, full=True,
        )
        # the two differ only in how the border is padded; inside, they are the same formula
        np.testing.assert_allclose(ours[i, 0, 5:-5, 5:-5], reference[5:-5, 5:-5], rtol=0, atol=1e-10)


def test_ssim_conventions():
    x = smooth_images(3, 5)
    assert torch.allclose(ssim(x, x), torch.ones(3, dtype=x.dtype))
    noisy = (x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)).clamp(-1, 1)
    worse = (x + 0.6 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)).clamp(-1, 1)
    assert (ssim(worse, x) < ssim(noisy, x)).all() and (ssim(noisy, x) < 1).all()
    # computed on x/2 + 0.5: a constant offset of 0.2 in [-1, 1] is 0.1 in [0, 1]
    assert torch.allclose(ssim(x + 0.2, x), ssim_map(x / 2 + 0.6, x / 2 + 0.5).flatten(1).mean(1))


def test_mae_and_rmse_per_sample():
    a = torch.zeros(2, 1, 4, 4)
    b = torch.stack([torch.full((1, 4, 4), 0.5), torch.tensor([1.0, -1.0] * 8).view(1, 4, 4)])
    assert mae(b, a).tolist() == [0.5, 1.0]
    assert rmse(b, a).tolist() == [0.5, 1.0]
    b[1, 0, 0, 0] = 3.0
    assert rmse(b, a)[1] == pytest.approx(((3.0**2 + 15) / 16) ** 0.5)
