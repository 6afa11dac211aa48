"""Augmentation of training patches: one geometry for CT, histology and mask; jitter per modality.

Geometry (shared by the three images of a pair, so they stay registered): a random crop
position, a rescale by 90-110 % that keeps the patch size (a window of ``patch / scale`` pixels
is read and resampled to ``patch``), and horizontal and vertical flips (the paper's). Optionally
a random transpose too (``rotate90``), which with the flips gives all eight 90° rotations and
mirror images, for models that must not prefer an orientation. CT and histology are resampled
bilinearly, the mask by nearest neighbour.

Intensity (separate per modality, up to 10 % each):

- CT, in network-input units ``x`` in [-1, 1]: ``x' = clip(c * x + b, -1, 1)`` with contrast
  ``c`` in [0.9, 1.1] and brightness ``b`` in [-0.1, 0.1].
- Histology, in [0, 1] units, preserving each pixel's R : G : B ratios (its chromaticity, i.e.
  the stain): the luminance ``L`` (mean of R, G, B) is changed to
  ``L' = k * (m + c * (L - m))`` (brightness ``k`` in [0.9, 1.1], contrast ``c`` in [0.9, 1.1]
  about the patch's mean luminance ``m``) and every channel is multiplied by ``L' / L``, lowered
  where needed so that no channel exceeds 1.

Every random draw comes from a ``numpy.random.Generator`` the caller seeds, so a patch is a pure
function of its seed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from vstain_dask.errors import InputError

__all__ = [
    "AugmentConfig",
    "CropGeometry",
    "Jitter",
    "draw_geometry",
    "draw_jitter",
    "resample",
    "jitter_ct",
    "jitter_histology",
]


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the augmentation; zeros (and ``scale=(1, 1)``, ``flips=False``) turn it off.

    Parameters
    ----------
    scale : (min, max)
        Rescale factors (paper: 0.9-1.1); the patch keeps its size.
    flips : bool
        Random horizontal and vertical flips.
    rotate90 : bool
        Random transpose (with ``flips``: any multiple of 90°, mirrored or not). Not in the
        paper; off by default.
    ct_brightness, ct_contrast : float
        Largest CT brightness shift (network units, [-1, 1] range) and relative contrast change.
    histology_brightness, histology_contrast : float
        Largest relative brightness and contrast change of the histology.
    """

    scale: tuple[float, float] = (0.9, 1.1)
    flips: bool = True
    rotate90: bool = False
    ct_brightness: float = 0.1
    ct_contrast: float = 0.1
    histology_brightness: float = 0.1
    histology_contrast: float = 0.1

    def __post_init__(self) -> None:
        try:
            lo, hi = (float(s) for s in self.scale)
        except (TypeError, ValueError) as e:
            raise InputError(f"scale must be (min, max), got {self.scale!r}") from e
        if not (0.25 <= lo <= hi <= 4.0):
            raise InputError(f"scale must satisfy 0.25 <= min <= max <= 4, got {self.scale!r}")
        object.__setattr__(self, "scale", (lo, hi))
        for name in ("flips", "rotate90"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("ct_brightness", "ct_contrast", "histology_brightness", "histology_contrast"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < 1:
                raise InputError(f"{name} must be a number in [0, 1), got {v!r}")
            object.__setattr__(self, name, float(v))

    @classmethod
    def none(cls) -> AugmentConfig:
        """No augmentation: fixed scale, no flips, no jitter (random crop positions only)."""
        return cls(
            scale=(1.0, 1.0),
            flips=False,
            ct_brightness=0.0,
            ct_contrast=0.0,
            histology_brightness=0.0,
            histology_contrast=0.0,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain form for checkpoints and JSON."""
        d = dataclasses.asdict(self)
        d["scale"] = list(self.scale)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AugmentConfig:
        """Inverse of :meth:`to_dict`."""
        d = dict(data)
        if "scale" in d:
            d["scale"] = tuple(d["scale"])
        return cls(**d)


@dataclasses.dataclass(frozen=True)
class CropGeometry:
    """Where a patch comes from and how it is turned.

    Attributes
    ----------
    y0, x0 : int
        Top-left corner of the source window, pixels.
    window : int
        Side of the (square) source window, pixels; resampled to ``patch``.
    patch : int
        Side of the patch, pixels.
    flip_y, flip_x : bool
        Vertical and horizontal flips, applied after resampling.
    transpose : bool
        Swap rows and columns, after the flips.
    """

    y0: int
    x0: int
    window: int
    patch: int
    flip_y: bool = False
    flip_x: bool = False
    transpose: bool = False

    @property
    def slices(self) -> tuple[slice, slice]:
        """The source window as ``(rows, cols)`` slices."""
        return slice(self.y0, self.y0 + self.window), slice(self.x0, self.x0 + self.window)

    @property
    def scale(self) -> float:
        """Output pixels per source pixel."""
        return self.patch / self.window


@dataclasses.dataclass(frozen=True)
class Jitter:
    """Intensity changes of one patch (see the module docstring)."""

    ct_contrast: float = 1.0
    ct_brightness: float = 0.0
    histology_contrast: float = 1.0
    histology_brightness: float = 1.0


def draw_geometry(
    rng: np.random.Generator, shape: tuple[int, int], patch: int, config: AugmentConfig
) -> CropGeometry:
    """A random crop geometry for an image of ``shape`` (Y, X).

    The window side is ``round(patch / s)`` for a scale ``s`` drawn uniformly from
    ``config.scale``, clipped to the image; its position is uniform over the image.
    """
    h, w = (int(n) for n in shape)
    if min(h, w) < patch:
        raise InputError(
            f"patch size {patch} is larger than a pair of size {h}x{w}; use a smaller "
            "--patch-size or larger images"
        )
    lo, hi = config.scale
    s = float(rng.uniform(lo, hi)) if hi > lo else lo
    window = int(min(max(1, round(patch / s)), h, w))
    y0 = int(rng.integers(0, h - window + 1))
    x0 = int(rng.integers(0, w - window + 1))
    flip_y = bool(rng.random() < 0.5) if config.flips else False
    flip_x = bool(rng.random() < 0.5) if config.flips else False
    # drawn only when asked, so that streams without it stay as they were
    transpose = bool(rng.random() < 0.5) if config.rotate90 else False
    return CropGeometry(
        y0=y0, x0=x0, window=window, patch=patch, flip_y=flip_y, flip_x=flip_x, transpose=transpose
    )


def draw_jitter(rng: np.random.Generator, config: AugmentConfig) -> Jitter:
    """Random intensity changes within the configured bounds (four draws, always made)."""
    u = rng.uniform(-1.0, 1.0, 4)
    return Jitter(
        ct_contrast=1.0 + config.ct_contrast * float(u[0]),
        ct_brightness=config.ct_brightness * float(u[1]),
        histology_contrast=1.0 + config.histology_contrast * float(u[2]),
        histology_brightness=1.0 + config.histology_brightness * float(u[3]),
    )


def resample(image: np.ndarray, geometry: CropGeometry, *, nearest: bool = False) -> np.ndarray:
    """Resample a source window (already cut to ``geometry.window``) to the patch and flip it.

    Parameters
    ----------
    image : (window, window) or (C, window, window) array
        The window's pixels, channels first, any real dtype (a mask as bool).
    geometry : CropGeometry
    nearest : bool
        Nearest-neighbour (masks) instead of bilinear.

    Returns
    -------
    (patch, patch) or (C, patch, patch) float32 (bool for a bool input)
    """
    import torch
    import torch.nn.functional as F

    a = np.asarray(image)
    if a.shape[-2:] != (geometry.window, geometry.window) or a.ndim not in (2, 3):
        raise InputError(
            f"image must be a (window, window) or (C, window, window) array with window "
            f"{geometry.window}, got shape {a.shape}"
        )
    is_bool = a.dtype == np.bool_
    if geometry.window != geometry.patch and nearest:
        # the source pixel under each output pixel centre (torch's "nearest-exact")
        idx = np.minimum(
            ((np.arange(geometry.patch) + 0.5) * (geometry.window / geometry.patch)).astype(
                np.intp
            ),
            geometry.window - 1,
        )
        out = a[..., idx[:, None], idx[None, :]]
        out = out if is_bool else out.astype(np.float32)
    elif geometry.window != geometry.patch:
        t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
        t = t[None, None] if t.ndim == 2 else t[None]
        size = (geometry.patch, geometry.patch)
        t = F.interpolate(t, size=size, mode="bilinear", align_corners=False)
        out = (t[0, 0] if a.ndim == 2 else t[0]).numpy()
        out = out > 0.5 if is_bool else out
    else:
        out = a if is_bool else a.astype(np.float32, copy=False)
    if geometry.flip_y:
        out = out[..., ::-1, :]
    if geometry.flip_x:
        out = out[..., ::-1]
    if geometry.transpose:
        out = np.swapaxes(out, -1, -2)
    return np.ascontiguousarray(out)


def jitter_ct(x: np.ndarray, jitter: Jitter) -> np.ndarray:
    """``clip(c * x + b, -1, 1)`` of a CT patch in network units (float32)."""
    out = x * np.float32(jitter.ct_contrast) + np.float32(jitter.ct_brightness)
    return np.clip(out, -1.0, 1.0, out=out)


def jitter_histology(rgb: np.ndarray, jitter: Jitter) -> np.ndarray:
    """Change the brightness and contrast of an RGB patch in [0, 1], keeping R : G : B per pixel.

    Parameters
    ----------
    rgb : (3, H, W) float array in [0, 1], channels first (R, G, B)

    Returns
    -------
    (3, H, W) float32 in [0, 1]
    """
    rgb = np.asarray(rgb, dtype=np.float32)
    if rgb.ndim != 3 or rgb.shape[0] != 3:
        raise InputError(f"rgb must be a (3, H, W) image, got shape {rgb.shape}")
    if jitter.histology_contrast == 1.0 and jitter.histology_brightness == 1.0:
        return rgb.copy()
    lum = (rgb[0] + rgb[1] + rgb[2]) * np.float32(1.0 / 3.0)
    m = np.float32(lum.mean())
    target = np.float32(jitter.histology_brightness) * (
        m + np.float32(jitter.histology_contrast) * (lum - m)
    )
    np.maximum(target, 0.0, out=target)
    top = np.maximum(np.maximum(rgb[0], rgb[1]), rgb[2])
    with np.errstate(divide="ignore", invalid="ignore"):
        gain = np.where(lum > 0, target / lum, np.float32(1.0))
        # the largest gain that keeps every channel <= 1 (white stays white)
        limit = np.where(top > 0, np.float32(1.0) / top, np.float32(np.inf))
    gain = np.minimum(gain, limit).astype(np.float32)
    return np.clip(rgb * gain[None], 0.0, 1.0)
