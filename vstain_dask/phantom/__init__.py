"""Synthetic bone-implant phantoms: 3D µCT volumes with tissue maps, and CT/histology pairs.

The phantom is the data this package ships: a procedural model of the paper's samples (a
threaded Mg, Ti or PEEK screw in rat bone, scanned by µCT, sectioned and stained with toluidine
blue). Every value is a pure function of global coordinates and a seed, so volumes of any size
stream chunk by chunk with identical bytes for any chunking.
"""

from __future__ import annotations

from vstain_dask.phantom._anatomy import Tissue
from vstain_dask.phantom._volume import GENERATOR_VERSION, phantom_volume, write_phantom

__all__ = ["Tissue", "GENERATOR_VERSION", "phantom_volume", "write_phantom"]
