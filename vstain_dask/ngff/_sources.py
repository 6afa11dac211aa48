"""Lazy readers for the files that ``import_volume`` converts to OME-Zarr.

Each reader returns a dask array without reading pixel data. Blocks are read as bands: a block
covers one output chunk along the first one or two axes and the full extent of the others, so
every byte of an uncompressed file is read once, in long contiguous runs, without memory-mapping
(mapped pages would count towards the resident memory of the worker). The caller rechunks the
bands to the output chunks, which only splits them.

The functions that run inside tasks are module-level and take only plain arguments, so graphs
can be shipped to distributed workers.
"""

from __future__ import annotations

import math
import os
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dask
import dask.array as da
import numpy as np

from vstain_dask.errors import InputError, VolumeFormatError, VStainError
from vstain_dask.ngff import _pixel_size, _wsi
from vstain_dask.ngff._pixel_size import FoundSize

#: TIFF-based files tifffile reads, slides included (BigTIFF, OME-TIFF, Aperio, Hamamatsu)
TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".svs", ".ndpi")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
NPY_SUFFIXES = (".npy",)
_ENDIAN = {">": "big", "<": "little", "=": "native", "|": "native"}


@dataclass(frozen=True)
class OpenedSource:
    """A source volume as a lazy dask array, in vstain-dask axis order.

    Attributes
    ----------
    data : dask array with axes ``axes``
    axes : ``"zyx"``, ``"yx"``, ``"czyx"`` or ``"cyx"``
    description : what the source is, for provenance (``"TIFF folder of 100 slices"``)
    spatial_chunks : output chunks along the spatial axes
    pixel_size : the pixel size the file states (µm), or None
    levels : the file's own lower pyramid levels, exact 2x steps of ``data`` (level 1 first),
        with the axes ``axes``; empty when the pyramid is to be computed
    record : what else the import records about the source (an HDF5 dataset, a DICOM rescale)
    """

    data: da.Array
    axes: str
    description: str
    spatial_chunks: tuple[int, ...]
    pixel_size: FoundSize | None = None
    levels: tuple[da.Array, ...] = ()
    record: Mapping = field(default_factory=dict)


