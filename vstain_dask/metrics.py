"""Image metrics of the paper's evaluation, with scikit-image's signatures.

``(image_true, image_test, *, mask=None)`` as :mod:`skimage.metrics`; images are (Y, X, 3)
uint8 RGB with a data range of 255. Without a mask the value is scikit-image's; with a mask
(the correspondence mask of a pair) it is taken over the pixels inside it, so background that
both images leave white does not count: the SSIM map is averaged inside the mask, the squared
error of PSNR too. Used by training's validation and by ``evaluate``.
"""

from __future__ import annotations

import math

import numpy as np

from vstain_dask.errors import InputError

__all__ = ["DATA_RANGE", "psnr", "ssim"]

#: 8-bit RGB
DATA_RANGE = 255


def _mask(mask, shape: tuple[int, ...]) -> np.ndarray:
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != shape[:2]:
        raise InputError(f"mask must be (Y, X) = {shape[:2]}, got {mask.shape}")
    if not mask.any():
        raise InputError("mask is empty: nothing to compare")
    return mask


def ssim(image_true, image_test, *, mask=None) -> float:
    """Mean structural similarity of two (Y, X, 3) RGB images (Wang et al. 2004, as
    ``skimage.metrics.structural_similarity`` with ``channel_axis=-1``, data range 255);
    with ``mask``, the mean of the SSIM map inside it."""
    from skimage.metrics import structural_similarity

    image_true, image_test = np.asarray(image_true), np.asarray(image_test)
    kw = {"channel_axis": -1, "data_range": DATA_RANGE}
    if mask is None:
        return float(structural_similarity(image_true, image_test, **kw))
    mask = _mask(mask, image_true.shape)
    _, smap = structural_similarity(image_true, image_test, full=True, **kw)
    return float(smap.mean(axis=-1)[mask].mean())


def psnr(image_true, image_test, *, mask=None) -> float:
    """Peak signal-to-noise ratio in dB (data range 255; ``inf`` for identical images); with
    ``mask``, over the pixels inside it."""
    from skimage.metrics import peak_signal_noise_ratio

    image_true, image_test = np.asarray(image_true), np.asarray(image_test)
    if mask is None:
        if np.array_equal(image_true, image_test):
            return math.inf  # skimage divides by a zero error here
        return float(peak_signal_noise_ratio(image_true, image_test, data_range=DATA_RANGE))
    mask = _mask(mask, image_true.shape)
    err = (image_test.astype(np.float64) - image_true.astype(np.float64))[mask]
    mse = float(np.mean(err**2))
    return math.inf if mse == 0 else 10.0 * math.log10(DATA_RANGE**2 / mse)
