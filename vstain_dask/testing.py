"""Small shared builders of synthetic test data (phantom volumes and pairs stores on disk).

Tests, benchmarks and examples use these so that they all exercise the same data. Shapes are
tiny and chunks deliberately awkward by default.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["small_phantom_store", "small_pairs_store", "small_phantom"]


def small_phantom(
    shape: tuple[int, int, int] = (10, 14, 12),
    *,
    chunks: tuple[int, int, int] = (5, 7, 6),
    material: str = "mg",
    seed: int = 0,
    voxel_size: float = 5.0,
):
    """A tiny lazy phantom: ``(ct, labels)`` dask arrays, see :func:`vstain_dask.phantom.phantom_volume`."""
    from vstain_dask.phantom import phantom_volume

    return phantom_volume(shape, material=material, seed=seed, voxel_size=voxel_size, chunks=chunks)


def small_phantom_store(
    tmp_path: str | os.PathLike,
    *,
    shape: tuple[int, int, int] = (10, 14, 12),
    chunks: tuple[int, int, int] = (5, 7, 6),
    material: str = "mg",
    seed: int = 0,
    voxel_size: float = 5.0,
    ngff_version: str = "0.5",
    name: str = "phantom.ome.zarr",
) -> Path:
    """Write a tiny phantom OME-Zarr image (with labels ``tissue``) under ``tmp_path``.

    Returns
    -------
    pathlib.Path
        The image, ``tmp_path / name``.
    """
    from vstain_dask.phantom import write_phantom

    return write_phantom(
        Path(tmp_path) / name,
        shape=shape,
        material=material,
        seed=seed,
        voxel_size=voxel_size,
        chunks=chunks,
        ngff_version=ngff_version,
    )


def small_pairs_store(
    tmp_path: str | os.PathLike,
    *,
    n: int = 4,
    size: tuple[int, int] = (96, 96),
    seed: int = 0,
    voxel_size: float = 5.0,
    name: str = "pairs.zarr",
) -> Path:
    """Write a tiny pairs store of ``n`` phantom pairs under ``tmp_path``.

    Returns
    -------
    pathlib.Path
        The store, ``tmp_path / name``.
    """
    from vstain_dask.phantom import write_phantom_pairs

    return write_phantom_pairs(
        Path(tmp_path) / name, n=n, seed=seed, size=size, voxel_size=voxel_size
    )
