"""The one metrics module: scikit-image's signatures, values against independent references."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from vstain_dask.errors import InputError
from vstain_dask.metrics import psnr, ssim


def _images():
    rng = np.random.default_rng(0)
    true = rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)
    test = np.clip(true.astype(int) + rng.integers(-20, 21, true.shape), 0, 255).astype(np.uint8)
    return true, test


def test_without_a_mask_the_values_are_scikit_images():
    true, test = _images()
    assert ssim(true, test) == structural_similarity(true, test, channel_axis=-1, data_range=255)
    assert psnr(true, test) == peak_signal_noise_ratio(true, test, data_range=255)
    assert psnr(true, true) == math.inf and ssim(true, true) == 1.0


def test_with_a_mask_only_the_pixels_inside_count():
    true, test = _images()
    mask = np.zeros(true.shape[:2], bool)
    mask[5:15, 4:12] = True
    err = test[mask].astype(float) - true[mask].astype(float)
    assert psnr(true, test, mask=mask) == pytest.approx(10 * math.log10(255**2 / np.mean(err**2)))
    _, smap = structural_similarity(true, test, channel_axis=-1, data_range=255, full=True)
    assert ssim(true, test, mask=mask) == pytest.approx(smap.mean(axis=-1)[mask].mean())
    outside = test.copy()
    outside[~mask] = 0  # what lies outside the mask does not change PSNR
    assert psnr(true, outside, mask=mask) == psnr(true, test, mask=mask)
    with pytest.raises(InputError, match="mask is empty"):
        psnr(true, test, mask=np.zeros_like(mask))
    with pytest.raises(InputError, match=r"mask must be \(Y, X\) = \(24, 20\), got \(3, 3\)"):
        ssim(true, test, mask=np.ones((3, 3), bool))
