"""Import of TIFF stacks, raw files, npy and images into OME-Zarr."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vstain_dask.errors import InputError, VolumeFormatError, as_enum
from vstain_dask.ngff import _sources
from vstain_dask.ngff._common import (
    _RGB_NAMES,
    DEFAULT_CHUNK_2D,
    DEFAULT_CHUNK_3D,
    MissingScaleWarning,
    NgffVersion,
    VolumeKind,
    _is_zarr_dir,
)
from vstain_dask.ngff._create import _parse_unit, check_output
from vstain_dask.ngff._pyramid import _align
from vstain_dask.ngff._read import open_volume
from vstain_dask.ngff._write import _same_or_inside, write_volume


def _voxel_sizes(voxel_size: Any, n_spatial: int) -> tuple[float, ...]:
    names = "Z,Y,X" if n_spatial == 3 else "Y,X"
    if isinstance(voxel_size, int | float | np.number) and not isinstance(voxel_size, bool):
        vals = (float(voxel_size),) * n_spatial
    else:
        try:
            vals = tuple(float(v) for v in voxel_size)
        except (TypeError, ValueError) as e:
            raise InputError(
                f"voxel_size must be a number or {n_spatial} numbers ({names}), got {voxel_size!r}"
            ) from e
        if len(vals) == 1:
            vals = vals * n_spatial
    if len(vals) != n_spatial or not all(math.isfinite(v) and v > 0 for v in vals):
        raise InputError(
            f"voxel_size must be one positive number or {n_spatial} ({names}), got {voxel_size!r}"
        )
    return vals


def _open_source(
    src: Path, *, shape: Any, dtype: Any, chunks: Any
) -> tuple[_sources.OpenedSource, bool]:
    """Open ``src`` lazily; returns the source and whether it was read as a raw file."""
    opts = {"chunks": chunks, "default3": DEFAULT_CHUNK_3D, "default2": DEFAULT_CHUNK_2D}
    if src.is_dir():
        if _is_zarr_dir(src):
            with warnings.catch_warnings():
                # the voxel size comes from the import options, not from the store
                warnings.simplefilter("ignore", MissingScaleWarning)
                vol = open_volume(src)
            data = vol.data
            spatial = [d for d in vol.dims if d != "c"]
            cz = _sources._clip_chunks(
                tuple(data.shape[vol.dims.index(d)] for d in spatial),
                chunks,
                DEFAULT_CHUNK_3D,
                DEFAULT_CHUNK_2D,
            )
            it = iter(cz)
            full = tuple(data.shape[0] if d == "c" else next(it) for d in vol.dims)
            return (
                _sources.OpenedSource(
                    data=_align(data, full),
                    axes="".join(vol.dims),
                    description=f"zarr {src.name}",
                    spatial_chunks=cz,
                ),
                False,
            )
        return _sources.open_tiff_folder(src, **opts), False
    suffix = src.suffix.lower()
    if suffix in _sources.TIFF_SUFFIXES:
        return _sources.open_tiff(src, **opts), False
    if suffix in _sources.NPY_SUFFIXES:
        return _sources.open_npy(src, **opts), False
    if suffix in _sources.IMAGE_SUFFIXES:
        return _sources.open_image(src, **opts), False
    return _sources.open_raw(src, shape=shape, dtype=dtype, **opts), True


def import_volume(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    voxel_size: float | Sequence[float],
    unit: str = "micrometer",
    shape: Sequence[int] | None = None,
    dtype: Any = None,
    chunks: Sequence[int] | None = None,
    ngff_version: NgffVersion | str = "0.5",
    overwrite: bool = False,
) -> Path:
    """Convert a CT volume or a 2D image to OME-Zarr, lazily and in bounded memory.

    Sources, by what ``source`` is:

    - a folder of 2D TIFF slices, stacked in natural order (``slice2`` before ``slice10``);
      all slices must have one shape and dtype;
    - a TIFF file: a multi-page 3D stack, a 2D image, or a 2D RGB image (histology);
    - a ``.npy`` file (2D or 3D);
    - a PNG/JPEG/... 2D image (read whole; RGB becomes ``(c, y, x)`` kind rgb);
    - a zarr store (OME-Zarr or a plain array), rewritten with the given voxel size;
    - any other file: raw C-ordered binary of ``shape`` and ``dtype``.

    Uncompressed data are read in bands of whole chunks with plain reads, compressed TIFFs
    region by region, so a 1.5k³ uint16 stack converts with a few chunk-bands per worker.

    Parameters
    ----------
    source : input path
    out : output OME-Zarr store
    voxel_size : voxel size in ``unit`` (e.g. µm); one number, or one per spatial axis
        (Z, Y, X) or (Y, X)
    unit : NGFF space unit (``micrometer``; ``um``, ``mm``, ``nm`` accepted)
    shape : (Z, Y, X) or (Y, X) of a raw file; for other sources, checked if given
    dtype : element type of a raw file, e.g. ``uint16`` or ``>u2``; for other sources,
        checked if given
    chunks : output chunks along the spatial axes; None for 128³ (3D) or 1024² (2D)
    ngff_version : ``"0.5"`` (zarr v3) or ``"0.4"`` (zarr v2)
    overwrite : replace an existing zarr store at ``out``

    Returns
    -------
    pathlib.Path
        ``out``.
    """
    from vstain_dask import __version__

    src = Path(source).expanduser()
    out_path = check_output(out, overwrite=overwrite)
    version = as_enum(NgffVersion, ngff_version, "ngff_version")
    unit = _parse_unit(unit)
    if not src.exists():
        raise VolumeFormatError(
            f"input {src} does not exist; give a folder of TIFF slices, a TIFF stack, a .npy, "
            "an image or a raw file"
        )
    if _same_or_inside(src, out_path):
        raise InputError(f"output {out_path} overlaps the input {src}; write to another path")
    opened, is_raw = _open_source(src, shape=shape, dtype=dtype, chunks=chunks)
    data = opened.data
    spatial_shape = tuple(s for s, a in zip(data.shape, opened.axes, strict=True) if a != "c")
    if shape is not None and not is_raw and tuple(int(s) for s in shape) != spatial_shape:
        raise InputError(
            f"shape {tuple(shape)} was given but {src} holds {spatial_shape}; drop --shape or fix it"
        )
    if dtype is not None and not is_raw:
        try:
            want = np.dtype(dtype)
        except TypeError as e:
            raise InputError(f"dtype must be a numeric type such as uint16, got {dtype!r}") from e
        if want.newbyteorder("=") != data.dtype:
            raise InputError(
                f"dtype {want} was given but {src} holds {data.dtype}; --dtype is only needed "
                "for raw files: drop it"
            )
    voxel = _voxel_sizes(voxel_size, len(spatial_shape))
    n_channels = data.shape[0] if opened.axes.startswith("c") else 0
    rgb = n_channels in (3, 4) and data.dtype == np.uint8
    channel_names = _RGB_NAMES[:n_channels] if n_channels in (3, 4) else None
    return write_volume(
        data,
        out_path,
        axes=opened.axes,
        scale=voxel,
        units=unit,
        chunks=opened.spatial_chunks,
        ngff_version=version,
        kind=VolumeKind.RGB if rgb else VolumeKind.INTENSITY,
        channel_names=channel_names,
        attrs={
            "import": {
                "source": str(src.resolve()),
                "format": opened.description,
                "voxel_size": list(voxel),
                "unit": unit,
                "software": f"vstain-dask {__version__}",
            }
        },
        overwrite=overwrite,
    )
