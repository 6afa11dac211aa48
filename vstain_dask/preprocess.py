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

import functools
import math
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
from vstain_dask.pairs import Material

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
        Number of voxels the estimate is based on.
    metal_threshold : float or None
        Automatic estimation only: voxels whose 3x3(x3) median is at or above it were set aside
        as metal (a Ti screw).
    air_threshold : float or None
        Automatic estimation only: voxels whose median is below it were set aside as empty
        air or holder (or padding, for values equal to the dtype's minimum).
    """

    bone: float
    background: float
    source: LevelSource = LevelSource.MANUAL
    n_samples: int | None = None
    metal_threshold: float | None = None
    air_threshold: float | None = None

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


@dataclass(frozen=True)
class CTLevelRules:
    """How :func:`estimate_ct_levels` finds bone and background among a sample's intensities.

    Each sampled voxel is classified by its 3x3(x3) median (``denoise``: noise narrows the
    histogram's peaks without blurring edges into new intermediate classes). The histogram is
    cut into populations (``classes`` multi-Otsu classes, merged where the histogram has no
    valley between them). A population's level is the mean raw value of the voxels within one
    robust width of its histogram peak, as an ROI of the purest material would give it: a
    neighbouring tissue that the histogram cannot part from it (soft tissue beside the medium,
    trabecular and new bone beside mature bone) widens the class but does not shift it much.
    Then:

    1. *Metal* (top). The top population is a metal screw when it lies farther above the
       next substantial population (see 3.) than that one above the one below it, and
       either gathers on the rotation axis (its mean in-plane distance from the axis at most
       0.6 times the next population's: a screw along the axis, bone around it), or is
       ``metal_factor`` times farther (Ti/bone against bone/medium contrast is roughly 8-15
       from 60 down to 20 keV) without lying outside the next population, which must itself
       stand clear of the one below (gap at least 3 times their summed widths). A PEEK
       screw or soft tissue just above the medium thus does not turn bone into "metal".
       With ``material="ti"`` a larger top gap is enough the first time; with ``"mg"`` or
       ``"peek"`` nothing is taken for metal (Mg is about as bright as bone, PEEK darker).
       The rule is applied a second time, for streak artefacts.
    2. *Air* (bottom). Exact padding (a spike of the dtype's minimum, or of 0 for floats, at
       the bottom) is dropped first. Then, with three or more populations, the lowest is
       empty air or holder when the top population lies at least ``air_factor`` times
       farther above the second than the second above the lowest, the lowest lies farther
       out (mean distance from the axis at least 1.25 times that of everything above it),
       and the second is spread through the sample, not gathered on the axis like a PEEK
       screw (at least 0.6 times the top population's mean distance).
    3. Bone is the top remaining population, background the lowest (both among populations
       holding at least ``3 * min_fraction`` of the sample when there are two such: thinner
       ones are partial volume at edges).

    The spatial cues assume a sample centred in the field of view and a screw along the
    volume's Z axis, as tomography of these samples usually has it. A Ti screw cut lengthwise
    in a 2D slice is found only with ``material="ti"``. Where the cues do not hold, or a
    histogram is ambiguous, pass ``material``, a ``mask`` of the sample (for example its
    cylinder) or measure regions with :func:`levels_from_rois`, and check the result's
    ``metal_threshold`` and ``air_threshold``.

    Attributes
    ----------
    classes : int
        Multi-Otsu classes (2-5) before merging.
    metal_factor, air_factor : float
        Gap ratios of the metal and air rules above.
    min_fraction : float
        Populations holding a smaller fraction of the sample are ignored.
    denoise : bool
        Classify by the 3x3(x3) median (True) or by the raw values.
    """

    classes: int = 4
    metal_factor: float = 8.0
    air_factor: float = 4.0
    min_fraction: float = 0.01
    denoise: bool = True

    def __post_init__(self) -> None:
        classes = self.classes
        if not isinstance(classes, int | np.integer) or not 2 <= classes <= 5:
            raise InputError(f"classes must be an integer in 2..5, got {classes!r}")
        if not self.metal_factor > 0 or not self.air_factor > 0:
            raise InputError(
                f"metal_factor and air_factor must be positive, got {self.metal_factor}, "
                f"{self.air_factor}"
            )
        if not 0 <= self.min_fraction < 0.5:
            raise InputError(f"min_fraction must be in [0, 0.5), got {self.min_fraction}")


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


# -- CT levels: sampling ---------------------------------------------------------------------------


def _strides(shape: tuple[int, ...], budget: int) -> tuple[slice, ...]:
    """Equal strides on all axes so that the strided view holds at most ``budget`` elements."""
    size = math.prod(shape)
    if size <= budget:
        return tuple(slice(None) for _ in shape)
    step = max(1, math.ceil((size / max(budget, 1)) ** (1.0 / len(shape))))
    while math.prod(math.ceil(n / step) for n in shape) > budget:
        step += 1
    return tuple(slice(None, None, step) for _ in shape)


def _median3_at(block: np.ndarray, sl: tuple[slice, ...]) -> np.ndarray:
    """The 3x3(x3) median of ``block`` at the positions ``block[sl]`` only (edges reflected).

    Equal to ``ndi.median_filter(block, size=3)[sl]`` at a cost proportional to the sample,
    not to the block.
    """
    padded = np.pad(block.astype(np.float32), 1, mode="symmetric")
    stack = []
    for offset in np.ndindex(*(3,) * block.ndim):
        view = tuple(
            slice(d + (s.start or 0), d + n, s.step)
            for d, s, n in zip(offset, sl, block.shape, strict=True)
        )
        stack.append(padded[view])
    return np.median(np.stack(stack), axis=0)


class _Sample(NamedTuple):
    raw: np.ndarray  # grey values
    denoised: np.ndarray  # their 3x3(x3) medians (or the values again)
    radius: np.ndarray  # in-plane distance from the volume's axis, 1 = half the plane's size

    def where(self, keep: np.ndarray) -> _Sample:
        """The sampled voxels where ``keep``."""
        return _Sample(*(a[keep] for a in self))


def _block_sample(
    block: np.ndarray,
    mask: np.ndarray | None,
    *,
    budget: int,
    denoise: bool,
    origin: tuple[int, ...],
    plane: tuple[int, int],
) -> _Sample:
    """The finite values of a strided view of one block (where ``mask``) and where they lie.

    ``origin`` is the block's first index in the whole array, ``plane`` the (Y, X) size of it.
    """
    block = np.asarray(block)
    sl = _strides(block.shape, budget)
    raw = block[sl].astype(np.float64)
    # a 3x3(x3) median sharpens the histogram's classes without blurring edges into new
    # intermediate classes; the means are still taken from ``raw``
    denoised = _median3_at(block, sl).astype(np.float64) if denoise else raw
    keep = np.isfinite(raw) & np.isfinite(denoised)
    if mask is not None:
        keep &= np.asarray(mask)[sl]
    ny, nx = plane
    y = (origin[-2] + np.arange(block.shape[-2])[sl[-2]] + 0.5 - ny / 2) / (ny / 2)
    x = (origin[-1] + np.arange(block.shape[-1])[sl[-1]] + 0.5 - nx / 2) / (nx / 2)
    radius = np.broadcast_to(np.hypot(y[:, None], x[None, :]), raw.shape)
    return _Sample(raw[keep], denoised[keep], radius[keep])


def _sample(
    ct: np.ndarray | da.Array,
    mask: np.ndarray | da.Array | None,
    *,
    sample: int,
    max_chunks: int,
    seed: int,
    denoise: bool,
) -> _Sample:
    """A deterministic, bounded sample of ``ct`` (where ``mask``)."""
    plane = (int(ct.shape[-2]), int(ct.shape[-1]))
    if not isinstance(ct, da.Array):
        if ct.size <= 16 * 2**20:
            return _block_sample(
                ct, mask, budget=sample, denoise=denoise, origin=(0,) * ct.ndim, plane=plane
            )
        ct = da.from_array(ct, chunks=128)
    if any(math.isnan(c) for cs in ct.chunks for c in cs):
        raise InputError("ct has unknown chunk sizes; call ct.compute_chunk_sizes() first")
    if mask is not None:
        mask = (
            mask.rechunk(ct.chunks)
            if isinstance(mask, da.Array)
            else da.from_array(mask, chunks=ct.chunks)
        )
    n_blocks = math.prod(ct.numblocks)
    if n_blocks <= max_chunks:
        chosen = np.arange(n_blocks)
    else:
        chosen = np.sort(np.random.default_rng(seed).choice(n_blocks, max_chunks, replace=False))
    budget = max(1, sample // len(chosen))
    starts = [np.cumsum((0, *c[:-1])) for c in ct.chunks]
    tasks = []
    for flat in chosen:
        index = np.unravel_index(int(flat), ct.numblocks)
        origin = tuple(int(starts[axis][i]) for axis, i in enumerate(index))
        block_mask = None if mask is None else mask.blocks[index]
        tasks.append(
            dask.delayed(_block_sample)(
                ct.blocks[index],
                block_mask,
                budget=budget,
                denoise=denoise,
                origin=origin,
                plane=plane,
            )
        )
    # only the chosen blocks are read, one at a time per worker thread
    parts = dask.compute(*tasks)
    return _Sample(*(np.concatenate(arrays) for arrays in zip(*parts, strict=True)))


# -- CT levels: intensity classes ------------------------------------------------------------------


@dataclass(frozen=True)
class _Population:
    lo: float  # values >= lo ...
    hi: float  # ... and < hi (the top population includes hi)
    mean: float
    width: float  # robust standard deviation (1.4826 * MAD)
    fraction: float
    radius: float  # mean in-plane distance from the volume's axis (1 = half the plane)


def _populations(
    sample: _Sample, *, classes: int, nbins: int, valley_ratio: float, min_fraction: float
) -> list[_Population]:
    """Intensity populations: multi-Otsu classes, merged where no histogram valley parts them.

    ``sample.denoised`` decides the classes, ``sample.raw`` (the same voxels, not denoised)
    gives the means, ``sample.radius`` says where the voxels lie.

    Multi-Otsu always returns ``classes`` classes, so one broad peak is often cut in two; two
    neighbouring classes count as different materials only when the smoothed histogram dips
    between their peaks below ``valley_ratio`` times the lower peak. Populations holding less
    than ``min_fraction`` of the values are dropped.
    """
    values = sample.denoised
    vmin, vmax = float(values.min()), float(values.max())
    if not vmax > vmin:
        mean, where = float(sample.raw.mean()), float(sample.radius.mean())
        return [_Population(vmin, vmax, mean, 0.0, 1.0, where)]
    counts, edges = np.histogram(values, bins=nbins, range=(vmin, vmax))
    groups = _merge_without_valley(_otsu_groups(counts, edges, classes), counts, valley_ratio)
    pops = []
    for i, (b0, b1) in enumerate(groups):
        top = i == len(groups) - 1
        pop = _population(sample, float(edges[b0]), float(edges[b1]), top, min_fraction)
        if pop is not None:
            pops.append(pop)
    return pops


def _otsu_groups(counts: np.ndarray, edges: np.ndarray, classes: int) -> list[list[int]]:
    """Multi-Otsu classes of a histogram as [first, end) ranges of bin indices: ``classes``
    of them, or fewer where the histogram does not allow as many."""
    from skimage.filters import threshold_multiotsu

    nbins = counts.size
    centers = 0.5 * (edges[:-1] + edges[1:])
    k = min(classes, int(np.count_nonzero(counts)))
    bounds: list[int] = []  # first bin index of each class after the first
    while k >= 2:
        try:
            thresholds = threshold_multiotsu(hist=(counts, centers), classes=k)
        except ValueError:
            k -= 1
            continue
        bounds = sorted({int(b) for b in np.searchsorted(centers, thresholds, side="right")})
        bounds = [b for b in bounds if 0 < b < nbins]
        break
    return [list(r) for r in zip([0, *bounds], [*bounds, nbins], strict=True)]


def _merge_without_valley(
    groups: list[list[int]], counts: np.ndarray, valley_ratio: float
) -> list[list[int]]:
    """Merge neighbouring bin ranges, the least parted pair first, while the smoothed
    histogram between their peaks stays above ``valley_ratio`` times the lower peak."""
    smooth = ndi.gaussian_filter1d(counts.astype(np.float64), 1.0, mode="constant")
    while len(groups) > 1:
        best, best_ratio = -1, valley_ratio
        for i in range(len(groups) - 1):
            (a0, a1), (b0, b1) = groups[i], groups[i + 1]
            # peaks from the raw counts: smoothing leaks a sharp peak into the next class
            pa = a0 + int(np.argmax(counts[a0:a1]))
            pb = b0 + int(np.argmax(counts[b0:b1]))
            low_peak = min(smooth[pa], smooth[pb])
            ratio = 1.0 if low_peak <= 0 else float(smooth[pa : pb + 1].min() / low_peak)
            if ratio > best_ratio:
                best, best_ratio = i, ratio
        if best < 0:
            break
        groups[best : best + 2] = [[groups[best][0], groups[best + 1][1]]]
    return groups


def _population(
    sample: _Sample, lo: float, hi: float, top: bool, min_fraction: float
) -> _Population | None:
    """The population of the voxels whose denoised value is in [lo, hi) ([lo, hi] for the
    ``top`` one), or None when it holds less than ``min_fraction`` of the sample."""
    values, raw = sample.denoised, sample.raw

    def within(x: np.ndarray) -> np.ndarray:
        return (x >= lo) & ((x <= hi) if top else (x < hi))

    inside = within(values)
    part = values[inside]
    if part.size == 0 or part.size < min_fraction * values.size:
        return None
    median = float(np.median(part))
    width = 1.4826 * float(np.median(np.abs(part - median)))
    # voxels whose own value agrees with their neighbourhood's class: an edge voxel that
    # the median assigns to its neighbours' class would pull the mean towards its own
    agree = inside & within(raw)
    # the mean around the class's histogram peak, as an ROI of the purest material would
    # give it: a neighbouring tissue that the histogram cannot part from it (soft tissue
    # beside the medium, trabecular and new bone beside mature bone) only widens the class
    counts_in, edges_in = np.histogram(part, bins=64)
    peak_bin = int(np.argmax(ndi.gaussian_filter1d(counts_in.astype(np.float64), 1.0)))
    peak = 0.5 * (edges_in[peak_bin] + edges_in[peak_bin + 1])
    core = agree & (np.abs(values - peak) <= max(width, 1e-12))
    if core.sum() < 16:
        core = agree if agree.sum() >= 16 else inside
    mean = float(raw[core].mean())
    where = float(sample.radius[inside].mean())
    return _Population(lo, hi, mean, width, part.size / values.size, where)


def _classes(sample: _Sample, rules: CTLevelRules) -> list[_Population]:
    return _populations(
        sample, classes=rules.classes, nbins=256, valley_ratio=0.6, min_fraction=rules.min_fraction
    )


def _major(pops: list[_Population], min_fraction: float) -> list[_Population]:
    # roles (medium, bone, the population a metal is measured against) go to substantial
    # populations only: a thin class is partial volume at an edge (metal/bone under the PSF)
    substantial = 3.0 * min_fraction
    return [p for p in pops if p.fraction >= substantial]


def _drop_padding(
    sampled: _Sample, dtype: np.dtype, min_fraction: float
) -> tuple[_Sample, float | None]:
    """The sample without exact padding (the dtype's minimum, or 0 for floats, at the
    bottom), and the air threshold that sets it aside (None: no padding)."""
    pad = np.iinfo(dtype).min if dtype.kind in "iu" else 0.0
    if float(sampled.raw.min()) == pad:
        keep = sampled.raw != pad
        rest = sampled.denoised[keep]
        if 1.0 - keep.mean() >= min_fraction and rest.size >= 16 and rest.max() > rest.min():
            return sampled.where(keep), float(np.nextafter(pad, np.inf))
    return sampled, None


def _is_metal(
    a: _Population, b: _Population, c: _Population, *, lenient: bool, metal_factor: float
) -> bool:
    """Whether the top population ``c`` is metal, judged against the two substantial
    populations below it (``a`` under ``b``); ``lenient``: a larger top gap is enough."""
    gap_low, gap_top = b.mean - a.mean, c.mean - b.mean
    if lenient:
        return gap_top > gap_low
    # a screw does not lie outside the bone; a PEEK screw under the bone would
    far = (
        gap_top >= metal_factor * gap_low
        and gap_low >= 3.0 * (a.width + b.width)
        and c.radius <= b.radius
    )
    # a screw along the rotation axis, with the bone around it
    central = gap_top > gap_low and c.radius <= 0.6 * b.radius
    return far or central


def _set_aside_metal(
    sampled: _Sample, pops: list[_Population], hint: Material | None, rules: CTLevelRules
) -> tuple[_Sample, list[_Population], float | None]:
    """Rule 1 of :class:`CTLevelRules`: the sample without metal, its populations and the
    metal threshold (None: no metal)."""
    metal_threshold = None
    for attempt in range(2):  # a second time for metal streak artefacts
        c = pops[-1]
        below = _major(pops[:-1], rules.min_fraction)
        if len(below) < 2:
            break
        a, b = below[-2], below[-1]
        lenient = hint is Material.TI and attempt == 0
        if not _is_metal(a, b, c, lenient=lenient, metal_factor=rules.metal_factor):
            break
        # cut clear of the bone's upper tail (not at Otsu's first empty bin), and below
        # any partial-volume class between bone and metal
        metal_threshold = max(b.hi, min(b.mean + 4.0 * b.width, 0.5 * (b.mean + c.mean)))
        sampled = sampled.where(sampled.denoised < metal_threshold)
        pops = _classes(sampled, rules)
    return sampled, pops, metal_threshold


def _set_aside_air(
    sampled: _Sample, pops: list[_Population], rules: CTLevelRules
) -> tuple[list[_Population], float | None]:
    """Rule 2 of :class:`CTLevelRules` after the padding: the populations without empty air
    or holder, and the air threshold (None: the lowest population is not air)."""
    above_lowest = _major(pops[1:], rules.min_fraction)
    if len(pops) < 3 or len(above_lowest) < 2:
        return pops, None
    a, b, top = pops[0], above_lowest[0], above_lowest[-1]
    above = sampled.radius[sampled.denoised >= b.lo]
    separated = top.mean - b.mean >= rules.air_factor * (b.mean - a.mean)
    # air and holder surround the sample, and the medium fills it; a population just
    # above the lowest that gathers on the axis is a PEEK screw, not the medium
    outside = above.size > 0 and a.radius >= 1.25 * float(above.mean())
    spread = b.radius >= 0.6 * top.radius
    if not (separated and outside and spread):
        return pops, None
    return [p for p in pops if p.lo >= b.lo], b.lo


def _roles(pops: list[_Population], min_fraction: float) -> tuple[_Population, _Population]:
    """Rule 3 of :class:`CTLevelRules`: the (bone, background) populations."""
    if len(pops) < 2:
        raise InputError(
            "ct: could not find both a bone and a background intensity class in the sample "
            f"(found {len(pops)})"
        )
    roles = _major(pops, min_fraction)
    background = roles[0] if roles else pops[0]
    bone = roles[-1] if len(roles) >= 2 else pops[-1]
    return bone, background


def _levels_from_sample(
    sampled: _Sample, dtype: np.dtype, hint: Material | None, rules: CTLevelRules
) -> CTLevels:
    """The CT levels of a sample of a volume of ``dtype``, by ``rules``."""
    if sampled.raw.size < 16:
        raise InputError(
            f"ct has only {sampled.raw.size} finite values to sample (inside the mask); "
            "need at least 16"
        )
    n_samples = int(sampled.raw.size)
    sampled, air_threshold = _drop_padding(sampled, dtype, rules.min_fraction)
    pops = _classes(sampled, rules)
    metal_threshold = None
    # titanium is the only implant material far brighter than bone
    if hint in (None, Material.TI):
        sampled, pops, metal_threshold = _set_aside_metal(sampled, pops, hint, rules)
    pops, air = _set_aside_air(sampled, pops, rules)
    bone, background = _roles(pops, rules.min_fraction)
    return CTLevels(
        bone=bone.mean,
        background=background.mean,
        source=LevelSource.AUTO,
        n_samples=n_samples,
        metal_threshold=metal_threshold,
        air_threshold=air_threshold if air is None else air,
    )


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
    seed: int = 0,
    material: str | None = None,
    rules: CTLevelRules | None = None,
) -> CTLevels:
    """Estimate the mean grey value of bone and of background from intensity classes.

    The volume is not loaded whole: at most ``max_chunks`` chunks of a dask array (all of them
    when there are fewer, otherwise a seeded random choice, so the result is reproducible) are
    read, each strided so that about ``sample`` values are kept in all; a large numpy array is
    treated the same way. This function computes that sample and returns numbers: the levels
    of its intensity classes, a Ti screw's metal (top) and empty air or holder (bottom) set
    aside, by the ``rules`` (:class:`CTLevelRules`, which says when they can mislead).

    Parameters
    ----------
    ct : (Y, X) or (Z, Y, X) array, numpy or dask (or an xarray.DataArray of either)
        Raw CT grey values, any real dtype.
    mask : bool array of the same shape, optional
        Only voxels where it is True are sampled (numpy or dask).
    sample, max_chunks, seed : int
        About how many values are read into memory, at most how many chunks of a dask array
        they are read from, and the seed of the chunk choice.
    material : {"mg", "ti", "peek"}, optional
        Implant material, when known (a ``Material`` enum member works too).
    rules : CTLevelRules, optional
        Classes, gap ratios and denoising of the estimate; default ``CTLevelRules()``.

    Returns
    -------
    CTLevels
        With ``source=LevelSource.AUTO``.

    Raises
    ------
    InputError
        Bad parameters, or fewer than two populations were found.
    """
    data = _as_array(ct, "ct")
    _check_sampling(data, sample, max_chunks)
    rules = _as_rules(rules)
    hint = as_enum(Material, material, "material", case_insensitive=True, allow_none=True)
    if mask is not None:
        mask = _as_mask(mask, data.shape, "mask")
    sampled = _sample(
        data,
        mask,
        sample=int(sample),
        max_chunks=int(max_chunks),
        seed=seed,
        denoise=bool(rules.denoise),
    )
    return _levels_from_sample(sampled, data.dtype, hint, rules)


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
