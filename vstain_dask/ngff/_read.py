"""Reading OME-Zarr (NGFF 0.4 and 0.5) and plain zarr arrays, and what a volume's
metadata records: completeness, provenance, content identity, missing chunks."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask.array as da
import numpy as np
import zarr

from vstain_dask.errors import VolumeFormatError
from vstain_dask.ngff._common import (
    _RGB_COLORS,
    SUPPORTED_AXES,
    MissingScaleWarning,
    VolumeKind,
    _is_zarr_dir,
)
from vstain_dask.ngff._format import ome_metadata

if TYPE_CHECKING:
    import xarray as xr


@dataclass(frozen=True)
class _Level:
    path: str
    array: zarr.Array
    scale: tuple[float, ...]
    translation: tuple[float, ...]


@dataclass(frozen=True)
class _Multiscale:
    path: Path
    ngff_version: str | None  # None: a plain zarr array
    zarr_format: int
    name: str
    axes: tuple[str, ...]
    units: tuple[str | None, ...]
    levels: tuple[_Level, ...]
    channels: tuple[str, ...] | None
    kind: VolumeKind
    vstain: dict = field(default_factory=dict)
    labels: tuple[str, ...] = ()


def _open_node(path: str | os.PathLike, mode: str = "r") -> tuple[Path, zarr.Array | zarr.Group]:
    p = Path(path).expanduser()
    if not p.exists():
        raise VolumeFormatError(
            f"volume {p} does not exist; give the path of an OME-Zarr store "
            "(a folder such as volume.ome.zarr)"
        )
    if p.is_file():
        raise VolumeFormatError(
            f"{p} is a file, not a zarr store; convert it first with "
            f"`vstain-dask import {p} OUT.ome.zarr --voxel-size SIZE` (import_volume in Python)"
        )
    if not _is_zarr_dir(p):
        raise VolumeFormatError(
            f"{p} is a folder but not a zarr store (no zarr.json, .zgroup or .zarray); "
            f"if it holds TIFF slices convert it with `vstain-dask import {p} OUT.ome.zarr "
            "--voxel-size SIZE`"
        )
    try:
        return p, zarr.open(store=str(p), mode=mode)
    except Exception as e:  # zarr raises several types for broken metadata
        raise VolumeFormatError(
            f"{p} could not be opened as a zarr store: {_metadata_file(p)} is corrupt "
            f"({type(e).__name__}: {e}); check that it was written completely"
        ) from e


def _metadata_file(p: Path) -> Path:
    """The metadata document of the zarr node at ``p`` (zarr v3's or v2's)."""
    for name in ("zarr.json", ".zarray", ".zgroup"):
        if (p / name).is_file():
            return p / name
    return p / "zarr.json"


def _default_axes(ndim: int, *, rgb: bool = False) -> tuple[str, ...]:
    if rgb:
        return {3: ("c", "y", "x"), 4: ("c", "z", "y", "x")}.get(ndim, ())
    return {2: ("y", "x"), 3: ("z", "y", "x"), 4: ("c", "z", "y", "x")}.get(ndim, ())


def _plain(p: Path, arr: zarr.Array) -> _Multiscale:
    axes = _default_axes(arr.ndim)
    if not axes:
        raise VolumeFormatError(
            f"{p} is a plain {arr.ndim}-D zarr array of shape {arr.shape}; vstain-dask reads "
            "2D (y,x), 3D (z,y,x) or 4D (c,z,y,x) arrays"
        )
    n = len(axes)
    level = _Level(path="", array=arr, scale=(1.0,) * n, translation=(0.0,) * n)
    return _Multiscale(
        path=p,
        ngff_version=None,
        zarr_format=arr.metadata.zarr_format,
        name=p.name,
        axes=axes,
        units=(None,) * n,
        levels=(level,),
        channels=None,
        kind=VolumeKind.INTENSITY,
    )


def _transforms(
    items: Any, ndim: int, where: str, p: Path
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Compose a list of NGFF scale/translation/identity transforms into (scale, translation)."""
    scale = [1.0] * ndim
    trans = [0.0] * ndim
    for t in items or ():
        kind = t.get("type") if isinstance(t, Mapping) else None
        if kind == "identity":
            continue
        if kind not in ("scale", "translation") or kind not in t:
            raise VolumeFormatError(
                f"{p}: {where} has a coordinate transformation {t!r} that vstain-dask cannot "
                "read (only inline scale, translation and identity); rewrite the store with "
                "inline values"
            )
        vec = [float(v) for v in t[kind]]
        if len(vec) != ndim:
            raise VolumeFormatError(
                f"{p}: {where} has a {kind} of {len(vec)} values for {ndim} axes; "
                "the metadata is inconsistent"
            )
        if kind == "scale":
            scale = [s * v for s, v in zip(scale, vec, strict=True)]
            trans = [t0 * v for t0, v in zip(trans, vec, strict=True)]
        else:
            trans = [t0 + v for t0, v in zip(trans, vec, strict=True)]
    return tuple(scale), tuple(trans)


