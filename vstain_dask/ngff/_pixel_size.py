"""The physical pixel size an input file states, and how it meets the one a user gives.

Files state sizes in many ways (OME ``PhysicalSize*`` with units, TIFF resolution tags in pixels
per inch or centimetre, Aperio's ``MPP``, ImageJ's unit and spacing, a zarr store's scale); the
readers turn each into a :class:`FoundSize` in micrometres, and :func:`resolve_voxel_size`
decides the voxel size of the output, or refuses when the user and the file disagree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vstain_dask.errors import InputError

#: micrometres in one NGFF space unit
UM_PER_UNIT: dict[str, float] = {
    "yoctometer": 1e-18,
    "zeptometer": 1e-15,
    "attometer": 1e-12,
    "femtometer": 1e-9,
    "picometer": 1e-6,
    "angstrom": 1e-4,
    "nanometer": 1e-3,
    "micrometer": 1.0,
    "millimeter": 1e3,
    "centimeter": 1e4,
    "inch": 25_400.0,
    "decimeter": 1e5,
    "foot": 304_800.0,
    "yard": 914_400.0,
    "meter": 1e6,
    "hectometer": 1e8,
    "kilometer": 1e9,
    "mile": 1_609_344_000.0,
    "megameter": 1e12,
    "gigameter": 1e15,
    "terameter": 1e18,
    "petameter": 1e21,
    "exameter": 1e24,
    "parsec": 3.0856775814913673e22,
    "zettameter": 1e27,
    "yottameter": 1e30,
}

# length units as OME (UnitsLength symbols) and ImageJ write them
_UNIT_SYMBOLS = {
    "pm": "picometer",
    "å": "angstrom",
    "angstrom": "angstrom",
    "nm": "nanometer",
    "µm": "micrometer",
    "μm": "micrometer",
    "um": "micrometer",
    "micron": "micrometer",
    "microns": "micrometer",
    "micrometer": "micrometer",
    "\\u00b5m": "micrometer",  # how ImageJ escapes µ in its description
    "mm": "millimeter",
    "cm": "centimeter",
    "m": "meter",
    "in": "inch",
    "inch": "inch",
}

# 72 and 96 pixels per inch are the screen defaults that writers put in when they know no
# physical size; 1 pixel per unit is tifffile's placeholder. None is a plausible CT or slide
# pixel, so they are read as "no size" rather than as 353 µm pixels. PNG and JPEG store whole
# pixels per metre or per centimetre, which can only come near them (2835 per metre is
# 72.009 dpi, 28 per centimetre 71.12 dpi), hence the tolerance for those.
_PLACEHOLDER_PPI = (72.0, 96.0)
_PLACEHOLDER_TOLERANCE = 0.02

#: the coarsest pixel (µm, 25.4 dpi) a PNG or JPEG may state: no microscope image has pixels
#: of a millimetre, so such a value is a writer's default, not a size to image by
MAX_IMAGE_PIXEL_UM = 1000.0

_NAMES = {3: "Z,Y,X", 2: "Y,X"}


@dataclass(frozen=True)
class FoundSize:
    """A pixel size stated by an input file.

    Attributes
    ----------
    sizes : µm per spatial axis the file states, keyed by axis name (``"y"``, ``"x"``, and
        ``"z"`` when the file gives a slice spacing)
    source : where it was read, for messages and provenance (``"the OME metadata"``)
    ignored : why the values are not taken as a pixel size, or None; :func:`resolve_voxel_size`
        then treats the file as stating none and says why
    """

    sizes: Mapping[str, float]
    source: str
    #: why the file's ``sizes`` are not a pixel size (a screen default, an aspect ratio), for
    #: messages; None when they are one
    ignored: str | None = None


def um_per(unit: str) -> float | None:
    """Micrometres in one ``unit`` (an OME or ImageJ symbol, or an NGFF name); None if unknown."""
    key = str(unit).strip().lower()
    name = _UNIT_SYMBOLS.get(key, key)
    return UM_PER_UNIT.get(name)


def found(sizes: Mapping[str, float], source: str) -> FoundSize | None:
    """A :class:`FoundSize`, or None unless y and x are given as finite positive numbers."""
    clean = {a: float(v) for a, v in sizes.items() if v is not None}
    if not {"y", "x"} <= clean.keys():
        return None
    if not all(math.isfinite(v) and v > 0 for v in clean.values()):
        return None
    return FoundSize(sizes=clean, source=source)


def _screen_default(size_um: float) -> float | None:
    """72 or 96 when ``size_um`` is the pixel of that many pixels per inch (within 2 %)."""
    for ppi in _PLACEHOLDER_PPI:
        if abs(size_um * ppi / UM_PER_UNIT["inch"] - 1) <= _PLACEHOLDER_TOLERANCE:
            return ppi
    return None


def resolution_size(pixels_per_unit: float, unit_um: float) -> float | None:
    """Pixel size in µm from a resolution in pixels per unit; None for placeholder values."""
    if not (math.isfinite(pixels_per_unit) and pixels_per_unit > 0) or pixels_per_unit == 1:
        return None
    if unit_um == UM_PER_UNIT["inch"] and pixels_per_unit in _PLACEHOLDER_PPI:
        return None
    return unit_um / pixels_per_unit


def image_resolution(x_per_unit: Any, y_per_unit: Any, unit: str, source: str) -> FoundSize | None:
    """What a PNG or JPEG resolution field states, in pixels per ``unit`` along x and y.

    Returns None for values that are not positive numbers; a :class:`FoundSize` whose
    ``ignored`` says why for a screen default (72 or 96 dpi, within 2 %) or a pixel coarser
    than :data:`MAX_IMAGE_PIXEL_UM`; else the size.

    Parameters
    ----------
    x_per_unit, y_per_unit : pixels per ``unit`` along the columns and the rows
    unit : ``"meter"``, ``"centimeter"`` or ``"inch"``
    source : the field, for messages (``"the PNG pHYs chunk"``)
    """
    try:
        per = (float(x_per_unit), float(y_per_unit))
    except (TypeError, ValueError, ZeroDivisionError):  # Pillow's rationals may be 0/0
        return None
    if not all(math.isfinite(v) and v > 0 for v in per):
        return None
    x, y = (UM_PER_UNIT[unit] / v for v in per)
    said = f"{source} says {_fmt(per, f'pixels per {unit}')}"
    source = f"{source} (pixels per {unit})"
    defaults = {_screen_default(x), _screen_default(y)}
    if len(defaults) == 1 and None not in defaults:
        dpi = "" if unit == "inch" else f", {defaults.pop():g} dpi"
        why = f"{said}{dpi}: a screen default, not a pixel size"
    elif max(x, y) > MAX_IMAGE_PIXEL_UM:
        why = (
            f"{said}, {max(x, y):.4g} µm per pixel: coarser than {MAX_IMAGE_PIXEL_UM:g} µm, "
            "no microscope's pixel"
        )
    else:
        why = None
    return FoundSize(sizes={"y": y, "x": x}, source=source, ignored=why)


def aspect_only(x: Any, y: Any, source: str) -> FoundSize:
    """A resolution field without a unit: an aspect ratio, which states no pixel size."""
    return FoundSize(
        sizes={}, source=source, ignored=f"{source} gives only an aspect ratio, {x}:{y}"
    )


def first_stated(candidates: Sequence[FoundSize | None]) -> FoundSize | None:
    """The first size that is one; else the first one ignored (to say why); else None."""
    present = [c for c in candidates if c is not None]
    usable = [c for c in present if c.ignored is None]
    return (usable or present or [None])[0]


_SYMBOLS = {"micrometer": "µm", "nanometer": "nm", "millimeter": "mm"}


def _fmt(values: tuple[float, ...], unit: str) -> str:
    unit = _SYMBOLS.get(unit, unit)
    if len(set(values)) == 1:
        return f"{values[0]:g} {unit}"
    return ",".join(f"{v:g}" for v in values) + f" {unit}"


def describe(voxel: tuple[float, ...], unit: str, source: str) -> str:
    """``"pixel size 0.5 micrometer from the OME metadata"``, for the command's output."""
    word = "voxel size" if len(voxel) == 3 else "pixel size"
    return f"{word} {_fmt(voxel, unit)} from {source}"


