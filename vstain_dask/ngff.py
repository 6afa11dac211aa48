"""OME-Zarr volumes: read NGFF 0.4 and 0.5, write pyramids, inspect and import.

Volumes are OME-Zarr images with axes ``(z, y, x)``, ``(c, z, y, x)``, ``(y, x)`` or
``(c, y, x)``. Reading gives a dask-backed :class:`xarray.DataArray` whose coordinates are
physical positions (``index * scale + translation``, in the axis unit, usually µm). Writing
streams a dask array chunk by chunk into NGFF 0.5 (zarr v3, the default) or NGFF 0.4 (zarr v2),
then fills a 3D pyramid (factor 2 along z, y and x; the channel axis is never downsampled) with
one task per output chunk that reads the chunks above it from the store, so memory stays
bounded by a few chunks per worker whatever the volume size.

NGFF specification: https://ngff.openmicroscopy.org/0.5/ and /0.4/.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import sys
import uuid
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask
import dask.array as da
import numpy as np
import zarr

from vstain_dask import _io_sources
from vstain_dask.errors import InputError, OutputExistsError, VolumeFormatError, as_enum

if TYPE_CHECKING:
    import xarray as xr

__all__ = [
    "MissingScaleWarning",
    "NgffVersion",
    "VolumeKind",
    "check_output",
    "create_volume",
    "format_info",
    "import_volume",
    "open_volume",
    "volume_info",
    "write_labels",
    "write_pyramid",
    "write_volume",
]


class NgffVersion(StrEnum):
    """OME-Zarr (NGFF) versions that can be written."""

    V04 = "0.4"  # zarr v2 stores
    V05 = "0.5"  # zarr v3 stores, metadata under attributes["ome"]


class VolumeKind(StrEnum):
    """What the values of a volume are; decides the pyramid method and channel metadata."""

    INTENSITY = "intensity"  # CT values and the like; pyramid by mean
    LABELS = "labels"  # integer labels; pyramid by nearest (stride)
    RGB = "rgb"  # uint8 R,G,B(,A) on the c axis; pyramid by mean, omero colours


class MissingScaleWarning(UserWarning):
    """A volume carries no OME-Zarr metadata, so its physical voxel size is unknown."""


#: axis orders vstain-dask reads and writes
SUPPORTED_AXES: tuple[tuple[str, ...], ...] = (
    ("z", "y", "x"),
    ("c", "z", "y", "x"),
    ("y", "x"),
    ("c", "y", "x"),
)

#: NGFF space units (UDUNITS-2 names, as listed by the NGFF specification)
SPACE_UNITS = frozenset(
    "angstrom attometer centimeter decimeter exameter femtometer foot gigameter hectometer "
    "inch kilometer megameter meter micrometer mile millimeter nanometer parsec petameter "
    "picometer terameter yard yoctometer yottameter zeptometer zettameter".split()
)
_UNIT_ALIASES = {
    "um": "micrometer",
    "µm": "micrometer",
    "μm": "micrometer",
    "micron": "micrometer",
    "microns": "micrometer",
    "mm": "millimeter",
    "nm": "nanometer",
    "cm": "centimeter",
    "m": "meter",
}

DEFAULT_CHUNK_3D = 128  # 4 MiB of uint16, 6 MiB of RGB per chunk
DEFAULT_CHUNK_2D = 1024
#: the default pyramid stops before a level whose largest spatial size would be below this
MIN_LEVEL_SIZE = 64
# zstd level 1 compresses CT and stained RGB about as well as level 3 at about twice the speed,
# and stained outputs are ~10 GB
_ZSTD_LEVEL = 1

_SLAB_BYTES = 4 << 20  # source bytes averaged at a time in a pyramid task

_RGB_NAMES = ("R", "G", "B", "A")
_RGB_COLORS = ("FF0000", "00FF00", "0000FF", "FFFFFF")


def _is_zarr_dir(p: Path) -> bool:
    return p.is_dir() and any((p / n).is_file() for n in ("zarr.json", ".zgroup", ".zarray"))


# ============================================================================================
# reading


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
    meta = ome if isinstance(ome, Mapping) else attrs
    if "multiscales" not in meta:
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
    multiscales = meta["multiscales"]
    if not isinstance(multiscales, Sequence) or not multiscales:
        raise VolumeFormatError(f"{p} has an empty or malformed 'multiscales' list")
    ms = multiscales[0]
    version = meta.get("version") if meta is ome else None
    version = str(version or ms.get("version") or attrs.get("version") or "0.4")
    datasets = ms.get("datasets") or []
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
    ndim = arrays[0][1].ndim
    raw_axes = ms.get("axes")
    if raw_axes is None:  # NGFF <= 0.2: implicit t,c,z,y,x
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
    omero = meta.get("omero", attrs.get("omero"))
    channels = None
    if "c" in names and isinstance(omero, Mapping) and omero.get("channels"):
        channels = tuple(
            str(ch.get("label") or i) if isinstance(ch, Mapping) else str(i)
            for i, ch in enumerate(omero["channels"])
        )
    label_names: tuple[str, ...] = ()
    if "labels" in node.group_keys():
        lattrs = node["labels"].attrs.asdict()
        lmeta = lattrs.get("ome", lattrs)
        label_names = tuple(str(n) for n in lmeta.get("labels", ()))
    vstain = attrs.get("vstain")
    return _Multiscale(
        path=p,
        ngff_version=version,
        zarr_format=arrays[0][1].metadata.zarr_format,
        name=str(ms.get("name") or p.name),
        axes=names,
        units=tuple(None if a == "c" else u for a, u in zip(names, units, strict=True)),
        levels=tuple(levels),
        channels=channels,
        kind=_infer_kind(meta, names, np.dtype(arrays[0][1].dtype), omero),
        vstain=dict(vstain) if isinstance(vstain, Mapping) else {},
        labels=label_names,
    )


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
        physical positions ``index * scale + translation`` in the axis unit (usually µm); the
        ``c`` coordinate holds the channel labels when known. ``attrs`` hold ``ngff_version``,
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
    coords: dict[str, Any] = {}
    for i, ax in enumerate(ms.axes):
        size = data.shape[i]
        if ax == "c":
            if ms.channels is not None and len(ms.channels) == size:
                coords["c"] = list(ms.channels)
            else:
                coords["c"] = np.arange(size)
        else:
            coords[ax] = np.arange(size) * lv.scale[i] + lv.translation[i]
    attrs = {
        "ngff_version": ms.ngff_version,
        "scale": dict(zip(ms.axes, lv.scale, strict=True)),
        "units": dict(zip(ms.axes, ms.units, strict=True)),
        "translation": dict(zip(ms.axes, lv.translation, strict=True)),
        "path": str(ms.path),
        "level": int(level),
        "n_levels": n,
        "channels": list(ms.channels) if ms.channels is not None else None,
        "kind": ms.kind.value,
        "vstain": dict(ms.vstain),
    }
    return xr.DataArray(data, dims=ms.axes, coords=coords, attrs=attrs, name=ms.name)


# ============================================================================================
# writing: validated specification of a volume


@dataclass(frozen=True)
class _VolumeSpec:
    name: str
    axes: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: np.dtype
    chunks: tuple[int, ...]
    scale: tuple[float, ...]
    units: tuple[str | None, ...]
    translation: tuple[float, ...]
    version: NgffVersion
    n_levels: int
    kind: VolumeKind
    channel_names: tuple[str, ...] | None
    attrs: dict

    @property
    def zarr_format(self) -> int:
        return 3 if self.version is NgffVersion.V05 else 2

    @property
    def factors(self) -> tuple[int, ...]:
        return tuple(1 if a == "c" else 2 for a in self.axes)

    def level_shape(self, level: int) -> tuple[int, ...]:
        return tuple(math.ceil(s / f**level) for s, f in zip(self.shape, self.factors, strict=True))

    def level_chunks(self, level: int) -> tuple[int, ...]:
        return tuple(min(c, s) for c, s in zip(self.chunks, self.level_shape(level), strict=True))

    def level_scale(self, level: int) -> tuple[float, ...]:
        return tuple(s * f**level for s, f in zip(self.scale, self.factors, strict=True))

    def level_translation(self, level: int) -> tuple[float, ...]:
        # a level-l voxel covers f**l level-0 voxels; its centre sits (f**l - 1)/2 voxels in
        return tuple(
            t + (f**level - 1) / 2 * s
            for t, s, f in zip(self.translation, self.scale, self.factors, strict=True)
        )


def _parse_axes(axes: Any) -> tuple[str, ...]:
    names = tuple(axes) if isinstance(axes, str) else tuple(str(a) for a in axes)
    names = tuple(n.lower() for n in names)
    if names not in SUPPORTED_AXES:
        allowed = ", ".join("".join(a) for a in SUPPORTED_AXES)
        raise InputError(f"axes must be one of {allowed}, got {''.join(names)!r}")
    return names


def _parse_unit(unit: str | None) -> str | None:
    """An NGFF space unit from a name or a common abbreviation (``um``, ``µm``, ``mm``)."""
    if unit is None:
        return None
    u = _UNIT_ALIASES.get(str(unit).strip(), str(unit).strip().lower())
    u = _UNIT_ALIASES.get(u, u)
    if u not in SPACE_UNITS:
        raise InputError(
            f"unit must be an NGFF space unit such as micrometer, millimeter or nanometer "
            f"(or um, mm, nm), got {unit!r}"
        )
    return u


def _per_axis(
    value: Any, axes: tuple[str, ...], name: str, neutral: float, *, positive: bool
) -> tuple[float, ...]:
    spatial = [a for a in axes if a != "c"]
    out = {a: neutral for a in axes}
    if value is None:
        pass
    elif isinstance(value, Mapping):
        unknown = set(value) - set(axes)
        if unknown:
            raise InputError(f"{name} has axes {sorted(unknown)} not in the axes {axes}")
        out.update({a: value[a] for a in value if a != "c"})
    elif isinstance(value, int | float | np.number):
        out.update({a: value for a in spatial})
    else:
        vals = list(value)
        if len(vals) == len(spatial):
            out.update(dict(zip(spatial, vals, strict=True)))
        elif len(vals) == len(axes):
            out.update({a: v for a, v in zip(axes, vals, strict=True) if a != "c"})
        else:
            raise InputError(
                f"{name} must have {len(spatial)} values ({','.join(spatial)}), got {tuple(vals)}"
            )
    try:
        result = tuple(float(out[a]) for a in axes)
    except (TypeError, ValueError) as e:
        raise InputError(f"{name} must be numbers, got {value!r}") from e
    if not all(math.isfinite(v) and (v > 0 or not positive) for v in result):
        raise InputError(
            f"{name} must be finite{' positive' if positive else ''} numbers, got {value!r}"
        )
    return result


def _parse_units(units: Any, axes: tuple[str, ...]) -> tuple[str | None, ...]:
    spatial = [a for a in axes if a != "c"]
    if units is None or isinstance(units, str):
        u = _parse_unit(units)
        return tuple(None if a == "c" else u for a in axes)
    if isinstance(units, Mapping):
        return tuple(None if a == "c" else _parse_unit(units.get(a)) for a in axes)
    vals = list(units)
    if len(vals) != len(spatial):
        raise InputError(f"units must have {len(spatial)} values ({','.join(spatial)}), got {vals}")
    per = dict(zip(spatial, (_parse_unit(v) for v in vals), strict=True))
    return tuple(per.get(a) for a in axes)


def _parse_chunks(
    chunks: Any, shape: tuple[int, ...], axes: tuple[str, ...], kind: VolumeKind
) -> tuple[int, ...]:
    spatial = [i for i, a in enumerate(axes) if a != "c"]
    if chunks is None:
        default = DEFAULT_CHUNK_3D if len(spatial) == 3 else DEFAULT_CHUNK_2D
        full = tuple(shape[i] if a == "c" else default for i, a in enumerate(axes))
    else:
        vals = (chunks,) * len(spatial) if isinstance(chunks, int) else tuple(chunks)
        if len(vals) == len(spatial) and len(vals) != len(axes):
            it = iter(vals)
            vals = tuple(shape[i] if a == "c" else next(it) for i, a in enumerate(axes))
        if len(vals) != len(axes):
            names = ",".join(a.upper() for a in axes if a != "c")
            raise InputError(
                f"chunks must have {len(spatial)} values ({names}) for a volume of shape "
                f"{shape}, got {tuple(chunks) if not isinstance(chunks, int) else chunks}"
            )
        if not all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in vals):
            raise InputError(f"chunks must be positive integers, got {vals}")
        if any(v <= 0 for v in vals):
            raise InputError(f"chunks must be positive integers, got {vals}")
        full = tuple(int(v) for v in vals)
        if kind is VolumeKind.RGB and "c" in axes:
            ci = axes.index("c")
            if full[ci] < shape[ci]:
                raise InputError(
                    f"rgb volumes keep the channel axis in one chunk; chunks along c must be "
                    f"{shape[ci]}, got {full[ci]}"
                )
    return tuple(min(c, s) for c, s in zip(full, shape, strict=True))


def _default_levels(shape: tuple[int, ...], axes: tuple[str, ...]) -> int:
    spatial = [s for s, a in zip(shape, axes, strict=True) if a != "c"]
    levels = 1
    while True:
        spatial = [math.ceil(s / 2) for s in spatial]
        if max(spatial) < MIN_LEVEL_SIZE:
            return levels
        levels += 1


def _volume_name(path: Path) -> str:
    name = path.name
    for suffix in (".zarr", ".ome"):
        name = name.removesuffix(suffix)
    return name or "volume"


def _json_attrs(attrs: Any) -> dict:
    if attrs is None:
        return {}
    if not isinstance(attrs, Mapping):
        raise InputError(f"attrs must be a dict, got {type(attrs).__name__}")
    try:
        return json.loads(json.dumps(dict(attrs)))
    except (TypeError, ValueError) as e:
        raise InputError(
            f"attrs must be JSON-serializable (str, numbers, bool, None, lists, dicts): {e}"
        ) from e


def _build_spec(
    path: str | os.PathLike,
    *,
    shape: Any,
    dtype: Any,
    chunks: Any,
    axes: Any,
    scale: Any,
    units: Any,
    translation: Any,
    ngff_version: Any,
    n_levels: Any,
    kind: Any,
    channel_names: Any,
    attrs: Any,
) -> _VolumeSpec:
    kind = as_enum(VolumeKind, kind, "kind")
    version = as_enum(NgffVersion, ngff_version, "ngff_version")
    axes = _parse_axes(axes)
    try:
        shape = tuple(int(s) for s in shape)
    except (TypeError, ValueError) as e:
        raise InputError(f"shape must be a tuple of positive integers, got {shape!r}") from e
    if len(shape) != len(axes) or any(s <= 0 for s in shape):
        raise InputError(
            f"shape must be {len(axes)} positive integers for axes {''.join(axes)}, got {shape}"
        )
    try:
        dt = np.dtype(dtype)
    except TypeError as e:
        raise InputError(f"dtype must be a numeric type such as uint16, got {dtype!r}") from e
    if dt.kind not in "biuf":
        raise InputError(f"dtype must be bool, integer or float, got {dt}")
    dt = dt.newbyteorder("=") if dt.byteorder not in ("|", "=") else dt
    ci = axes.index("c") if "c" in axes else None
    if kind is VolumeKind.RGB:
        if ci is None or shape[ci] not in (3, 4):
            raise InputError(
                f"kind rgb needs a c axis of 3 (R,G,B) or 4 (R,G,B,A) channels, got axes "
                f"{''.join(axes)} and shape {shape}"
            )
        if dt != np.uint8:
            raise InputError(f"kind rgb needs dtype uint8, got {dt}")
    if kind is VolumeKind.LABELS:
        if dt.kind not in "iu":
            raise InputError(f"kind labels needs an integer dtype, got {dt}")
        if ci is not None:
            raise InputError(f"kind labels takes no c axis, got axes {''.join(axes)}")
    names = None
    if channel_names is not None:
        if ci is None:
            raise InputError(f"channel_names need a c axis, got axes {''.join(axes)}")
        names = tuple(str(n) for n in channel_names)
        if len(names) != shape[ci]:
            raise InputError(f"channel_names must name all {shape[ci]} channels, got {list(names)}")
    elif kind is VolumeKind.RGB:
        names = _RGB_NAMES[: shape[ci]]
    if n_levels is None:
        n = _default_levels(shape, axes)
    elif isinstance(n_levels, int | np.integer) and not isinstance(n_levels, bool) and n_levels > 0:
        n = int(n_levels)
    else:
        raise InputError(f"n_levels must be a positive integer or None, got {n_levels!r}")
    return _VolumeSpec(
        name=_volume_name(Path(path)),
        axes=axes,
        shape=shape,
        dtype=dt,
        chunks=_parse_chunks(chunks, shape, axes, kind),
        scale=_per_axis(scale, axes, "scale", 1.0, positive=True),
        units=_parse_units(units, axes),
        translation=_per_axis(translation, axes, "translation", 0.0, positive=False),
        version=version,
        n_levels=n,
        kind=kind,
        channel_names=names,
        attrs=_json_attrs(attrs),
    )


# ============================================================================================
# writing: metadata and arrays


def _omero(spec: _VolumeSpec) -> dict | None:
    if spec.channel_names is None:
        return None
    if spec.kind is VolumeKind.RGB:
        lo, hi = 0, 255
        colors = _RGB_COLORS
    else:
        if spec.dtype.kind in "iu":
            info = np.iinfo(spec.dtype)
            lo, hi = int(info.min), int(info.max)
        else:
            lo, hi = 0.0, 1.0
        colors = ("FFFFFF",) * len(spec.channel_names)
    channels = [
        {
            "label": name,
            "color": colors[i],
            # an alpha channel shown as a fourth additive grey layer would wash out the RGB
            "active": not (spec.kind is VolumeKind.RGB and i == 3),
            "coefficient": 1.0,
            "family": "linear",
            "inverted": False,
            "window": {"start": lo, "end": hi, "min": lo, "max": hi},
        }
        for i, name in enumerate(spec.channel_names)
    ]
    rdefs: dict[str, Any] = {"model": "color", "defaultT": 0}
    if "z" in spec.axes:
        rdefs["defaultZ"] = spec.shape[spec.axes.index("z")] // 2
    return {"channels": channels, "rdefs": rdefs}


def _group_attrs(spec: _VolumeSpec) -> dict:
    from vstain_dask import __version__

    axes = []
    for a, u in zip(spec.axes, spec.units, strict=True):
        ax: dict[str, Any] = {"name": a, "type": "channel" if a == "c" else "space"}
        if u is not None:
            ax["unit"] = u
        axes.append(ax)
    datasets = [
        {
            "path": str(level),
            "coordinateTransformations": [
                {"type": "scale", "scale": list(spec.level_scale(level))},
                {"type": "translation", "translation": list(spec.level_translation(level))},
            ],
        }
        for level in range(spec.n_levels)
    ]
    labels = spec.kind is VolumeKind.LABELS
    multiscale: dict[str, Any] = {
        "name": spec.name,
        "axes": axes,
        "datasets": datasets,
        "type": "nearest" if labels else "mean",
        "metadata": {
            "description": (
                "each level takes every second voxel along z, y, x of the level above"
                if labels
                else "each level is the mean of 2x2x2 voxels (2x2 in 2D) of the level above; "
                "integers rounded to nearest"
            ),
            "method": "vstain_dask.ngff.write_pyramid",
            "version": __version__,
        },
    }
    ome: dict[str, Any] = {}
    if spec.version is NgffVersion.V04:
        multiscale = {"version": "0.4", **multiscale}
    ome["multiscales"] = [multiscale]
    omero = _omero(spec)
    if omero is not None:
        ome["omero"] = omero
    if labels:
        label_meta: dict[str, Any] = {"source": {"image": "../../"}}
        if spec.version is NgffVersion.V04:
            label_meta = {"version": "0.4", **label_meta}
        ome["image-label"] = label_meta
    if spec.version is NgffVersion.V05:
        out: dict[str, Any] = {"ome": {"version": "0.5", **ome}}
    else:
        out = dict(ome)
    out["vstain"] = spec.attrs
    return out


def _compressors(spec: _VolumeSpec) -> Any:
    if spec.zarr_format == 3:
        from zarr.codecs import ZstdCodec

        return (ZstdCodec(level=_ZSTD_LEVEL),)
    from numcodecs import Blosc

    shuffle = Blosc.SHUFFLE if spec.dtype.itemsize > 1 else Blosc.NOSHUFFLE
    return Blosc(cname="zstd", clevel=_ZSTD_LEVEL, shuffle=shuffle)


def check_output(path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Check that a store may be written at ``path``, before any work is done.

    Nothing is created or deleted: the writer replaces an existing store itself.

    Parameters
    ----------
    path : str or os.PathLike
        Where the output store is to be written (``~`` is expanded).
    overwrite : bool
        Whether an existing zarr store at ``path`` may be replaced.

    Returns
    -------
    pathlib.Path
        ``path``, with ``~`` expanded.

    Raises
    ------
    OutputExistsError
        ``path`` exists and ``overwrite`` is false, or ``path`` exists and is not a zarr store
        (a file or another folder is never deleted, even with ``overwrite``).
    """
    p = Path(path).expanduser()
    if p.exists() or p.is_symlink():
        if not overwrite:
            raise OutputExistsError(
                f"output {p} already exists; pass --overwrite (overwrite=True) to replace it, "
                "or choose another path"
            )
        if not _is_zarr_dir(p):
            raise OutputExistsError(
                f"output {p} exists and is not a zarr store, so it is not deleted even with "
                "--overwrite; choose another path"
            )
    return p