def _infer_kind(meta: Mapping, axes: tuple[str, ...], dtype: np.dtype, omero: Any) -> VolumeKind:
    if "image-label" in meta:
        return VolumeKind.LABELS
    if "c" in axes and dtype == np.uint8 and isinstance(omero, Mapping):
        colors = [str(c.get("color", "")).upper() for c in omero.get("channels", ())]
        if len(colors) in (3, 4) and tuple(colors) == _RGB_COLORS[: len(colors)]:
            return VolumeKind.RGB
    return VolumeKind.INTENSITY


def _read_multiscale(path: str | os.PathLike, mode: str = "r") -> _Multiscale:
    p, node = _open_node(path, mode)
    if isinstance(node, zarr.Array):
        return _plain(p, node)
    attrs = node.attrs.asdict()
    ome = attrs.get("ome")
    meta = ome_metadata(attrs)
    if "multiscales" not in meta:
        return _without_multiscales(p, node, meta, mode)
    multiscales = meta["multiscales"]
    if not isinstance(multiscales, Sequence) or not multiscales:
        raise VolumeFormatError(f"{p} has an empty or malformed 'multiscales' list")
    ms = multiscales[0]
    version = meta.get("version") if meta is ome else None
    version = str(version or ms.get("version") or attrs.get("version") or "0.4")
    arrays = _dataset_arrays(p, node, ms.get("datasets") or [])
    names, units = _axes(p, ms, arrays[0][1].ndim)
    levels = _levels(p, ms, arrays, names)
    omero = meta.get("omero", attrs.get("omero"))
    channels = _channels(names, omero)
    label_names = _label_names(node)
    vstain = attrs.get("vstain")
    return _Multiscale(
        path=p,
        ngff_version=version,
        zarr_format=arrays[0][1].metadata.zarr_format,
        name=str(ms.get("name") or p.name),
        axes=names,
        units=tuple(None if a == "c" else u for a, u in zip(names, units, strict=True)),
        levels=levels,
        channels=channels,
        kind=_infer_kind(meta, names, np.dtype(arrays[0][1].dtype), omero),
        vstain=dict(vstain) if isinstance(vstain, Mapping) else {},
        labels=label_names,
    )


def _without_multiscales(p: Path, node: zarr.Group, meta: Mapping, mode: str) -> _Multiscale:
    """A group without ``multiscales``: the image of a bioformats2raw layout, or a group's only
    array; else an error that says what the group is and what to open instead."""
    if "bioformats2raw.layout" in meta and "0" in node:
        return _read_multiscale(p / "0", mode)
    if "labels" in meta:
        names = list(meta["labels"])
        hint = f", e.g. {p / names[0]}" if names else ""
        raise VolumeFormatError(
            f"{p} is an OME-Zarr labels group, not an image; open one of its label images{hint}"
        )
    if "plate" in meta or "well" in meta:
        raise VolumeFormatError(
            f"{p} is an OME-Zarr plate/well group, not an image; open one of its images"
        )
    arrays = sorted(node.array_keys())
    if len(arrays) == 1:
        return _plain(p / arrays[0], node[arrays[0]])
    if arrays:
        raise VolumeFormatError(
            f"{p} is a zarr group without OME-Zarr metadata holding arrays {arrays}; "
            f"open one of them, e.g. {p / arrays[0]}"
        )
    groups = sorted(node.group_keys())
    hint = f" (it holds groups {groups[:5]})" if groups else ""
    raise VolumeFormatError(
        f"{p} is a zarr group without OME-Zarr metadata and without arrays{hint}; "
        "give an OME-Zarr image or a zarr array"
    )