@dataclass(frozen=True)
class SizeOptionNames:
    """How a command's messages about a pixel size name its options.

    The defaults are the ``import`` command's; a command that reads a file through
    :func:`~vstain_dask.ngff.import_volume` under options of its own passes its names, so its
    refusals tell a user what to type in that command.

    Attributes
    ----------
    size : the option that gives the size (``"--voxel-size"``)
    value : what the option takes, when one size is asked for; ``{axes}`` becomes the spatial
        axes (``"Z,Y,X"``)
    every_axis : what the option takes, when the size of every axis is asked for; ``{axes}``
        as in ``value``
    override : the option that uses the given size over the file's, or None when the command
        has none (then ``instead`` says what to do)
    instead : what to do to use the given size over the file's, without ``override``
    """

    size: str = "--voxel-size"
    value: str = "one number or {axes}, in --unit, micrometer by default; voxel_size= in Python"
    every_axis: str = "{axes}"
    override: str | None = "--voxel-size-override"
    instead: str = ""

    def use_yours(self) -> str:
        """How to use the given size over the file's: ``"add --voxel-size-override to use yours"``."""
        if self.override is None:
            return self.instead
        return f"add {self.override} to use yours"


IMPORT_OPTIONS = SizeOptionNames()


def _as_tuple(voxel_size: Any, n_spatial: int) -> tuple[float, ...]:
    names = _NAMES[n_spatial]
    if isinstance(voxel_size, int | float) and not isinstance(voxel_size, bool):
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


