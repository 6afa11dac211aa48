"""CT and histology normalization, correspondence masks and the 3D Gaussian prefilter.

This module follows the preprocessing of the paired CycleGAN paper (Irvine et al., "Virtual
staining for 3D X-ray histology of bone implants", arXiv:2509.09235; J. Synchrotron Rad. 2026):

- **CT normalization.** The mean grey value of bone and of the background (the medium around the
  sample) are measured, and the CT is scaled linearly so that they become
  :data:`CT_BONE_LEVEL` = 30000 and :data:`CT_BACKGROUND_LEVEL` = 10000 in uint16
  (:func:`estimate_ct_levels`, :func:`levels_from_rois`, :func:`normalize_ct`).
- **Histology normalization.** White balance from the mean background colour, then one contrast
  stretch shared by the three channels, from the 1st percentile of the bone region (at least 10)
  to the 99th percentile of the background (at most 255)
  (:func:`estimate_histology_levels`, :func:`normalize_histology`).
- **Correspondence masks.** The convex hull of bone and screw segmented on the CT slice and on
  the histology image, combined by minimum (logical AND) with optional manual masks
  (:func:`ct_tissue_mask`, :func:`histology_tissue_mask`, :func:`correspondence_mask`).
- **Prefilter.** A 3D Gaussian with σ = 1 voxel on the CT stack before staining
  (:func:`gaussian_prefilter`), lazily and block by block with exactly the result of
  :func:`scipy.ndimage.gaussian_filter` on the whole volume.

Only numpy, scipy, scikit-image and dask are used here; nothing imports torch.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple

import dask
import dask.array as da
import numpy as np
from numpy.typing import ArrayLike, DTypeLike
from scipy import ndimage as ndi

from vstain_dask import intensity
from vstain_dask.errors import InputError, as_enum
from vstain_dask.intensity import CT_BACKGROUND_LEVEL, CT_BONE_LEVEL
from vstain_dask.levels_qc import LEVEL_ROLES
from vstain_dask.pairs import Material, material_preset

__all__ = [
    "CT_BONE_LEVEL",
    "CT_BACKGROUND_LEVEL",
    "LevelSource",
    "CTLevels",
    "CTLevelRules",
    "estimate_ct_levels",
    "levels_from_rois",
    "normalize_ct",
    "HistologyLevels",
    "estimate_histology_levels",
    "normalize_histology",
    "mean_background_colour",
    "ct_tissue_mask",
    "histology_tissue_mask",
    "correspondence_mask",
    "gaussian_prefilter",
]


class LevelSource(StrEnum):
    """How the CT bone and background levels were obtained."""

    AUTO = "auto"  # intensity classes of a bounded sample (estimate_ct_levels)
    ROI = "roi"  # means over given regions (levels_from_rois)
    MANUAL = "manual"  # typed in by a person


@dataclass(frozen=True)
class CTLevels:
    """Mean CT grey values of bone and background, in the units of the raw volume.

    Attributes
    ----------
    bone, background : float
        Mean grey value of mineralized bone and of the medium around the sample.
    source : LevelSource
        How they were obtained.
    n_samples : int or None
        Number of (plane-reduced) values the estimate is based on.
    metal_threshold : float or None
        Automatic estimation only: pixels whose 3x3 median is at or above it were set aside
        as metal (a Ti screw).
    air_threshold : float or None
        Automatic estimation only: pixels below it were set aside as outer air (or padding,
        for values equal to the dtype's minimum).
    confidence : float or None
        Automatic estimation only: how far the estimate can be trusted, in [0, 1]; the
        product of the parts in ``basis["parts"]``: ``separation`` (bone and medium contrast
        over their widths, 1 from 3), ``support`` (the smaller of their pixel fractions, 1
        from 1 %), ``medium`` (how much of its layer around the sample the medium fills, 1
        from 60 %), ``planes`` (how far the planes' own levels spread, 1 up to 10 % of the
        contrast) and ``reference`` (1 when a holder wall, outer air or metal confirmed that
        the brightest class is bone, 0.8 when nothing in view could).
    basis : dict or None
        Automatic estimation only: ``parts``, ``found`` (levels of the holder wall, outer air
        and metal set aside), ``container`` (``"circle"``: a holder or medium cylinder,
        ``"field"``), ``planes`` (Z indices read) and ``reduction``. Not compared.
    """

    bone: float
    background: float
    source: LevelSource = LevelSource.MANUAL
    n_samples: int | None = None
    metal_threshold: float | None = None
    air_threshold: float | None = None
    confidence: float | None = None
    basis: dict[str, Any] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        for name in ("bone", "background"):
            value = getattr(self, name)
            try:
                value = float(value)
            except (TypeError, ValueError) as e:
                raise InputError(
                    f"CTLevels.{name} must be a number, got {value!r}; pass the mean grey value"
                ) from e
            if not math.isfinite(value):
                raise InputError(
                    f"CTLevels.{name} must be finite, got {value}; check the region it was "
                    "measured in for NaN/inf values"
                )
            object.__setattr__(self, name, value)
        if self.bone == self.background:
            raise InputError(
                f"CTLevels.bone and CTLevels.background must differ, got both {self.bone}; "
                "measure them in regions of bone and of background"
            )
        object.__setattr__(self, "source", as_enum(LevelSource, self.source, "CTLevels.source"))
        if self.confidence is not None and not 0 <= self.confidence <= 1:
            raise InputError(f"CTLevels.confidence must be in [0, 1], got {self.confidence}")

    def describe(self) -> str:
        """One line: the levels and where they came from."""
        how = str(self.source.value)
        if self.confidence is not None:
            how += f", confidence {self.confidence:.2f}"
        return f"CT levels: bone {self.bone:.6g}, background {self.background:.6g} ({how})"

    def record(self) -> dict[str, Any]:
        """The plain form provenance records: levels, source and, for an estimate, its
        confidence and basis."""
        out: dict[str, Any] = {"bone": self.bone, "background": self.background,
                               "source": str(self.source.value)}  # fmt: skip
        if self.confidence is not None:
            out["confidence"] = self.confidence
        if self.basis is not None:
            out["basis"] = self.basis
        return out


@dataclass(frozen=True)
class CTLevelRules:
    """How :func:`estimate_ct_levels` gives roles to the intensity classes of a sample.

    Each sampled plane is classified by its 3x3 median (``denoise``: noise narrows the
    histogram's peaks without blurring edges into new intermediate classes). The classes are
    the peaks of the smoothed log-histogram that stand out by a factor of two, cut at the
    valleys between them; a class holding less than ``min_fraction`` of the pixels joins the
    neighbour it is least parted from. A class's level is the mean raw value of its core:
    pixels away from its edges and within 1.5 robust widths of its typical value, as an ROI
    of the purest material would give it. Then:

    1. *Metal.* The top class is a metal screw when it stands above the next class by at
       least half that one's height above the lowest, forms one solid blob in the planes
       that show it (solidity after a 5x5 closing at least 0.75; 0.6 with
       ``material="ti"`` or along a line: a screw seen end-on or lengthwise, not a bone's
       ring or network), and either gathers on the axis (its mean distance from the plane's
       centre at most 0.6 times the bulk's), or lies along a line through the centre (its
       mean distance from the nearest such line at most 0.22 times the bulk's: a screw cut
       lengthwise) over a next class at least a third as high, or stands ``metal_factor``
       times farther above, or ``material="ti"`` was given. With ``"mg"`` or ``"peek"`` nothing
       is metal (Mg is about as bright as bone, PEEK darker). The classes are found again
       without it.
    2. *Bone* is the brightest class left holding at least ``3 * min_fraction`` of the
       pixels.
    3. *Medium.* The outer air is the lowest class where it touches the field's edge. When
       its boundary with the rest is a circle (a holder tube, or a cylinder of medium), the
       container is that disc, otherwise the field. From the container's edge inwards, the
       class that dominates each depth gives layers; a thin layer (at most 2 % of the
       container's radius) or one holding most of its class and followed by a darker one
       is a wall (the holder) and is skipped; the first other layer is the medium. When
       bone comes first, the field is tried; when it comes first there too, there is no
       background and the estimate is refused. A medium found from the field's edge is
       refused when more than 90 % of it lies inside the bone's convex hull (marrow: the
       field is inside the sample). A 3D volume whose planes normal to Z show no
       container and neither air nor a wall (a holder tube lying along them) is sampled
       across Y and X as well, and their estimate is taken where they show the holder's
       ring with air or a wall around it.
    4. *No bone.* The bone must stand above the medium at least 1.5 times as far as the
       holder wall or the outer air does (their contrasts are small next to bone's), and 2 %
       of the metal's height; else the estimate is refused.
    5. *Confidence* (see :class:`CTLevels`): below ``min_confidence`` the estimate is
       refused.

    The spatial cues assume the sample inside a holder tube or a medium cylinder, or in
    air, seen across the tube; a field whose edge is soft tissue, with no medium in view
    (air in its corners at most), is outside them: the soft tissue is taken for the medium
    (a holder wall too thin to resolve, between the air and the medium, looks the same).
    Check the QC figure (:func:`vstain_dask.levels_qc.write_levels_qc`), and where the cues
    do not hold pass ``material``, a ``mask`` of the sample, or measure regions with
    :func:`levels_from_rois`.

    Attributes
    ----------
    metal_factor : float
        Gap ratio of the metal rule above.
    min_fraction : float
        Smaller classes join a neighbour.
    denoise : bool
        Classify by the 3x3 median (True) or by the raw values.
    min_confidence : float
        Estimates less confident than this are refused, in [0, 1].
    """

    metal_factor: float = 8.0
    min_fraction: float = 0.003
    denoise: bool = True
    min_confidence: float = 0.5

    def __post_init__(self) -> None:
        if not self.metal_factor > 0:
            raise InputError(f"metal_factor must be positive, got {self.metal_factor}")
        if not 0 < self.min_fraction < 0.2:
            raise InputError(f"min_fraction must be in (0, 0.2), got {self.min_fraction}")
        if not 0 <= self.min_confidence <= 1:
            raise InputError(f"min_confidence must be in [0, 1], got {self.min_confidence}")


@dataclass(frozen=True)
class HistologyLevels:
    """The histology normalization of one image: white balance, then a shared contrast stretch.

    ``out = clip(round((rgb * gains - lower) * 255 / (upper - lower)), 0, 255)``

    Attributes
    ----------
    gains : (3,) tuple of float
        Per-channel (R, G, B) white-balance factors that make the mean background grey.
    lower, upper : float
        White-balanced values mapped to 0 and 255 (the same on all channels).
    extra : dict
        What the estimate saw: ``background_colour`` (mean R, G, B) and the percentiles
        before clamping, ``lower_raw`` and ``upper_raw``. Not compared.
    """

    gains: tuple[float, float, float]
    lower: float
    upper: float
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        gains = tuple(float(g) for g in self.gains)
        if len(gains) != 3 or not all(math.isfinite(g) and g > 0 for g in gains):
            raise InputError(
                f"HistologyLevels.gains must be 3 positive finite numbers, got {self.gains!r}"
            )
        object.__setattr__(self, "gains", gains)
        lower, upper = float(self.lower), float(self.upper)
        if not (math.isfinite(lower) and math.isfinite(upper) and upper > lower):
            raise InputError(
                f"HistologyLevels needs finite lower < upper, got lower={lower}, upper={upper}; "
                "the bone region is not darker than the background: pass bone_mask and "
                "background_mask"
            )
        object.__setattr__(self, "lower", lower)
        object.__setattr__(self, "upper", upper)


# -- small helpers ---------------------------------------------------------------------------------


def _unwrap(x: Any) -> tuple[Any, Any]:
    """(array, DataArray or None): xarray is only checked for when it is already imported."""
    xr = sys.modules.get("xarray")
    if xr is not None and isinstance(x, xr.DataArray):
        return x.data, x
    return x, None


def _rewrap(data: Any, like: Any) -> Any:
    return data if like is None else like.copy(data=data)


def _as_array(x: Any, name: str) -> np.ndarray | da.Array:
    x, _ = _unwrap(x)
    if not isinstance(x, da.Array):
        x = np.asarray(x)
    if x.dtype.kind not in "iuf":
        raise InputError(
            f"{name} must hold real numbers (integer or float), got dtype {x.dtype}; "
            "convert it first"
        )
    return x


def _as_mask(mask: Any, shape: tuple[int, ...], name: str) -> np.ndarray | da.Array:
    mask, _ = _unwrap(mask)
    if not isinstance(mask, da.Array):
        mask = np.asarray(mask)
    if tuple(mask.shape) != tuple(shape):
        raise InputError(
            f"{name} must have the shape of the image {tuple(shape)}, got {tuple(mask.shape)}"
        )
    if mask.dtype.kind != "b":
        if mask.dtype.kind not in "iu":
            raise InputError(f"{name} must be a boolean mask, got dtype {mask.dtype}")
        mask = mask != 0
    return mask


def _rgb(rgb: Any, name: str = "rgb") -> np.ndarray:
    rgb = np.asarray(_unwrap(rgb)[0])
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise InputError(f"{name} must be a (Y, X, 3) RGB image, got shape {rgb.shape}")
    if rgb.dtype != np.uint8:
        raise InputError(
            f"{name} must be uint8 (0-255), got dtype {rgb.dtype}; convert with "
            "skimage.util.img_as_ubyte"
        )
    return rgb


def _remove_small(mask: np.ndarray, min_size: int) -> np.ndarray:
    """Drop connected components (8-connected) with fewer than ``min_size`` pixels."""
    if min_size <= 1 or not mask.any():
        return mask
    labels, n = ndi.label(mask, structure=np.ones((3,) * mask.ndim, bool))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= min_size
    keep[0] = False
    return keep[labels]


def _default_min_size(shape: tuple[int, ...]) -> int:
    # about 0.02 % of the image: removes noise specks, keeps any trabecula worth hulling
    return max(4, int(round(2e-4 * math.prod(shape))))


def _convex_hull(mask: np.ndarray) -> np.ndarray:
    from skimage.morphology import convex_hull_image

    if not mask.any():
        return np.zeros(mask.shape, bool)
    return convex_hull_image(mask)


# -- CT levels: sampled planes ---------------------------------------------------------------------

#: at most this many planes of a 3D volume are read for the CT levels
_PLANES = 8


class _Planes(NamedTuple):
    """The planes a level estimate looks at, reduced in-plane by ``factor`` (area means)."""

    values: np.ndarray  # (P, y, x) float64 means of the raw values, NaN outside the field/mask
    denoised: np.ndarray  # (P, y, x) their 3x3 medians (or the values again)
    valid: np.ndarray  # (P, y, x) bool: in the field, in the mask, finite, not padding
    factor: int
    z: tuple[int, ...]  # the planes' indices along ``axis``
    axis: str = "z"  # the volume's axis the planes are normal to


def _even(n: int, k: int) -> np.ndarray:
    """``k`` (at most ``n``) evenly spread indices into ``range(n)``, centred."""
    k = max(1, min(n, k))
    return np.unique(((np.arange(k) + 0.5) * n / k).astype(int))


def _plane_sums(block, mask, zs, origin: tuple[int, int], factor: int):
    """Sums and counts of the finite (masked-in) values of the planes ``zs`` of one block, over
    the ``factor`` x ``factor`` squares of the whole plane's grid; ``origin`` is the block's
    first (Y, X) index in the plane."""
    block = np.asarray(block)
    iy = (origin[0] + np.arange(block.shape[-2])) // factor
    ix = (origin[1] + np.arange(block.shape[-1])) // factor
    hy, hx = int(iy[-1] - iy[0] + 1), int(ix[-1] - ix[0] + 1)
    index = (iy - iy[0])[:, None] * hx + (ix - ix[0])[None, :]
    sums = np.zeros((len(zs), hy * hx))
    counts = np.zeros((len(zs), hy * hx))
    for k, z in enumerate(zs):
        v = block[z].astype(np.float64)
        ok = np.isfinite(v)
        if mask is not None:
            ok &= np.asarray(mask[z], dtype=bool)
        sums[k] = np.bincount(index[ok], weights=v[ok], minlength=hy * hx)
        counts[k] = np.bincount(index[ok], minlength=hy * hx)
    shape = (len(zs), hy, hx)
    return int(iy[0]), int(ix[0]), sums.reshape(shape), counts.reshape(shape)


def _plane_tasks(ct, mask, *, max_chunks: int, factor_of) -> tuple[list[int], list[Any]]:
    """The Z indices of the planes to read and the tasks that read them, chunk by chunk: whole
    layers of chunks, as many as ``max_chunks`` allows (at least one), evenly spread."""
    if not isinstance(ct, da.Array):
        zs = [int(z) for z in _even(ct.shape[0], _PLANES)]
        factor = factor_of(len(zs))
        return zs, [(0, zs, _plane_sums(ct, mask, zs, (0, 0), factor), factor)]
    ny_blocks, nx_blocks = ct.numblocks[1], ct.numblocks[2]
    layers = _even(ct.numblocks[0], max(1, max_chunks // (ny_blocks * nx_blocks)))
    per_layer = max(1, _PLANES // len(layers))
    starts = [np.cumsum((0, *c[:-1])) for c in ct.chunks]
    chosen = [(int(i), [int(z) for z in _even(ct.chunks[0][i], per_layer)]) for i in layers]
    zs = [int(starts[0][i]) + z for i, local in chosen for z in local]
    factor = factor_of(len(zs))
    tasks, first = [], 0
    for i, local in chosen:
        for j in range(ny_blocks):
            for k in range(nx_blocks):
                origin = (int(starts[1][j]), int(starts[2][k]))
                part = None if mask is None else mask.blocks[i, j, k]
                sums = dask.delayed(_plane_sums)(ct.blocks[i, j, k], part, local, origin, factor)
                tasks.append((first, local, sums, factor))
        first += len(local)
    return zs, tasks


def _read_planes(ct, mask, *, sample: int, max_chunks: int, denoise: bool) -> _Planes:
    """Up to :data:`_PLANES` planes of ``ct`` (Y, X or Z, Y, X), reduced in-plane by area
    means so that about ``sample`` values are kept in all; only the chosen chunk layers are
    read, one chunk at a time per worker thread."""
    ct = ct[None] if ct.ndim == 2 else ct
    if mask is not None:
        mask = mask[None] if mask.ndim == 2 else mask
    if isinstance(ct, da.Array):
        if any(math.isnan(c) for cs in ct.chunks for c in cs):
            raise InputError("ct has unknown chunk sizes; call ct.compute_chunk_sizes() first")
        if mask is not None:
            mask = mask.rechunk(ct.chunks) if isinstance(mask, da.Array) else da.from_array(
                mask, chunks=ct.chunks)  # fmt: skip
    ny, nx = int(ct.shape[-2]), int(ct.shape[-1])

    def factor_of(planes: int) -> int:
        return max(1, math.ceil(math.sqrt(planes * ny * nx / sample)))

    zs, tasks = _plane_tasks(ct, mask, max_chunks=max_chunks, factor_of=factor_of)
    factor = tasks[0][3]
    shape = (len(zs), -(-ny // factor), -(-nx // factor))
    sums, counts = np.zeros(shape), np.zeros(shape)
    for first, local, (y0, x0, s, c) in zip(
        [t[0] for t in tasks],
        [t[1] for t in tasks],
        dask.compute(*[t[2] for t in tasks]),
        strict=True,
    ):
        window = (slice(first, first + len(local)), slice(y0, y0 + s.shape[1]),
                  slice(x0, x0 + s.shape[2]))  # fmt: skip
        sums[window] += s
        counts[window] += c
    valid = counts >= max(1.0, 0.5 * factor * factor)
    values = np.where(valid, sums / np.maximum(counts, 1), np.nan)
    planes = _Planes(values, _denoised(values, valid, denoise), valid, factor, tuple(zs))
    return _coarsened(planes, denoise) if denoise else planes


def _coarsened(planes: _Planes, denoise: bool) -> _Planes:
    """The planes averaged further over g x g squares where their noise is high (more than
    6 % of the range of the values; the planes keep at least 48 pixels a side): a noisy
    scan's classes become separable without blurring their levels."""
    values, valid = planes.values, planes.valid
    if valid.sum() < 16:
        return planes
    residual = (values - planes.denoised)[valid]
    noise = 1.4826 * float(np.median(np.abs(residual - np.median(residual))))
    lo, hi = np.percentile(planes.denoised[valid], [0.5, 99.5])
    most = max(1, min(values.shape[1:]) // 64)
    g = min(most, math.ceil(noise / max(0.04 * (hi - lo), 1e-300)))
    if g <= 1:
        return planes
    p, ny, nx = values.shape
    shape = (p, -(-ny // g), g, -(-nx // g), g)
    pad = ((0, 0), (0, shape[1] * g - ny), (0, shape[3] * g - nx))
    sums = np.pad(np.where(valid, values, 0.0), pad).reshape(shape).sum(axis=(2, 4))
    counts = np.pad(valid, pad).reshape(shape).sum(axis=(2, 4))
    valid = counts >= 0.5 * g * g
    values = np.where(valid, sums / np.maximum(counts, 1), np.nan)
    return _Planes(values, _denoised(values, valid, denoise), valid, planes.factor * g, planes.z,
                   planes.axis)  # fmt: skip


def _denoised(values: np.ndarray, valid: np.ndarray, denoise: bool) -> np.ndarray:
    """The in-plane 3x3 median of each plane: noise narrows the histogram's peaks without
    blurring edges into new intermediate classes (invalid pixels filled for the filter)."""
    if not denoise or not valid.any():
        return values
    filled = np.where(valid, values, np.median(values[valid]))
    return ndi.median_filter(filled, size=(1, 3, 3), mode="reflect")


def _drop_padding(planes: _Planes, dtype: np.dtype, min_fraction: float) -> tuple[_Planes, bool]:
    """The planes without exact padding (a spike of the dtype's minimum, or of 0 for floats,
    at the bottom; the pixels next to it are mixed with it and dropped too)."""
    pad = np.iinfo(dtype).min if dtype.kind in "iu" else 0.0
    values, valid = planes.values, planes.valid
    padded = valid & (values == pad)
    rest = values[valid & ~padded]
    if (
        padded.sum() < min_fraction * valid.sum()
        or rest.size < 16
        or not rest.max() > rest.min()
        or rest.min() < pad
    ):
        return planes, False
    near = ndi.binary_dilation(padded, structure=np.ones((1, 3, 3), bool))
    return planes._replace(valid=valid & ~near), True


# -- CT levels: intensity modes --------------------------------------------------------------------


@dataclass(frozen=True)
class _Mode:
    """One intensity class of the sample: denoised values in [lo, hi)."""

    lo: float
    hi: float
    level: float  # mean raw value of its core (away from edges, near its histogram peak)
    width: float  # robust standard deviation of its denoised values
    fraction: float  # of the valid pixels
    radius: float  # mean in-plane distance from the plane's centre (1 = half the plane)


def _cuts(values: np.ndarray, min_fraction: float) -> list[float]:
    """Cut values between the histogram's modes: peaks of the smoothed log-histogram (about
    the square root of the number of values in bins, at most 256) that stand out by a factor
    of 1.5, merged (least parted first) while one holds less than ``min_fraction`` of the
    values."""
    from scipy.signal import find_peaks

    lo, hi = np.percentile(values, [0.01, 99.99])
    if not hi > lo:
        return []
    nbins = int(np.clip(math.sqrt(values.size), 32, 256))
    counts, edges = np.histogram(np.clip(values, lo, hi), bins=nbins, range=(lo, hi))
    smooth = ndi.gaussian_filter1d(counts.astype(np.float64), 1.0, mode="constant")
    padded = np.concatenate(([-1.0], np.log1p(smooth), [-1.0]))
    peaks = list(find_peaks(padded, prominence=np.log(1.5))[0] - 1)
    cumulative = np.concatenate(([0], np.cumsum(counts))) / counts.sum()
    while len(peaks) > 1:
        valleys = [a + int(np.argmin(smooth[a : b + 1])) for a, b in itertools.pairwise(peaks)]
        bounds = [0, *[v + 1 for v in valleys], nbins]
        shares = np.diff(cumulative[bounds])
        i = int(np.argmin(shares))
        if shares[i] >= min_fraction:
            return [float(edges[v + 1]) for v in valleys]
        # the thin class joins the neighbour it is least parted from: the valley between
        # the two peaks around it is found again
        peaks.pop(i)
    return []


def _label(planes: _Planes, cuts: list[float], keep: np.ndarray) -> np.ndarray:
    """(P, y, x) int: the class of each pixel (-1 where not ``keep``)."""
    lab = np.digitize(planes.denoised, cuts).astype(np.int16)
    lab[~keep] = -1
    return lab


def _measured(planes: _Planes, inside: np.ndarray, mode: _Mode) -> _Mode:
    """``mode`` with its level and width measured over the pixels ``inside`` only."""
    if inside.sum() < 16:
        return mode
    den = planes.denoised[inside]
    width = 1.4826 * float(np.median(np.abs(den - np.median(den))))
    level = float(planes.values[_core(planes, inside)].mean())
    return dataclasses.replace(mode, level=level, width=width)


def _modes(planes: _Planes, lab: np.ndarray, n: int) -> list[_Mode]:
    """The classes 0..n-1 of ``lab``: bounds, core levels, widths, fractions, places."""
    total = max(1, int((lab >= 0).sum()))
    ny, nx = lab.shape[1:]
    yy, xx = np.mgrid[:ny, :nx]
    radius = np.hypot((yy + 0.5 - ny / 2) / (ny / 2), (xx + 0.5 - nx / 2) / (nx / 2))
    modes = []
    for i in range(n):
        inside = lab == i
        den = planes.denoised[inside]
        if den.size == 0:
            modes.append(_Mode(np.nan, np.nan, np.nan, 0.0, 0.0, 1.0))
            continue
        median = float(np.median(den))
        width = 1.4826 * float(np.median(np.abs(den - median)))
        core = _core(planes, inside)
        modes.append(_Mode(float(den.min()), float(den.max()),
                           float(planes.values[core].mean()), width, den.size / total,
                           float(np.broadcast_to(radius, inside.shape)[inside].mean())))  # fmt: skip
    return modes


# -- CT levels: roles of the classes ---------------------------------------------------------------


def _solidity(mask: np.ndarray) -> tuple[float, int]:
    """Area over convex-hull area of the largest 8-connected component (small holes filled),
    and its size in pixels."""
    from skimage.morphology import convex_hull_image

    labels, n = ndi.label(mask, structure=np.ones((3, 3), bool))
    if n == 0:
        return 0.0, 0
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    biggest = int(np.argmax(sizes))
    box = ndi.find_objects(labels)[biggest - 1]
    part = labels[box] == biggest
    # noise and a screw's bore leave small holes; a bone ring's marrow is a large one
    holes, _ = ndi.label(ndi.binary_fill_holes(part) & ~part)
    hole_sizes = np.bincount(holes.ravel())
    hole_sizes[0] = part.size
    part |= (hole_sizes < max(4, 0.02 * part.sum()))[holes]
    return float(part.sum() / convex_hull_image(part).sum()), int(part.sum())


def _compact(lab: np.ndarray, i: int, least: float = 0.75) -> bool:
    """Whether class ``i`` is mostly one solid blob (solidity at least ``least``) in the
    planes that show it (a screw seen end-on or lengthwise), unlike a bone's ring or
    network."""
    weighted, total = 0.0, 0
    for plane in lab:
        if (plane == i).sum() >= 20:
            # a closing fills a screw's thread, not a bone ring's marrow
            s, n = _solidity(ndi.binary_closing(plane == i, np.ones((5, 5), bool)))
            weighted, total = weighted + s * n, total + n
    return total > 0 and weighted / total >= least


def _line_offset(lab: np.ndarray, i: int) -> float:
    """The mean distance of class ``i``'s pixels from the line through the plane's centre
    that they lie nearest to (36 directions tried), in the units of :attr:`_Mode.radius`: a
    screw cut lengthwise lies along such a line, a bone's ring or bands do not."""
    ny, nx = lab.shape[1:]
    _, y, x = np.nonzero(lab == i)
    if y.size == 0:
        return math.inf
    step = max(1, y.size // 20_000)  # a regular subset bounds the work
    y, x = y[::step], x[::step]
    py, px = (y + 0.5 - ny / 2) / (ny / 2), (x + 0.5 - nx / 2) / (nx / 2)
    theta = np.linspace(0.0, np.pi, 36, endpoint=False)
    return float(np.abs(np.outer(np.cos(theta), px) - np.outer(np.sin(theta), py)).mean(1).min())


def _metal(modes: list[_Mode], lab: np.ndarray, hint: Material | None, rules) -> int | None:
    """Rule 1 of :class:`CTLevelRules`: the index of the substantial class under the metal
    (everything above it is metal, with the partial volume at the metal's edge), or None."""
    if hint in (Material.MG, Material.PEEK) or len(modes) < 3:
        return None
    under = _bone(modes[:-1], rules.min_fraction, lab, lab == len(modes) - 1)
    top, low, below = modes[-1], modes[0], modes[under]
    gap_low, gap_top = below.level - low.level, top.level - below.level
    if under == 0 or not gap_top >= 0.5 * gap_low:
        return None
    # the sample's spread: where everything but the lowest and the top class lies
    bulk = [m for m in modes[1:-1] if math.isfinite(m.radius)]
    spread = sum(m.radius * m.fraction for m in bulk) / max(sum(m.fraction for m in bulk), 1e-12)
    central = top.radius <= 0.6 * spread
    # cut lengthwise: along a line through the centre, over a class a third as bright (bone,
    # not the soft tissue under a bone class)
    on_line = _line_offset(lab, len(modes) - 1) <= 0.22 * spread
    if not (central or (on_line and gap_top <= 3 * gap_low) or hint is Material.TI
            or gap_top >= rules.metal_factor * gap_low):  # fmt: skip
        return None
    # a screw cut lengthwise, head and shaft, is less solid than one seen end-on
    least = 0.6 if hint is Material.TI or on_line else 0.75
    return under if _compact(lab, len(modes) - 1, least) else None


def _field_edge(valid: np.ndarray) -> np.ndarray:
    """Valid pixels next to an invalid one or to the plane's border."""
    return valid & ~ndi.binary_erosion(valid, border_value=0)


def _outer(lab: np.ndarray, valid: np.ndarray, low: int) -> np.ndarray:
    """(P, y, x) bool: pixels of the lowest class connected to the field's edge (outer air)."""
    out = np.zeros(lab.shape, bool)
    for p, plane in enumerate(lab):
        labels, n = ndi.label(plane == low, structure=np.ones((3, 3), bool))
        touching = np.unique(labels[_field_edge(valid[p])])
        out[p] = np.isin(labels, touching[touching > 0])
    return out


def _circle(outer: np.ndarray, valid: np.ndarray) -> tuple[float, ...] | None:
    """(cy, cx, radius, coverage) of the circle the boundary between the outer air and the
    rest follows in one plane (a holder tube or a cylinder of medium), or None when it is not
    a circle; ``coverage`` is the fraction of the circle's 16 sectors that the boundary is
    seen in."""
    inner = ndi.binary_fill_holes(valid & ~outer)
    edge = inner & ndi.binary_dilation(outer, structure=np.ones((3, 3), bool))
    edge &= ~_field_edge(valid)
    y, x = np.nonzero(edge)
    if y.size < 30:
        return None
    a = np.column_stack([2 * y, 2 * x, np.ones_like(y)]).astype(np.float64)
    (cy, cx, c), *_ = np.linalg.lstsq(a, (y * y + x * x).astype(np.float64), rcond=None)
    radius = math.sqrt(max(c + cy * cy + cx * cx, 0.0))
    residual = np.hypot(y - cy, x - cx) - radius
    spread = 1.4826 * float(np.median(np.abs(residual - np.median(residual))))
    if not (spread <= 0.03 * radius + 1.0 and radius >= 0.1 * min(outer.shape)):
        return None
    sectors = np.unique((np.arctan2(y - cy, x - cx) + np.pi) * 16 // (2 * np.pi + 1e-9))
    return float(cy), float(cx), radius, sectors.size / 16


def _depth(valid: np.ndarray, circle: tuple[float, ...] | None) -> np.ndarray:
    """Depth (pixels) of each pixel of one plane inside its container: the circle of a holder
    or of a medium cylinder when there is one, else the field (NaN outside)."""
    if circle is None:
        inside = np.pad(valid, 1)
        return np.where(valid, ndi.distance_transform_edt(inside)[1:-1, 1:-1] - 1.0, np.nan)
    cy, cx, radius = circle[:3]
    yy, xx = np.mgrid[: valid.shape[0], : valid.shape[1]]
    depth = radius - np.hypot(yy - cy, xx - cx)
    return np.where(valid & (depth >= 0), depth, np.nan)


class _Layer(NamedTuple):
    mode: int
    depth: tuple[int, int]  # first and last depth bin
    share: float  # mean share of the bins it dominates


def _layers(lab: np.ndarray, depth: np.ndarray, n: int, deepest: int) -> tuple[list[_Layer], Any]:
    """The layers of classes from the container's edge inwards (which class dominates each
    depth bin, runs of one class), and the pixels of each class in the container."""
    ok = (lab >= 0) & np.isfinite(depth)
    per_mode = np.bincount(lab[ok], minlength=n)
    ok &= depth < deepest
    d = depth[ok].astype(int)
    counts = np.bincount(d * n + lab[ok], minlength=deepest * n).reshape(deepest, n)
    layers: list[_Layer] = []
    for b in np.nonzero(counts.sum(1) >= 5)[0]:
        mode, share = int(counts[b].argmax()), float(counts[b].max() / counts[b].sum())
        if layers and layers[-1].mode == mode:
            last = layers[-1]
            span = last.depth[1] - last.depth[0] + 1
            layers[-1] = _Layer(mode, (last.depth[0], int(b)),
                                (last.share * span + share) / (span + 1))  # fmt: skip
        else:
            layers.append(_Layer(mode, (int(b), int(b)), share))
    return layers, (counts, per_mode)


def _medium_layer(lab, depth, modes, bone: int, scale: float) -> tuple[_Layer, list[int]] | None:
    """Rule 3 of :class:`CTLevelRules`: the first thick layer from the container's edge inwards
    (the medium) and the walls skipped on the way; None when bone comes first."""
    deepest = max(4, int(0.5 * scale))
    layers, (counts, per_mode) = _layers(lab, depth, len(modes), deepest)
    thin = max(2.0, 0.02 * scale)
    walls = []
    for k, layer in enumerate(layers):
        if layer.mode >= bone:
            return None
        nxt = layers[k + 1].mode if k + 1 < len(layers) else None
        span = layer.depth[1] - layer.depth[0] + 1
        own = counts[layer.depth[0] : layer.depth[1] + 1, layer.mode].sum() / per_mode[layer.mode]
        lower_inside = nxt is not None and modes[nxt].level < modes[layer.mode].level
        # a wall has more than bone behind it (a sample never fills its holder all round)
        if nxt is not None and nxt < bone and (span <= thin or (own >= 0.7 and lower_inside)):
            walls.append(layer.mode)
            continue
        return layer, walls
    return None


def _find_medium(lab, valid, modes, bone: int):
    """(medium layer, walls, outer air class or None, container name, depth map) or None."""
    outer = _outer(lab, valid, 0)
    circles = [_circle(outer[p], valid[p]) if outer[p].any() else None for p in range(len(lab))]
    radii = [c[2] for c in circles if c is not None]
    if radii:
        depth = np.stack([_depth(valid[p], c) for p, c in enumerate(circles)])
        _check_not_the_wall(lab, depth, modes[bone], bone, float(np.median(radii)))
        found = _medium_layer(lab, depth, modes, bone, float(np.median(radii)))
        # arcs of a circle seen only in part are a container when a wall follows them (a
        # holder cut by the field), not when they are the surface of a sample
        around = np.median([c[3] for c in circles if c is not None]) >= 0.75
        if found is not None and (around or found[1]):
            return (*found, 0 if found[0].mode != 0 else None, "circle", depth)
    # no container in view: the field's edge inwards; the outer air, where it lies along
    # most of the edge, is what surrounds the sample (a sample in air)
    depth = np.stack([_depth(valid[p], None) for p in range(len(lab))])
    found = _medium_layer(lab, depth, modes, bone, 0.5 * min(lab.shape[1:]))
    if found is None:
        found = _beside_bone(lab, depth, modes, bone)
        if found is None:
            return None
    air = 0 if outer.any() and found[0].mode != 0 else None
    _check_not_marrow(lab, modes, found[0], bone)
    return (*found, air, "field", depth)


def _check_not_marrow(lab, modes, layer: _Layer, bone: int) -> None:
    """Refuse a medium found from the field's edge that lies inside the bone: marrow, in a
    field inside the sample."""
    medium = modes[layer.mode]
    min_size = _default_min_size(lab.shape[1:])
    inside = sum(
        int((_convex_hull(_remove_small(plane == bone, min_size)) & (plane == layer.mode)).sum())
        for plane in lab
    )
    # a medium fills the pores of trabecular bone too, but it also surrounds the bone
    if inside > 0.9 * (lab == layer.mode).sum():
        raise InputError(
            f"ct: no background in view: the class at the field's edge ({medium.level:.6g}) "
            "lies inside the bone (marrow: the field is inside the sample?)"
        )


def _beside_bone(lab, depth, modes, bone: int) -> tuple[_Layer, list[int]] | None:
    """Where bone reaches the field's edge (a close-up cut through the sample): the one
    substantial class below bone, if there is one, is the medium; its share is the part of the
    edge beside the bone that it holds, times 0.7 (nothing around the sample says so)."""
    below = [i for i in range(bone) if modes[i].fraction >= 0.01]
    edge = (lab >= 0) & (lab < bone) & (depth < 2)
    if len(below) != 1 or not edge.any():
        return None
    share = 0.7 * float((lab[edge] == below[0]).mean())
    return _Layer(below[0], (0, int(np.nanmax(depth)) + 1), share), []


def _check_not_the_wall(lab, depth, mode: _Mode, bone: int, radius: float) -> None:
    """Refuse a brightest class that lies mostly at the container's edge with a sample inside
    it: the holder wall, with no bone in view."""
    inside = lab == bone
    edge = depth < max(3.0, 0.08 * radius)
    at_edge = inside & edge
    # a wall holds a sample: something other than what lies outside it and than itself
    within = (lab >= 0) & ~edge & np.isfinite(depth)
    sample = within & (lab != 0) & (lab != bone)
    if inside.any() and at_edge.sum() > 0.5 * inside.sum() and sample.sum() > 0.05 * within.sum():
        raise InputError(
            f"ct: no bone found: its brightest class ({mode.level:.6g}) is the ring of the "
            "holder wall at the edge of the field"
        )


def _core(planes: _Planes, inside: np.ndarray) -> np.ndarray:
    """The core of a class: away from its edges (partial volume) and near its typical value,
    as an ROI of the purest material would hold it."""
    den = planes.denoised[inside]
    width = 1.4826 * float(np.median(np.abs(den - np.median(den))))
    # around the histogram's peak, not the median: a neighbouring class that the histogram
    # could not part from this one only widens it
    counts, edges = np.histogram(den, bins=64)
    top = int(np.argmax(ndi.gaussian_filter1d(counts.astype(np.float64), 1.0)))
    peak = 0.5 * (edges[top] + edges[top + 1])
    core = ndi.binary_erosion(inside, structure=np.ones((1, 3, 3), bool))
    core &= np.abs(planes.denoised - peak) <= max(width, 1e-12)
    return core if core.sum() >= 16 else inside


def _consistency(planes: _Planes, lab: np.ndarray, bone: int, medium: int) -> float:
    """How far the per-plane levels of bone and medium spread, over their contrast (0: every
    plane agrees)."""
    spreads = []
    for i in (bone, medium):
        core = _core(planes, lab == i)
        means = [planes.values[p][core[p]].mean() for p in range(len(lab)) if core[p].sum() >= 30]
        spreads.append(np.ptp(means) if len(means) > 1 else 0.0)
    return float(max(spreads))


def _ramp(x: float, zero: float, one: float) -> float:
    return float(np.clip((x - zero) / (one - zero), 0.0, 1.0))


def _confidence(parts: dict[str, float]) -> float:
    return float(np.prod(list(parts.values())))


def _no_bone(bone: _Mode, medium: _Mode, refs: dict[str, float]) -> str | None:
    """Why the brightest class cannot be bone, judged against the references in view (holder
    wall, outer air, metal), or None."""
    contrast = bone.level - medium.level
    limits = {"holder wall": 1.5, "air": 1.5, "metal": 0.02}
    for name, level in refs.items():
        step = abs(level - medium.level)
        if contrast < limits[name] * step:
            return (
                f"its brightest class ({bone.level:.6g}) stands only {contrast:.6g} above the "
                f"medium ({medium.level:.6g}), against {step:.6g} between the medium and the "
                f"{name}: no bone in view?"
            )
    return None


class _Evidence(NamedTuple):
    """What an automatic estimate saw, for its QC figure."""

    planes: _Planes
    roles: np.ndarray  # (P, y, x) int8: index into LEVEL_ROLES
    levels: CTLevels


def _classes(planes: _Planes, keep: np.ndarray, rules) -> tuple[np.ndarray, list[_Mode], list]:
    """Label map, classes and cut values of the pixels ``keep``."""
    cuts = _cuts(planes.denoised[keep], rules.min_fraction)
    lab = _label(planes, cuts, keep)
    modes = _modes(planes, lab, len(cuts) + 1)
    if len(modes) < 2:
        raise InputError(
            "ct: could not find both a bone and a background intensity class in the sample "
            "(its histogram has one mode)"
        )
    return lab, modes, cuts


def _bone(modes: list[_Mode], min_fraction: float, lab=None, metal=None) -> int:
    """Rule 2 of :class:`CTLevelRules`: the brightest substantial class left, not one that
    hugs the ``metal`` (partial volume at its edge)."""
    halo = None if metal is None else ndi.binary_dilation(metal, np.ones((1, 5, 5), bool))
    substantial = [
        i
        for i, m in enumerate(modes)
        if m.fraction >= 3 * min_fraction and (halo is None or (halo & (lab == i)).sum()
                                               < 0.6 * (lab == i).sum())
    ]  # fmt: skip
    return substantial[-1] if substantial else len(modes) - 1


def _levels_from_planes(planes: _Planes, dtype: np.dtype, hint, rules) -> _Evidence:
    """The CT levels of the sampled planes by ``rules``, with what they rest on."""
    if planes.valid.sum() < 16:
        raise InputError(
            f"ct has only {int(planes.valid.sum())} finite values to sample (inside the mask); "
            "need at least 16"
        )
    n_samples = int(planes.valid.sum())
    planes, padded = _drop_padding(planes, dtype, rules.min_fraction)
    lab, modes, cuts = _classes(planes, planes.valid, rules)
    under = _metal(modes, lab, hint, rules)
    found: dict[str, float] = {}
    metal_threshold = metal_mask = None
    if under is not None:
        found["metal"], metal_threshold = modes[-1].level, cuts[under]
        metal_mask = lab > under
        lab, modes, cuts = _classes(planes, planes.valid & ~metal_mask, rules)
    bone = _bone(modes, rules.min_fraction, lab, metal_mask)
    located = _find_medium(lab, planes.valid, modes, bone)
    if located is None:
        raise InputError(
            "ct: no background class found around the sample (bone or metal reaches the edge "
            "of the field or of the holder everywhere)"
        )
    layer, walls, air, container, depth = located
    medium = layer.mode
    # the medium as an ROI around the sample would measure it: its class within its layer
    # (a class that the histogram cannot part from the soft tissue or marrow inside)
    in_layer = (lab == medium) & (depth >= layer.depth[0]) & (depth < layer.depth[1] + 1)
    modes[medium] = _measured(planes, in_layer, modes[medium])
    holder = [w for w in walls if modes[w].level > modes[medium].level]
    if holder:
        found["holder wall"] = modes[holder[0]].level
    if air is not None:
        found["air"] = modes[air].level
    reason = _no_bone(modes[bone], modes[medium], found)
    if reason is not None:
        raise InputError(f"ct: no bone found: {reason}")
    parts = _parts(planes, lab, modes, bone, medium, layer.share, bool(found))
    levels = CTLevels(
        bone=modes[bone].level,
        background=modes[medium].level,
        source=LevelSource.AUTO,
        n_samples=n_samples,
        metal_threshold=metal_threshold,
        air_threshold=_air_threshold(padded, air, cuts, dtype),
        confidence=round(_confidence(parts), 3),
        basis=_basis(parts, found, planes, container),
    )
    roles = _role_map(lab, planes.valid, metal_mask, bone=bone, medium=medium,
                      holder=holder, air=air)  # fmt: skip
    return _Evidence(planes, roles, levels)


def _parts(planes, lab, modes, bone: int, medium: int, share: float, referenced: bool):
    """The parts of the confidence, each in [0, 1] (see :class:`CTLevels`)."""
    b, m = modes[bone], modes[medium]
    contrast = b.level - m.level
    return {
        "separation": _ramp(contrast / max(b.width + m.width, 1e-12), 1.0, 3.0),
        "support": _ramp(min(b.fraction, m.fraction), 0.002, 0.01),
        "medium": _ramp(share, 0.3, 0.6),
        "planes": _ramp(-_consistency(planes, lab, bone, medium) / contrast, -0.3, -0.1),
        "reference": 1.0 if referenced else 0.8,
    }


def _air_threshold(padded: bool, air: int | None, cuts: list[float], dtype) -> float | None:
    if air is not None:
        return float(cuts[air])
    if padded:
        pad = np.iinfo(dtype).min if dtype.kind in "iu" else 0.0
        return float(np.nextafter(pad, np.inf))
    return None


def _basis(parts: dict[str, float], found: dict[str, float], planes: _Planes, container: str):
    return {
        "parts": {k: round(v, 3) for k, v in parts.items()},
        "found": {k: round(float(v), 6) for k, v in found.items()},
        "container": container,
        "planes": [int(z) for z in planes.z],
        "axis": planes.axis,
        "reduction": int(planes.factor),
    }


def _role_map(lab, valid, metal_mask, *, bone, medium, holder, air) -> np.ndarray:
    roles = np.where(valid, LEVEL_ROLES.index("other"), 0).astype(np.int8)
    for classes, name in (([air], "air"), (holder, "holder wall"), ([medium], "medium"),
                          ([bone], "bone")):  # fmt: skip
        for i in classes:
            if i is not None:
                roles[lab == i] = LEVEL_ROLES.index(name)
    if metal_mask is not None:
        roles[metal_mask] = LEVEL_ROLES.index("metal")
    return roles


def _check_sampling(data: np.ndarray | da.Array, sample: Any, max_chunks: Any) -> None:
    if data.ndim not in (2, 3):
        raise InputError(f"ct must be a 2D (Y, X) or 3D (Z, Y, X) array, got shape {data.shape}")
    if not isinstance(sample, int | np.integer) or sample < 16:
        raise InputError(f"sample must be an integer >= 16, got {sample!r}")
    if not isinstance(max_chunks, int | np.integer) or max_chunks < 1:
        raise InputError(f"max_chunks must be a positive integer, got {max_chunks!r}")


def _as_rules(rules: Any) -> CTLevelRules:
    if rules is None:
        return CTLevelRules()
    if not isinstance(rules, CTLevelRules):
        raise InputError(f"rules must be a CTLevelRules, got {type(rules).__name__}")
    return rules


def estimate_ct_levels(
    ct: ArrayLike | da.Array,
    *,
    mask: ArrayLike | da.Array | None = None,
    sample: int = 1_000_000,
    max_chunks: int = 64,
    material: str | None = None,
    rules: CTLevelRules | None = None,
    qc: str | os.PathLike | None = None,
) -> CTLevels:
    """Estimate the mean grey value of bone and of the background (the medium around the
    sample), the paper's two reference levels, with a confidence.

    The volume is not loaded whole: up to eight planes are read, from whole layers of chunks
    of a dask array (as many layers as ``max_chunks`` chunks allow, at least one, evenly
    spread), each reduced in-plane by area means so that about ``sample`` values are kept in
    all; a numpy array is treated the same way. The intensity classes of these planes are
    given roles by where they lie (:class:`CTLevelRules`): a metal screw, a holder wall and
    the outer air are set aside, the brightest class left is bone, and the first thick layer
    inside the holder (or the field) is the medium.

    Parameters
    ----------
    ct : (Y, X) or (Z, Y, X) array, numpy or dask (or an xarray.DataArray of either)
        Raw CT grey values, any real dtype.
    mask : bool array of the same shape, optional
        Only voxels where it is True are sampled (numpy or dask).
    sample, max_chunks : int
        About how many values are kept, and at most how many chunks of a dask array they are
        read from (the chunks of one plane are always read). Where the planes normal to Z show
        no container and neither air nor a wall around the sample (a holder tube lying along
        them), planes normal to Y and then X are read the same way, and their estimate is taken
        when they show the holder's ring (not with a ``mask``).
    material : str, optional
        Implant material, when known (a ``Material`` enum member works too); only the
        presets ``"mg"``, ``"ti"`` and ``"peek"`` change the rules, other names are accepted.
    rules : CTLevelRules, optional
        Default ``CTLevelRules()``; ``min_confidence`` is the refusal threshold.
    qc : path, optional
        Write the QC figure there (:func:`vstain_dask.levels_qc.write_levels_qc`).

    Returns
    -------
    CTLevels
        With ``source=LevelSource.AUTO``, ``confidence`` and its ``basis``.

    Raises
    ------
    InputError
        Bad parameters; no bone or no background class found (a constant volume, a histogram
        with one mode, a brightest class too faint for bone); or a confidence below
        ``rules.min_confidence``. Give the levels, or measure them with
        :func:`levels_from_rois`, instead.
    """
    data = _as_array(ct, "ct")
    _check_sampling(data, sample, max_chunks)
    rules = _as_rules(rules)
    hint = material_preset(material)
    if mask is not None:
        mask = _as_mask(mask, data.shape, "mask")
    read = functools.partial(_read_planes, sample=int(sample), max_chunks=int(max_chunks),
                             denoise=bool(rules.denoise))  # fmt: skip
    evidence = _sampled(data, mask, read, hint, rules)
    levels = evidence.levels
    if levels.confidence < rules.min_confidence:
        weak = ", ".join(f"{k} {v:.2f}" for k, v in levels.basis["parts"].items() if v < 1)
        raise InputError(
            f"ct: the CT levels found automatically (bone {levels.bone:.6g}, background "
            f"{levels.background:.6g}) are not trustworthy: confidence {levels.confidence:.2f} "
            f"< {rules.min_confidence} ({weak})"
        )
    if qc is not None:
        from vstain_dask.levels_qc import write_levels_qc

        write_levels_qc(qc, evidence)
    return levels


def _surrounded(levels: CTLevels) -> bool:
    """Whether the estimate saw what lies around the sample: the outer air or a holder wall."""
    return bool({"air", "holder wall"} & set(levels.basis["found"]))


def _sampled(data, mask, read, hint, rules) -> _Evidence:
    """The evidence of planes normal to Z, or, where those show no container and nothing
    around the sample (a holder tube lying along them, its wall cut by the field), that of
    planes normal to Y or X where those show a container's circle and the air or wall around
    it. Not with a ``mask``: its edge is the field's by the user's choice."""
    evidence = _levels_from_planes(read(data, mask), data.dtype, hint, rules)
    levels = evidence.levels
    if data.ndim != 3 or mask is not None or levels.basis["container"] != "field":
        return evidence
    if _surrounded(levels):
        return evidence
    for axis, order in (("y", (1, 0, 2)), ("x", (2, 1, 0))):
        if data.shape[order[0]] < 16:
            continue
        planes = read(data.transpose(order), None)._replace(axis=axis)
        try:
            other = _levels_from_planes(planes, data.dtype, hint, rules)
        except InputError:
            continue
        if other.levels.basis["container"] == "circle" and _surrounded(other.levels):
            return other
    return evidence


def _roi_selection(roi: Any, data: np.ndarray | da.Array, name: str) -> Any:
    """A boolean mask or a tuple of slices for ``data[...]``."""
    roi, _ = _unwrap(roi)
    if isinstance(roi, slice):
        roi = (roi,)
    if isinstance(roi, tuple) and roi and all(isinstance(r, slice) for r in roi):
        if len(roi) > data.ndim:
            raise InputError(f"{name} has {len(roi)} slices for a {data.ndim}D image")
        return roi
    if (
        isinstance(roi, tuple | list)
        and roi
        and all(
            isinstance(r, tuple | list)
            and len(r) == 2
            and all(isinstance(i, int | np.integer) for i in r)
            for r in roi
        )
    ):
        if len(roi) > data.ndim:
            raise InputError(f"{name} has {len(roi)} (start, stop) pairs for a {data.ndim}D image")
        return tuple(slice(int(a), int(b)) for a, b in roi)
    if isinstance(roi, np.ndarray | da.Array):
        return _as_mask(roi, data.shape, name)
    raise InputError(
        f"{name} must be a boolean mask of the image's shape, a slice, a tuple of slices or of "
        f"(start, stop) pairs, got {type(roi).__name__}"
    )


def levels_from_rois(
    ct: ArrayLike | da.Array,
    *,
    bone_roi: Any,
    background_roi: Any,
) -> CTLevels:
    """Mean CT grey value in a bone region and in a background region, as in the paper.

    Parameters
    ----------
    ct : (Y, X) or (Z, Y, X) array, numpy or dask (or an xarray.DataArray of either)
        Raw CT grey values.
    bone_roi, background_roi : bool array, slice, tuple of slices or of (start, stop) pairs
        The regions, for example ``np.s_[10:20, 40:60]`` or ``((10, 20), (40, 60))``. A box
        reads only the chunks it touches; a mask of a dask volume is read whole.

    Returns
    -------
    CTLevels
        With ``source=LevelSource.ROI``; the means are computed here.
    """
    data = _as_array(ct, "ct")
    sums = []
    for roi, name in ((bone_roi, "bone_roi"), (background_roi, "background_roi")):
        sel = _roi_selection(roi, data, name)
        if isinstance(sel, tuple):
            part = data[sel]
            total, count = part.astype(np.float64).sum(), part.size
        else:
            total = (data.astype(np.float64) * sel).sum()
            count = sel.sum()
        sums.append((total, count, name))
    computed = dask.compute(*[(t, c) for t, c, _ in sums])
    means = []
    for (total, count), (_, _, name) in zip(computed, sums, strict=True):
        if int(count) == 0:
            raise InputError(f"{name} selects no pixels; give a region inside the image")
        means.append(float(total) / int(count))
    return CTLevels(bone=means[0], background=means[1], source=LevelSource.ROI, n_samples=None)


def normalize_ct(
    ct: ArrayLike | da.Array,
    levels: CTLevels,
    *,
    bone_target: float = CT_BONE_LEVEL,
    background_target: float = CT_BACKGROUND_LEVEL,
    dtype: DTypeLike = np.uint16,
) -> Any:
    """Scale CT grey values linearly so that bone and background means land on fixed levels.

    ``out = background_target + (ct - levels.background) * (bone_target - background_target)
    / (levels.bone - levels.background)``, rounded and clipped to the range of an integer
    ``dtype``. The paper maps bone to 30000 and background to 10000 in uint16, the input
    every model trained here expects (``InputNormalization.ct_normalized``).

    Parameters
    ----------
    ct : array of any shape, numpy or dask (or an xarray.DataArray of either)
        Raw CT grey values, e.g. (Z, Y, X).
    levels : CTLevels
        Bone and background means of ``ct`` (:func:`estimate_ct_levels`,
        :func:`levels_from_rois`).
    bone_target, background_target : float
        Output levels.
    dtype : numpy dtype
        Output dtype; integer outputs are rounded and clipped, float outputs are not.

    Returns
    -------
    array of ``dtype``, the same kind as ``ct``
        A dask input gives a lazy dask array with the same chunks (an elementwise
        ``map_blocks``); nothing is computed here.
    """
    if not isinstance(levels, CTLevels):
        raise InputError(
            f"levels must be a CTLevels (from estimate_ct_levels or levels_from_rois), got "
            f"{type(levels).__name__}"
        )
    data, like = _unwrap(ct)
    data = _as_array(data, "ct")
    rescale, out_dtype = _ct_rescaler(levels, bone_target, background_target, dtype)
    if isinstance(data, da.Array):
        out = data.map_blocks(
            rescale, dtype=out_dtype, meta=np.empty((0,) * data.ndim, dtype=out_dtype)
        )
    else:
        out = rescale(data)
    return _rewrap(out, like)


def _ct_rescaler(
    levels: CTLevels, bone_target: float, background_target: float, dtype: DTypeLike
) -> tuple[functools.partial, np.dtype]:
    """:func:`intensity.rescale_ct` from ``levels`` to the targets in ``dtype``, and that
    dtype; the targets and the dtype checked."""
    try:
        out_dtype = np.dtype(dtype)
    except TypeError as e:
        raise InputError(f"dtype must be a numpy dtype, got {dtype!r}") from e
    if out_dtype.kind not in "iuf":
        raise InputError(f"dtype must be an integer or float dtype, got {out_dtype}")
    bone_target, background_target = float(bone_target), float(background_target)
    if not (math.isfinite(bone_target) and math.isfinite(background_target)):
        raise InputError(
            f"bone_target and background_target must be finite, got {bone_target}, "
            f"{background_target}"
        )
    if bone_target == background_target:
        raise InputError(f"bone_target and background_target must differ, got {bone_target}")
    if out_dtype.kind in "iu":
        info = np.iinfo(out_dtype)
        for name, value in (("bone_target", bone_target), ("background_target", background_target)):
            if not info.min <= value <= info.max:
                raise InputError(
                    f"{name} must lie in the range of {out_dtype} [{info.min}, {info.max}], "
                    f"got {value}"
                )
    rescale = functools.partial(
        intensity.rescale_ct,
        bone=levels.bone,
        background=levels.background,
        bone_target=bone_target,
        background_target=background_target,
        dtype=out_dtype,
    )
    return rescale, out_dtype


# -- histology -------------------------------------------------------------------------------------


def _histology_regions(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(background, bone) masks of a (Y, X, 3) uint8 histology image.

    Background: pixels close in colour to the slide's own background colour, taken as the
    median colour of the brightest 5 % of pixels (so a tinted background still counts); the
    distance threshold is Otsu's on the distance, kept within 10-80 grey levels. Bone: the
    stained tissue, that is everything else except dark pixels (below a quarter of the
    background brightness: an opaque implant, dirt, folds).
    """
    from skimage.filters import threshold_otsu

    f = rgb.astype(np.float32)
    lum = f.mean(axis=-1)
    bright = lum >= np.percentile(lum, 95)
    reference = np.median(f[bright], axis=0)
    distance = np.sqrt(((f - reference) ** 2).sum(axis=-1))
    if float(distance.max()) > float(distance.min()):
        threshold = float(threshold_otsu(distance))
    else:
        threshold = 10.0
    threshold = min(max(threshold, 10.0), 80.0)
    background = distance <= threshold
    bone = ~background & (lum >= 0.25 * float(reference.mean()))
    return background, bone


def mean_background_colour(rgb: ArrayLike, mask: ArrayLike | None = None) -> np.ndarray:
    """Mean (R, G, B) colour of the background of a histology image.

    Used to white-balance histology and to fill pixels outside the sample with the background.

    Parameters
    ----------
    rgb : (Y, X, 3) uint8
    mask : (Y, X) bool, optional
        Background pixels; found automatically (bright pixels near the slide's background
        colour) when not given.

    Returns
    -------
    (3,) float64
        Mean colour in 0-255 units, not rounded.
    """
    rgb = _rgb(rgb)
    if mask is None:
        mask, _ = _histology_regions(rgb)
    else:
        mask = np.asarray(_as_mask(mask, rgb.shape[:2], "mask"))
    if not mask.any():
        raise InputError("mask selects no background pixels; give a mask that marks background")
    return rgb[mask].astype(np.float64).mean(axis=0)


def estimate_histology_levels(
    rgb: ArrayLike,
    *,
    background_mask: ArrayLike | None = None,
    bone_mask: ArrayLike | None = None,
    lower_percentile: float = 1.0,
    upper_percentile: float = 99.0,
    lower_floor: float = 10.0,
    upper_ceiling: float = 255.0,
) -> HistologyLevels:
    """White balance and contrast stretch of a histology image, as in the paper.

    1. White balance: each channel is multiplied by ``max(m) / m_c``, where ``m`` is the mean
       background colour, so that the background becomes grey (R = G = B) at the level of its
       brightest channel.
    2. Contrast stretch with one pair of bounds for all channels (so grey stays grey and the
       ratios of channel differences are kept): ``lower`` is the ``lower_percentile`` (1st)
       of the white-balanced bone pixels, all channels pooled, *raised to at least*
       ``lower_floor`` (10); ``upper`` is the ``upper_percentile`` (99th) of the white-balanced
       background, *lowered to at most* ``upper_ceiling`` (255).

    The paper's "clamped to 10" is read as a floor: ``lower = max(p1, 10)``. Its companion
    "clamped to 255" can only be a ceiling (white balance can push the background above 255),
    and a floor keeps a few almost-black pixels (dust, the edge of an opaque implant) from
    setting the black point; in well-stained sections ``p1`` is above 10 and used as is.

    Parameters
    ----------
    rgb : (Y, X, 3) uint8
    background_mask, bone_mask : (Y, X) bool, optional
        Found automatically when not given (background: pixels near the slide's background
        colour; bone: the stained tissue that is not dark implant).
    lower_percentile, upper_percentile : float
        Percentiles (0-100) of the bone and background regions.
    lower_floor, upper_ceiling : float
        Clamps of the two bounds.

    Returns
    -------
    HistologyLevels
    """
    rgb = _rgb(rgb)
    _check_percentiles(lower_percentile, upper_percentile)
    background, bone = _histology_masks(rgb, background_mask, bone_mask)
    mean, gains = _white_balance(rgb, background)
    lower, upper, before_clamps = _stretch_bounds(
        rgb[bone].astype(np.float64) * gains,
        rgb[background].astype(np.float64) * gains,
        percentiles=(lower_percentile, upper_percentile),
        clamps=(lower_floor, upper_ceiling),
    )
    return HistologyLevels(
        gains=tuple(gains),
        lower=lower,
        upper=upper,
        extra={"background_colour": tuple(float(c) for c in mean), **before_clamps},
    )


def _check_percentiles(lower_percentile: float, upper_percentile: float) -> None:
    if not 0 <= lower_percentile <= 100 or not 0 <= upper_percentile <= 100:
        raise InputError(
            f"lower_percentile and upper_percentile must be in 0..100, got {lower_percentile}, "
            f"{upper_percentile}"
        )


def _histology_masks(
    rgb: np.ndarray, background_mask: ArrayLike | None, bone_mask: ArrayLike | None
) -> tuple[np.ndarray, np.ndarray]:
    """The (background, bone) masks: as given, else found by :func:`_histology_regions`."""
    auto_bg = auto_bone = None
    if background_mask is None or bone_mask is None:
        auto_bg, auto_bone = _histology_regions(rgb)
    background = (
        auto_bg
        if background_mask is None
        else np.asarray(_as_mask(background_mask, rgb.shape[:2], "background_mask"))
    )
    bone = (
        auto_bone
        if bone_mask is None
        else np.asarray(_as_mask(bone_mask, rgb.shape[:2], "bone_mask"))
    )
    if not background.any():
        raise InputError(
            "background_mask selects no pixels (none were found automatically); pass a mask "
            "of the slide background"
        )
    if not bone.any():
        raise InputError(
            "bone_mask selects no pixels (no stained tissue was found automatically); pass a "
            "mask of the bone"
        )
    return background, bone


def _white_balance(rgb: np.ndarray, background: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mean background colour and the per-channel gains that make it grey at the level
    of its brightest channel."""
    mean = rgb[background].astype(np.float64).mean(axis=0)
    if not (mean > 0).all():
        raise InputError(
            f"the mean background colour has a zero channel {tuple(mean)}; the background "
            "mask does not mark the bright slide background"
        )
    return mean, mean.max() / mean


def _stretch_bounds(
    bone: np.ndarray,
    background: np.ndarray,
    *,
    percentiles: tuple[float, float],
    clamps: tuple[float, float],
) -> tuple[float, float, dict[str, float]]:
    """(lower, upper, before clamping): the percentiles of the white-balanced ``bone`` and
    ``background`` values, clamped (lower raised to at least, upper lowered to at most
    ``clamps``), and ``{"lower_raw": ..., "upper_raw": ...}`` before that."""
    lower_percentile, upper_percentile = percentiles
    lower_raw = float(np.percentile(bone, lower_percentile))
    upper_raw = float(np.percentile(background, upper_percentile))
    lower = max(lower_raw, float(clamps[0]))
    upper = min(upper_raw, float(clamps[1]))
    if not upper > lower:
        raise InputError(
            f"histology stretch bounds are empty: lower={lower:.1f} (bone p{lower_percentile:g}) "
            f">= upper={upper:.1f} (background p{upper_percentile:g}); pass bone_mask and "
            "background_mask"
        )
    return lower, upper, {"lower_raw": lower_raw, "upper_raw": upper_raw}


def normalize_histology(
    rgb: ArrayLike,
    *,
    levels: HistologyLevels | None = None,
    background_mask: ArrayLike | None = None,
    bone_mask: ArrayLike | None = None,
) -> np.ndarray:
    """White-balance and contrast-stretch a histology image (see :func:`estimate_histology_levels`).

    Parameters
    ----------
    rgb : (Y, X, 3) uint8
    levels : HistologyLevels, optional
        Estimated from ``rgb`` and the masks when not given.
    background_mask, bone_mask : (Y, X) bool, optional
        Regions for the estimate (found automatically when not given).

    Returns
    -------
    (Y, X, 3) uint8
    """
    rgb = _rgb(rgb)
    if levels is None:
        levels = estimate_histology_levels(
            rgb, background_mask=background_mask, bone_mask=bone_mask
        )
    elif not isinstance(levels, HistologyLevels):
        raise InputError(f"levels must be a HistologyLevels, got {type(levels).__name__}")
    out = rgb.astype(np.float64) * np.asarray(levels.gains)
    out = (out - levels.lower) * (255.0 / (levels.upper - levels.lower))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# -- correspondence masks --------------------------------------------------------------------------


def ct_tissue_mask(
    ct: ArrayLike,
    levels: CTLevels | None = None,
    *,
    level: float = 0.2,
    min_object_size: int | None = None,
    material: str | None = None,
) -> np.ndarray:
    """Convex hull of bone and screw on a CT slice.

    Pixels whose 3x3 median lies more than ``level`` of the way from the background to the
    bone level are kept: bone, a Mg or Ti screw, and a PEEK screw wherever it stands out from
    the medium (where it does not, the hull of the bone around it covers it); soft tissue just
    above the medium stays out. Components smaller than ``min_object_size`` are dropped
    (noise) and the convex hull of the rest is returned.

    Parameters
    ----------
    ct : (Y, X) array
        A CT slice (raw or normalized; a dask slice is computed).
    levels : CTLevels, optional
        Estimated from the slice (with ``material``) when not given.
    level : float
        Threshold as a fraction of the background-to-bone contrast, in (0, 1).
    min_object_size : int, optional
        Default: 0.02 % of the slice area, at least 4 pixels.
    material : {"mg", "ti", "peek"}, optional
        Passed to :func:`estimate_ct_levels` when ``levels`` is not given.

    Returns
    -------
    (Y, X) bool
        All False when nothing is segmented.
    """
    data = _as_array(ct, "ct")
    if data.ndim != 2:
        raise InputError(f"ct must be a 2D (Y, X) slice, got shape {data.shape}")
    if not 0 < level < 1:
        raise InputError(f"level must be a fraction of the contrast in (0, 1), got {level}")
    data = np.asarray(data)
    if levels is None:
        levels = estimate_ct_levels(data, material=material)
    elif not isinstance(levels, CTLevels):
        raise InputError(f"levels must be a CTLevels, got {type(levels).__name__}")
    threshold = levels.background + level * (levels.bone - levels.background)
    smooth = ndi.median_filter(data.astype(np.float32), size=3, mode="reflect")
    with np.errstate(invalid="ignore"):
        fg = smooth > threshold if levels.bone > levels.background else smooth < threshold
    size = _default_min_size(data.shape) if min_object_size is None else int(min_object_size)
    return _convex_hull(_remove_small(fg, size))


def histology_tissue_mask(rgb: ArrayLike, *, min_object_size: int | None = None) -> np.ndarray:
    """Convex hull of bone and screw on a histology image.

    Everything that is not slide background (stained tissue, a dark implant) is kept, small
    components are dropped, and the convex hull of the rest is returned.

    Parameters
    ----------
    rgb : (Y, X, 3) uint8
    min_object_size : int, optional
        Default: 0.02 % of the image area, at least 4 pixels.

    Returns
    -------
    (Y, X) bool
    """
    rgb = _rgb(rgb)
    background, _ = _histology_regions(rgb)
    size = _default_min_size(rgb.shape[:2]) if min_object_size is None else int(min_object_size)
    return _convex_hull(_remove_small(~background, size))


def correspondence_mask(
    ct: ArrayLike,
    histology: ArrayLike | None = None,
    *,
    manual: ArrayLike | Sequence[ArrayLike] | None = None,
    levels: CTLevels | None = None,
    material: str | None = None,
) -> np.ndarray:
    """Where a CT slice and its histology image show the same sample (the paper's mask).

    The minimum (logical AND) of :func:`ct_tissue_mask`, :func:`histology_tissue_mask` (when
    ``histology`` is given) and any ``manual`` masks.

    Parameters
    ----------
    ct : (Y, X) array
    histology : (Y, X, 3) uint8, optional
        Co-registered with ``ct``.
    manual : (Y, X) bool or a sequence of them, optional
    levels : CTLevels, optional
        CT levels of the slice (estimated when not given).
    material : {"mg", "ti", "peek"}, optional
        Implant material, for estimating the levels (needed for a Ti screw cut lengthwise).

    Returns
    -------
    (Y, X) bool
    """
    mask = ct_tissue_mask(ct, levels, material=material)
    if histology is not None:
        hist = _rgb(histology, "histology")
        if hist.shape[:2] != mask.shape:
            raise InputError(
                f"histology must have the CT slice's shape {mask.shape} (Y, X), got "
                f"{hist.shape[:2]}; register and resample it first"
            )
        mask &= histology_tissue_mask(hist)
    if manual is not None:
        several = isinstance(manual, list | tuple) and (not manual or np.ndim(manual[0]) == 2)
        manuals = list(manual) if several else [manual]
        for i, m in enumerate(manuals):
            mask &= np.asarray(_as_mask(m, mask.shape, f"manual[{i}]"))
    return mask


# -- the 3D Gaussian prefilter ---------------------------------------------------------------------


def _sigmas(sigma: Any, ndim: int) -> tuple[float, ...]:
    values = (sigma,) * ndim if np.ndim(sigma) == 0 else tuple(sigma)
    if len(values) != ndim:
        raise InputError(f"sigma must be one number or one per axis ({ndim}), got {sigma!r}")
    try:
        values = tuple(float(s) for s in values)
    except (TypeError, ValueError) as e:
        raise InputError(f"sigma must be numbers (voxels), got {sigma!r}") from e
    if not all(math.isfinite(s) and s >= 0 for s in values):
        raise InputError(f"sigma must be finite and >= 0 (voxels), got {sigma!r}")
    return values


def gaussian_prefilter(volume: Any, *, sigma: Any = 1.0, truncate: float = 4.0) -> Any:
    """The paper's 3D Gaussian prefilter of the CT stack (σ = 1 voxel), lazily.

    Equal to ``scipy.ndimage.gaussian_filter(volume, sigma, mode="reflect",
    truncate=truncate)`` on the whole array, computed chunk by chunk with ``map_overlap``: the
    halo on each axis is the kernel radius ``int(truncate * sigma + 0.5)`` (scipy's), and at the
    volume's faces the filter reflects exactly as scipy does. Chunks thinner than the halo are
    merged for the filter and the result is rechunked back, so the output has the input's
    chunks. Integer volumes are filtered in float64, rounded and clipped back to their dtype
    (once, at the end; scipy itself rounds after each axis).

    Parameters
    ----------
    volume : (Z, Y, X) dask array (any dimensionality works; numpy or an xarray.DataArray too)
        CT grey values, any real dtype.
    sigma : float or sequence of float
        Standard deviation in voxels, one for all axes or one per axis; 0 leaves an axis (or,
        everywhere 0, the volume) unchanged.
    truncate : float
        Kernel radius in standard deviations.

    Returns
    -------
    the kind of ``volume``, same shape, dtype and chunks
        Lazy for a dask input; a numpy input is filtered at once.
    """
    data, like = _unwrap(volume)
    data = _as_array(data, "volume")
    sig = _sigmas(sigma, data.ndim)
    if not (
        isinstance(truncate, int | float | np.number) and math.isfinite(truncate) and truncate > 0
    ):
        raise InputError(
            f"truncate must be a positive number of standard deviations, got {truncate!r}"
        )
    if all(s == 0 for s in sig) or data.size == 0:
        return volume
    if not isinstance(data, da.Array):
        return _rewrap(intensity.prefilter(data, sig, truncate=float(truncate)), like)
    # a halo beyond the far face adds nothing: the block already sees the whole axis
    depth = {
        axis: min(intensity.prefilter_halo(s, truncate=float(truncate)), n - 1)
        for axis, (s, n) in enumerate(zip(sig, data.shape, strict=True))
    }
    out = data.map_overlap(
        intensity.prefilter,
        depth=depth,
        boundary="none",
        allow_rechunk=True,
        dtype=data.dtype,
        meta=np.empty((0,) * data.ndim, dtype=data.dtype),
        sigma=sig,
        truncate=float(truncate),
    )
    if out.chunks != data.chunks:
        out = out.rechunk(data.chunks)
    return _rewrap(out, like)
