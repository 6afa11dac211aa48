"""A toy pairs store with a trivially learnable stain, for tests of the training code.

CT slices are smooth random blobs of "bone" (30000) on "background" (10000) with a little
noise; the histology paints bone purple and background white, pixel for pixel, so a network can
learn the mapping in a few steps. The paper's normalization is recorded as the identity (levels
30000/10000; histology gains 1, stretch 0-255), so what the stream delivers is known exactly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["write_toy_pairs", "toy_plane", "IDENTITY_NORMALIZATION", "BONE_RGB", "BACKGROUND_RGB"]

#: a recorded normalization that changes nothing
IDENTITY_NORMALIZATION: dict[str, Any] = {
    "ct_levels": {"bone": 30000.0, "background": 10000.0, "source": "manual"},
    "histology": {"gains": [1.0, 1.0, 1.0], "lower": 0.0, "upper": 255.0},
}
BONE_RGB = (150, 70, 170)
BACKGROUND_RGB = (245, 245, 245)


def toy_plane(
    rng: np.random.Generator, size: tuple[int, int] = (64, 64)
) -> tuple[np.ndarray, np.ndarray]:
    """One toy CT slice and where its bone is: ``(ct, bone)``, (H, W) uint16 and bool.

    A smoothed random field cut at its median: about half the pixels are bone (30000), the
    rest background (10000), both with noise of standard deviation 300.
    """
    from scipy import ndimage as ndi

    field = ndi.gaussian_filter(rng.normal(size=size), max(2.0, min(size) / 10))
    bone = field > np.median(field)
    ct = np.where(bone, 30000.0, 10000.0) + rng.normal(0, 300, size)
    return np.clip(np.rint(ct), 0, 65535).astype(np.uint16), bone


def write_toy_pairs(
    path: str | os.PathLike,
    *,
    n: int = 2,
    size: tuple[int, int] = (64, 64),
    seed: int = 0,
    materials: tuple[str, ...] = ("mg", "ti", "peek"),
    chunks: tuple[int, int] | None = None,
) -> Path:
    """Write ``n`` toy pairs (ids ``toy00``, ...; one sample each) and return the store path.

    ``chunks`` rewrites the arrays with these (Y, X) chunks (the store's default is one chunk
    per 512 x 512 pixels).
    """
    from vstain_dask.pairs import write_pair

    path = Path(path)
    rng = np.random.default_rng(seed)
    for i in range(n):
        ct, bone = toy_plane(rng, size)
        hist = np.where(bone[..., None], np.array(BONE_RGB), np.array(BACKGROUND_RGB))
        hist = hist.astype(np.uint8)
        write_pair(
            path,
            f"toy{i:02d}",
            ct=ct,
            histology=hist,
            mask=np.ones(size, bool),
            material=materials[i % len(materials)],
            sample=f"s{i:02d}",
            voxel_size=5.0,
            attrs={"normalization": IDENTITY_NORMALIZATION},
        )
        if chunks is not None:
            _rechunk(path / f"toy{i:02d}", chunks)
    return path


def _rechunk(group_path: Path, chunks: tuple[int, int]) -> None:
    import zarr

    g = zarr.open_group(str(group_path), mode="a")
    for name in ("ct", "histology", "mask"):
        data = g[name][...]
        del g[name]
        ch = chunks if data.ndim == 2 else (*chunks, data.shape[2])
        g.create_array(name, data=data, chunks=ch)