def _dataset_arrays(
    p: Path, node: zarr.Group, datasets: Sequence[Mapping]
) -> list[tuple[str, zarr.Array, Mapping]]:
    """(path, array, dataset entry) of each level the multiscales metadata lists."""
    if not datasets:
        raise VolumeFormatError(f"{p} lists no datasets in its multiscales metadata")
    arrays = []
    for ds in datasets:
        name = str(ds.get("path", ""))
        try:
            arr = node[name]
        except KeyError as e:
            raise VolumeFormatError(
                f"{p} lists a level {name!r} that does not exist; the store is incomplete"
            ) from e
        except Exception as e:  # a metadata document that is not valid JSON or zarr metadata
            raise VolumeFormatError(
                f"{_metadata_file(p / name)} is corrupt ({type(e).__name__}: {e}); restore it "
                "from a copy, or write the volume again"
            ) from e
        if not isinstance(arr, zarr.Array):
            raise VolumeFormatError(f"{p}: level {name!r} is a group, not an array")
        arrays.append((name, arr, ds))
    return arrays


def _axes(p: Path, ms: Mapping, ndim: int) -> tuple[tuple[str, ...], tuple[str | None, ...]]:
    """The axis names and units of a multiscale (NGFF <= 0.2 has implicit t,c,z,y,x)."""
    raw_axes = ms.get("axes")
    if raw_axes is None:
        names = ("t", "c", "z", "y", "x")[-ndim:]
        units: tuple[str | None, ...] = (None,) * ndim
    else:
        names = tuple(str(a["name"] if isinstance(a, Mapping) else a).lower() for a in raw_axes)
        units = tuple(a.get("unit") if isinstance(a, Mapping) else None for a in raw_axes)
    if names not in SUPPORTED_AXES:
        raise VolumeFormatError(
            f"{p} has axes ({', '.join(names)}); vstain-dask reads (z, y, x), (c, z, y, x), "
            "(y, x) or (c, y, x) volumes; save the part you need (e.g. one time point) as its "
            "own OME-Zarr image"
        )
    return names, units


def _levels(
    p: Path, ms: Mapping, arrays: Sequence[tuple[str, zarr.Array, Mapping]], names: tuple[str, ...]
) -> tuple[_Level, ...]:
    """The levels with their scale and translation: each dataset's transforms composed with the
    multiscale's."""
    ms_scale, ms_trans = _transforms(
        ms.get("coordinateTransformations"), len(names), "the multiscale", p
    )
    levels = []
    for name, arr, ds in arrays:
        if arr.ndim != len(names):
            raise VolumeFormatError(
                f"{p}: level {name!r} has {arr.ndim} dimensions but the metadata names "
                f"{len(names)} axes"
            )
        s, t = _transforms(ds.get("coordinateTransformations"), len(names), f"level {name!r}", p)
        scale = tuple(a * b for a, b in zip(s, ms_scale, strict=True))
        trans = tuple(a * b + c for a, b, c in zip(t, ms_scale, ms_trans, strict=True))
        levels.append(_Level(path=name, array=arr, scale=scale, translation=trans))
    return tuple(levels)


def _channels(names: tuple[str, ...], omero: Any) -> tuple[str, ...] | None:
    """The channel labels the omero metadata gives (their index where one has no label)."""
    if "c" in names and isinstance(omero, Mapping) and omero.get("channels"):
        return tuple(
            str(ch.get("label") or i) if isinstance(ch, Mapping) else str(i)
            for i, ch in enumerate(omero["channels"])
        )
    return None


def _label_names(node: zarr.Group) -> tuple[str, ...]:
    """The label images listed beside an image (its ``labels`` group)."""
    if "labels" not in node.group_keys():
        return ()
    lmeta = ome_metadata(node["labels"].attrs.asdict())
    return tuple(str(n) for n in lmeta.get("labels", ()))


def _write_chunks(arr: zarr.Array) -> tuple[int, ...]:
    """The unit of independent writes: the shard if the array is sharded, else the chunk."""
    shards = getattr(arr, "shards", None)
    return tuple(shards or arr.chunks)


def level_array(
    path: str | os.PathLike, *, level: int = 0, allow_incomplete: bool = False
) -> zarr.Array:
    """One pyramid level of an OME-Zarr image (or a plain zarr array) as a zarr array.

    For code that reads or writes regions itself (the stain engine's block tasks) rather than
    through dask. Raises :class:`VolumeFormatError` as :func:`open_volume` does.
    """
    ms = _read_multiscale(path)
    if not allow_incomplete:
        _require_complete(ms)
    n = len(ms.levels)
    if isinstance(level, bool) or not isinstance(level, int | np.integer) or not 0 <= level < n:
        raise VolumeFormatError(f"level must be in 0..{n - 1} for {ms.path}, got {level!r}")
    return ms.levels[int(level)].array


