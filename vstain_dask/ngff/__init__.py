"""OME-Zarr volumes: read NGFF 0.4 and 0.5, write pyramids, inspect and import.

Volumes are OME-Zarr images with axes ``(z, y, x)``, ``(c, z, y, x)``, ``(y, x)`` or
``(c, y, x)``. Reading gives a dask-backed :class:`xarray.DataArray` whose coordinates are
physical positions (``index * scale + translation``, in the axis unit, usually µm). Writing
streams a dask array chunk by chunk into NGFF 0.5 (zarr v3, the default) or NGFF 0.4 (zarr v2),
then fills a 3D pyramid (factor 2 along z, y and x; the channel axis is never downsampled) with
one task per output chunk that reads the chunks above it from the store, so memory stays
bounded by a few chunks per worker whatever the volume size.

NGFF specification: https://ngff.openmicroscopy.org/0.5/ and /0.4/.

Where each concern lives:

- :mod:`._common`: versions, kinds, units, chunk defaults;
- :mod:`._read`: opening stores and levels, completeness, provenance, content identity;
- :mod:`._create`: the validated specification of a new volume, its metadata, empty arrays;
- :mod:`._pyramid`: pyramid levels, one task per output chunk;
- :mod:`._write`: whole volumes and NGFF labels;
- :mod:`._info`: ``vstain-dask info``;
- :mod:`._import`, :mod:`._sources`: TIFF stacks, raw, npy and images into OME-Zarr.
"""

from vstain_dask.ngff._common import (
    DEFAULT_CHUNK_2D,
    DEFAULT_CHUNK_3D,
    MIN_LEVEL_SIZE,
    SPACE_UNITS,
    Display,
    LabelTable,
    MissingScaleWarning,
    NgffVersion,
    VolumeKind,
)
from vstain_dask.ngff._create import check_output, create_volume
from vstain_dask.ngff._import import import_volume
from vstain_dask.ngff._info import format_info, volume_info
from vstain_dask.ngff._pyramid import write_pyramid
from vstain_dask.ngff._read import (
    chunk_file,
    content_identity,
    incomplete_reason,
    level_array,
    missing_chunks,
    open_levels,
    open_volume,
    update_provenance,
)
from vstain_dask.ngff._write import write_labels, write_volume

__all__ = [
    "DEFAULT_CHUNK_2D",
    "DEFAULT_CHUNK_3D",
    "MIN_LEVEL_SIZE",
    "SPACE_UNITS",
    "Display",
    "LabelTable",
    "MissingScaleWarning",
    "NgffVersion",
    "VolumeKind",
    "check_output",
    "chunk_file",
    "content_identity",
    "create_volume",
    "format_info",
    "import_volume",
    "incomplete_reason",
    "level_array",
    "missing_chunks",
    "open_levels",
    "open_volume",
    "update_provenance",
    "volume_info",
    "write_labels",
    "write_pyramid",
    "write_volume",
]
