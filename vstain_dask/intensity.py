"""Intensity arithmetic that training, staining and evaluation must agree on, in one place.

The paired CycleGAN paper (Irvine et al., arXiv:2509.09235; J. Synchrotron Rad. 2026) fixes:

- **CT reference levels.** The mean grey value of bone becomes :data:`CT_BONE_LEVEL` = 30000 and
  the mean of the background :data:`CT_BACKGROUND_LEVEL` = 10000, in uint16 ("paper units",
  :func:`ct_to_paper_units`; the general linear map is :func:`rescale_ct`).
- **Network input.** Paper units ``v`` map to ``x = clip(2 (v - low) / (high - low) - 1, -1, 1)``,
  negated for the inverted-CT baseline (:func:`network_input`). Imported models use the whole
  uint16 range (``low, high = 0,`` :data:`CT_MAX`); models trained here use
  :data:`CT_INPUT_LOW`, :data:`CT_INPUT_HIGH` = 0, 50000.
- **Output.** The generator's tanh output ``y`` in [-1, 1] becomes 8-bit as
  ``round((y + 1) * 127.5)`` clipped to 0..255, rounding half to even (:func:`output_to_uint8`).
- **Prefilter.** A 3D Gaussian with σ = :data:`PREFILTER_SIGMA` voxel before staining
  (:func:`prefilter`), whose kernel reaches :func:`prefilter_halo` voxels.

Only numpy (and scipy, for the prefilter) is used. The two mappings that also run on the accelerator
(:func:`network_input`, :func:`output_to_uint8`) are written with arithmetic operators and the
``round``/``clip`` methods that numpy arrays and torch tensors share, so a tensor goes through
the same operations, in the same order and precision, as an array.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from vstain_dask.errors import InputError

__all__ = [
    "CT_BONE_LEVEL",
    "CT_BACKGROUND_LEVEL",
    "CT_MAX",
    "CT_INPUT_LOW",
    "CT_INPUT_HIGH",
    "PREFILTER_SIGMA",
    "PREFILTER_TRUNCATE",
    "ct_gain",
    "rescale_ct",
    "ct_to_paper_units",
    "network_input",
    "output_to_uint8",
    "prefilter_halo",
    "prefilter",
]

#: uint16 grey value that the mean of bone is mapped to (the paper's constant).
CT_BONE_LEVEL: int = 30000
#: uint16 grey value that the mean of the background is mapped to (the paper's constant).
CT_BACKGROUND_LEVEL: int = 10000
#: top of the uint16 range: paper units are clipped to ``0..CT_MAX``, and a model without other
#: information (the paper's, an imported one) maps ``0..CT_MAX`` to its input range -1..1.
CT_MAX: int = 65535
#: paper units mapped to -1 by models trained here; background (10000) lands at -0.6
CT_INPUT_LOW: float = 0.0
#: paper units mapped to +1 by models trained here; bone (30000) lands at +0.2, a Ti screw
#: saturates
CT_INPUT_HIGH: float = 50000.0
#: the paper's prefilter: σ = 1 voxel, because its training pairs came from interpolated
#: registration
PREFILTER_SIGMA: float = 1.0
#: kernel radius in standard deviations (scipy's default)
PREFILTER_TRUNCATE: float = 4.0


# -- CT levels -------------------------------------------------------------------------------------


def ct_gain(
    bone: float,
    background: float,
    *,
    bone_target: float = CT_BONE_LEVEL,
    background_target: float = CT_BACKGROUND_LEVEL,
) -> float:
    """Slope of the linear map that takes ``background`` to ``background_target`` and ``bone`` to
    ``bone_target``: ``(bone_target - background_target) / (bone - background)``."""
    if not (math.isfinite(bone) and math.isfinite(background)) or bone == background:
        raise InputError(
            f"bone and background levels must be finite and differ, got {bone!r}, {background!r}"
        )
    return (bone_target - background_target) / (bone - background)


def rescale_ct(
    raw: ArrayLike,
    bone: float,
    background: float,
    *,
    bone_target: float = CT_BONE_LEVEL,
    background_target: float = CT_BACKGROUND_LEVEL,
    dtype: DTypeLike = np.uint16,
) -> np.ndarray:
    """``background_target + (raw - background) * ct_gain(...)``, in ``dtype``.

    Integer outputs (volumes that are stored) are computed in float64, rounded half to even and
    clipped to the range of ``dtype``. Float outputs are neither rounded nor clipped, and are
    computed in the wider of the input's and the output's precision, at least float32: float32
    CT gives float32 arithmetic, as the network input is computed in training and staining.

    Parameters
    ----------
    raw : array of any shape
        Raw CT grey values, e.g. (Z, Y, X).
    bone, background : float
        Means of bone and background in the units of ``raw``.
    bone_target, background_target : float
        What they become.
    dtype : numpy integer or float dtype

    Returns
    -------
    numpy array of ``dtype``, the shape of ``raw``
    """
    gain = ct_gain(bone, background, bone_target=bone_target, background_target=background_target)
    raw = np.asarray(raw)
    out_dtype = np.dtype(dtype)
    if out_dtype.kind in "iu":
        info = np.iinfo(out_dtype)
        out = (raw.astype(np.float64) - background) * gain + background_target
        return np.clip(np.rint(out), info.min, info.max).astype(out_dtype)
    work = np.result_type(raw.dtype, out_dtype, np.float32)
    v = raw.astype(work)  # a copy: the operations below are in place
    v -= work.type(background)
    v *= work.type(gain)
    v += work.type(background_target)
    return v.astype(out_dtype, copy=False)


def ct_to_paper_units(
    raw: ArrayLike, bone: float, background: float, *, dtype: DTypeLike = np.float32
) -> np.ndarray:
    """Raw CT to the paper's units: bone mean -> 30000, background mean -> 10000, in 0..65535.

    The one normalization that every model trained here, and the paper's, expects before its
    input mapping (``InputNormalization.ct_normalized``).

    Parameters
    ----------
    raw : array of any shape
        Raw CT grey values.
    bone, background : float
        Means of bone and background in the units of ``raw``.
    dtype : float32 (default), float64 or uint16
        float32 is what networks are fed (training, staining, evaluation), computed in float32
        for float32 or 16-bit input and not rounded; uint16 is a stored volume, computed in
        float64 and rounded half to even (see :func:`rescale_ct`).

    Returns
    -------
    numpy array of ``dtype``, the shape of ``raw``, clipped to ``0..CT_MAX``
    """
    out_dtype = np.dtype(dtype)
    if out_dtype.kind != "f" and out_dtype != np.uint16:
        raise InputError(f"dtype must be a float dtype or uint16, got {out_dtype}")
    v = rescale_ct(raw, bone, background, dtype=out_dtype)
    if out_dtype.kind == "f":
        np.clip(v, 0.0, float(CT_MAX), out=v)
    return v


# -- the network's input and output ----------------------------------------------------------------


def network_input(v: Any, *, low: float, high: float, invert: bool = False) -> Any:
    """Paper units (or raw CT, for a model that takes it) to the generator's input range.

    ``x = clip(2 (v - low) / (high - low) - 1, -1, 1)``, negated if ``invert`` (the paper's
    "CycleGAN with inverted CT" baseline).

    Parameters
    ----------
    v : float array or tensor of any shape
        A float32 numpy array or torch tensor; the result has its kind, device and precision.
    low, high : float
        Values of ``v`` mapped to -1 and +1.
    invert : bool

    Returns
    -------
    the kind of ``v``, same shape, values in [-1, 1]
    """
    x = (2.0 * (v - low) / (high - low) - 1.0).clip(-1.0, 1.0)
    return -x if invert else x


def alpha_from_rgb(rgb: Any) -> Any:
    """The paper's alpha of a stained volume, ``255 - mean(R, G, B)``: computed in float32,
    rounded half to even, as uint8. ``rgb`` is a numpy or dask uint8 array, channels first."""
    mean = rgb.astype(np.float32).mean(axis=0, dtype=np.float32)
    return (255.0 - mean).round().astype(np.uint8)


def output_to_uint8(y: Any) -> Any:
    """Generator output in [-1, 1] to 8 bits, as model cards state: ``round((y + 1) * 127.5)``.

    Computed in float32, rounded half to even (numpy's ``rint``, torch's ``round``), clipped to
    0..255.

    Parameters
    ----------
    y : array or tensor of any shape
        A numpy array (any real dtype) or a torch tensor (any float dtype, e.g. bfloat16 from
        autocast), on any device.

    Returns
    -------
    uint8 numpy array or torch tensor, the shape of ``y``, on ``y``'s device
    """
    tensor = not isinstance(y, np.ndarray) and hasattr(y, "byte")
    v = y.float() if tensor else np.asarray(y, dtype=np.float32)
    v = ((v + 1.0) * 127.5).round().clip(0.0, 255.0)
    return v.byte() if tensor else v.astype(np.uint8)


# -- the Gaussian prefilter ------------------------------------------------------------------------


def prefilter_halo(sigma: float, *, truncate: float = PREFILTER_TRUNCATE) -> int:
    """Voxels the prefilter's kernel reaches on each side: scipy's radius
    ``int(truncate * sigma + 0.5)``, 0 when ``sigma`` is 0 (no filter)."""
    return int(truncate * sigma + 0.5) if sigma > 0 else 0


def prefilter(block: np.ndarray, sigma: Any, *, truncate: float = PREFILTER_TRUNCATE) -> np.ndarray:
    """``scipy.ndimage.gaussian_filter(block, sigma, mode="reflect", truncate=truncate)`` in the
    block's dtype.

    Float blocks of 32 bits or more are filtered in their own precision. Integer blocks (stored
    volumes) are filtered in float64 and rounded half to even and clipped back to their dtype
    once, at the end (scipy alone would round after each axis); float16 in float32.

    Parameters
    ----------
    block : array, e.g. (Z, Y, X)
    sigma : float or one per axis
        Standard deviation in voxels.
    truncate : float
        Kernel radius in standard deviations (:func:`prefilter_halo`).

    Returns
    -------
    numpy array, the shape and dtype of ``block``
    """
    from scipy import ndimage as ndi  # not at import: the constants here are read by light modules

    kind = block.dtype.kind
    if kind == "f" and block.dtype.itemsize >= 4:
        return ndi.gaussian_filter(block, sigma, mode="reflect", truncate=truncate)
    work = np.float32 if block.dtype == np.float16 else np.float64
    out = ndi.gaussian_filter(block, sigma, output=work, mode="reflect", truncate=truncate)
    if kind in "iu":
        info = np.iinfo(block.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(block.dtype)