def incomplete_reason(vstain: Mapping) -> str | None:
    """Why a volume written by vstain-dask is incomplete, and how to redo it; None when it is
    complete (or was written by another tool, which records no such state)."""
    if not isinstance(vstain, Mapping) or vstain.get("complete", True) is not False:
        return None
    if "import" in vstain:
        src = (vstain.get("import") or {}).get("source")
        return (
            f"its import{f' from {src}' if src else ''} did not finish; run the "
            "`vstain-dask import` command again with --overwrite"
        )
    if "fingerprint" in vstain:
        return (
            "its stain did not finish; run the same `vstain-dask stain` command with --resume "
            "to finish it"
        )
    return "it was not written completely; write it again (with --overwrite)"


def _require_complete(ms: _Multiscale) -> None:
    why = incomplete_reason(ms.vstain)
    if why:
        raise VolumeFormatError(f"{ms.path} is incomplete: {why}")


def update_provenance(path: str | os.PathLike, **values: Any) -> None:
    """Set ``values`` in the ``vstain`` attributes (provenance, completeness) of a store."""
    group = zarr.open_group(store=str(path), mode="r+")
    group.attrs["vstain"] = {**dict(group.attrs.get("vstain") or {}), **values}


_METADATA_FILES = ("zarr.json", ".zarray", ".zattrs", ".zgroup")


def content_identity(path: str | os.PathLike) -> str:
    """A cheap identity of what a volume holds, to tell whether it changed between two runs.

    A hash of the store's metadata documents (the group's and the full-resolution level's) and
    of the name, size and modification time of every stored chunk (or shard) file of the full
    resolution level. Reading nothing but metadata and one directory listing, it changes when
    the volume is rewritten or replaced, even with the same shape, and stays the same while the
    files are only read.
    """
    import hashlib

    ms = _read_multiscale(path)
    h = hashlib.sha256()
    for name in _METADATA_FILES:
        f = ms.path / name
        if f.is_file():
            h.update(f"{name}\0".encode() + f.read_bytes() + b"\0")
    level_dir = ms.path / ms.levels[0].path if ms.levels[0].path else ms.path
    for root, dirs, files in os.walk(level_dir):
        dirs.sort()
        for name in sorted(files):
            f = Path(root) / name
            rel = f.relative_to(level_dir).as_posix()
            if name in _METADATA_FILES:
                h.update(f"{rel}\0".encode() + f.read_bytes() + b"\0")
            else:
                st = f.stat()
                h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return h.hexdigest()[:32]


def missing_chunks(path: str | os.PathLike) -> tuple[int, int]:
    """(chunks of the full-resolution level that are not stored, chunks it has in all).

    Zarr reads a chunk that was never written as the array's fill value, which is what a store
    copied in part, or written by a job that stopped, looks like; readers should say so.
    """
    arr = _read_multiscale(path).levels[0].array
    return int(arr.nchunks - arr.nchunks_initialized), int(arr.nchunks)


def chunk_file(arr: zarr.Array, index: Sequence[int]) -> Path:
    """The file that holds chunk (or shard) ``index`` of an array in a local store."""
    return Path(str(arr.store.root)) / arr.path / arr.metadata.encode_chunk_key(tuple(index))


