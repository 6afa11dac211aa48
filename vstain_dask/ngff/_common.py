"""Names shared by the readers and writers: versions, kinds, units, chunk defaults."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from vstain_dask.errors import InputError


class NgffVersion(StrEnum):
    """OME-Zarr (NGFF) versions that can be written."""

    V04 = "0.4"  # zarr v2 stores
    V05 = "0.5"  # zarr v3 stores, metadata under attributes["ome"]


class VolumeKind(StrEnum):
    """What the values of a volume are; decides the pyramid method and channel metadata."""

    INTENSITY = "intensity"  # CT values and the like; pyramid by mean
    LABELS = "labels"  # integer labels; pyramid by nearest (stride)
    RGB = "rgb"  # uint8 R,G,B(,A) on the c axis; pyramid by mean, omero colours


def _pyramid_method(kind: VolumeKind) -> str:
    """How each pyramid level is made from the level above: ``"nearest"`` (every second
    voxel) for labels, ``"mean"`` (2x2x2 means) otherwise."""
    return "nearest" if kind is VolumeKind.LABELS else "mean"


def _level_offset(method: str, factor: int, level: int) -> float:
    """Where voxel 0 of a pyramid level sits, in voxels of level 0 from level-0 voxel 0.

    Level ``l`` voxel ``i`` comes from level-0 voxels ``i * factor**l`` to
    ``(i + 1) * factor**l - 1``: ``"nearest"`` keeps the first of them (offset 0), ``"mean"``
    averages them all, so its value belongs at their centre, ``(factor**l - 1) / 2`` voxels in
    (half a voxel of the finer level per step).
    """
    return 0.0 if method == "nearest" else (factor**level - 1) / 2


@dataclass(frozen=True, init=False)
class LabelTable:
    """Names and display colours of the values of a label image (NGFF ``image-label``).

    Written as ``colors`` (``{"label-value": 3, "rgba": [r, g, b, a]}``) and ``properties``
    (``{"label-value": 3, key: name}``), which napari shows as a named column and the given
    colours. A value missing from the table is drawn as the viewer chooses.

    Parameters
    ----------
    key : the property that names a class, e.g. ``"tissue"``
    classes : ``{label value: (name, (r, g, b, a))}``, colour components 0..255

    Examples
    --------
    >>> LabelTable("tissue", {0: ("air", (0, 0, 0, 0)), 1: ("bone", (255, 255, 240, 255))})
    LabelTable(key='tissue', classes=((0, 'air', (0, 0, 0, 0)), (1, 'bone', (255, 255, 240, 255))))
    """

    key: str
    #: ((value, name, (r, g, b, a)), ...) in increasing value
    classes: tuple[tuple[int, str, tuple[int, int, int, int]], ...]

    def __init__(self, key: str, classes: Mapping[int, tuple[str, Sequence[int]]]) -> None:
        if not isinstance(key, str) or not key or key == "label-value":
            raise InputError(f"key must be a property name such as 'tissue', got {key!r}")
        if not isinstance(classes, Mapping) or not classes:
            raise InputError(
                f"classes must be a non-empty dict {{value: (name, (r, g, b, a))}}, got {classes!r}"
            )
        rows = []
        for value, entry in classes.items():
            if not isinstance(value, int | np.integer) or isinstance(value, bool):
                raise InputError(f"label values must be integers, got {value!r}")
            try:
                name, rgba = entry
                rgba = tuple(rgba)
            except (TypeError, ValueError) as e:
                raise InputError(
                    f"class {value} must be (name, (r, g, b, a)), got {entry!r}"
                ) from e
            if not isinstance(name, str) or not name:
                raise InputError(f"class {value} needs a name, got {name!r}")
            if len(rgba) != 4 or not all(
                isinstance(c, int | np.integer) and not isinstance(c, bool) and 0 <= c <= 255
                for c in rgba
            ):
                raise InputError(
                    f"class {value} ({name}) needs a colour of 4 integers 0..255 (r, g, b, a), "
                    f"got {rgba}"
                )
            rows.append((int(value), name, tuple(int(c) for c in rgba)))
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "classes", tuple(sorted(rows)))

    @classmethod
    def mask(cls, key: str, *, rgba: Sequence[int] = (255, 200, 0, 128)) -> LabelTable:
        """A binary mask: 0 ``"outside"`` (transparent), 1 named ``key`` in ``rgba``."""
        return cls(key, {0: ("outside", (0, 0, 0, 0)), 1: (key, rgba)})

    def check_dtype(self, dtype: np.dtype) -> None:
        """Raise InputError if a label value cannot be stored in ``dtype``."""
        info = np.iinfo(dtype)
        outside = [v for v, _, _ in self.classes if not info.min <= v <= info.max]
        if outside:
            raise InputError(
                f"label values {outside} do not fit the labels' dtype {np.dtype(dtype)} "
                f"({info.min}..{info.max})"
            )

    def image_label(self) -> dict[str, list[dict[str, Any]]]:
        """The ``colors`` and ``properties`` of an NGFF ``image-label``."""
        return {
            "colors": [{"label-value": v, "rgba": list(rgba)} for v, _, rgba in self.classes],
            "properties": [{"label-value": v, self.key: name} for v, name, _ in self.classes],
        }


_HEX_COLOUR = re.compile(r"[0-9A-Fa-f]{6}")


@dataclass(frozen=True)
class Display:
    """How a viewer first shows an intensity image: the NGFF ``omero`` window and colour.

    Parameters
    ----------
    start, end : the window shown, in image values: ``start`` and below black, ``end`` and
        above full colour
    min, max : the range a viewer's contrast slider spans; None: the dtype's range for
        integer images, else ``start``..``end``
    color : display colour, 6 hex digits RGB (``"FFFFFF"``, grey)
    """

    start: float
    end: float
    min: float | None = None
    max: float | None = None
    color: str = "FFFFFF"

    def __post_init__(self) -> None:
        for name in ("start", "end", "min", "max"):
            v = getattr(self, name)
            if v is None and name in ("min", "max"):
                continue
            if isinstance(v, bool) or not isinstance(v, int | float | np.number):
                raise InputError(f"display {name} must be a number, got {v!r}")
            if not math.isfinite(v):
                raise InputError(f"display {name} must be finite, got {v}")
        if not self.start < self.end:
            raise InputError(f"display start must be below end, got {self.start}..{self.end}")
        if self.min is not None and self.min > self.start:
            raise InputError(f"display min must be at most start {self.start}, got {self.min}")
        if self.max is not None and self.max < self.end:
            raise InputError(f"display max must be at least end {self.end}, got {self.max}")
        if not isinstance(self.color, str) or not _HEX_COLOUR.fullmatch(self.color):
            raise InputError(
                f"display color must be 6 hex digits RGB such as 'FF00FF', got {self.color!r}"
            )
        object.__setattr__(self, "color", self.color.upper())


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
