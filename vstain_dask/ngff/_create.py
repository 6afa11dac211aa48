"""Writing, part one: a validated specification of a volume, its metadata, and its empty
arrays."""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from vstain_dask._validate import keyword_bundles
from vstain_dask.errors import InputError, OutputExistsError, as_enum
from vstain_dask.ngff._common import (
    _RGB_COLORS,
    _RGB_NAMES,
    _UNIT_ALIASES,
    DEFAULT_CHUNK_2D,
    DEFAULT_CHUNK_3D,
    MIN_LEVEL_SIZE,
    SPACE_UNITS,
    SUPPORTED_AXES,
    Display,
    LabelTable,
    NgffVersion,
    VolumeKind,
    _is_zarr_dir,
    _level_offset,
    _pyramid_method,
)
from vstain_dask.ngff._format import Format, format_for


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
    #: names and colours of label values (labels only)
    label_table: LabelTable | None = None
    #: the omero window and colour of an intensity image
    display: Display | None = None

    @property
    def format(self) -> Format:
        return format_for(self.version)

    @property
    def factors(self) -> tuple[int, ...]:
        return tuple(1 if a == "c" else 2 for a in self.axes)

    def level_shape(self, level: int) -> tuple[int, ...]:
        return tuple(math.ceil(s / f**level) for s, f in zip(self.shape, self.factors, strict=True))

    def level_chunks(self, level: int) -> tuple[int, ...]:
        return tuple(min(c, s) for c, s in zip(self.chunks, self.level_shape(level), strict=True))

    def level_scale(self, level: int) -> tuple[float, ...]:
        return tuple(s * f**level for s, f in zip(self.scale, self.factors, strict=True))

    @property
    def method(self) -> str:
        return _pyramid_method(self.kind)

    def level_translation(self, level: int) -> tuple[float, ...]:
        # physical position of a level's voxel 0: where the level-0 voxels it comes from sit
        return tuple(
            t + _level_offset(self.method, f, level) * s
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


@dataclass(frozen=True)
class _VolumeOptions:
    """The keyword options of :func:`create_volume` and :func:`write_volume` as given, before
    :func:`_build_spec` checks them (see :func:`create_volume` for each)."""

    axes: Any = "zyx"
    scale: Any = None
    units: Any = None
    translation: Any = None
    ngff_version: Any = "0.5"
    n_levels: Any = None
    kind: Any = "intensity"
    channel_names: Any = None
    attrs: Any = None
    display: Display | None = None


def _parse_shape(shape: Any, axes: tuple[str, ...]) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in shape)
    except (TypeError, ValueError) as e:
        raise InputError(f"shape must be a tuple of positive integers, got {shape!r}") from e
    if len(shape) != len(axes) or any(s <= 0 for s in shape):
        raise InputError(
            f"shape must be {len(axes)} positive integers for axes {''.join(axes)}, got {shape}"
        )
    return shape


def _parse_dtype(dtype: Any) -> np.dtype:
    """A numeric dtype in native byte order."""
    try:
        dt = np.dtype(dtype)
    except TypeError as e:
        raise InputError(f"dtype must be a numeric type such as uint16, got {dtype!r}") from e
    if dt.kind not in "biuf":
        raise InputError(f"dtype must be bool, integer or float, got {dt}")
    return dt.newbyteorder("=") if dt.byteorder not in ("|", "=") else dt


def _check_option_kind(
    name: str, value: Any, cls: type, kind: VolumeKind, wanted: VolumeKind
) -> None:
    """``value`` (an option only a volume of kind ``wanted`` takes) is None or a ``cls``."""
    if value is not None:
        if kind is not wanted:
            raise InputError(f"{name} is for kind {wanted.value}, got kind {kind.value}")
        if not isinstance(value, cls):
            raise InputError(f"{name} must be a {cls.__name__}, got {type(value).__name__}")


