"""Writing whole volumes (from arrays or dask arrays) and NGFF labels."""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import zarr

from vstain_dask._validate import keyword_bundles
from vstain_dask.errors import InputError, VolumeFormatError, as_enum
from vstain_dask.ngff._common import Display, LabelTable, VolumeKind
from vstain_dask.ngff._create import _build_spec, _create, _omero, _VolumeOptions, _VolumeSpec
from vstain_dask.ngff._format import format_of_store, ome_metadata
from vstain_dask.ngff._pyramid import _align, _store_level0, write_pyramid
from vstain_dask.ngff._read import (
    _default_axes,
    _Multiscale,
    _read_multiscale,
    _write_chunks,
    update_provenance,
)


def _as_input(data: Any) -> tuple[Any, dict]:
    """Split ``data`` into an array and metadata found on it (xarray dims and attrs)."""
    xr = sys.modules.get("xarray")  # an xarray input means xarray is already imported
    if xr is not None and isinstance(data, xr.DataArray):
        attrs = data.attrs
        meta = {"axes": tuple(str(d) for d in data.dims)}
        for key in ("scale", "units", "translation"):
            if isinstance(attrs.get(key), Mapping):
                meta[key] = dict(attrs[key])
        if attrs.get("channels"):
            meta["channel_names"] = list(attrs["channels"])
        if attrs.get("path"):
            meta["source_path"] = attrs["path"]
        return data.data, meta
    if isinstance(data, da.Array):
        return data, {}
    if hasattr(data, "shape") and hasattr(data, "dtype") and hasattr(data, "__getitem__"):
        return data, {}
    raise InputError(f"data must be a numpy, dask or xarray array, got {type(data).__name__}")


def _same_or_inside(a: Path, b: Path) -> bool:
    a, b = a.resolve(), b.resolve()
    return a == b or a in b.parents or b in a.parents


