"""Whole-pair predictions and the masked image metrics used to validate training.

SSIM follows the paper's evaluation: ``skimage.metrics.structural_similarity`` on uint8 RGB
(``channel_axis=-1``, ``data_range=255``), and the SSIM map is averaged inside the
correspondence mask only, so background that both images leave white does not count. PSNR and
the mean absolute error are taken inside the mask too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from vstain_dask import metrics
from vstain_dask.errors import InputError
from vstain_dask.models.config import InputNormalization

__all__ = [
    "masked_ssim",
    "masked_psnr",
    "normalized_pair",
    "predict_plane",
    "ct_as_rgb",
    "evaluate_generator",
]


def _check(pred: np.ndarray, target: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, ...]:
    pred, target, mask = np.asarray(pred), np.asarray(target), np.asarray(mask, dtype=bool)
    if pred.shape != target.shape or pred.ndim != 3 or pred.shape[-1] != 3:
        raise InputError(
            f"pred and target must be (Y, X, 3) RGB images of one shape, got {pred.shape} and "
            f"{target.shape}"
        )
    return pred, target, mask


def masked_ssim(pred: np.ndarray, target: np.ndarray, mask: np.ndarray) -> float:
    """Mean SSIM inside ``mask`` of two (Y, X, 3) uint8 RGB images (data range 255):
    :func:`vstain_dask.metrics.ssim` ``(target, pred, mask=mask)``."""
    pred, target, mask = _check(pred, target, mask)
    return metrics.ssim(target, pred, mask=mask)


def masked_psnr(pred: np.ndarray, target: np.ndarray, mask: np.ndarray) -> float:
    """PSNR (dB, data range 255) over the pixels inside ``mask``:
    :func:`vstain_dask.metrics.psnr` ``(target, pred, mask=mask)``."""
    pred, target, mask = _check(pred, target, mask)
    return metrics.psnr(target, pred, mask=mask)


def normalized_pair(
    arrays: Sequence[Any], levels: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A whole pair, normalized as training sees it.

    Parameters
    ----------
    arrays : (ct, histology, mask)
        Raw arrays of a pair (zarr or numpy).
    levels : PairLevels

    Returns
    -------
    ct : (Y, X) float32
        CT normalized as the paper does (bone 30000, background 10000), clipped to 0-65535: the
        values a model with ``ct_normalized=True`` expects.
    histology : (Y, X, 3) uint8
        White-balanced and stretched.
    mask : (Y, X) bool
    """
    from vstain_dask import intensity
    from vstain_dask.train.dataset import _normalize_histology

    ct, hist, mask = (np.asarray(a[...]) for a in arrays)
    ct = ct.astype(np.float32, copy=False)
    v = intensity.ct_to_paper_units(ct, levels.ct.bone, levels.ct.background)
    rgb = _normalize_histology(np.moveaxis(hist, -1, 0), levels)
    rgb = np.clip(np.rint(np.moveaxis(rgb, 0, -1) * 255.0), 0, 255).astype(np.uint8)
    return v, rgb, mask.astype(bool)


def predict_plane(
    generator: torch.nn.Module,
    ct: np.ndarray,
    normalization: InputNormalization,
    *,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Stain one whole plane of normalized CT: (Y, X) -> (Y, X, 3) uint8 RGB."""
    from vstain_dask.models.checkpoint import network_input, output_to_uint8

    was_training = generator.training
    generator.eval()
    try:
        with torch.inference_mode():
            x = network_input(ct, normalization, device=device)
            y = output_to_uint8(generator(x))[0].cpu().numpy()
    finally:
        generator.train(was_training)
    return np.moveaxis(y, 0, -1)


def ct_as_rgb(ct: np.ndarray, normalization: InputNormalization) -> np.ndarray:
    """The raw-CT baseline: normalized CT shown as grey RGB through the input mapping.

    ``round((x + 1) * 127.5)`` of the network input ``x`` (without inversion), repeated to
    R, G, B.
    """
    plain = InputNormalization(low=normalization.low, high=normalization.high, channels=1)
    from vstain_dask.models.checkpoint import network_input, output_to_uint8

    g = output_to_uint8(network_input(ct, plain))[0, 0].numpy()
    return np.repeat(g[..., None], 3, axis=-1)


def evaluate_generator(
    generator: torch.nn.Module,
    source: Any,
    pairs: Sequence[Any],
    normalization: InputNormalization,
    *,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Mean masked SSIM, PSNR and L1 of a generator's whole-pair predictions.

    Parameters
    ----------
    generator : CT -> stain network
    source : path or zarr store of the pairs
    pairs : sequence of PairInfo
    normalization : InputNormalization of the generator's input

    Returns
    -------
    dict
        ``ssim``, ``psnr`` (dB) and ``l1`` (mean absolute error in 0-255 units) over the pairs.
    """
    from vstain_dask.train.dataset import _open_root_quiet

    root = _open_root_quiet(source)
    ssim, psnr, l1 = [], [], []
    for p in pairs:
        g = root[p.id]
        ct, target, mask = normalized_pair((g["ct"], g["histology"], g["mask"]), p.levels)
        if not mask.any():
            continue
        pred = predict_plane(generator, ct, normalization, device=device)
        ssim.append(masked_ssim(pred, target, mask))
        psnr.append(masked_psnr(pred, target, mask))
        l1.append(float(np.abs(pred.astype(np.float64) - target)[mask].mean()))
    if not ssim:
        return {}
    return {"ssim": float(np.mean(ssim)), "psnr": float(np.mean(psnr)), "l1": float(np.mean(l1))}
