"""DICOM series (a folder of single-frame slices) through the optional pydicom reader.

Slices are ordered by their position along the slice normal (``ImagePositionPatient`` projected
on the cross product of the ``ImageOrientationPatient`` row and column directions), never by
file name; the voxel size is ``PixelSpacing`` (rows, columns) and the spacing of those
positions, which must be equal within :data:`SPACING_TOLERANCE`. Stored values become
``stored * RescaleSlope + RescaleIntercept`` (Hounsfield units for CT), per slice. Pixel data
are read lazily, each task opening its own slice files.
"""

from __future__ import annotations

import os
from pathlib import Path

import dask
import dask.array as da
import numpy as np

from vstain_dask.errors import VolumeFormatError
from vstain_dask.ngff._pixel_size import FoundSize

DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
DICOM_EXTRA = "pip install 'vstain-dask[dicom]'"
#: largest relative difference between a slice gap and the median gap
SPACING_TOLERANCE = 0.01


def _pydicom(what: str):
    try:
        import pydicom
    except ImportError as e:
        raise VolumeFormatError(
            f"{what} is a DICOM series, read through the optional pydicom, which is not "
            f"installed: {DICOM_EXTRA}"
        ) from e
    return pydicom


def is_dicom_file(path: Path) -> bool:
    """A DICOM file by suffix or by its ``DICM`` preamble marker."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def dicom_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and is_dicom_file(p)
    )


def _rescale(ds) -> tuple[float, float]:
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    return slope, intercept


def _out_dtype(stored: np.dtype, bits: int, pairs: set[tuple[float, float]]) -> np.dtype:
    """The smallest type that holds every rescaled value of ``bits`` stored bits exactly: the
    stored one without a rescale, an integer type for integer slopes and intercepts, float32
    otherwise."""
    if pairs == {(1.0, 0.0)}:
        return stored
    if stored.kind not in "iu" or any(not (s.is_integer() and i.is_integer()) for s, i in pairs):
        return np.dtype(np.float32)
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if stored.kind == "i" else (0, 2**bits - 1)
    ends = [s * v + i for s, i in pairs for v in (lo, hi)]
    for candidate in (np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32):
        info = np.iinfo(candidate)
        if info.min <= min(ends) and max(ends) <= info.max:
            return np.dtype(candidate)
    return np.dtype(np.float64)


def _read_slices(files: tuple[str, ...], rescale: tuple, dtype: str | None) -> np.ndarray:
    """Slices ``files`` rescaled, cast to ``dtype`` (None: as stored) and stacked along a new
    first axis."""
    import pydicom

    planes = []
    for name, (slope, intercept) in zip(files, rescale, strict=True):
        try:
            stored = pydicom.dcmread(name).pixel_array
        except Exception as e:  # pydicom raises many types for missing decoders or bad data
            raise VolumeFormatError(
                f"{name}: cannot decode its pixel data ({type(e).__name__}: {e}); a compressed "
                "transfer syntax needs pydicom's decoder plugins (pylibjpeg, gdcm)"
            ) from e
        if (slope, intercept) != (1.0, 0.0):
            stored = stored * np.float64(slope) + np.float64(intercept)
        planes.append(stored if dtype is None else stored.astype(dtype, copy=False))
    return np.stack(planes)


class _SliceRegions:
    """Array-like over the sorted slices; a read opens only the slices it needs (picklable)."""

    def __init__(self, files, rescale, shape, dtype) -> None:
        self.files, self.rescale = tuple(files), tuple(rescale)
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.ndim = 3

    def __getitem__(self, index):
        z, *rest = index if isinstance(index, tuple) else (index,)
        planes = _read_slices(self.files[z], self.rescale[z], self.dtype.str)
        return planes[(slice(None), *rest)]


def open_dicom_folder(folder: Path, *, band_z: int) -> dict:
    """A folder holding one DICOM series as a lazy ``(z, y, x)`` array.

    Returns
    -------
    dict with ``data``, ``description``, ``pixel_size`` (µm, from ``PixelSpacing`` and the
    slice positions) and ``record`` (series, slice order, rescale)
    """
    pydicom = _pydicom(f"folder {folder.name}")
    files = dicom_files(folder)
    headers = _read_headers(pydicom, files)
    series = _check_series(folder, files, headers)
    first = headers[0]
    order, depth, z_um = _slice_order(folder, headers)
    row_mm, col_mm = (float(v) for v in first.PixelSpacing)
    files = [files[i] for i in order]
    rescale = [_rescale(headers[i]) for i in order]
    # one slice decoded now: a missing decoder is refused before anything is written
    stored = _read_slices((str(files[0]),), ((1.0, 0.0),), None).dtype
    bits = int(getattr(first, "BitsStored", 0) or stored.itemsize * 8)
    dtype = _out_dtype(stored, bits, set(rescale))
    shape = (len(files), int(first.Rows), int(first.Columns))
    token = f"dicom-{dask.base.tokenize([str(p) for p in files], os.stat(folder).st_mtime_ns)}"
    data = da.from_array(
        _SliceRegions([str(p) for p in files], rescale, shape, dtype),
        chunks=(min(band_z, shape[0]), shape[1], shape[2]),
        name=token,
        meta=np.empty((0, 0, 0), dtype),
    )
    pairs = sorted(set(rescale))
    record = {
        "series": series[0],
        "slices_sorted_by": "ImagePositionPatient along the slice normal",
        "slice_positions_mm": [float(depth[0]), float(depth[-1])],
        "rescale": [{"slope": s, "intercept": i} for s, i in pairs],
        "stored_dtype": stored.name,
    }
    sizes = {"y": row_mm * 1000.0, "x": col_mm * 1000.0}
    if z_um:
        sizes["z"] = z_um
    return {
        "data": data,
        "description": f"DICOM series {folder.name} ({len(files)} slices)",
        "pixel_size": FoundSize(sizes=sizes, source="the DICOM PixelSpacing and slice positions"),
        "record": record,
    }


def _read_headers(pydicom, files: list[Path]) -> list:
    """The headers of ``files``, without their pixel data."""
    headers = []
    for p in files:
        try:
            headers.append(pydicom.dcmread(p, stop_before_pixels=True))
        except Exception as e:  # InvalidDicomError, truncated files
            raise VolumeFormatError(f"{p} is not a readable DICOM file ({e})") from e
    return headers


def _check_series(folder: Path, files: list[Path], headers: list) -> list[str]:
    """The series UIDs of the slices (one, else an error), once every slice is checked to carry
    the tags that place it and to match the first slice's size and orientation."""
    series = sorted({str(getattr(h, "SeriesInstanceUID", "")) for h in headers})
    if len(series) > 1:
        raise VolumeFormatError(
            f"folder {folder} holds {len(series)} DICOM series ({', '.join(series[:4])}); "
            "put one series per folder"
        )
    first = headers[0]
    for p, h in zip(files, headers, strict=True):
        for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows"):
            if tag not in h:
                raise VolumeFormatError(
                    f"{p.name} has no {tag}; a DICOM series needs it to place its slices"
                )
        if (h.Rows, h.Columns) != (first.Rows, first.Columns):
            raise VolumeFormatError(
                f"{p.name} is {h.Rows}x{h.Columns} but {files[0].name} is "
                f"{first.Rows}x{first.Columns}; all slices of a series must match"
            )
        if not np.allclose([float(v) for v in h.ImageOrientationPatient],
                           [float(v) for v in first.ImageOrientationPatient], atol=1e-4):  # fmt: skip
            raise VolumeFormatError(
                f"{p.name} is oriented {list(h.ImageOrientationPatient)} but {files[0].name} "
                f"{list(first.ImageOrientationPatient)}; not one stack of parallel slices"
            )
    return series