def write_volume(
    data: Any,
    path: str | os.PathLike,
    *,
    chunks: Sequence[int] | int | None = None,
    overwrite: bool = False,
    **options: Any,
) -> Path:
    """Write an array as an OME-Zarr image with its pyramid, streaming chunk by chunk.

    Input blocks whose boundaries already fall on output chunk boundaries are written as they
    are (each block writes whole chunks, no lock); other axes are rechunked to the output
    chunks. Level 0 is written by one chunk-parallel dask graph, then :func:`write_pyramid`
    fills the lower levels, both on the current scheduler (a distributed client if one is
    active), so memory stays bounded by a few chunks per worker.

    Parameters
    ----------
    data : (Z, Y, X), (C, Z, Y, X), (Y, X) or (C, Y, X) numpy, dask or xarray array. An
        xarray from :func:`open_volume` also supplies axes, scale, units, translation and
        channel names unless they are given here.
    path : output store
    axes, scale, units, translation, chunks, ngff_version, n_levels, kind, channel_names,
    attrs, overwrite : as in :func:`create_volume`; ``axes`` defaults to zyx/yx/czyx by
        dimension (cyx/czyx for rgb)
    display : the omero window and colour of an intensity image; None takes the window from
        the 0.5 and 99.5 percentiles of a bounded sample of the written volume (see
        :func:`_write_window`)

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    given = keyword_bundles("write_volume", {"axes": None, **options}, _VolumeOptions)[0]
    arr, meta = _as_input(data)
    given = _with_input_metadata(given, arr, meta)
    if (
        "source_path" in meta
        and overwrite
        and _same_or_inside(Path(path), Path(meta["source_path"]))
    ):
        raise InputError(
            f"output {path} is the volume being read ({meta['source_path']}); write to another path"
        )
    # incomplete until the last level is written: a failed or interrupted write leaves a
    # store that every reader refuses, instead of one that passes for a volume of zeros
    given = dataclasses.replace(given, attrs={**dict(given.attrs or {}), "complete": False})
    spec = _build_spec(path, shape=arr.shape, dtype=arr.dtype, chunks=chunks, options=given)
    if not isinstance(arr, da.Array):
        arr = da.from_array(arr, chunks=spec.chunks)
    _write_levels(path, spec, _align(arr.astype(spec.dtype, copy=False), spec.chunks), overwrite)
    return Path(path)


def _with_input_metadata(given: _VolumeOptions, arr: Any, meta: dict) -> _VolumeOptions:
    """The options of :func:`write_volume` with what was not given taken from the input's
    metadata (an xarray's dims and attrs), and the axes by dimension where it has none."""
    kind = as_enum(VolumeKind, given.kind, "kind")
    axes = given.axes
    if axes is None:
        axes = meta.get("axes") or _default_axes(arr.ndim, rgb=kind is VolumeKind.RGB)
        if not axes:
            raise InputError(
                f"data has {arr.ndim} dimensions; give axes (zyx, czyx, yx or cyx) for "
                f"shape {tuple(arr.shape)}"
            )
    fallback = {
        key: meta.get(key)
        for key in ("scale", "units", "translation", "channel_names")
        if getattr(given, key) is None
    }
    return dataclasses.replace(given, axes=axes, kind=kind, **fallback)


def _write_levels(path, spec: _VolumeSpec, level0: da.Array, overwrite: bool) -> None:
    """Create the store, write level 0 and the pyramid, then mark the volume complete."""
    targets = _create(path, spec, overwrite)
    _store_level0(level0, targets[0])
    write_pyramid(path)
    if spec.kind is VolumeKind.INTENSITY and spec.display is None:
        _write_window(path, spec)
    update_provenance(path, complete=True)


#: a pyramid level of at most this many voxels is read whole for the display window
_WINDOW_VOXELS = 1 << 22
#: else this many chunks of the coarsest level, spread over the volume
_WINDOW_CHUNKS = 16
#: robust display limits (percent): a few hot or dead voxels do not set the window
_WINDOW_PERCENTILES = (0.5, 99.5)


def _window_sample(arrays: Sequence[zarr.Array]) -> np.ndarray:
    """Values of a written image, read in bounded memory whatever its size.

    The finest pyramid level of at most ``_WINDOW_VOXELS`` voxels, read whole (it covers the
    whole volume); without one, ``_WINDOW_CHUNKS`` chunks of the coarsest level spread evenly
    over its chunk grid.
    """
    for arr in arrays:
        if arr.size <= _WINDOW_VOXELS:
            return np.asarray(arr[...]).ravel()
    arr = arrays[-1]
    chunks = _write_chunks(arr)
    grid = tuple(math.ceil(s / c) for s, c in zip(arr.shape, chunks, strict=True))
    picks = np.unique(np.linspace(0, math.prod(grid) - 1, _WINDOW_CHUNKS).round().astype(int))
    parts = []
    for flat in picks:
        index = np.unravel_index(flat, grid)
        region = tuple(slice(i * c, (i + 1) * c) for i, c in zip(index, chunks, strict=True))
        parts.append(np.asarray(arr[region]).ravel())
    return np.concatenate(parts)


def _robust_window(sample: np.ndarray, dtype: np.dtype) -> Display | None:
    """A display window from the percentiles of ``sample``; None when no value is finite."""
    values = sample[np.isfinite(sample)] if sample.dtype.kind == "f" else sample
    if values.size == 0:
        return None
    lo, hi = (float(v) for v in np.percentile(values, _WINDOW_PERCENTILES))
    if np.dtype(dtype).kind in "iub":
        info = np.iinfo(dtype) if np.dtype(dtype).kind != "b" else np.iinfo(np.uint8)
        lo, hi = math.floor(lo), math.ceil(hi)
        if hi <= lo:  # a constant volume still gets a window one value wide
            lo, hi = (lo, lo + 1) if lo < info.max else (lo - 1, lo)
        return Display(start=lo, end=hi)
    if hi <= lo:
        hi = lo + max(abs(lo), 1.0) * 1e-3
    return Display(
        start=lo, end=hi, min=min(float(values.min()), lo), max=max(float(values.max()), hi)
    )


def _write_window(path: str | os.PathLike, spec: _VolumeSpec) -> None:
    """Write the omero display window of a written intensity image (all levels filled) from
    robust percentiles of a bounded sample of it (:func:`_window_sample`)."""
    ms = _read_multiscale(path)
    display = _robust_window(_window_sample([lv.array for lv in ms.levels]), spec.dtype)
    if display is None:
        return
    omero = _omero(dataclasses.replace(spec, display=display))
    group = zarr.open_group(store=str(path), mode="r+")
    ome = {k: v for k, v in ome_metadata(group.attrs.asdict()).items() if k != "version"}
    group.attrs.update(spec.format.group_attrs({**ome, "omero": omero}))


def write_labels(
    image_path: str | os.PathLike,
    name: str,
    labels: Any,
    *,
    table: LabelTable | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a label image into ``image_path/labels/name`` (NGFF labels), beside the image.

    The label image gets the image's spatial axes, voxel size, units, translation, spatial
    chunks, number of levels and NGFF version; its pyramid takes every second voxel, each
    level at the position of the voxels it keeps. With a ``table``, the NGFF ``image-label``
    gets ``colors`` and ``properties`` (class names), which the NGFF ``strict_label`` schema
    asks for and viewers show.

    Parameters
    ----------
    image_path : an OME-Zarr image
    name : label image name (a folder name, e.g. ``"mask"``)
    labels : integer or bool array shaped like the image's spatial axes, e.g. (Z, Y, X)
    table : names and colours of the label values; None for a bool mask is
        ``LabelTable.mask(name)`` (0 outside, 1 ``name``), for integers no table
    overwrite : replace an existing label image of that name

    Returns
    -------
    pathlib.Path
        The label image group.
    """
    ms = _read_multiscale(image_path)
    if ms.ngff_version is None:
        raise VolumeFormatError(
            f"{ms.path} is a plain zarr array; labels need an OME-Zarr image (write_volume)"
        )
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise InputError(f"name must be a plain folder name such as 'mask', got {name!r}")
    arr, dt, table = _label_array(ms, name, labels, table)
    label_path = ms.path / "labels" / name
    spec = _labels_spec(ms, label_path, dt, table)
    group = zarr.open_group(store=str(ms.path / "labels"), mode="a", zarr_format=ms.zarr_format)
    if not isinstance(arr, da.Array):
        arr = da.from_array(arr, chunks=spec.chunks)
    level = _align(arr.astype(dt, copy=False), spec.chunks)
    targets = _create(label_path, spec, overwrite)
    _store_level0(level, targets[0])
    write_pyramid(label_path)
    names = list(ome_metadata(group.attrs.asdict()).get("labels", []))
    if name not in names:
        names.append(name)
    group.attrs.update(spec.format.group_attrs({"labels": names}))
    return label_path


def _spatial(ms: _Multiscale) -> list[int]:
    """The dimensions of an image's spatial axes."""
    return [i for i, a in enumerate(ms.axes) if a != "c"]


def _label_array(
    ms: _Multiscale, name: str, labels: Any, table: LabelTable | None
) -> tuple[Any, np.dtype, LabelTable | None]:
    """The label array for image ``ms``, the dtype it is stored in (uint8 for a bool mask) and
    its table (a bool mask without one gets ``LabelTable.mask(name)``)."""
    arr, _ = _as_input(labels)
    level0 = ms.levels[0]
    spatial_shape = tuple(level0.array.shape[i] for i in _spatial(ms))
    if tuple(arr.shape) != spatial_shape:
        raise InputError(
            f"labels must have the image's spatial shape {spatial_shape}, got {tuple(arr.shape)}"
        )
    dt = np.dtype(arr.dtype)
    if dt == np.bool_:
        dt = np.dtype(np.uint8)
        table = table if table is not None else LabelTable.mask(name)
    elif dt.kind not in "iu":
        raise InputError(f"labels must be integers or bool, got dtype {dt}")
    return arr, dt, table


def _labels_spec(
    ms: _Multiscale, label_path: Path, dt: np.dtype, table: LabelTable | None
) -> _VolumeSpec:
    """A label image's spec: image ``ms``'s spatial axes, grid, chunks, levels and version."""
    spatial = _spatial(ms)
    level0 = ms.levels[0]
    options = _VolumeOptions(
        axes=tuple(ms.axes[i] for i in spatial),
        scale=tuple(level0.scale[i] for i in spatial),
        units=tuple(ms.units[i] for i in spatial) if ms.units[spatial[0]] else None,
        translation=tuple(level0.translation[i] for i in spatial),
        ngff_version=format_of_store(ms.zarr_format).version,
        n_levels=len(ms.levels),
        kind=VolumeKind.LABELS,
    )
    return _build_spec(
        label_path,
        shape=tuple(level0.array.shape[i] for i in spatial),
        dtype=dt,
        chunks=tuple(_write_chunks(level0.array)[i] for i in spatial),
        options=options,
        label_table=table,
    )
