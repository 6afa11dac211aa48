"""Small shared builders of synthetic test data (phantom volumes and pairs stores on disk).

Tests, benchmarks and examples use these so that they all exercise the same data. Shapes are
tiny and chunks deliberately awkward by default.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import os
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

__all__ = ["small_phantom_store", "small_pairs_store", "small_phantom", "CTScene", "SceneLabel"]


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


class SceneLabel(enum.IntEnum):
    """Label values of :class:`CTScene` images."""

    AIR = 0  # outside the holder (and inside it when there is no medium)
    HOLDER = 1
    MEDIUM = 2  # around the sample inside the holder: the paper's background
    SOFT = 3
    MARROW = 4
    BONE = 5
    SCREW = 6


@dataclasses.dataclass(frozen=True)
class CTScene:
    """A synthetic CT cross-section of a bone-implant sample in a holder, with known levels.

    Grey values (None: the material is absent): the sample holder's wall is a ring near the
    field's edge (``holder_radius``, in halves of the field); inside it the ``medium`` (None:
    air fills the holder, as in a dry scan); in it the sample: soft tissue around a cortical
    bone ring with ``marrow`` (None: soft tissue) inside, optional ``trabecular`` struts, and
    a central ``screw``. Artefacts: ``rings`` (amplitude over the bone's contrast),
    beam-hardening ``cupping`` (the centre darker by this fraction), ``streaks`` around the
    screw (over the bone's contrast), a Gaussian ``psf`` (pixels) and white ``noise`` (grey
    values). ``slices`` planes along Z, the sample drifting a little between them. ``view``
    is the field's half-size (1: the holder's scale; 0.4: a scan inside the sample). With
    ``bone=None`` the bone ring is soft tissue: a sample without bone.
    """

    size: int = 256
    slices: int = 1
    air: float = 5000.0
    holder: float | None = 9000.0
    holder_radius: float = 0.92
    medium: float | None = None
    soft: float | None = 7000.0
    marrow: float | None = None
    bone: float | None = 20000.0
    trabecular: bool = False
    screw: float | None = None
    noise: float = 800.0
    rings: float = 0.0
    cupping: float = 0.0
    streaks: float = 0.0
    psf: float = 0.0
    dtype: str = "uint16"
    view: float = 1.0
    seed: int = 0

    def build(self) -> tuple[np.ndarray, np.ndarray]:
        """``(ct, labels)``: (Z, Y, X) arrays, or (Y, X) for one slice."""
        rng = np.random.default_rng(self.seed)
        planes = [self._plane(z, rng) for z in range(self.slices)]
        ct = np.stack([p[0] for p in planes])
        labels = np.stack([p[1] for p in planes])
        ct = ct + self.noise * rng.standard_normal(ct.shape)
        if np.dtype(self.dtype).kind in "iu":
            info = np.iinfo(self.dtype)
            ct = np.clip(np.rint(ct), info.min, info.max)
        ct = ct.astype(self.dtype)
        return (ct[0], labels[0]) if self.slices == 1 else (ct, labels)

    def truth(self, ct: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
        """(bone, background): the means of the bone and of the medium as generated."""
        medium = labels == (SceneLabel.MEDIUM if self.holder is not None or self.medium
                            is not None else SceneLabel.AIR)  # fmt: skip
        return float(ct[labels == SceneLabel.BONE].mean()), float(ct[medium].mean())

    def _labels(self, z: int, rng: np.random.Generator):
        n = self.size
        yy, xx = (np.mgrid[:n, :n] + 0.5 - n / 2) / (n / 2) * self.view
        r = np.hypot(yy, xx)
        lab = np.full((n, n), SceneLabel.AIR, np.uint8)
        wall = self.holder_radius
        if self.holder is not None:
            lab[(r >= wall - 0.05) & (r < wall)] = SceneLabel.HOLDER
        if self.holder is not None or self.medium is not None:
            lab[r < wall - 0.05] = SceneLabel.MEDIUM
        drift = 0.03 * math.sin(0.7 * z)
        u, v = yy - 0.04 - drift, xx + 0.03
        c, s = math.cos(0.35), math.sin(0.35)
        u, v = c * u + s * v, -s * u + c * v

        def ellipse(a: float, b: float) -> np.ndarray:
            return (u / a) ** 2 + (v / b) ** 2 < 1

        if self.soft is not None:
            lab[ellipse(0.62, 0.52)] = SceneLabel.SOFT
        lab[ellipse(0.44, 0.36 + 0.01 * math.cos(z))] = SceneLabel.BONE
        lab[ellipse(0.32, 0.25)] = SceneLabel.MARROW
        if self.trabecular:
            field = ndi.gaussian_filter(rng.standard_normal((n, n)), n / 60)
            lab[ellipse(0.32, 0.25) & (field > 0.6 * field.std())] = SceneLabel.BONE
        theta = np.arctan2(u, v)
        rs = np.hypot(u, v)
        if self.screw is not None:
            lab[rs < 0.1 + 0.012 * np.cos(12 * theta)] = SceneLabel.SCREW
        return lab, r, rs, theta

    def _plane(self, z: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        lab, r, rs, theta = self._labels(z, rng)
        soft = self.soft if self.soft is not None else self.medium
        levels = {SceneLabel.AIR: self.air, SceneLabel.HOLDER: self.holder,
                  SceneLabel.MEDIUM: self.air if self.medium is None else self.medium,
                  SceneLabel.SOFT: soft, SceneLabel.MARROW: self.marrow or soft,
                  SceneLabel.BONE: soft if self.bone is None else self.bone,
                  SceneLabel.SCREW: self.screw}  # fmt: skip
        lut = np.array([levels[t] if levels[t] is not None else self.air for t in SceneLabel])
        img = lut[lab].astype(np.float64)
        contrast = (self.bone or lut.max()) - self.air
        img = self.air + (img - self.air) * (1 - self.cupping * (1 - np.minimum(r, 1) ** 2))
        phases = rng.uniform(0, 2 * np.pi, 3)
        img += (
            self.rings
            * contrast
            / 3
            * sum(np.sin(2 * np.pi * k * r + p) for k, p in zip((37, 53, 71), phases, strict=True))
        )
        if self.screw is not None and self.streaks:
            outside = np.maximum(rs - 0.1, 0)
            img += self.streaks * contrast * np.cos(7 * theta) * np.exp(-outside / 0.3) * (rs > 0.1)
        if self.psf:
            img = ndi.gaussian_filter(img, self.psf)
        return img, lab