def resolve_voxel_size(
    given: Any,
    *,
    unit: str,
    file_size: FoundSize | None,
    axes: str,
    src: Path,
    override: bool = False,
    options: SizeOptionNames = IMPORT_OPTIONS,
) -> tuple[tuple[float, ...], str]:
    """The output voxel size in ``unit`` and where it came from.

    The file's size is used when nothing is given; a given size is checked against the file's
    (more than 1 % apart on any axis is refused unless ``override``); axes the file does not
    state (a slice spacing, say) must be given.

    Parameters
    ----------
    given : None, one number, or one per spatial axis, in ``unit``
    unit : NGFF space unit of ``given`` and of the result
    file_size : what the file states, or None
    axes : spatial axes of the output, ``"zyx"`` or ``"yx"``
    src : the input, for messages
    override : use ``given`` even where the file says otherwise
    options : how the messages name the options (the import command's by default)

    Returns
    -------
    (sizes per spatial axis in ``unit``, a phrase naming the source)
    """
    n = len(axes)
    per_um = UM_PER_UNIT[unit]
    o = options
    if override and given is None:
        raise InputError(f"{o.override} (voxel_size_override=True) needs {o.size}")
    why = f" ({file_size.ignored})" if file_size is not None and file_size.ignored else ""
    if why:
        file_size = None
    if given is not None:
        values = _as_tuple(given, n)
        if file_size is None or override:
            return (
                values,
                f"the command line{why}" if file_size is None else "the command line (forced)",
            )
        for axis, value in zip(axes, values, strict=True):
            stated = file_size.sizes.get(axis)
            if stated is not None and abs(value * per_um - stated) > 0.01 * stated:
                shown = tuple(file_size.sizes[a] / per_um for a in axes if a in file_size.sizes)
                raise InputError(
                    f"{o.size} {_fmt(values, unit)} was given but {src.name} says "
                    f"{_fmt(shown, unit)} ({file_size.source}); drop {o.size} to use the "
                    f"file's, or {o.use_yours()}"
                )
        return values, f"the command line (agrees with {file_size.source})"
    return _files_size(file_size, axes=axes, unit=unit, src=src, why=why, options=o)


def _files_size(
    file_size: FoundSize | None,
    *,
    axes: str,
    unit: str,
    src: Path,
    why: str,
    options: SizeOptionNames,
) -> tuple[tuple[float, ...], str]:
    """The file's size in ``unit`` on every axis of ``axes``, when none is given; else the
    refusal that names ``options`` (``why`` says why a size the file has was not taken)."""
    names = _NAMES[len(axes)]
    if file_size is None:
        raise InputError(
            f"{src.name} states no pixel size{why}; give it with {options.size} "
            f"({options.value.format(axes=names)})"
        )
    missing = [a for a in axes if a not in file_size.sizes]
    if missing:
        have = ",".join(a.upper() for a in axes if a in file_size.sizes)
        raise InputError(
            f"{src.name} gives the {have} pixel size ({file_size.source}) but no "
            f"{','.join(a.upper() for a in missing)} spacing; give all with {options.size} "
            f"({options.every_axis.format(axes=names)})"
        )
    return tuple(file_size.sizes[a] / UM_PER_UNIT[unit] for a in axes), file_size.source
