"""The two images a registration reads: the CT from its pyramid, the section at a pixel size.

Both are read level by level from OME-Zarr, never whole at full resolution: the CT as a
coarse level or as a crop of a finer one around the plane, the section from the pyramid level
just finer than the pixel size asked, then area-averaged to it.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from vstain_dask.errors import InputError
from vstain_dask.register._geometry import to_sitk

#: CT levels at most this many voxels along their longest axis are read whole
COARSE_VOXELS = 64
#: the most CT voxels read at once around a plane (float32: 128 MiB); larger regions are
#: resampled block by block onto the plane's own grid
CROP_VOXELS = 1 << 25


@dataclasses.dataclass(frozen=True)
class Grid:
    """A regular grid: ``translation + scale * index`` per axis, in the CT's axis order."""

    shape: tuple[int, ...]
    scale: np.ndarray
    translation: np.ndarray

    @property
    def low(self) -> np.ndarray:
        return self.translation

    @property
    def high(self) -> np.ndarray:
        return self.translation + self.scale * (np.array(self.shape) - 1)

    @property
    def centre(self) -> np.ndarray:
        return (self.low + self.high) / 2.0


def _grid(level, dims: tuple[str, ...]) -> Grid:
    """The grid of one opened OME-Zarr level along ``dims``."""
    return Grid(
        tuple(int(level.sizes[d]) for d in dims),
        np.array([level.attrs["scale"][d] for d in dims], dtype=np.float64),
        np.array([level.attrs["translation"][d] for d in dims], dtype=np.float64),
    )


