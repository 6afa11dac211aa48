"""Writing whole volumes (from arrays or dask arrays) and NGFF labels."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import zarr

from vstain_dask.errors import InputError, VolumeFormatError, as_enum
from vstain_dask.ngff._common import NgffVersion, VolumeKind
from vstain_dask.ngff._create import _build_spec, _create, _VolumeSpec
from vstain_dask.ngff._format import format_of_store, ome_metadata
from vstain_dask.ngff._pyramid import _align, _store_level0, write_pyramid
from vstain_dask.ngff._read import _default_axes, _read_multiscale, _write_chunks, update_provenance


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
    axes: str | Sequence[str] | None = None,
    scale: Mapping[str, float] | Sequence[float] | float | None = None,
    units: Mapping[str, str] | Sequence[str] | str | None = None,
    translation: Mapping[str, float] | Sequence[float] | float | None = None,
    chunks: Sequence[int] | int | None = None,
    ngff_version: NgffVersion | str = "0.5",
    n_levels: int | None = None,
    kind: VolumeKind | str = "intensity",
    channel_names: Sequence[str] | None = None,
    attrs: Mapping[str, Any] | None = None,
    overwrite: bool = False,
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

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    arr, meta = _as_input(data)
    kind = as_enum(VolumeKind, kind, "kind")
    if axes is None:
        axes = meta.get("axes") or _default_axes(arr.ndim, rgb=kind is VolumeKind.RGB)
        if not axes:
            raise InputError(
                f"data has {arr.ndim} dimensions; give axes (zyx, czyx, yx or cyx) for "
                f"shape {tuple(arr.shape)}"
            )
    if (
        "source_path" in meta
        and overwrite
        and _same_or_inside(Path(path), Path(meta["source_path"]))
    ):
        raise InputError(
            f"output {path} is the volume being read ({meta['source_path']}); write to another path"
        )
    spec = _build_spec(
        path,
        shape=arr.shape,
        dtype=arr.dtype,
        chunks=chunks,
        axes=axes,
        scale=scale if scale is not None else meta.get("scale"),
        units=units if units is not None else meta.get("units"),
        translation=translation if translation is not None else meta.get("translation"),
        ngff_version=ngff_version,
        n_levels=n_levels,
        kind=kind,
        channel_names=channel_names if channel_names is not None else meta.get("channel_names"),
        # incomplete until the last level is written: a failed or interrupted write leaves a
        # store that every reader refuses, instead of one that passes for a volume of zeros
        attrs={**dict(attrs or {}), "complete": False},
    )
    if not isinstance(arr, da.Array):
        arr = da.from_array(arr, chunks=spec.chunks)
    _write_levels(path, spec, _align(arr.astype(spec.dtype, copy=False), spec.chunks), overwrite)
    return Path(path)


def _write_levels(path, spec: _VolumeSpec, level0: da.Array, overwrite: bool) -> None:
    """Create the store, write level 0 and the pyramid, then mark the volume complete."""
    targets = _create(path, spec, overwrite)
    _store_level0(level0, targets[0])
    write_pyramid(path)
    update_provenance(path, complete=True)


def write_labels(
    image_path: str | os.PathLike,
    name: str,
    labels: Any,
    *,
    overwrite: bool = False,
) -> Path:
    """Write a label image into ``image_path/labels/name`` (NGFF labels), beside the image.

    The label image gets the image's spatial axes, voxel size, units, translation, spatial
    chunks, number of levels and NGFF version; its pyramid takes every second voxel.

    Parameters
    ----------
    image_path : an OME-Zarr image
    name : label image name (a folder name, e.g. ``"mask"``)
    labels : integer or bool array shaped like the image's spatial axes, e.g. (Z, Y, X)
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
    arr, _ = _as_input(labels)
    spatial = [i for i, a in enumerate(ms.axes) if a != "c"]
    level0 = ms.levels[0]
    spatial_shape = tuple(level0.array.shape[i] for i in spatial)
    if tuple(arr.shape) != spatial_shape:
        raise InputError(
            f"labels must have the image's spatial shape {spatial_shape}, got {tuple(arr.shape)}"
        )
    dt = np.dtype(arr.dtype)
    if dt == np.bool_:
        dt = np.dtype(np.uint8)
    elif dt.kind not in "iu":
        raise InputError(f"labels must be integers or bool, got dtype {dt}")
    axes = tuple(ms.axes[i] for i in spatial)
    fmt = format_of_store(ms.zarr_format)
    label_path = ms.path / "labels" / name
    spec = _build_spec(
        label_path,
        shape=spatial_shape,
        dtype=dt,
        chunks=tuple(_write_chunks(level0.array)[i] for i in spatial),
        axes=axes,
        scale=tuple(level0.scale[i] for i in spatial),
        units=tuple(ms.units[i] for i in spatial) if ms.units[spatial[0]] else None,
        translation=tuple(level0.translation[i] for i in spatial),
        ngff_version=fmt.version,
        n_levels=len(ms.levels),
        kind=VolumeKind.LABELS,
        channel_names=None,
        attrs=None,
    )
    group = zarr.open_group(store=str(ms.path / "labels"), mode="a", zarr_format=ms.zarr_format)
    if not isinstance(arr, da.Array):
        arr = da.from_array(arr, chunks=spec.chunks)
    level = _align(arr.astype(dt, copy=False), spec.chunks)
    targets = _create(label_path, spec, overwrite)
    _store_level0(level, targets[0])
    write_pyramid(label_path)
    lattrs = group.attrs.asdict()
    names = list(ome_metadata(lattrs).get("labels", []))
    if name not in names:
        names.append(name)
    group.attrs.update(fmt.group_attrs({"labels": names}))
    return label_path