def _slice_order(folder: Path, headers: list) -> tuple[np.ndarray, np.ndarray, float | None]:
    """(the slices' order along the slice normal, their sorted positions on it in mm, the slice
    spacing in µm): the median gap, which every gap must match, or for a single slice its
    ``SliceThickness`` (None without one)."""
    first = headers[0]
    orientation = np.array([float(v) for v in first.ImageOrientationPatient])
    normal = np.cross(orientation[:3], orientation[3:])
    depth = np.array([np.dot([float(v) for v in h.ImagePositionPatient], normal) for h in headers])
    order = np.argsort(depth, kind="stable")
    depth = depth[order]
    gaps = np.diff(depth)
    if len(headers) <= 1:
        return order, depth, float(getattr(first, "SliceThickness", 0) or 0) * 1000.0 or None
    median = float(np.median(gaps))
    worst = float(np.max(np.abs(gaps - median))) if median > 0 else np.inf
    if median <= 0 or worst > SPACING_TOLERANCE * median:
        raise VolumeFormatError(
            f"the slices of {folder.name} are unequally spaced along their normal (gaps "
            f"{gaps.min():.4g} to {gaps.max():.4g} mm, median {median:.4g} mm, more than "
            f"{SPACING_TOLERANCE:.0%} apart); missing or duplicate slices? vstain-dask "
            "imports evenly spaced series only"
        )
    return order, depth, median * 1000.0