def natural_key(name: str) -> list:
    """Sort key that orders ``slice2`` before ``slice10``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


# --------------------------------------------------------------------------------------------
# block readers (run inside tasks)


def _read_exact(f, offset: int, out: np.ndarray, path: str) -> None:
    f.seek(offset)
    view = memoryview(out.reshape(-1).view(np.uint8))
    got = f.readinto(view)
    if got != view.nbytes:
        raise VolumeFormatError(
            f"{path} ended early: needed {view.nbytes} bytes at offset {offset}, got {got}; "
            "the file is truncated or its shape/dtype are wrong"
        )


def _read_c_order_band(
    path: str,
    offset: int,
    shape: tuple[int, ...],
    dtype: str,
    ranges: tuple[tuple[int, int], ...],
) -> np.ndarray:
    """Read ``file[r0[0]:r0[1], r1[0]:r1[1], ...]`` of a C-ordered array stored at ``offset``.

    ``ranges`` covers the first one or two axes; the remaining axes are read whole.
    """
    dt = np.dtype(dtype)
    lead = len(ranges)
    tail = shape[lead:]
    row = math.prod(tail) * dt.itemsize  # bytes in one index of the last ranged axis
    out = np.empty(tuple(b - a for a, b in ranges) + tuple(tail), dtype=dt)
    with open(path, "rb", buffering=0) as f:
        if lead == 1:
            (a, b) = ranges[0]
            _read_exact(f, offset + a * row, out, path)
        else:
            (z0, z1), (y0, y1) = ranges
            plane = shape[1] * row
            if y0 == 0 and y1 == shape[1]:
                _read_exact(f, offset + z0 * plane, out, path)
            else:
                for i, z in enumerate(range(z0, z1)):
                    _read_exact(f, offset + z * plane + y0 * row, out[i], path)
    if not dt.isnative:
        out = out.astype(dt.newbyteorder("="))
    return out


def _read_slices_band(
    files: tuple[str, ...],
    offsets: tuple[int | None, ...],
    page_shape: tuple[int, ...],
    dtype: str,
    y0: int,
    y1: int,
) -> np.ndarray:
    """Rows ``y0:y1`` of each 2D slice file, stacked along a new first axis."""
    dt = np.dtype(dtype)
    out = np.empty((len(files), y1 - y0, *page_shape[1:]), dtype=dt.newbyteorder("="))
    for i, (name, offset) in enumerate(zip(files, offsets, strict=True)):
        if offset is not None:
            out[i] = _read_c_order_band(name, offset, page_shape, dtype, ((y0, y1),))
        else:
            out[i] = _read_tiff_region(name, (slice(y0, y1),))
    return out


def _read_tiff_region(path: str, index: tuple[slice, ...], level: int = 0) -> np.ndarray:
    """A region of one pyramid level of the first series of a (compressed or tiled) TIFF,
    decoding only the tiles or strips under it."""
    import tifffile
    import zarr

    try:
        with tifffile.TiffFile(path) as tif:
            store = tif.series[0].aszarr(level=level)
            try:
                return np.asarray(zarr.open_array(store, mode="r")[index])
            finally:
                store.close()
    except VStainError:
        raise
    except Exception as e:  # decoders raise many types (ValueError, zlib.error, codec errors)
        where = ", ".join(f"{s.start}:{s.stop}" for s in index if isinstance(s, slice))
        hint = (
            f"the codecs for it are not installed: {_wsi.WSI_EXTRA}"
            if "imagecodecs" in str(e)
            else "the file is damaged or truncated"
        )
        raise VolumeFormatError(
            f"{path}: cannot decode region [{where}] of level {level} ({type(e).__name__}: "
            f"{e}); {hint}"
        ) from e


class _TiffRegions:
    """Array-like view of one level of a compressed TIFF series, opened afresh in every task
    (picklable)."""

    def __init__(self, path: str, shape: tuple[int, ...], dtype: np.dtype, level: int = 0) -> None:
        self.path = path
        self.shape = shape
        self.dtype = np.dtype(dtype)
        self.ndim = len(shape)
        self.level = level

    def __getitem__(self, index):
        if not isinstance(index, tuple):
            index = (index,)
        return _read_tiff_region(self.path, index, self.level)


def _read_image_file(path: str) -> np.ndarray:
    import imageio.v3 as iio

    return np.asarray(iio.imread(path))


# --------------------------------------------------------------------------------------------
# graph builders


def _splits(n: int, step: int) -> list[tuple[int, int]]:
    return [(a, min(a + step, n)) for a in range(0, n, step)]


def _banded(
    shape: tuple[int, ...],
    dtype: np.dtype,
    band: tuple[int, ...],
    read,
    token: str,
) -> da.Array:
    """A dask array whose blocks are ``read(ranges)`` over the first ``len(band)`` axes."""
    lead = len(band)
    tail = shape[lead:]
    out_dtype = np.dtype(dtype).newbyteorder("=")
    if lead == 1:
        blocks = []
        for r in _splits(shape[0], band[0]):
            key = f"{token}-{r[0]}"
            d = dask.delayed(read, pure=True)((r,), dask_key_name=key)
            blocks.append(
                da.from_delayed(d, shape=(r[1] - r[0], *tail), dtype=out_dtype, name=f"a{key}")
            )
        return da.concatenate(blocks, axis=0)
    rows = []
    for rz in _splits(shape[0], band[0]):
        row = []
        for ry in _splits(shape[1], band[1]):
            key = f"{token}-{rz[0]}-{ry[0]}"
            d = dask.delayed(read, pure=True)((rz, ry), dask_key_name=key)
            row.append(
                da.from_delayed(
                    d, shape=(rz[1] - rz[0], ry[1] - ry[0], *tail), dtype=out_dtype, name=f"a{key}"
                )
            )
        rows.append(da.concatenate(row, axis=1))
    return da.concatenate(rows, axis=0)


class _RawBand:
    """Picklable band reader for a C-ordered array in a file."""

    def __init__(self, path: str, offset: int, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.args = (path, offset, tuple(shape), np.dtype(dtype).str)

    def __call__(self, ranges):
        return _read_c_order_band(*self.args, ranges)


class _SliceBand:
    """Picklable band reader for a z-range of a folder of 2D slices."""

    def __init__(self, files, offsets, page_shape, dtype) -> None:
        self.files = tuple(files)
        self.offsets = tuple(offsets)
        self.page_shape = tuple(page_shape)
        self.dtype = np.dtype(dtype).str

    def __call__(self, ranges):
        (z0, z1), (y0, y1) = ranges
        return _read_slices_band(
            self.files[z0:z1], self.offsets[z0:z1], self.page_shape, self.dtype, y0, y1
        )


def _band_for(shape: tuple[int, ...], spatial_chunks: tuple[int, ...], rgb_last: bool):
    """Band extents: one output chunk along z and y for 3D, along y for 2D."""
    n_spatial = len(shape) - (1 if rgb_last else 0)
    if n_spatial == 3:
        return (spatial_chunks[0], spatial_chunks[1])
    return (spatial_chunks[0],)


def _finish(
    data: da.Array,
    spatial_chunks: tuple[int, ...],
    rgb_last: bool,
    description: str,
    *,
    pixel_size: FoundSize | None = None,
    levels: Sequence[da.Array] = (),
    record: Mapping | None = None,
) -> OpenedSource:
    def arrange(a: da.Array) -> da.Array:
        clipped = tuple(min(c, n) for c, n in zip(spatial_chunks, a.shape, strict=False))
        if rgb_last:
            a = da.moveaxis(a, -1, 0)
            return a.rechunk((a.shape[0], *clipped))
        return a.rechunk(clipped)

    spatial = "zyx" if len(spatial_chunks) == 3 else "yx"
    axes = ("c" + spatial) if rgb_last else spatial
    return OpenedSource(
        data=arrange(data),
        axes=axes,
        description=description,
        spatial_chunks=tuple(spatial_chunks),
        pixel_size=pixel_size,
        levels=tuple(arrange(a) for a in levels),
        record=dict(record or {}),
    )


def _clip_chunks(
    shape: tuple[int, ...], chunks: tuple[int, ...] | None, default3: int, default2: int
) -> tuple[int, ...]:
    n = len(shape)
    if chunks is None:
        chunks = (default3,) * 3 if n == 3 else (default2,) * 2
    if len(chunks) != n:
        axes = "Z,Y,X" if n == 3 else "Y,X"
        raise InputError(
            f"chunks must have {n} values ({axes}) for a volume of shape {tuple(shape)}, "
            f"got {tuple(chunks)}"
        )
    if any(int(c) <= 0 for c in chunks):
        raise InputError(f"chunks must be positive integers, got {tuple(chunks)}")
    return tuple(min(int(c), int(s)) for c, s in zip(chunks, shape, strict=True))


def _spatial_shape(shape: tuple[int, ...], rgb_last: bool) -> tuple[int, ...]:
    return tuple(shape[:-1]) if rgb_last else tuple(shape)


# --------------------------------------------------------------------------------------------
# sources


def open_raw(
    path: Path,
    *,
    shape: tuple[int, ...] | None,
    dtype,
    chunks: tuple[int, ...] | None,
    default3: int,
    default2: int,
) -> OpenedSource:
    """A headerless binary file of C-ordered ``shape`` elements of ``dtype``."""
    if shape is None or dtype is None:
        missing = " and ".join(
            n for n, v in (("--shape Z,Y,X", shape), ("--dtype", dtype)) if v is None
        )
        raise InputError(
            f"{path} is read as a raw binary file, which needs {missing} "
            "(shape= and dtype= in Python), e.g. --shape 1536,1536,1536 --dtype uint16"
        )
    dt = _parse_dtype(dtype)
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3) or any(s <= 0 for s in shape):
        raise InputError(
            f"shape of a raw file must be 3 (Z,Y,X) or 2 (Y,X) positive integers, got {shape}"
        )
    expected = math.prod(shape) * dt.itemsize
    actual = path.stat().st_size
    if actual != expected:
        raise InputError(
            f"raw file {path} has {actual} bytes but shape {','.join(map(str, shape))} of "
            f"{dt.name} needs {expected} bytes; check --shape and --dtype"
        )
    spatial_chunks = _clip_chunks(shape, chunks, default3, default2)
    band = _band_for(shape, spatial_chunks, False)
    data = _banded(
        shape,
        dt,
        band,
        _RawBand(str(path), 0, shape, dt),
        f"raw-{dask.base.tokenize(str(path), path.stat().st_mtime_ns, shape, dt.str)}",
    )
    order = "" if dt.isnative or dt.itemsize == 1 else f" {_ENDIAN[dt.byteorder]}-endian"
    return _finish(data, spatial_chunks, False, f"raw {dt.name}{order} file {path.name}")


def _parse_dtype(dtype) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError as e:
        raise InputError(
            f"dtype must be a numeric type such as uint16, float32 or >u2 (big-endian), "
            f"got {dtype!r}"
        ) from e
    if dt.kind not in "biuf":
        raise InputError(
            f"dtype must be a numeric type such as uint16, float32 or >u2, got {dt.name}"
        )
    return dt


def open_npy(
    path: Path, *, chunks: tuple[int, ...] | None, default3: int, default2: int
) -> OpenedSource:
    """A ``.npy`` file, read without loading it (C order by bands, Fortran order via memmap)."""
    with open(path, "rb") as f:
        try:
            major, _minor = np.lib.format.read_magic(f)
            if major == 1:
                shape, fortran, dt = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dt = np.lib.format.read_array_header_2_0(f)
        except ValueError as e:
            raise VolumeFormatError(
                f"{path} is not a readable .npy file ({e}); save it with numpy.save"
            ) from e
        offset = f.tell()
    if dt.kind not in "biuf":
        raise VolumeFormatError(f"{path} holds {dt} values; vstain-dask imports numeric arrays")
    rgb_last = len(shape) in (3, 4) and shape[-1] in (3, 4) and dt == np.uint8
    if len(shape) not in (2, 3) and not rgb_last:
        raise VolumeFormatError(
            f"{path} holds an array of shape {shape}; vstain-dask imports (Z,Y,X) or (Y,X) arrays"
        )
    spatial_chunks = _clip_chunks(_spatial_shape(shape, rgb_last), chunks, default3, default2)
    token = f"npy-{dask.base.tokenize(path, path.stat().st_mtime_ns)}"
    if fortran:
        # Fortran order is rare for volumes; read regions through a temporary memmap
        data = da.from_array(
            _MemmapRegions(str(path), offset, shape, dt, "F"),
            chunks=(*spatial_chunks, *((shape[-1],) if rgb_last else ())),
            name=token,
            meta=np.empty((0,) * len(shape), dt.newbyteorder("=")),
        )
    else:
        band = _band_for(shape, spatial_chunks, rgb_last)
        data = _banded(shape, dt, band, _RawBand(str(path), offset, shape, dt), token)
    return _finish(data, spatial_chunks, rgb_last, f"npy file {path.name}")


class _MemmapRegions:
    """Array-like over a file region, mapped only for the duration of one read (picklable)."""

    def __init__(self, path: str, offset: int, shape, dtype, order: str) -> None:
        self.path, self.offset, self.order = path, offset, order
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.ndim = len(self.shape)

    def __getitem__(self, index):
        mm = np.memmap(
            self.path, dtype=self.dtype, mode="r", offset=self.offset, shape=self.shape,
            order=self.order,
        )  # fmt: skip
        try:
            return np.array(mm[index], dtype=self.dtype.newbyteorder("="))
        finally:
            del mm


def _tiff_layout(shape: tuple[int, ...], axes: str, path: Path) -> bool:
    """Whether the last axis holds colour samples; raises for layouts that are not volumes."""
    rgb_last = axes.endswith("S") and shape[-1] in (3, 4) and len(shape) in (3, 4)
    spatial = len(shape) - (1 if rgb_last else 0)
    if spatial not in (2, 3):
        raise VolumeFormatError(
            f"{path} holds a {len(shape)}-D series of shape {shape} (axes {axes}); vstain-dask "
            "imports 2D images, 2D RGB images and 3D (Z,Y,X) stacks; export one channel first"
        )
    return rgb_last


_SLIDE_KINDS = {"ome": "OME-TIFF", "svs": "Aperio SVS", "ndpi": "Hamamatsu NDPI"}


def _planar_rgb(shape: tuple[int, ...], axes: str, dtype: np.dtype) -> bool:
    """A 2D colour image stored plane by plane (axes CYX or SYX), as OME-TIFF writers do."""
    return (
        len(shape) == 3 and axes[0] in "CS" and axes[1:] == "YX" and shape[0] in (3, 4)
        and dtype == np.uint8
    )  # fmt: skip


def _tiff_level(
    path: Path, level: int, shape: tuple[int, ...], dt: np.dtype, chunks, planar: bool, token: str
) -> da.Array:
    """One level of a compressed or tiled TIFF series as stored (``shape``), read region by
    region in ``chunks`` along its spatial axes; colour samples last."""
    if planar:
        full = (shape[0], *(min(c, n) for c, n in zip(chunks, shape[1:], strict=True)))
    else:
        full = tuple(min(c, n) for c, n in zip(chunks, shape, strict=False)) + shape[len(chunks) :]
    data = da.from_array(
        _TiffRegions(str(path), shape, dt, level),
        chunks=full,
        name=f"{token}-{level}",
        meta=np.empty((0,) * len(shape), dt.newbyteorder("=")),
    )
    # planar colour planes go last, like interleaved ones, so both take one path from here
    return da.moveaxis(data, 0, -1) if planar else data


def open_tiff(
    path: Path, *, chunks: tuple[int, ...] | None, default3: int, default2: int
) -> OpenedSource:
    """A single TIFF: a multi-page 3D stack, a 2D image or a 2D RGB image, or a whole-slide
    image (pyramidal tiled TIFF/BigTIFF, OME-TIFF, Aperio SVS, Hamamatsu NDPI).

    Tiled and compressed files are read tile-aligned, region by region; the file's own lower
    levels that are exact 2x steps of level 0 become ``levels``, to be copied rather than
    recomputed. The pixel size the file states becomes ``pixel_size``.
    """
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape = tuple(int(s) for s in series.shape)
            axes = series.axes
            dt = np.dtype(series.dtype).newbyteorder(tif.byteorder)
            offset = series.dataoffset if len(series.levels) == 1 else None
            n_pages = len(series.pages)
            level_shapes = [tuple(int(s) for s in lv.shape) for lv in series.levels]
            kind = series.kind
            pixel_size = _wsi.tiff_pixel_size(tif, series)
    except (tifffile.TiffFileError, OSError, IndexError, KeyError, ValueError) as e:
        raise VolumeFormatError(f"{path} is not a readable TIFF file ({e})") from e
    planar = _planar_rgb(shape, axes, dt)
    stored_shapes = level_shapes
    if planar:
        shape, axes = (*shape[1:], shape[0]), axes[1:] + "S"
        level_shapes = [(*s[1:], s[0]) for s in level_shapes]
    rgb_last = _tiff_layout(shape, axes, path)
    spatial_shape = _spatial_shape(shape, rgb_last)
    spatial_chunks = _clip_chunks(spatial_shape, chunks, default3, default2)
    token = f"tiff-{dask.base.tokenize(path, path.stat().st_mtime_ns)}"
    levels: list[da.Array] = []
    if offset is not None:
        band = _band_for(shape, spatial_chunks, rgb_last)
        data = _banded(shape, dt, band, _RawBand(str(path), offset, shape, dt), token)
    else:
        # decode one region now, so that a missing codec or a damaged file is refused before
        # anything is written
        _read_tiff_region(str(path), (slice(0, 1),) * len(spatial_chunks), 0)
        n = _wsi.halving_levels([_spatial_shape(s, rgb_last) for s in level_shapes])
        data, *levels = (
            _tiff_level(path, k, stored_shapes[k], dt, spatial_chunks, planar, token)
            for k in range(n + 1)
        )
    if len(level_shapes) > 1:
        name = _SLIDE_KINDS.get(kind, "pyramidal TIFF")
        what = f"{name} {path.name} ({len(level_shapes)} levels)"
    else:
        what = ("TIFF stack" if len(spatial_chunks) == 3 else "TIFF image") + f" {path.name}"
        what += f" ({n_pages} pages)"
    return _finish(data, spatial_chunks, rgb_last, what, pixel_size=pixel_size, levels=levels)


def open_tiff_folder(
    folder: Path, *, chunks: tuple[int, ...] | None, default3: int, default2: int
) -> OpenedSource:
    """A folder of 2D TIFF slices in natural order (``slice2`` before ``slice10``)."""
    import tifffile

    files = sorted(
        (p for p in folder.iterdir() if p.suffix.lower() in TIFF_SUFFIXES and p.is_file()),
        key=lambda p: natural_key(p.name),
    )
    files = [p for p in files if not p.name.startswith(".")]
    if not files:
        found = sorted(p.name for p in folder.iterdir())[:5]
        raise VolumeFormatError(
            f"folder {folder} holds no .tif/.tiff slices (found {found or 'nothing'}); "
            "give a folder of 2D TIFF slices, a TIFF stack, a .npy or a raw file"
        )
    offsets: list[int | None] = []
    first_shape = first_dtype = pixel_size = None
    for p in files:
        try:
            with tifffile.TiffFile(p) as tif:
                series = tif.series[0]
                shape = tuple(int(s) for s in series.shape)
                dt = np.dtype(series.dtype).newbyteorder(tif.byteorder)
                offset = series.dataoffset
                if first_shape is None:  # the slices' in-plane size, from the first one
                    pixel_size = _wsi.tiff_pixel_size(tif, series)
        except (tifffile.TiffFileError, OSError, IndexError) as e:
            raise VolumeFormatError(f"slice {p} is not a readable TIFF file ({e})") from e
        if first_shape is None:
            first_shape, first_dtype = shape, dt
            rgb_last = _tiff_layout(shape, series.axes, p)
            if len(shape) - (1 if rgb_last else 0) != 2:
                raise VolumeFormatError(
                    f"slice {p} has shape {shape} but a slice folder needs 2D images; "
                    "import a multi-page TIFF on its own"
                )
        elif shape != first_shape or dt.newbyteorder("=") != first_dtype.newbyteorder("="):
            raise VolumeFormatError(
                f"slice {p} has shape {shape} and dtype {dt.name} but {files[0]} has shape "
                f"{first_shape} and dtype {first_dtype.name}; all slices must match: remove or "
                "fix that file"
            )
        # byte order is per file; fall back to decoding for files that differ from the first
        offsets.append(offset if dt == first_dtype else None)
    shape = (len(files), *first_shape)
    spatial_chunks = _clip_chunks(_spatial_shape(shape, rgb_last), chunks, default3, default2)
    band = (spatial_chunks[0], spatial_chunks[1])
    reader = _SliceBand([str(p) for p in files], offsets, first_shape, first_dtype)
    token = f"tiffs-{dask.base.tokenize([str(p) for p in files], os.stat(folder).st_mtime_ns)}"
    data = _banded(shape, first_dtype, band, reader, token)
    return _finish(
        data,
        spatial_chunks,
        rgb_last,
        f"TIFF folder {folder.name} ({len(files)} slices)",
        pixel_size=pixel_size,
    )


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JFIF density units and EXIF/TIFF ResolutionUnit values, as NGFF unit names
_JFIF_UNITS = {1: "inch", 2: "centimeter"}
_EXIF_UNITS = {2: "inch", 3: "centimeter"}
_EXIF_X, _EXIF_Y, _EXIF_UNIT = 282, 283, 296  # XResolution, YResolution, ResolutionUnit


def _png_phys(path: Path) -> FoundSize | None:
    """The pHYs chunk of a PNG: whole pixels per metre along x and y, or an aspect ratio.

    Read from the chunks before the image data (where PNG puts pHYs) rather than from
    Pillow's ``dpi``, which is that integer converted to inches (and rounded by some Pillow
    versions): the pixel size is then exactly 10⁶ / (pixels per metre) µm.
    """
    with open(path, "rb") as f:
        if f.read(8) != _PNG_SIGNATURE:
            return None
        while len(head := f.read(8)) == 8:
            length, kind = struct.unpack(">I4s", head)
            if kind in (b"IDAT", b"IEND"):
                return None
            if kind == b"pHYs" and length == 9:
                x, y, unit = struct.unpack(">IIB", f.read(9))
                source = "the PNG pHYs chunk"
                if unit == 1:
                    return _pixel_size.image_resolution(x, y, "meter", source)
                return _pixel_size.aspect_only(x, y, source)
            f.seek(length + 4, os.SEEK_CUR)  # the data and its CRC
    return None


def _exif_resolution(exif: Mapping) -> FoundSize | None:
    """EXIF ``XResolution``/``YResolution`` in ``ResolutionUnit`` (inch when absent)."""
    if _EXIF_X not in exif or _EXIF_Y not in exif:
        return None
    code = exif.get(_EXIF_UNIT, 2)
    unit = _EXIF_UNITS.get(code) if isinstance(code, int) else None
    if unit is None:  # 1: no absolute unit
        return _pixel_size.aspect_only(exif[_EXIF_X], exif[_EXIF_Y], "the EXIF resolution")
    return _pixel_size.image_resolution(exif[_EXIF_X], exif[_EXIF_Y], unit, "the EXIF resolution")


def _jfif_density(info: Mapping) -> FoundSize | None:
    """The JFIF header's density, in dots per inch or centimetre, or an aspect ratio."""
    if "jfif_density" not in info:
        return None
    x, y = info["jfif_density"]
    unit = _JFIF_UNITS.get(info.get("jfif_unit", 0))
    if unit is None:
        return _pixel_size.aspect_only(x, y, "the JFIF density")
    return _pixel_size.image_resolution(x, y, unit, "the JFIF density")