def open_volume(
    path: str | os.PathLike, *, level: int = 0, allow_incomplete: bool = False
) -> xr.DataArray:
    """Open one level of an OME-Zarr image (NGFF 0.4 or 0.5) lazily.

    Parameters
    ----------
    path : path of an OME-Zarr image group, or of a plain zarr array
    level : pyramid level, 0 being full resolution

    Returns
    -------
    xarray.DataArray
        Backed by a dask array with the zarr chunks as dask chunks. Dims are the NGFF axes,
        ``(z, y, x)``, ``(c, z, y, x)``, ``(y, x)`` or ``(c, y, x)``; spatial coordinates are
        physical positions ``index * scale + translation`` in the axis unit (usually µm), which
        each coordinate names in its ``units`` attribute; the ``c`` coordinate holds the
        channel labels when known. All levels at once: :func:`open_levels` (a DataTree). ``attrs`` hold ``ngff_version``,
        ``scale``, ``units``, ``translation`` (dicts keyed by axis), ``path``, ``level``,
        ``n_levels``, ``channels``, ``kind`` and ``vstain`` (provenance, may be empty).

    Warns
    -----
    MissingScaleWarning
        For a plain zarr array: no physical scale is known and 1 per voxel is used.

    Raises
    ------
    VolumeFormatError
        The path is missing, a file, not a zarr store, a group without an image, has
        unsupported axes, or ``level`` is out of range.
    """
    import xarray as xr

    ms = _read_multiscale(path)
    if not allow_incomplete:
        _require_complete(ms)
    if ms.ngff_version is None:
        warnings.warn(
            f"{ms.path} is a plain zarr array without OME-Zarr metadata, so no physical scale "
            "is known; using 1 per voxel. Convert it with write_volume(..., scale=...) or "
            "`vstain-dask import` to record the voxel size",
            MissingScaleWarning,
            stacklevel=2,
        )
    n = len(ms.levels)
    if isinstance(level, bool) or not isinstance(level, int | np.integer) or not 0 <= level < n:
        raise VolumeFormatError(
            f"level must be in 0..{n - 1} for {ms.path}, which has {n} level"
            f"{'s' if n != 1 else ''}; got {level!r}"
        )
    lv = ms.levels[int(level)]
    data = da.from_zarr(lv.array, chunks=_write_chunks(lv.array))
    return xr.DataArray(
        data,
        dims=ms.axes,
        coords=_coords(ms, lv, data.shape),
        attrs=_volume_attrs(ms, lv, int(level)),
        name=ms.name,
    )


def open_levels(path: str | os.PathLike, *, allow_incomplete: bool = False) -> xr.DataTree:
    """Open every level of an OME-Zarr image lazily, as an :class:`xarray.DataTree`.

    ``xarray.open_zarr`` and ``xarray.open_datatree`` cannot read an OME-Zarr pyramid: its
    levels are arrays of different shapes with their physical scale in the ``multiscales``
    metadata, which xarray does not interpret. This builds the tree from :func:`open_volume`
    instead: one child per level, named ``"0"``, ``"1"``, ..., each a Dataset holding the
    level as the variable ``image`` with its own physical coordinates (with ``units``).

    Parameters
    ----------
    path : path of an OME-Zarr image group
    allow_incomplete : bool
        Open a volume whose writing did not finish (by default refused, as everywhere).

    Returns
    -------
    xarray.DataTree
        Nothing is read but the metadata; ``tree["1"]["image"]`` is level 1, dask-backed.
        The root's ``attrs`` hold ``path``, ``n_levels`` and ``vstain`` (provenance).
    """
    import xarray as xr

    first = open_volume(path, level=0, allow_incomplete=allow_incomplete)
    n = int(first.attrs["n_levels"])
    children = {"0": xr.Dataset({"image": first})}
    for level in range(1, n):
        image = open_volume(path, level=level, allow_incomplete=allow_incomplete)
        children[str(level)] = xr.Dataset({"image": image})
    tree = xr.DataTree.from_dict(children)
    tree.attrs.update(path=first.attrs["path"], n_levels=n, vstain=first.attrs["vstain"])
    return tree


def _coords(ms: _Multiscale, lv: _Level, shape: tuple[int, ...]) -> dict[str, Any]:
    """Coordinates of a level of ``shape``: physical positions ``index * scale + translation``
    along the spatial axes, the channel labels (else indices) along ``c``."""
    coords: dict[str, Any] = {}
    for i, ax in enumerate(ms.axes):
        size = shape[i]
        if ax == "c":
            if ms.channels is not None and len(ms.channels) == size:
                coords["c"] = list(ms.channels)
            else:
                coords["c"] = np.arange(size)
        else:
            # (dims, values, attrs): the unit travels with the coordinate (xarray, CF style)
            attrs = {"units": ms.units[i]} if ms.units[i] else {}
            coords[ax] = (ax, np.arange(size) * lv.scale[i] + lv.translation[i], attrs)
    return coords


def _volume_attrs(ms: _Multiscale, lv: _Level, level: int) -> dict[str, Any]:
    """The ``attrs`` of the DataArray :func:`open_volume` returns for ``level``."""
    return {
        "ngff_version": ms.ngff_version,
        "scale": dict(zip(ms.axes, lv.scale, strict=True)),
        "units": dict(zip(ms.axes, ms.units, strict=True)),
        "translation": dict(zip(ms.axes, lv.translation, strict=True)),
        "path": str(ms.path),
        "level": level,
        "n_levels": len(ms.levels),
        "channels": list(ms.channels) if ms.channels is not None else None,
        "kind": ms.kind.value,
        "vstain": dict(ms.vstain),
    }