def _check_kind(
    kind: VolumeKind,
    axes: tuple[str, ...],
    shape: tuple[int, ...],
    dt: np.dtype,
    label_table: LabelTable | None,
    display: Display | None,
) -> None:
    """What each kind asks of the axes, the dtype and the kind-specific options."""
    ci = axes.index("c") if "c" in axes else None
    if kind is VolumeKind.RGB:
        if ci is None or shape[ci] not in (3, 4):
            raise InputError(
                f"kind rgb needs a c axis of 3 (R,G,B) or 4 (R,G,B,A) channels, got axes "
                f"{''.join(axes)} and shape {shape}"
            )
        if dt != np.uint8:
            raise InputError(f"kind rgb needs dtype uint8, got {dt}")
    _check_option_kind("label_table", label_table, LabelTable, kind, VolumeKind.LABELS)
    _check_option_kind("display", display, Display, kind, VolumeKind.INTENSITY)
    if kind is VolumeKind.LABELS:
        if dt.kind not in "iu":
            raise InputError(f"kind labels needs an integer dtype, got {dt}")
        if ci is not None:
            raise InputError(f"kind labels takes no c axis, got axes {''.join(axes)}")
        if label_table is not None:
            label_table.check_dtype(dt)


def _channel_names(
    channel_names: Any, kind: VolumeKind, axes: tuple[str, ...], shape: tuple[int, ...]
) -> tuple[str, ...] | None:
    """The labels of the c channels: those given, else R, G, B(, A) for rgb, else None."""
    ci = axes.index("c") if "c" in axes else None
    if channel_names is not None:
        if ci is None:
            raise InputError(f"channel_names need a c axis, got axes {''.join(axes)}")
        names = tuple(str(n) for n in channel_names)
        if len(names) != shape[ci]:
            raise InputError(f"channel_names must name all {shape[ci]} channels, got {list(names)}")
        return names
    if kind is VolumeKind.RGB:
        return _RGB_NAMES[: shape[ci]]
    return None


def _parse_levels(n_levels: Any, shape: tuple[int, ...], axes: tuple[str, ...]) -> int:
    if n_levels is None:
        return _default_levels(shape, axes)
    if isinstance(n_levels, int | np.integer) and not isinstance(n_levels, bool) and n_levels > 0:
        return int(n_levels)
    raise InputError(f"n_levels must be a positive integer or None, got {n_levels!r}")


def _build_spec(
    path: str | os.PathLike,
    *,
    shape: Any,
    dtype: Any,
    chunks: Any,
    options: _VolumeOptions,
    label_table: LabelTable | None = None,
) -> _VolumeSpec:
    """The checked specification of a volume of ``shape`` and ``dtype`` to write at ``path``."""
    kind = as_enum(VolumeKind, options.kind, "kind")
    version = as_enum(NgffVersion, options.ngff_version, "ngff_version")
    axes = _parse_axes(options.axes)
    shape = _parse_shape(shape, axes)
    dt = _parse_dtype(dtype)
    _check_kind(kind, axes, shape, dt, label_table, options.display)
    names = _channel_names(options.channel_names, kind, axes, shape)
    n = _parse_levels(options.n_levels, shape, axes)
    return _VolumeSpec(
        name=_volume_name(Path(path)),
        axes=axes,
        shape=shape,
        dtype=dt,
        chunks=_parse_chunks(chunks, shape, axes, kind),
        scale=_per_axis(options.scale, axes, "scale", 1.0, positive=True),
        units=_parse_units(options.units, axes),
        translation=_per_axis(options.translation, axes, "translation", 0.0, positive=False),
        version=version,
        n_levels=n,
        kind=kind,
        channel_names=names,
        attrs=_json_attrs(options.attrs),
        label_table=label_table,
        display=options.display,
    )


# ============================================================================================
# writing: metadata and arrays


def _window(spec: _VolumeSpec) -> dict[str, float]:
    """The omero ``window`` of every channel: the display's, else the full value range."""
    if spec.kind is VolumeKind.RGB:
        return {"start": 0, "end": 255, "min": 0, "max": 255}
    integer = spec.dtype.kind in "iub"
    if integer:
        info = np.iinfo(spec.dtype) if spec.dtype.kind != "b" else np.iinfo(np.uint8)
        lo, hi = int(info.min), int(info.max)
    else:
        lo, hi = 0.0, 1.0
    d = spec.display
    if d is None:
        return {"start": lo, "end": hi, "min": lo, "max": hi}
    low = d.min if d.min is not None else (min(lo, d.start) if integer else d.start)
    high = d.max if d.max is not None else (max(hi, d.end) if integer else d.end)
    window = {"start": d.start, "end": d.end, "min": low, "max": high}
    # whole numbers stay integers in the JSON of an integer image
    return {k: int(v) if integer and float(v).is_integer() else float(v) for k, v in window.items()}


