"""Coordinates of a section placed in a CT: the maps the registration composes.

Everything here is in the CT's axis order ``(z, y, x)`` and physical unit (µm). SimpleITK
orders physical points ``(x, y, z)``; :func:`to_sitk` and :func:`from_sitk` convert vectors and
matrices at that boundary and nowhere else.

Section coordinates ``q = (row, col)`` are µm on the section's full-resolution pixel grid
(pixel ``(r, c)`` is at ``translation + pixel_size * (r, c)``), after the flip when the section
is mirrored.
"""

from __future__ import annotations

import dataclasses

import numpy as np

#: the CT axis (z, y, x index) normal to an untilted cut, and the in-plane (row, col) axes
AXES = ("z", "y", "x")
_IN_PLANE = {"z": (1, 2), "y": (0, 2), "x": (0, 1)}


def to_sitk(v: np.ndarray) -> tuple[float, ...]:
    """A (z, y, x) vector as SimpleITK's (x, y, z) tuple."""
    return tuple(float(c) for c in np.asarray(v, dtype=np.float64)[::-1])


def from_sitk(v) -> np.ndarray:
    """A SimpleITK (x, y, z) vector as (z, y, x)."""
    return np.asarray(v, dtype=np.float64)[::-1].copy()


def matrix_from_sitk(m: np.ndarray) -> np.ndarray:
    """A 3×3 matrix acting on (x, y, z) as the same map on (z, y, x)."""
    return np.asarray(m, dtype=np.float64)[::-1, ::-1].copy()


def affine4(linear: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """The 4×4 homogeneous matrix of ``p -> linear @ p + offset`` (any dimension ≤ 3 padded)."""
    n = linear.shape[0]
    m = np.eye(4)
    m[:n, :n] = linear
    m[:n, 3] = offset
    return m


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where the section's plane starts: ``G(q) = centre + basis @ (q - q_mid)``.

    ``basis`` holds the unit row and column directions (z, y, x) as columns; the normal is
    their cross product.
    """

    centre: np.ndarray  # (3,) µm
    basis: np.ndarray  # (3, 2)
    q_mid: np.ndarray  # (2,) µm, the section point placed at ``centre``

    @classmethod
    def untilted(cls, axis: str, centre: np.ndarray, q_mid: np.ndarray) -> Placement:
        r, c = _IN_PLANE[axis]
        basis = np.zeros((3, 2))
        basis[r, 0] = 1.0
        basis[c, 1] = 1.0
        return cls(np.asarray(centre, dtype=np.float64), basis, np.asarray(q_mid, np.float64))

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.basis[:, 0], self.basis[:, 1])

    def matrix(self) -> np.ndarray:
        """4×4: (q_row, q_col, w, 1) → (z, y, x, 1); ``w`` steps along the normal."""
        lin = np.column_stack([self.basis, self.normal])
        off = self.centre - self.basis @ self.q_mid
        return affine4(lin, off)


def flip_matrix(flip: bool, col_mid: float) -> np.ndarray:
    """4×4 on (row, col, w, 1): the mirror ``col -> 2 col_mid - col`` (identity without flip)."""
    m = np.eye(4)
    if flip:
        m[1, 1] = -1.0
        m[1, 3] = 2.0 * col_mid
    return m


def pixel_matrix(scale: tuple[float, float], translation: tuple[float, float]) -> np.ndarray:
    """4×4: full-resolution section pixel (row, col, 0, 1) → section µm (row, col, 0, 1)."""
    return affine4(np.diag(np.asarray(scale, dtype=np.float64)), np.asarray(translation, float))


def apply(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4×4 matrix to (N, 3) points (or (N, 2), padded with w = 0)."""
    p = np.asarray(points, dtype=np.float64)
    if p.shape[-1] == 2:
        p = np.concatenate([p, np.zeros(p.shape[:-1] + (1,))], axis=-1)
    return p @ m[:3, :3].T + m[:3, 3]


def _pixel_points(shape: tuple[int, int], step: int) -> np.ndarray:
    """Every ``step``-th pixel (row, col) of an image of ``shape``, as (N, 2) floats."""
    rows, cols = np.meshgrid(np.arange(0, shape[0], step), np.arange(0, shape[1], step))
    return np.column_stack([rows.ravel(), cols.ravel()]).astype(np.float64)


def mean_error(found: np.ndarray, truth: np.ndarray, shape: tuple[int, int], step: int = 8):
    """Mean and max distance (µm) between two section_to_ct maps over the section's pixels."""
    px = _pixel_points(shape, step)
    d = np.linalg.norm(apply(found, px) - apply(truth, px), axis=1)
    return float(d.mean()), float(d.max())


def split_distance(ref: np.ndarray, other: np.ndarray, points: np.ndarray):
    """Mean distance (µm) between where two maps of the section put ``points``: along the
    plane of ``ref`` (which CT pixel of the plane a section pixel shows) and across it (how
    deep and how tilted the plane is)."""
    d = apply(other, points) - apply(ref, points)
    normal = np.cross(ref[:3, 0], ref[:3, 1])
    normal = normal / np.linalg.norm(normal)
    across = d @ normal
    within = np.linalg.norm(d - np.outer(across, normal), axis=1)
    return float(within.mean()), float(np.abs(across).mean())


def split_error(found: np.ndarray, truth: np.ndarray, shape: tuple[int, int], step: int = 8):
    """:func:`split_distance` of two section_to_ct maps over the section's pixels, along and
    across the true plane."""
    return split_distance(truth, found, _pixel_points(shape, step))