def image_pixel_size(path: Path) -> FoundSize | None:
    """The pixel size a PNG or JPEG states, read from its header (Pillow, as imageio reads
    them): a PNG's pHYs chunk, then EXIF ``XResolution``/``YResolution`` (a PNG's eXIf chunk,
    a JPEG's APP1), then a JPEG's JFIF density. Aspect ratios, screen defaults and pixels
    coarser than a millimetre come back with ``ignored`` set (see
    :func:`~vstain_dask.ngff._pixel_size.image_resolution`)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:  # reads the header, not the pixels
            kind, info = im.format, dict(im.info)
        exif = Image.Exif()
        if isinstance(info.get("exif"), bytes):  # not im.getexif(): a PNG's decodes the pixels
            exif.load(info["exif"])
        png = _png_phys(path) if kind == "PNG" else None
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, struct.error):
        return None  # imageio has read the file: damaged metadata is no size
    jfif = _jfif_density(info) if kind in ("JPEG", "MPO") else None  # MPO: a camera's JPEG
    return _pixel_size.first_stated([png, _exif_resolution(dict(exif)), jfif])


def open_image(
    path: Path, *, chunks: tuple[int, ...] | None, default3: int, default2: int
) -> OpenedSource:
    """A 2D image read whole by imageio (PNG, JPEG, ...), such as a histology section; the
    pixel size from its header (:func:`image_pixel_size`)."""
    import imageio.v3 as iio

    try:
        props = iio.improps(path)
    except Exception as e:  # imageio raises many types for unreadable files
        raise VolumeFormatError(f"{path} is not a readable image ({e})") from e
    shape = tuple(int(s) for s in props.shape)
    dt = np.dtype(props.dtype)
    rgb_last = len(shape) == 3 and shape[-1] in (3, 4)
    if len(shape) != 2 and not rgb_last:
        raise VolumeFormatError(
            f"{path} holds an image of shape {shape}; expected a 2D grey or RGB(A) image"
        )
    spatial_chunks = _clip_chunks(_spatial_shape(shape, rgb_last), chunks, default3, default2)
    d = dask.delayed(_read_image_file, pure=True)(str(path))
    data = da.from_delayed(d, shape=shape, dtype=dt)
    return _finish(
        data, spatial_chunks, rgb_last, f"image {path.name}", pixel_size=image_pixel_size(path)
    )


def open_slide(path: Path, *, chunks: tuple[int, ...] | None, default2: int) -> OpenedSource:
    """A vendor whole-slide image (MRXS, CZI, ...) through the optional OpenSlide reader, as
    a 2D RGB image; its exact 2x levels become ``levels``."""
    _wsi.refuse_unsupported(path)
    slide = _wsi.open_openslide(
        path, chunks_of=lambda shape: _clip_chunks(shape, chunks, default2, default2)
    )
    data, *levels = slide["levels"]
    return _finish(
        data,
        _clip_chunks(data.shape[:2], chunks, default2, default2),
        True,
        slide["description"],
        pixel_size=slide["pixel_size"],
        levels=levels,
    )


def open_hdf5(
    path: Path,
    *,
    dataset: str | None,
    chunks: tuple[int, ...] | None,
    default3: int,
    default2: int,
) -> OpenedSource:
    """A 2D or 3D dataset of an HDF5 file (``/exchange/data`` of DXchange, say), read in
    bands, each task opening the file."""
    from vstain_dask.ngff import _hdf5

    spatial: list[tuple[int, ...]] = []

    def band_of(shape):
        spatial.append(_clip_chunks(shape, chunks, default3, default2))
        return _band_for(shape, spatial[0], False)

    got = _hdf5.open_hdf5(path, dataset=dataset, band_of=band_of)
    return _finish(
        got["data"],
        spatial[0],
        False,
        got["description"],
        pixel_size=got["pixel_size"],
        record=got["record"],
    )


def open_dicom(
    folder: Path, *, chunks: tuple[int, ...] | None, default3: int, default2: int
) -> OpenedSource:
    """A folder holding one DICOM series, slices ordered by position, read a band of slices
    per task."""
    from vstain_dask.ngff import _dicom

    band = (chunks or (default3,))[0]
    got = _dicom.open_dicom_folder(folder, band_z=int(band))
    spatial = _clip_chunks(got["data"].shape, chunks, default3, default2)
    return _finish(
        got["data"],
        spatial,
        False,
        got["description"],
        pixel_size=got["pixel_size"],
        record=got["record"],
    )