def _omero(spec: _VolumeSpec) -> dict | None:
    if spec.kind is VolumeKind.LABELS:
        return None
    if spec.channel_names is not None:
        names = spec.channel_names
    elif spec.display is not None:  # one channel shown for an image without a c axis
        names = (spec.name,)
    else:
        return None
    if spec.kind is VolumeKind.RGB:
        colors = _RGB_COLORS
    else:
        colors = (spec.display.color if spec.display else "FFFFFF",) * len(names)
    window = _window(spec)
    channels = [
        {
            "label": name,
            "color": colors[i],
            # an alpha channel shown as a fourth additive grey layer would wash out the RGB
            "active": not (spec.kind is VolumeKind.RGB and i == 3),
            "coefficient": 1.0,
            "family": "linear",
            "inverted": False,
            "window": dict(window),
        }
        for i, name in enumerate(names)
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
        "type": spec.method,
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
    fmt = spec.format
    ome: dict[str, Any] = {"multiscales": [fmt.entry(multiscale)]}
    omero = _omero(spec)
    if omero is not None:
        ome["omero"] = omero
    if labels:
        table = spec.label_table.image_label() if spec.label_table is not None else {}
        ome["image-label"] = fmt.entry({**table, "source": {"image": "../../"}})
    out = fmt.group_attrs(ome)
    out["vstain"] = spec.attrs
    return out


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
    group = zarr.open_group(store=str(p), mode="w-", zarr_format=spec.format.zarr_format)
    arrays = []
    for level in range(spec.n_levels):
        kwargs: dict[str, Any] = {
            "name": str(level),
            "shape": spec.level_shape(level),
            "chunks": spec.level_chunks(level),
            "dtype": spec.dtype,
            "fill_value": 0,
            **spec.format.array_options(spec.axes, spec.dtype),
        }
        arrays.append(group.create_array(**kwargs))
    group.attrs.update(_group_attrs(spec))
    return arrays


def create_volume(
    path: str | os.PathLike,
    *,
    shape: Sequence[int],
    dtype: Any,
    chunks: Sequence[int] | int | None,
    overwrite: bool = False,
    **options: Any,
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
    axes : ``"zyx"`` (the default), ``"czyx"``, ``"yx"`` or ``"cyx"``
    scale : voxel size per spatial axis, in ``units`` (e.g. µm): a number for isotropic
        voxels, a sequence over the spatial axes, or a dict ``{"z": 5.0, ...}``; None is 1
    units : NGFF space unit (``"micrometer"``; ``"um"`` is accepted) for all spatial axes, or
        per axis; None writes no unit
    translation : physical position of voxel 0 per spatial axis; None is 0
    ngff_version : ``"0.5"`` (zarr v3, the default) or ``"0.4"`` (zarr v2)
    n_levels : pyramid levels; None halves until the largest spatial size of the next level
        would fall below 64 voxels
    kind : ``"intensity"`` (the default; mean pyramid), ``"labels"`` (nearest) or ``"rgb"`` (mean, omero
        channels R, G, B(, A) with colours FF0000, 00FF00, 0000FF, FFFFFF, window 0-255)
    channel_names : labels of the c channels (default R, G, B, A for rgb)
    attrs : JSON-serializable provenance, stored under the ``"vstain"`` attribute
    display : the omero window and colour of an intensity image (e.g. ``Display(0, 255,
        color="FF00FF")``); None writes omero only for images with channel names (full range)
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
    given = keyword_bundles("create_volume", options, _VolumeOptions)[0]
    spec = _build_spec(path, shape=shape, dtype=dtype, chunks=chunks, options=given)
    return _create(path, spec, overwrite)[0]