class CTPyramid:
    """A CT OME-Zarr volume, level by level (``z, y, x``)."""

    def __init__(self, path: str | os.PathLike) -> None:
        from vstain_dask import ngff

        self.path = Path(path)
        first = ngff.open_volume(path)
        if first.dims != ("z", "y", "x"):
            raise InputError(f"{path} is not a CT volume (axes {','.join(first.dims)}, not z,y,x)")
        self.unit = first.attrs.get("units", {}).get("z", "micrometer")
        self.levels = [first] + [
            ngff.open_volume(path, level=k) for k in range(1, int(first.attrs["n_levels"]))
        ]

    def grid(self, level: int) -> Grid:
        return _grid(self.levels[level], ("z", "y", "x"))

    @property
    def voxel_size(self) -> float:
        return float(min(self.grid(0).scale))

    def coarse_level(self) -> int:
        for k in range(len(self.levels)):
            if max(self.levels[k].shape) <= COARSE_VOXELS:
                return k
        return len(self.levels) - 1

    def read(self, level: int, low: np.ndarray | None = None, high: np.ndarray | None = None):
        """A SimpleITK image of ``level``, cropped to the physical box [low, high] if given."""
        import SimpleITK as sitk

        g = self.grid(level)
        start, stop = (0, np.array(g.shape)) if low is None else self._indices(level, low, high)
        start = np.zeros(3, dtype=int) + start
        sl = tuple(slice(int(a), int(b)) for a, b in zip(start, stop, strict=True))
        data = np.asarray(self.levels[level].data[sl], dtype=np.float32)
        img = sitk.GetImageFromArray(data)
        img.SetSpacing(to_sitk(g.scale))
        img.SetOrigin(to_sitk(g.translation + g.scale * start))
        return img

    def _indices(self, level: int, low: np.ndarray, high: np.ndarray):
        """Start and stop voxel indices of ``level`` holding the physical box [low, high]."""
        g = self.grid(level)
        shape = np.array(g.shape)
        start = np.clip(np.floor((low - g.translation) / g.scale).astype(int), 0, shape - 1)
        stop = np.clip(np.ceil((high - g.translation) / g.scale).astype(int) + 1, start + 1, shape)
        return start, stop

    def box_voxels(self, level: int, low: np.ndarray, high: np.ndarray) -> int:
        """How many voxels :meth:`read` of the box [low, high] at ``level`` would hold."""
        start, stop = self._indices(level, low, high)
        return int(np.prod(stop - start))

    def resample(self, level: int, ref, transform=None) -> tuple[np.ndarray, np.ndarray]:
        """The CT at ``level`` resampled (linearly) on the grid of the SimpleITK image ``ref``
        through ``transform`` (``ref``'s physical points → the CT's; None: the same points),
        and where the CT exists, as float32 and bool arrays of ``ref``'s shape.

        ``ref``'s grid is halved along its longest side until the CT box holding each block
        has at most :data:`CROP_VOXELS`, and each block is resampled from a crop just holding
        it: however large, oblique or turned the grid, no more is read at once. (Strips are
        not enough: a strip of a plane turned 45° in the CT's axes spans its whole box.)
        """
        import SimpleITK as sitk

        size = np.array(ref.GetSize())[::-1]  # array order
        values = np.zeros(size, dtype=np.float32)
        inside = np.zeros(size, dtype=bool)
        t = transform if transform is not None else sitk.Transform(3, sitk.sitkIdentity)
        blocks = [(np.zeros(3, dtype=int), size)]
        while blocks:
            lo, hi = blocks.pop()
            low, high = self._box(level, ref, transform, lo, hi)
            if self.box_voxels(level, low, high) > CROP_VOXELS and (hi - lo).max() > 1:
                ax = int(np.argmax(hi - lo))
                mid = (lo[ax] + hi[ax]) // 2
                blocks += [(lo, np.where(np.arange(3) == ax, mid, hi))]
                blocks += [(np.where(np.arange(3) == ax, mid, lo), hi)]
                continue
            sub = _sub_grid(ref, lo, hi)
            ct = self.read(level, low, high)
            part = sitk.Resample(ct, sub, t, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
            ones = sitk.Image(ct.GetSize(), sitk.sitkUInt8) + 1
            ones.CopyInformation(ct)
            got = sitk.Resample(ones, sub, t, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
            sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
            values[sl] = sitk.GetArrayFromImage(part)
            inside[sl] = sitk.GetArrayFromImage(got) > 0
        return values, inside

    def _box(self, level: int, ref, transform, lo: np.ndarray, hi: np.ndarray):
        """Physical box (z, y, x) of the CT holding the block ``lo..hi-1`` (array indices) of
        ``ref``'s grid mapped through ``transform``, one voxel of ``level`` around."""
        corners = []
        for k in range(8):
            idx = [float(hi[i] - 1 if (k >> i) & 1 else lo[i]) for i in range(3)]
            p = ref.TransformContinuousIndexToPhysicalPoint(idx[::-1])
            if transform is not None:
                p = transform.TransformPoint(p)
            corners.append(np.asarray(p, dtype=np.float64)[::-1])
        corners = np.array(corners)
        pad = self.grid(level).scale
        return corners.min(axis=0) - pad, corners.max(axis=0) + pad


def _sub_grid(ref, lo: np.ndarray, hi: np.ndarray):
    """The grid of ``ref`` restricted to the block ``lo..hi-1`` (array indices)."""
    import SimpleITK as sitk

    sub = sitk.Image([int(v) for v in (hi - lo)[::-1]], sitk.sitkUInt8)
    sub.SetSpacing(ref.GetSpacing())
    sub.SetDirection(ref.GetDirection())
    sub.SetOrigin(ref.TransformIndexToPhysicalPoint([int(v) for v in lo[::-1]]))
    return sub


@dataclasses.dataclass(frozen=True)
class SectionLevel:
    """The section at one pixel size: ``rgb`` (H, W, 3) uint8 and the µm of pixel (0, 0)."""

    rgb: np.ndarray
    spacing: np.ndarray  # (2,) µm per pixel, rows and cols
    origin: np.ndarray  # (2,) µm, row and col of pixel (0, 0)

    @property
    def shape(self) -> tuple[int, int]:
        return self.rgb.shape[:2]

    def contrast(self) -> np.ndarray:
        """A grey image mutual information can use: the stain's alpha, 255 minus the mean of
        R, G and B (glass dark, stained tissue bright), as float32."""
        from vstain_dask.intensity import alpha_from_rgb

        return alpha_from_rgb(np.moveaxis(self.rgb, -1, 0)).astype(np.float32)

    def col_mid(self) -> float:
        return float(self.origin[1] + self.spacing[1] * (self.shape[1] - 1) / 2.0)


class Section:
    """A histology section stored as a 2D RGB OME-Zarr ``(c, y, x)``."""

    def __init__(self, path: str | os.PathLike) -> None:
        from vstain_dask import ngff

        self.path = Path(path)
        first = ngff.open_volume(path)
        if first.dims != ("c", "y", "x") or first.shape[0] != 3:
            raise InputError(
                f"{path} is not an RGB section (axes {','.join(first.dims)}, shape "
                f"{tuple(first.shape)}); give a whole-slide image or its 2D RGB OME-Zarr"
            )
        self.levels = [first] + [
            ngff.open_volume(path, level=k) for k in range(1, int(first.attrs["n_levels"]))
        ]

    def level_grid(self, level: int) -> Grid:
        return _grid(self.levels[level], ("y", "x"))

    @property
    def full(self) -> Grid:
        return self.level_grid(0)

    def at(self, pixel_size: float) -> SectionLevel:
        """The section area-averaged to ``pixel_size`` µm (never finer than level 0), from the
        coarsest pyramid level that is not coarser (exact area averaging, as import does)."""
        from vstain_dask.ngff._resample import output_length, resample_area

        k = 0
        for j in range(len(self.levels)):
            if max(self.level_grid(j).scale) <= pixel_size * 1.0001:
                k = j
        g = self.level_grid(k)
        factor = np.maximum(pixel_size / g.scale, 1.0)
        data = self.levels[k].data
        if np.all(factor <= 1.0001):
            return SectionLevel(np.moveaxis(np.asarray(data), 0, -1), g.scale, g.translation)
        out = [output_length(n, f) for n, f in zip(g.shape, factor, strict=True)]
        small = resample_area(data, axes="cyx", factors=tuple(factor), chunks=out)
        origin = g.translation + g.scale * (factor - 1.0) / 2.0
        return SectionLevel(np.moveaxis(np.asarray(small), 0, -1), g.scale * factor, origin)