def _prepare_output(path: str | os.PathLike, overwrite: bool) -> Path:
    p = check_output(path, overwrite=overwrite)
    if p.exists():
        shutil.rmtree(p)
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def _create(path: str | os.PathLike, spec: _VolumeSpec, overwrite: bool) -> list[zarr.Array]:
    p = _prepare_output(path, overwrite)
    group = zarr.open_group(store=str(p), mode="w-", zarr_format=spec.zarr_format)
    arrays = []
    for level in range(spec.n_levels):
        kwargs: dict[str, Any] = {
            "name": str(level),
            "shape": spec.level_shape(level),
            "chunks": spec.level_chunks(level),
            "dtype": spec.dtype,
            "fill_value": 0,
            "compressors": _compressors(spec),
        }
        if spec.zarr_format == 3:
            kwargs["dimension_names"] = spec.axes
        else:
            # NGFF 0.4 asks for "/" as the chunk key separator of zarr v2 arrays
            kwargs["chunk_key_encoding"] = {"name": "v2", "separator": "/"}
        arrays.append(group.create_array(**kwargs))
    group.attrs.update(_group_attrs(spec))
    return arrays


def create_volume(
    path: str | os.PathLike,
    *,
    shape: Sequence[int],
    dtype: Any,
    chunks: Sequence[int] | int | None,
    axes: str | Sequence[str] = "zyx",
    scale: Mapping[str, float] | Sequence[float] | float | None = None,
    units: Mapping[str, str] | Sequence[str] | str | None = None,
    translation: Mapping[str, float] | Sequence[float] | float | None = None,
    ngff_version: NgffVersion | str = "0.5",
    n_levels: int | None = None,
    kind: VolumeKind | str = "intensity",
    channel_names: Sequence[str] | None = None,
    attrs: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> zarr.Array:
    """Create an empty OME-Zarr image: all pyramid levels, metadata, no data.

    Fill level 0 (e.g. with ``da.store`` of chunk-aligned blocks), then call
    :func:`write_pyramid`.

    Parameters
    ----------
    path : output store (``.ome.zarr`` folder)
    shape : level-0 shape in ``axes`` order, e.g. (Z, Y, X) voxels
    dtype : numeric dtype; ``uint8`` for ``kind="rgb"``, integer for ``kind="labels"``
    chunks : chunk shape, either for all axes or for the spatial axes only (then the channel
        axis is one chunk); clipped to the shape; None for 128³ (3D) or 1024² (2D)
    axes : ``"zyx"``, ``"czyx"``, ``"yx"`` or ``"cyx"``
    scale : voxel size per spatial axis, in ``units`` (e.g. µm): a number for isotropic
        voxels, a sequence over the spatial axes, or a dict ``{"z": 5.0, ...}``; None is 1
    units : NGFF space unit (``"micrometer"``; ``"um"`` is accepted) for all spatial axes, or
        per axis; None writes no unit
    translation : physical position of voxel 0 per spatial axis; None is 0
    ngff_version : ``"0.5"`` (zarr v3) or ``"0.4"`` (zarr v2)
    n_levels : pyramid levels; None halves until the largest spatial size of the next level
        would fall below 64 voxels
    kind : ``"intensity"`` (mean pyramid), ``"labels"`` (nearest) or ``"rgb"`` (mean, omero
        channels R, G, B(, A) with colours FF0000, 00FF00, 0000FF, FFFFFF, window 0-255)
    channel_names : labels of the c channels (default R, G, B, A for rgb)
    attrs : JSON-serializable provenance, stored under the ``"vstain"`` attribute
    overwrite : replace an existing store at ``path``

    Returns
    -------
    zarr.Array
        Level 0, empty (fill value 0).

    Raises
    ------
    InputError
        A parameter is not acceptable.
    OutputExistsError
        ``path`` exists and ``overwrite`` is False, or it exists and is not a zarr store.
    """
    spec = _build_spec(
        path,
        shape=shape,
        dtype=dtype,
        chunks=chunks,
        axes=axes,
        scale=scale,
        units=units,
        translation=translation,
        ngff_version=ngff_version,
        n_levels=n_levels,
        kind=kind,
        channel_names=channel_names,
        attrs=attrs,
    )
    return _create(path, spec, overwrite)[0]


# ============================================================================================
# pyramids


def _window_mean(block: np.ndarray, factors: tuple[int, ...]) -> np.ndarray:
    """Means over complete ``factors`` windows (each size a multiple of its factor)."""
    if block.dtype.kind == "f" or block.dtype.itemsize > 4:
        acc = np.float64
    elif block.dtype.kind == "i":
        acc = np.int32 if block.dtype.itemsize <= 2 else np.int64
    else:  # unsigned and bool
        acc = np.uint32 if block.dtype.itemsize <= 2 else np.uint64
    total = block
    # pairwise sums along one axis at a time: cheaper than one reduction over strided axes
    for axis, f in enumerate(factors):
        if f == 1:
            continue
        parts = [total[(slice(None),) * axis + (slice(k, None, f),)] for k in range(f)]
        summed = np.add(parts[0], parts[1], dtype=acc)
        for part in parts[2:]:
            summed += part
        total = summed
    mean = total / math.prod(factors)
    if block.dtype.kind in "iub":
        mean = np.rint(mean)  # round to nearest (ties to even), not truncate
    return mean.astype(block.dtype)


def _downsample_block(block: np.ndarray, *, factors: tuple[int, ...], method: str) -> np.ndarray:
    """Downsample one block by integer ``factors``; odd trailing windows use what is there.

    ``"mean"``: window means, integers rounded to nearest (ties to even); ``"nearest"``: the
    first voxel of each window.
    """
    if method == "nearest":
        return np.ascontiguousarray(block[tuple(slice(None, None, f) for f in factors)])
    pad = [(0, (-s) % f) for s, f in zip(block.shape, factors, strict=True)]
    if any(p for _, p in pad):
        # repeating the edge keeps the window mean equal to the mean of the voxels present
        block = np.pad(block, pad, mode="edge")
    out_shape = tuple(s // f for s, f in zip(block.shape, factors, strict=True))
    out = np.empty(out_shape, dtype=block.dtype)
    axis = next((i for i, f in enumerate(factors) if f > 1), None)
    if axis is None:
        return block.copy()
    # a few MiB of output slabs at a time along the first downsampled axis keep the
    # wider accumulator temporaries small
    f = factors[axis]
    step = max(1, _SLAB_BYTES * out_shape[axis] // max(block.nbytes, 1))
    lead = (slice(None),) * axis
    for k in range(0, out_shape[axis], step):
        k1 = min(k + step, out_shape[axis])
        out[lead + (slice(k, k1),)] = _window_mean(block[lead + (slice(k * f, k1 * f),)], factors)
    return out


def _aligned(chunks: tuple[int, ...], step: int) -> bool:
    """Whether every internal block boundary along one axis is a multiple of ``step``."""
    pos = 0
    for c in chunks[:-1]:
        pos += c
        if pos % step:
            return False
    return True


def _align(arr: da.Array, chunks: tuple[int, ...]) -> da.Array:
    """Rechunk only the axes whose block boundaries do not fall on chunk boundaries."""
    new = tuple(bc if _aligned(bc, c) else c for bc, c in zip(arr.chunks, chunks, strict=True))
    return arr if new == arr.chunks else arr.rechunk(new)


def _pyramid_chunk(
    src: zarr.Array,
    dst: zarr.Array,
    region: tuple[tuple[int, int], ...],
    factors: tuple[int, ...],
    method: str,
    after: Any = None,
) -> None:
    """Read the source window of one destination chunk, downsample it and write it.

    ``after`` only orders the task behind the source chunks it reads.
    """
    src_index = tuple(
        slice(a * f, min(b * f, n)) for (a, b), f, n in zip(region, factors, src.shape, strict=True)
    )
    out = _downsample_block(np.asarray(src[src_index]), factors=factors, method=method)
    dst[tuple(slice(a, b) for a, b in region)] = out


def _grid(shape: tuple[int, ...], chunks: tuple[int, ...]):
    """(chunk index, ((start, stop), ...)) for every chunk of an array."""
    counts = [math.ceil(s / c) for s, c in zip(shape, chunks, strict=True)]
    for index in np.ndindex(*counts):
        yield (
            index,
            tuple(
                (i * c, min((i + 1) * c, s)) for i, c, s in zip(index, chunks, shape, strict=True)
            ),
        )


def _pyramid_graph(arrays: Sequence[zarr.Array], factors: tuple[int, ...], method: str):
    """A Delayed that fills ``arrays[1:]`` from ``arrays[0]``, one task per output chunk.

    Each task reads the (up to 2x2x2) source chunks under its output chunk from the store, so a
    task holds about eight chunks and nothing waits in memory for its neighbours. A task
    depends only on the tasks that wrote those source chunks.
    """
    token = uuid.uuid4().hex[:12]
    previous: dict[tuple[int, ...], Any] | None = None
    tasks = []
    for level in range(1, len(arrays)):
        src, dst = arrays[level - 1], arrays[level]
        src_chunks, dst_chunks = _write_chunks(src), _write_chunks(dst)
        current = {}
        for index, region in _grid(tuple(dst.shape), dst_chunks):
            after = None
            if previous is not None:
                ranges = [
                    range(a * f // sc, math.ceil(min(b * f, n) / sc))
                    for (a, b), f, sc, n in zip(region, factors, src_chunks, src.shape, strict=True)
                ]
                after = [previous[j] for j in itertools.product(*ranges)]
            key = f"pyramid-{token}-{level}-" + "-".join(map(str, index))
            current[index] = dask.delayed(_pyramid_chunk, pure=False)(
                src, dst, region, factors, method, after, dask_key_name=key
            )
        tasks.extend(current.values())
        previous = current
    return dask.delayed(_count_done, pure=False)(tasks, dask_key_name=f"pyramid-{token}")


def _count_done(results: list) -> int:
    return len(results)


def _store_level0(source: da.Array, target: zarr.Array) -> None:
    # every block covers whole chunks that no other block touches, so no lock is needed
    da.store(source, target, lock=False)


def write_pyramid(path: str | os.PathLike, *, compute: bool = True):
    """Fill levels 1.. of an OME-Zarr image from its level 0.

    Each level is computed from the level above as stored: the mean of 2x2x2 voxels (2x2 in
    2D; the c axis is never downsampled) for intensity and rgb images, integer means rounded
    to nearest; every second voxel for labels. Odd sizes give ceil(n/2) voxels, the last one
    the mean of the voxels present. One task per output chunk reads the source chunks under it
    and writes its chunk, so memory stays at a few chunks per worker whatever the volume size.

    Parameters
    ----------
    path : an OME-Zarr image made by :func:`create_volume` (levels halving in z, y, x), whose
        level 0 is written
    compute : write now (on the current dask scheduler); False returns a ``dask.delayed``
        object for the caller to compute

    Returns
    -------
    None, or a Delayed when ``compute=False`` (None when there is only one level).
    """
    ms = _read_multiscale(path, mode="r+")
    if ms.ngff_version is None:
        raise VolumeFormatError(
            f"{ms.path} is a plain zarr array; write it as OME-Zarr with write_volume first"
        )
    arrays = [lv.array for lv in ms.levels]
    if len(arrays) == 1:
        return None
    factors = tuple(1 if a == "c" else 2 for a in ms.axes)
    for i, arr in enumerate(arrays[1:], start=1):
        expected = tuple(math.ceil(s / f**i) for s, f in zip(arrays[0].shape, factors, strict=True))
        if tuple(arr.shape) != expected:
            raise VolumeFormatError(
                f"level {i} of {ms.path} has shape {tuple(arr.shape)} but a factor-2 pyramid "
                f"needs {expected}; write_pyramid only fills stores made by create_volume"
            )
    method = "nearest" if ms.kind is VolumeKind.LABELS else "mean"
    graph = _pyramid_graph(arrays, factors, method)
    if not compute:
        return graph
    graph.compute()
    return None


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
    version = "0.5" if ms.zarr_format == 3 else "0.4"
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
        ngff_version=version,
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
    names = list((lattrs.get("ome", lattrs)).get("labels", []))
    if name not in names:
        names.append(name)
    if ms.zarr_format == 3:
        group.attrs.update({"ome": {"version": "0.5", "labels": names}})
    else:
        group.attrs.update({"labels": names})
    return label_path


# ============================================================================================
# inspection


def _codec_text(codec: Any) -> str:
    if hasattr(codec, "to_dict"):
        d = codec.to_dict()
        conf = d.get("configuration", {})
        return f"{d.get('name')}({', '.join(f'{k}={v}' for k, v in conf.items())})"
    if hasattr(codec, "get_config"):
        conf = dict(codec.get_config())
        cid = conf.pop("id", type(codec).__name__)
        return f"{cid}({', '.join(f'{k}={v}' for k, v in conf.items())})"
    return str(codec)


def _stored_bytes(p: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(p):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def volume_info(path: str | os.PathLike) -> dict:
    """Describe an OME-Zarr image (or a plain zarr array) without reading its data.

    Returns
    -------
    dict
        JSON-serializable: ``path``, ``ngff_version`` (None for a plain array),
        ``zarr_format``, ``name``, ``kind``, ``axes``, ``shape``, ``dtype``, ``chunks``,
        ``scale``, ``units``, ``translation`` (dicts keyed by axis), ``levels`` (list of
        ``{"path", "shape", "chunks", "scale"}``), ``channels``, ``labels``, ``compressors``,
        ``nbytes`` (level 0, uncompressed), ``stored_bytes`` (all files), ``vstain``
        (provenance), ``incomplete`` (None, or why the volume is incomplete and how to redo
        it) and ``warnings``.
    """
    ms = _read_multiscale(path)
    lv0 = ms.levels[0]
    arr = lv0.array
    notes = []
    if ms.ngff_version is None:
        notes.append("plain zarr array without OME-Zarr metadata: no physical scale is known")
    return {
        "path": str(ms.path),
        "ngff_version": ms.ngff_version,
        "zarr_format": ms.zarr_format,
        "name": ms.name,
        "kind": ms.kind.value,
        "axes": list(ms.axes),
        "shape": [int(s) for s in arr.shape],
        "dtype": str(arr.dtype),
        "chunks": [int(c) for c in _write_chunks(arr)],
        "scale": dict(zip(ms.axes, lv0.scale, strict=True)),
        "units": dict(zip(ms.axes, ms.units, strict=True)),
        "translation": dict(zip(ms.axes, lv0.translation, strict=True)),
        "levels": [
            {
                "path": lv.path,
                "shape": [int(s) for s in lv.array.shape],
                "chunks": [int(c) for c in _write_chunks(lv.array)],
                "scale": dict(zip(ms.axes, lv.scale, strict=True)),
            }
            for lv in ms.levels
        ],
        "channels": list(ms.channels) if ms.channels is not None else None,
        "labels": list(ms.labels),
        "compressors": [_codec_text(c) for c in (arr.compressors or ())],
        "nbytes": int(arr.nbytes),
        "stored_bytes": _stored_bytes(ms.path),
        "vstain": dict(ms.vstain),
        "incomplete": incomplete_reason(ms.vstain),
        "warnings": notes,
    }


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def _fmt_num(v: float) -> str:
    return f"{v:g}"


def format_info(info: Mapping[str, Any]) -> str:
    """Human-readable multi-line text for a :func:`volume_info` dict."""
    axes = info["axes"]

    def dims(values: Sequence[int]) -> str:
        return " x ".join(str(v) for v in values)

    version = info["ngff_version"]
    fmt = (
        f"OME-Zarr {version} (zarr v{info['zarr_format']})"
        if version
        else f"plain zarr v{info['zarr_format']} array (no OME-Zarr metadata)"
    )
    voxel = ", ".join(
        f"{a} {_fmt_num(info['scale'][a])}{' ' + info['units'][a] if info['units'][a] else ''}"
        for a in axes
        if a != "c"
    )
    origin = ", ".join(f"{a} {_fmt_num(info['translation'][a])}" for a in axes if a != "c")
    lines = [
        *([f"INCOMPLETE:  {info['incomplete']}"] if info.get("incomplete") else []),
        f"path:        {info['path']}",
        f"format:      {fmt}",
        f"kind:        {info['kind']}",
        f"axes:        {', '.join(axes)}",
        f"shape:       {dims(info['shape'])}",
        f"dtype:       {info['dtype']}",
        f"chunks:      {dims(info['chunks'])}",
        f"voxel size:  {voxel}",
        f"origin:      {origin}",
        f"size:        {_human_bytes(info['nbytes'])} uncompressed, "
        f"{_human_bytes(info['stored_bytes'])} on disk",
        f"compression: {', '.join(info['compressors']) or 'none'}",
        f"levels:      {len(info['levels'])}",
    ]
    for i, lv in enumerate(info["levels"]):
        scale = ", ".join(_fmt_num(lv["scale"][a]) for a in axes if a != "c")
        lines.append(f"  {i}  {dims(lv['shape']):<22} voxel {scale}")
    if info.get("channels"):
        lines.append(f"channels:    {', '.join(info['channels'])}")
    if info.get("labels"):
        lines.append(f"labels:      {', '.join(info['labels'])}")
    if info.get("vstain"):
        lines.append("provenance:")
        for key, value in info["vstain"].items():
            text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
            lines.append(f"  {key}: {text}")
    for note in info.get("warnings") or ():
        lines.append(f"warning:     {note}")
    return "\n".join(lines)


# ============================================================================================
# import


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
) -> tuple[_io_sources.OpenedSource, bool]:
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
            cz = _io_sources._clip_chunks(
                tuple(data.shape[vol.dims.index(d)] for d in spatial),
                chunks,
                DEFAULT_CHUNK_3D,
                DEFAULT_CHUNK_2D,
            )
            it = iter(cz)
            full = tuple(data.shape[0] if d == "c" else next(it) for d in vol.dims)
            return (
                _io_sources.OpenedSource(
                    data=_align(data, full),
                    axes="".join(vol.dims),
                    description=f"zarr {src.name}",
                    spatial_chunks=cz,
                ),
                False,
            )
        return _io_sources.open_tiff_folder(src, **opts), False
    suffix = src.suffix.lower()
    if suffix in _io_sources.TIFF_SUFFIXES:
        return _io_sources.open_tiff(src, **opts), False
    if suffix in _io_sources.NPY_SUFFIXES:
        return _io_sources.open_npy(src, **opts), False
    if suffix in _io_sources.IMAGE_SUFFIXES:
        return _io_sources.open_image(src, **opts), False
    return _io_sources.open_raw(src, shape=shape, dtype=dtype, **opts), True


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
