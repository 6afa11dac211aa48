"""Names shared by the readers and writers: versions, kinds, units, chunk defaults."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path


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
