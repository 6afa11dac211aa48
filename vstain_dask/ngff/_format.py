"""What differs between the NGFF versions written, in one place per version.

NGFF 0.4 stores are zarr v2: the metadata sits at the top of the group's attributes, and each
``multiscales``/``image-label`` entry carries its own ``version``; arrays use ``/`` as the chunk
key separator and Blosc compression. NGFF 0.5 stores are zarr v3: the metadata sits under
``attributes["ome"]`` with one ``version`` there; arrays name their dimensions and use the zstd
codec. Readers accept both (:func:`ome_metadata`); writers ask :func:`format_for` and never test a
version themselves.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from vstain_dask.ngff._common import _ZSTD_LEVEL, NgffVersion


class Format:
    """How one NGFF version lays out what vstain-dask writes."""

    version: NgffVersion
    zarr_format: int

    def group_attrs(self, ome: Mapping[str, Any]) -> dict[str, Any]:
        """A group's attributes for its OME metadata (``multiscales``, ``labels``, ...)."""
        raise NotImplementedError

    def entry(self, meta: Mapping[str, Any]) -> dict[str, Any]:
        """A ``multiscales`` or ``image-label`` entry, with the version where it belongs."""
        raise NotImplementedError

    def array_options(self, axes: tuple[str, ...], dtype: np.dtype) -> dict[str, Any]:
        """Keyword arguments of ``zarr.Group.create_array`` for one level."""
        raise NotImplementedError


class FormatV04(Format):
    version = NgffVersion.V04
    zarr_format = 2

    def group_attrs(self, ome):
        return dict(ome)

    def entry(self, meta):
        return {"version": self.version.value, **meta}

    def array_options(self, axes, dtype):
        from numcodecs import Blosc

        shuffle = Blosc.SHUFFLE if np.dtype(dtype).itemsize > 1 else Blosc.NOSHUFFLE
        return {
            "compressors": Blosc(cname="zstd", clevel=_ZSTD_LEVEL, shuffle=shuffle),
            # NGFF 0.4 asks for "/" as the chunk key separator of zarr v2 arrays
            "chunk_key_encoding": {"name": "v2", "separator": "/"},
        }


class FormatV05(Format):
    version = NgffVersion.V05
    zarr_format = 3

    def group_attrs(self, ome):
        return {"ome": {"version": self.version.value, **ome}}

    def entry(self, meta):
        return dict(meta)

    def array_options(self, axes, dtype):
        from zarr.codecs import ZstdCodec

        return {"compressors": (ZstdCodec(level=_ZSTD_LEVEL),), "dimension_names": axes}


_FORMATS: dict[NgffVersion, Format] = {f.version: f for f in (FormatV04(), FormatV05())}


def format_for(version: NgffVersion | str) -> Format:
    """The format of an NGFF version (``"0.4"`` or ``"0.5"``)."""
    return _FORMATS[NgffVersion(version)]


def format_of_store(zarr_format: int) -> Format:
    """The format to add to a store of this zarr format with (labels beside an image)."""
    return next(f for f in _FORMATS.values() if f.zarr_format == zarr_format)


def ome_metadata(attrs: Mapping[str, Any]) -> Mapping[str, Any]:
    """A group's OME metadata, whichever version wrote it."""
    ome = attrs.get("ome")
    return ome if isinstance(ome, Mapping) else attrs
