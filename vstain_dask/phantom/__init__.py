"""Synthetic bone-implant phantoms: 3D µCT volumes with tissue maps, and CT/histology pairs.

The phantom is the data this package ships: a procedural model of the paper's samples (a
threaded Mg, Ti or PEEK screw in rat bone, scanned by µCT, sectioned and stained with toluidine
blue). Every value is a pure function of global coordinates and a seed, so volumes of any size
stream chunk by chunk with identical bytes for any chunking.

- :func:`phantom_volume` / :func:`write_phantom`: lazy (Z, Y, X) CT and :class:`Tissue` labels;
  written as OME-Zarr with NGFF labels ``tissue``.
- :func:`phantom_pair` / :func:`phantom_pairs` / :func:`write_phantom_pairs`: CT slices with
  registered toluidine-blue histology and correspondence masks, in the 7:1:2 Mg:Ti:PEEK mix.
"""

from __future__ import annotations

from vstain_dask.phantom._anatomy import Tissue
from vstain_dask.phantom._pairs import (
    PlaneKind,
    material_mix,
    phantom_pair,
    phantom_pairs,
    write_phantom_pairs,
)
from vstain_dask.phantom._volume import GENERATOR_VERSION, phantom_volume, write_phantom

__all__ = [
    "Tissue",
    "GENERATOR_VERSION",
    "PlaneKind",
    "phantom_volume",
    "write_phantom",
    "phantom_pair",
    "phantom_pairs",
    "write_phantom_pairs",
    "material_mix",
]
